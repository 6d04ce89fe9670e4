"""Tests of fidobook.attribution: the Captum baselines under FIDO's one signature."""
import pytest
import torch
from torch import nn

from fidobook.attribution import (ATTRIBUTIONS, GradCAMMap, IntegratedGradientsMap, OcclusionMap,
                                  SaliencyMap, SmoothGradMap, get_attribution, relevance_maps)
from fidobook.cam import grad_cam
from fidobook.infill import INFILLS
from fidobook.metrics import normalize_maps
from fidobook.models import SmallCNN

SIZE = 16


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


class Linear(nn.Module):
    """Known-answer classifier: ``z = W · vec(x) + b``, so ``∂z_c/∂x = W_c`` everywhere."""

    in_channels = 3

    def __init__(self, k=4, size=SIZE):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, k)
        self.size = size

    def forward(self, x):
        return self.fc(x.flatten(1))

    def weight(self, c):
        return self.fc.weight[c].detach().view(3, self.size, self.size)


class Smooth(nn.Module):
    """A small smooth (softplus) CNN with a ``cam_layer``, for the path integral and Grad-CAM."""

    in_channels = 3
    num_classes = 5

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Softplus(),
                                  nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Softplus())
        self.head = nn.Linear(8, 5)
        self.dropout = nn.Dropout(0.5)  # must be off during attribution

    @property
    def cam_layer(self):
        return self.conv

    def forward(self, x):
        return self.head(self.dropout(self.conv(x).mean((2, 3))))


class NaNModel(Smooth):
    def forward(self, x):
        return super().forward(x) * float("nan")


class Boom(Smooth):
    def forward(self, x):
        raise RuntimeError("boom")


#: Small settings that keep each test fast (occlusion: 49 windows instead of 225 at 16 px).
FAST = {"saliency": {}, "smoothgrad": {"samples": 4}, "integrated_gradients": {"steps": 8},
        "occlusion": {"window": 4, "stride": 2}, "gradcam": {}}


def _images(n=3, size=SIZE):
    return torch.rand(n, 3, size, size)


def _methods(model):
    return [SaliencyMap(model), SmoothGradMap(model, samples=4, sigma=0.1),
            IntegratedGradientsMap(model, steps=8), OcclusionMap(model, window=4, stride=2),
            GradCAMMap(model)]


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


class TestSignature:
    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_shape_range_and_modes_restored(self, name):
        model = Smooth().train()
        flags = [p.requires_grad for p in model.parameters()]
        maps = get_attribution(name, model, **FAST[name]).attribute(_images(), [0, 1, 2], max_batch=5)
        assert maps.shape == (3, 1, SIZE, SIZE)
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        assert not maps.requires_grad
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert _no_hooks(model)

    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_max_batch_does_not_change_the_maps(self, name):
        model, x, t = Smooth(), _images(4), torch.tensor([0, 3, 1, 4])
        method = get_attribution(name, model, **FAST[name])
        whole, raw = method.attribute(x, t), method.raw(x, t)
        for max_batch in (1, 3, 7, 1000):
            # Equal up to the rounding of logits and sums computed in batches of another size
            # (~1e-7 on logits of order 1; occlusion's drops of this tiny model are ~1e-4, so
            # the normalised maps move by up to ~1e-3).
            torch.testing.assert_close(method.raw(x, t, max_batch=max_batch), raw, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(method.attribute(x, t, max_batch=max_batch), whole,
                                       atol=2e-3, rtol=0)

    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_target_none_is_the_prediction(self, name):
        model, x = Smooth(), _images(3)
        method = get_attribution(name, model, **FAST[name])
        with torch.no_grad():
            predicted = model.eval()(x).argmax(1)
        torch.testing.assert_close(method.raw(x, max_batch=2), method.raw(x, predicted), atol=1e-6, rtol=0)

    @pytest.mark.parametrize("target", [2, [2, 2], torch.tensor([2, 2]), torch.tensor(2)])
    def test_target_forms(self, target):
        model, x = Linear(), _images(2)
        torch.testing.assert_close(SaliencyMap(model).attribute(x, target),
                                   SaliencyMap(model).attribute(x, [2, 2]))

    def test_single_image_inside_no_grad_and_input_requiring_grad(self):
        model = Smooth()
        x = _images(1).requires_grad_(True)
        for method in _methods(model):
            with torch.no_grad():
                maps = method.attribute(x, 1)
            assert maps.shape == (1, 1, SIZE, SIZE)
        assert x.grad is None

    def test_registry_and_unknown_name(self):
        assert list(ATTRIBUTIONS) == ["saliency", "smoothgrad", "integrated_gradients", "occlusion",
                                      "gradcam"]
        for name, cls in ATTRIBUTIONS.items():
            assert cls.name == name and cls.label
        with pytest.raises(ValueError, match=r"name: expected one of .*saliency"):
            get_attribution("lime", Smooth())
        with pytest.raises(TypeError):
            get_attribution("saliency", Smooth(), steps=3)

    def test_passes(self):
        model = Smooth()
        assert SaliencyMap(model).passes(64, 64) == (1, 1)
        assert SmoothGradMap(model, samples=7).passes(64, 64) == (7, 7)
        assert IntegratedGradientsMap(model, steps=9).passes(64, 64) == (9, 9)
        # window 8, stride 4 at 64 px: 15 positions per axis, plus the intact image
        assert OcclusionMap(model).passes(64, 64) == (15 * 15 + 1, 0)
        assert OcclusionMap(model).geometry(64, 64) == (8, 4)


class TestChecks:
    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_bad_inputs(self, name):
        method = get_attribution(name, Smooth(), **FAST[name])
        with pytest.raises(ValueError, match="inputs: expected 3 channels"):
            method.attribute(torch.rand(2, 1, SIZE, SIZE))
        with pytest.raises(TypeError, match="inputs: expected dtype torch.float32"):
            method.attribute(_images(2).double())
        with pytest.raises(ValueError, match=r"inputs: expected values in \[0, 1\]"):
            method.attribute(_images(2) * 2)
        with pytest.raises(ValueError, match="target: expected class indices in"):
            method.attribute(_images(2), [0, 5])
        with pytest.raises(ValueError, match="target: expected 2 values"):
            method.attribute(_images(2), [0, 1, 2])
        for bad, error in ((0, ValueError), (2.5, TypeError), (True, TypeError)):
            with pytest.raises(error, match="max_batch: expected an int >= 1"):
                method.attribute(_images(2), max_batch=bad)

    def test_bad_settings(self):
        model = Smooth()
        with pytest.raises(ValueError, match="samples: expected an int >= 1"):
            SmoothGradMap(model, samples=0)
        with pytest.raises(ValueError, match="steps: expected an int >= 2"):
            IntegratedGradientsMap(model, steps=1)
        with pytest.raises(ValueError, match="baseline: expected a deterministic infill"):
            IntegratedGradientsMap(model, baseline="uniform")
        with pytest.raises(ValueError, match="baseline: expected one of"):
            OcclusionMap(model, baseline="nothing")
        with pytest.raises(ValueError, match="stride: expected at most the window 2"):
            OcclusionMap(model, window=2, stride=3).attribute(_images(1))
        with pytest.raises(ValueError, match="window: expected at most the image side"):
            OcclusionMap(model, window=SIZE + 1).attribute(_images(1))
        with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
            SaliencyMap(lambda x: x)

    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_non_finite_model_raises(self, name):
        with pytest.raises(FloatingPointError, match=r"(images|NaN)"):
            get_attribution(name, NaNModel(), **FAST[name]).attribute(_images(2), [0, 1])

    @pytest.mark.parametrize("name", list(ATTRIBUTIONS))
    def test_no_hook_or_mode_survives_an_error(self, name):
        model = Boom().train()
        with pytest.raises(RuntimeError, match="boom"):
            get_attribution(name, model, **FAST[name]).attribute(_images(2), [0, 1])
        assert _no_hooks(model)
        assert model.training and all(p.requires_grad for p in model.parameters())


class TestKnownAnswers:
    def test_saliency_of_a_linear_model_is_abs_w(self):
        model, x = Linear(), _images(2)
        maps = SaliencyMap(model).attribute(x, [1, 3])
        for i, c in enumerate((1, 3)):
            expected = normalize_maps(model.weight(c).abs().sum(0)[None])[0]
            torch.testing.assert_close(maps[i, 0], expected)

    def test_smoothgrad_of_a_linear_model_is_abs_w(self):
        # The gradient of a linear model does not depend on the input: noise changes nothing.
        model, x = Linear(), _images(2)
        maps = SmoothGradMap(model, samples=5, sigma=0.5).attribute(x, 2, max_batch=3)
        expected = normalize_maps(model.weight(2).abs().sum(0)[None])[0]
        torch.testing.assert_close(maps[:, 0], expected.expand(2, -1, -1))

    def test_smoothgrad_matches_a_loop_over_its_noise(self):
        # Slow reference: the mean |gradient| over the noisy copies, image by image.
        model, x = Smooth().eval(), _images(2)
        method = SmoothGradMap(model, samples=3, sigma=0.2, seed=5)
        seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(5)).tolist()
        ref = []
        for i in range(2):
            noise = torch.randn((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seeds[i]))
            xs = (x[i:i + 1] + 0.2 * noise).requires_grad_(True)
            model(xs)[:, 1].sum().backward()
            ref.append(xs.grad.abs().mean(0))
        torch.testing.assert_close(method.raw(x, 1, max_batch=2), torch.stack(ref), atol=1e-6, rtol=1e-5)

    def test_smoothgrad_seed(self):
        model, x = Smooth(), _images(2)
        a = SmoothGradMap(model, samples=2, seed=0).attribute(x, 0)
        assert torch.equal(a, SmoothGradMap(model, samples=2, seed=0).attribute(x, 0))
        assert not torch.allclose(a, SmoothGradMap(model, samples=2, seed=1).attribute(x, 0))

    def test_integrated_gradients_of_a_linear_model(self):
        # IG of a linear model is exact: a = (x - x') * W_c.
        model, x = Linear(), _images(2)
        ig = IntegratedGradientsMap(model, steps=4)
        raw = ig.raw(x, [0, 2])
        baseline = INFILLS["blur"](x)
        for i, c in enumerate((0, 2)):
            torch.testing.assert_close(raw[i], (x[i] - baseline[i]) * model.weight(c), atol=1e-6, rtol=1e-4)
        assert float(ig.completeness(x, [0, 2]).max()) < 1e-4
        torch.testing.assert_close(ig.completeness(x, [0, 2], attributions=raw),
                                   ig.completeness(x, [0, 2], max_batch=3), atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="attributions: expected a Tensor of the inputs' shape"):
            ig.completeness(x, [0, 2], attributions=raw[:1])

    def test_integrated_gradients_completeness_of_a_smooth_model(self):
        model, x = Smooth(), _images(3)
        errors = IntegratedGradientsMap(model, steps=32).completeness(x, [0, 1, 2], max_batch=16)
        assert errors.shape == (3,) and errors.dtype == torch.float64
        assert float(errors.max()) < 1e-2
        # A one-point rule is a worse integral.
        coarse = IntegratedGradientsMap(model, steps=2, method="riemann_left").completeness(x, [0, 1, 2])
        assert float(coarse.median()) > float(errors.median())

    def test_occlusion_matches_a_loop_over_windows(self):
        # Slow reference: each window replaced by the baseline, the drop shared by its pixels,
        # the mean over the windows covering each pixel (Captum's stride rule: the last window
        # clipped to the image).
        model, x = Smooth().eval(), _images(2, size=10)
        window, stride = 4, 3
        raw = OcclusionMap(model, window=window, stride=stride).raw(x, [1, 4], max_batch=4)
        base = INFILLS["blur"](x)
        total = torch.zeros(2, 10, 10)
        count = torch.zeros(10, 10)
        with torch.no_grad():
            z = model(x)[[0, 1], [1, 4]]
            for i in range(0, 10 - window + stride, stride):
                for j in range(0, 10 - window + stride, stride):
                    box = torch.zeros(10, 10, dtype=torch.bool)
                    box[i:i + window, j:j + window] = True
                    occluded = torch.where(box, base, x)
                    drop = z - model(occluded)[[0, 1], [1, 4]]
                    total += drop[:, None, None] * box
                    count += box
        expected = (total / count)[:, None].expand(-1, 3, -1, -1)
        torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-4)

    def test_gradcam_is_fidobook_cam(self):
        model, x = SmallCNN(5, width=4), _images(3, size=32)
        model.eval()
        maps = GradCAMMap(model).attribute(x, [0, 1, 2], max_batch=2)
        torch.testing.assert_close(maps[:, 0], grad_cam(model, x, [0, 1, 2]))
        assert GradCAMMap(model).layer_size(x) == (4, 4)
        assert _no_hooks(model)

    def test_relevance_maps(self):
        a = torch.zeros(1, 3, 2, 2)
        a[0, 0, 0, 0], a[0, 1, 0, 0], a[0, 2, 1, 1] = -2.0, 1.0, 1.5
        expected = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
        torch.testing.assert_close(relevance_maps(a), expected)
        with pytest.raises(ValueError, match="attributions: expected shape"):
            relevance_maps(torch.zeros(2, 2, 2))
