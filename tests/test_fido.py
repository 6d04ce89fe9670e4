import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from fidobook import FIDO, FIDOConfig, FIDOResult, log_odds, total_variation

REGION = (slice(2, 8), slice(3, 9))  # rows 2..7, cols 3..8 of a 16x16 image


class RegionClassifier(nn.Module):
    """Decides between two classes from the mean brightness of one image region only."""

    in_channels = 3

    def __init__(self, weight=8.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(weight))

    def forward(self, x):
        r = x[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        z = self.w * (r - 0.5)
        return torch.stack([z, -z], 1)


class TinyConvNet(nn.Module):
    """A small CNN with dropout and batch norm (both must be neutralised during a fit)."""

    def __init__(self, k=4, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, dtype=dtype)
        self.bn = nn.BatchNorm2d(6, dtype=dtype)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, k, dtype=dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.mean(dim=(2, 3))))


def region_mask(h=16, w=16):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[REGION] = True
    return m


def bright_images(n=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (0.75 + 0.2 * torch.rand((n, 3, 16, 16), generator=g)).to(dtype)


class TestKnownAnswer:
    @pytest.mark.parametrize("sampler", ["scd", "cd"])
    def test_masks_land_on_the_only_region_the_classifier_reads(self, sampler):
        x = bright_images(2)
        cfg = FIDOConfig(iterations=80, samples=4, sampler=sampler, infill="zeros", l1=0.05, tv=1e-3)
        res = FIDO(RegionClassifier(), cfg).fit(x, 0, seeds=[0, 1])
        inside = region_mask()
        for name in ("ssr", "sdr"):
            maps = getattr(res, name)
            frac = maps[:, inside].sum(1) / maps.sum(dim=(1, 2))
            assert (frac > 0.85).all(), (name, frac)
            assert (maps[:, inside].mean(1) > 0.95).all()
            assert (maps[:, ~inside].mean(1) < 0.05).all()
        # SSR keeps the decision, SDR destroys it
        assert (res.history["ssr_prob"][-1] > 0.9).all()
        assert (res.history["sdr_prob"][-1] < 0.1).all()

    def test_default_settings_rank_the_region_first(self):
        x = bright_images(1)
        res = FIDO(RegionClassifier(), FIDOConfig(iterations=60, samples=4, infill="zeros")).fit(x, 0, seeds=[3])
        inside = region_mask().flatten()
        top = res.joint[0].flatten().topk(int(inside.sum())).indices
        assert inside[top].all()

    def test_low_resolution_mask_upsampled(self):
        x = bright_images(1)
        cfg = FIDOConfig(iterations=40, samples=2, mask_size=8, infill="zeros", l1=0.05, tv=1e-3)
        res = FIDO(RegionClassifier(), cfg).fit(x, 0, seeds=[0])
        assert res.logits.shape == (2, 1, 8, 8)
        assert res.ssr.shape == (1, 16, 16)
        inside = region_mask()
        assert res.ssr[0][inside].mean() > 3 * res.ssr[0][~inside].mean()


class TestBatching:
    @pytest.mark.parametrize("infill", ["blur", "uniform", "knockoff"])
    def test_batch_fit_equals_separate_fits(self, infill):
        x = bright_images(3, torch.float64)
        model = TinyConvNet(dtype=torch.float64)
        cfg = FIDOConfig(iterations=15, samples=3, infill=infill)
        seeds = [11, 22, 33]
        batch = FIDO(model, cfg).fit(x, [0, 1, 2], seeds=seeds)
        for i in range(3):
            one = FIDO(model, cfg).fit(x[i : i + 1], [i], seeds=[seeds[i]])
            assert torch.allclose(batch.logits[:, i], one.logits[:, 0], atol=1e-8)
            assert torch.allclose(batch.history["loss"][:, i], one.history["loss"][:, 0], atol=1e-8)

    def test_max_batch_does_not_change_the_result(self):
        x = bright_images(3, torch.float64)
        model = TinyConvNet(dtype=torch.float64)
        cfg = FIDOConfig(iterations=10, samples=4)
        full = FIDO(model, cfg).fit(x, seeds=[1, 2, 3])
        for max_batch in (1, 5, 7):
            chunked = FIDO(model, cfg).fit(x, seeds=[1, 2, 3], max_batch=max_batch)
            assert torch.allclose(full.logits, chunked.logits, atol=1e-9)

    def test_concat_of_chunks_is_the_whole_fit(self):
        x = bright_images(3, torch.float64)
        model = TinyConvNet(dtype=torch.float64)
        cfg = FIDOConfig(iterations=4, samples=2)
        whole = FIDO(model, cfg).fit(x, [0, 1, 2], seeds=[5, 6, 7], snapshots=[2])
        parts = [FIDO(model, cfg).fit(x[a:b], [0, 1, 2][a:b], seeds=[5, 6, 7][a:b], snapshots=[2])
                 for a, b in ((0, 1), (1, 3))]
        joined = FIDOResult.concat(parts)
        for f in ("ssr", "sdr", "joint", "logits", "targets"):
            assert torch.allclose(getattr(joined, f).double(), getattr(whole, f).double(), atol=1e-9), f
        assert torch.allclose(joined.snapshots[2], whole.snapshots[2], atol=1e-9)
        assert joined.model_evaluations == whole.model_evaluations
        rebuilt = FIDOResult.from_logits(joined.logits, x.shape[-2:], targets=joined.targets,
                                         history=joined.history, config=cfg)
        assert torch.equal(rebuilt.joint, joined.joint)
        with pytest.raises(ValueError, match="at least one"):
            FIDOResult.concat([])

    def test_max_batch_is_not_a_setting(self):
        # A memory bound: not a FIDOConfig field, so it is part of no cache key.
        assert "max_batch" not in {f.name for f in dataclasses.fields(FIDOConfig)}
        with pytest.raises(ValueError, match="max_batch"):
            FIDO(TinyConvNet(), FIDOConfig(iterations=1, samples=1)).fit(bright_images(1), max_batch=0)

    def test_generator_is_deterministic(self):
        x = bright_images(2)
        model = TinyConvNet()
        cfg = FIDOConfig(iterations=5, samples=2)
        a = FIDO(model, cfg).fit(x, generator=torch.Generator().manual_seed(0))
        b = FIDO(model, cfg).fit(x, generator=torch.Generator().manual_seed(0))
        c = FIDO(model, cfg).fit(x, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.logits, b.logits) and not torch.equal(a.logits, c.logits)


class TestModelUntouched:
    def test_fit_leaves_model_state_as_it_was(self):
        model = TinyConvNet()
        model.train()
        model.fc.eval()  # a mixed mode must come back mixed
        model.conv.bias.requires_grad_(False)
        model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        modes = {n: m.training for n, m in model.named_modules()}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        seen = []
        model.register_forward_hook(lambda m, i, o: seen.append((m.training, any(p.requires_grad for p in m.parameters()))))

        FIDO(model, FIDOConfig(iterations=3, samples=2)).fit(bright_images(2), seeds=[0, 1])

        assert all(not training and not grads for training, grads in seen)  # eval, no param grads
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k  # BN running stats included
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 3.0))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")

    def test_state_restored_after_an_error(self):
        model = TinyConvNet()
        model.train()
        with pytest.raises(ValueError, match="target"):
            FIDO(model, FIDOConfig(iterations=2)).fit(bright_images(1), 99)
        assert model.training and all(p.requires_grad for p in model.parameters())


class TestResult:
    def test_shapes_history_and_attribute(self):
        x = bright_images(2)
        fido = FIDO(TinyConvNet(), FIDOConfig(iterations=4, samples=2))
        res = fido.fit(x, seeds=[0, 1])
        assert res.ssr.shape == res.sdr.shape == res.joint.shape == (2, 16, 16)
        assert res.logits.shape == (2, 2, 16, 16)
        for k in ("loss", "ssr_prob", "sdr_prob", "l1", "tv"):
            assert res.history[k].shape == (4, 2), k
        assert res.model_evaluations == 4 * 2 * 2 * 2
        assert torch.allclose(res.joint, (res.ssr * res.sdr).sqrt())
        assert float(res.ssr.min()) >= 0 and float(res.ssr.max()) <= 1
        # targets=None explains the prediction
        assert torch.equal(res.targets, TinyConvNet().eval()(x).argmax(1))
        a = fido.attribute(x, target=[0, 1], kind="ssr", seeds=[0, 1])
        assert a.shape == (2, 1, 16, 16)


class TestHelpers:
    def test_log_odds_matches_float64_reference_and_is_stable(self):
        z = torch.tensor([[1.0, 2.0, 3.0], [100.0, -100.0, 0.0], [-80.0, 80.0, 79.0]])
        t = torch.tensor([2, 0, 0])
        p = torch.softmax(z.double(), 1).gather(1, t[:, None]).squeeze(1)
        got = log_odds(z, t)
        assert torch.isfinite(got).all()
        assert torch.allclose(got[:1].double(), (p.log() - (1 - p).log())[:1], atol=1e-5)
        assert torch.allclose(got[1], torch.tensor(100.0), atol=1e-3)  # 1 − p underflows, log-odds does not
        assert abs(got[2].item() - (-80.0 - (80 + math.log1p(math.exp(-1.0))))) < 1e-3  # z_c − logsumexp(80, 79)

    def test_total_variation_hand_computed(self):
        m = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
        # vertical |1-0| + |1-1| = 1; horizontal |1-0| + |1-1| = 1
        assert total_variation(m).item() == 2.0
        assert total_variation(torch.stack([m, torch.zeros(2, 2)])).tolist() == [2.0, 0.0]


class TestBadInput:
    def fido(self, **kw):
        return FIDO(RegionClassifier(), FIDOConfig(iterations=1, samples=1, **kw))

    def test_images(self):
        f = self.fido()
        with pytest.raises(ValueError, match=r"images: expected a 4-D tensor"):
            f.fit(torch.rand(3, 16, 16))
        with pytest.raises(TypeError, match="images: expected a floating-point"):
            f.fit(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="images: expected finite"):
            f.fit(torch.full((1, 3, 16, 16), float("nan")))
        with pytest.raises(ValueError, match=r"images: expected values in \[0, 1\]"):
            f.fit(torch.rand(1, 3, 16, 16) * 255)
        with pytest.raises(ValueError, match="images: expected 3 channels"):
            f.fit(torch.rand(1, 1, 16, 16))
        with pytest.raises(TypeError, match="images: expected a torch.Tensor"):
            f.fit([[0.5]])

    def test_targets(self):
        f = self.fido()
        x = bright_images(2)
        with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 1\]"):
            f.fit(x, 2)
        with pytest.raises(ValueError, match=r"target: expected 2 values \(one per image\), got 3"):
            f.fit(x, [0, 1, 1])
        with pytest.raises(TypeError, match="target: expected an integer tensor"):
            f.fit(x, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match="seeds: expected 2"):
            f.fit(x, seeds=[1])

    def test_model_output(self):
        x = bright_images(1)

        class Flat(nn.Module):
            def forward(self, x):
                return x.mean(dim=(1, 2, 3))

        class Pair(nn.Module):
            def forward(self, x):
                return x.mean(dim=(2, 3)), None

        with pytest.raises(ValueError, match=r"model: expected the forward pass to return logits of shape \(1, K\)"):
            FIDO(Flat()).fit(x)
        with pytest.raises(TypeError, match="model: expected the forward pass to return a Tensor"):
            FIDO(Pair()).fit(x)
        with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
            FIDO(lambda x: x)

    def test_config(self):
        with pytest.raises(ValueError, match="samples: expected an int >= 1, got 0"):
            FIDOConfig(samples=0)
        with pytest.raises(ValueError, match="iterations"):
            FIDOConfig(iterations=0)
        with pytest.raises(ValueError, match=r"sampler: expected one of \['cd', 'scd'\], got 'gumbel'"):
            FIDOConfig(sampler="gumbel")
        with pytest.raises(ValueError, match="infill: expected one of"):
            FIDOConfig(infill="inpaint")
        with pytest.raises(ValueError, match="mask_size"):
            FIDOConfig(mask_size=(0, 4))
        with pytest.raises(ValueError, match="temperature"):
            FIDOConfig(temperature=-1.0)
        with pytest.raises(TypeError, match="unexpected FIDOConfig fields"):
            FIDO(RegionClassifier(), samplez=3)
        with pytest.raises(ValueError, match="kind"):
            self.fido().attribute(bright_images(1), kind="both")


class TestSnapshots:
    def test_snapshots_are_the_logits_of_a_shorter_fit(self):
        x = bright_images(2, torch.float64)
        model = TinyConvNet(dtype=torch.float64)
        cfg = FIDOConfig(iterations=6, samples=2, mask_size=4)
        res = FIDO(model, cfg).fit(x, [0, 1], seeds=[5, 6], snapshots=[3, 1, 6, np.int64(3)])
        assert sorted(res.snapshots) == [1, 3, 6]
        assert res.snapshots[3].shape == (2, 2, 4, 4) and not res.snapshots[3].requires_grad
        # the warm-up ramp depends on the step, not on the total: a 3-step fit is the prefix
        short = FIDO(model, dataclasses.replace(cfg, iterations=3)).fit(x, [0, 1], seeds=[5, 6])
        assert torch.equal(res.snapshots[3], short.logits)
        assert torch.equal(res.snapshots[6], res.logits)
        assert not torch.equal(res.snapshots[1], res.snapshots[3])  # a copy, not a view of θ

    def test_maps_at_matches_the_final_maps_and_a_shorter_fit(self):
        x = bright_images(2)
        model = TinyConvNet()
        cfg = FIDOConfig(iterations=4, samples=2, mask_size=8)
        res = FIDO(model, cfg).fit(x, seeds=[0, 1], snapshots=(2,))
        end = res.maps_at(4)  # the end needs no snapshot
        for k in ("ssr", "sdr", "joint"):
            assert torch.equal(end[k], getattr(res, k)), k
        short = FIDO(model, dataclasses.replace(cfg, iterations=2)).fit(x, seeds=[0, 1])
        mid = res.maps_at(2)
        assert mid["ssr"].shape == (2, 16, 16)
        for k in ("ssr", "sdr", "joint"):
            assert torch.equal(mid[k], getattr(short, k)), k
        with pytest.raises(ValueError, match=r"iteration: expected one of the recorded iterations \[2, 4\]"):
            res.maps_at(3)
        with pytest.raises(TypeError, match="iteration"):
            res.maps_at(2.0)

    def test_default_is_empty_and_to_moves_snapshots(self):
        x = bright_images(1)
        res = FIDO(TinyConvNet(), FIDOConfig(iterations=2, samples=1)).fit(x, seeds=[0])
        assert res.snapshots == {}
        res = FIDO(TinyConvNet(), FIDOConfig(iterations=2, samples=1)).fit(x, seeds=[0], snapshots=[1])
        moved = res.to(torch.float64)
        assert moved.snapshots[1].dtype == torch.float64 and res.snapshots[1].dtype == torch.float32

    def test_bad_snapshots(self):
        f = FIDO(RegionClassifier(), FIDOConfig(iterations=3, samples=1))
        x = bright_images(1)
        with pytest.raises(ValueError, match=r"snapshots: expected iterations in \[1, 3\], got 0"):
            f.fit(x, seeds=[0], snapshots=[0])
        with pytest.raises(ValueError, match=r"snapshots: expected iterations in \[1, 3\], got 4"):
            f.fit(x, seeds=[0], snapshots=[4])
        with pytest.raises(TypeError, match="snapshots: expected a sequence of ints"):
            f.fit(x, seeds=[0], snapshots=[1.5])
        with pytest.raises(TypeError, match="snapshots: expected a sequence of ints"):
            f.fit(x, seeds=[0], snapshots=2)


class Faulty(nn.Module):
    """Wraps a classifier and replaces the logits of chosen rows by ``value`` (a number or K of them).

    ``when="masked"`` hits rows whose input is masked (bright_images are >= 0.75 everywhere, so a
    pixel below 0.7 means the infill shows), ``"always"`` every row; ``images`` restricts it to
    the images at those batch positions of the clean batch (masked rows carry the image index in
    ``row_image``, whose order FIDO fixes: kind, image, sample). ``from_call`` skips earlier
    forward passes (call 0 is the clean forward, call k the k-th step's when max_batch is None).
    """

    in_channels = 3

    def __init__(self, inner, value, when="masked", images=None, from_call=0, samples=1, n=2):
        super().__init__()
        self.inner, self.value, self.when, self.from_call = inner, value, when, from_call
        self.images, self.samples, self.n = images, samples, n
        self.calls = 0

    def forward(self, x):
        z = self.inner(x)
        call, self.calls = self.calls, self.calls + 1
        hit = torch.ones(len(x), dtype=torch.bool)
        if self.when == "masked":
            hit &= (x < 0.7).flatten(1).any(1)
        if self.images is not None:
            index = torch.arange(len(x)) if call == 0 else torch.arange(len(x)) // self.samples % self.n
            hit &= torch.isin(index, torch.tensor(self.images))
        if call < self.from_call:
            hit[:] = False
        return torch.where(hit[:, None], torch.tensor(self.value, dtype=z.dtype).expand_as(z), z)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class NaNGradient(RegionClassifier):
    """Finite logits whose gradient with respect to the input is NaN."""

    def forward(self, x):
        return super().forward(_NaNGrad.apply(x))


class TestNonFinite:
    """A model's NaN or inf stops a fit with FloatingPointError naming the output, step and images."""

    FAST = dict(iterations=3, samples=2, infill="zeros")

    def test_nan_on_masked_inputs_of_one_image(self):
        model = Faulty(RegionClassifier(), float("nan"), images=[1], samples=2)
        with pytest.raises(FloatingPointError,
                           match=r"model: .* on the masked inputs at step 1 of 3 for images \[1\]: "):
            FIDO(model, **self.FAST).fit(bright_images(2), 0, seeds=[0, 1])
        assert model.calls == 2  # the clean forward and step 1: it stops at once on a CPU

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_clean_forward_checked_before_the_first_step(self, value):
        model = Faulty(RegionClassifier(), value, when="always", images=[0])
        with pytest.raises(FloatingPointError, match=r"model: .* clean images, before step 1, for images \[0\]$"):
            FIDO(model, **self.FAST).fit(bright_images(2), 0, seeds=[0, 1])
        assert model.calls == 1

    @pytest.mark.parametrize("value", [float("inf"), float("-inf"), (3e38, -3e38)], ids=["inf", "-inf", "overflow"])
    def test_inf_or_overflowing_logits_on_masked_inputs(self, value):
        # +inf: the softmax is NaN; -inf on every class: the log-odds is NaN; finite logits
        # (3e38, -3e38): the log-odds 6e38 overflows float32.
        model = Faulty(RegionClassifier(), value)
        with pytest.raises(FloatingPointError, match=r"model: .* at step 1 of 3 for images \[0, 1\]"):
            FIDO(model, **self.FAST).fit(bright_images(2), 0, seeds=[0, 1])

    def test_minus_inf_logit_of_another_class_is_harmless(self):
        class ThirdClassImpossible(RegionClassifier):
            def forward(self, x):
                z = super().forward(x)
                return torch.cat([z, torch.full_like(z[:, :1], float("-inf"))], 1)

        x = bright_images(2)
        res = FIDO(ThirdClassImpossible(), **self.FAST).fit(x, 0, seeds=[0, 1])
        ref = FIDO(RegionClassifier(), **self.FAST).fit(x, 0, seeds=[0, 1])
        assert torch.equal(res.logits, ref.logits)
        assert all(bool(torch.isfinite(v).all()) for v in res.history.values())

    def test_nan_gradient_is_caught_in_theta(self):
        with pytest.raises(FloatingPointError,
                           match=r"theta: the mask logits became non-finite at step 1 of 3 for images \[0, 1\]"):
            FIDO(NaNGradient(), **self.FAST).fit(bright_images(2), 0, seeds=[0, 1])

    def test_deferred_check_reports_the_first_bad_step(self, monkeypatch):
        # The CUDA path (flags read every k steps) exercised on a CPU.
        import fidobook.fido as fido_module

        monkeypatch.setattr(fido_module, "_finite_check_every", lambda device: 4)
        cfg = dict(iterations=10, samples=2, infill="zeros")
        model = Faulty(RegionClassifier(), float("nan"), images=[0], samples=2, from_call=2)
        with pytest.raises(FloatingPointError, match=r"model: .* at step 2 of 10 for images \[0\]"):
            FIDO(model, **cfg).fit(bright_images(2), 0, seeds=[0, 1])
        assert model.calls == 1 + 4  # read after step 4, not after every step
        # Reading the flags less often changes no number, and the last step is always read.
        x = bright_images(2)
        deferred = FIDO(RegionClassifier(), **cfg).fit(x, 0, seeds=[0, 1])
        monkeypatch.setattr(fido_module, "_finite_check_every", lambda device: 1)
        assert torch.equal(deferred.logits, FIDO(RegionClassifier(), **cfg).fit(x, 0, seeds=[0, 1]).logits)
        monkeypatch.setattr(fido_module, "_finite_check_every", lambda device: 4)
        late = Faulty(RegionClassifier(), float("nan"), from_call=9)  # steps 9, 10: after the last read
        with pytest.raises(FloatingPointError, match=r"at step 9 of 10"):
            FIDO(late, **cfg).fit(x, 0, seeds=[0, 1])
        assert late.calls == 1 + 10

    def test_check_reads_the_device_only_every_k_steps_off_the_cpu(self):
        import fidobook.fido as fido_module

        assert fido_module._finite_check_every(torch.device("cpu")) == 1
        assert fido_module._finite_check_every(torch.device("cuda", 0)) == fido_module.FINITE_CHECK_EVERY > 1


class TestModelInputs:
    def test_dtype_channels_and_attribute_name_the_argument(self):
        from fidobook.models import SmallCNN

        f = FIDO(SmallCNN(3, width=4), FIDOConfig(iterations=1, samples=1))
        with pytest.raises(ValueError, match=r"images: expected 3 channels, got 1"):
            f.fit(torch.rand(1, 1, 16, 16))  # fidobook's own model declares its channels
        with pytest.raises(TypeError, match=r"images: expected dtype torch.float32 .*got torch.float64"):
            f.fit(torch.rand(1, 3, 16, 16, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"inputs: expected 3 channels"):
            f.attribute(torch.rand(1, 1, 16, 16))

    def test_images_requiring_grad_are_detached(self):
        import warnings

        x = bright_images(2)
        xg = x.clone().requires_grad_(True)
        f = FIDO(RegionClassifier(), FIDOConfig(iterations=3, samples=2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = f.fit(xg, 0, seeds=[0, 1])
        assert xg.grad is None and not res.logits.requires_grad and not res.ssr.requires_grad
        assert torch.equal(res.logits, f.fit(x, 0, seeds=[0, 1]).logits)

    def test_mask_size_larger_than_the_image(self):
        model = Faulty(RegionClassifier(), 0.0, when="always")
        x = bright_images(1)  # 16 x 16
        for size in (17, (8, 20)):
            with pytest.raises(ValueError, match=r"mask_size: expected at most the image size \(16, 16\), got "):
                FIDO(model, FIDOConfig(iterations=1, samples=1, mask_size=size)).fit(x)
        assert model.calls == 0  # refused before any forward pass
        res = FIDO(RegionClassifier(), FIDOConfig(iterations=1, samples=1, mask_size=(16, 4))).fit(x, seeds=[0])
        assert res.logits.shape == (2, 1, 16, 4)

    def test_seeds(self):
        f = FIDO(RegionClassifier(), FIDOConfig(iterations=2, samples=1))
        x = bright_images(2)
        for bad in ([2**64, 0], [0, -1]):
            with pytest.raises(ValueError, match=r"seeds\[\d\]: expected an int seed in \[0, 2\*\*64\), got"):
                f.fit(x, seeds=bad)
        with pytest.raises(TypeError, match="seeds: expected a sequence of ints"):
            f.fit(x, seeds=[0.5, 1])
        with pytest.raises(TypeError, match="seeds: expected an integer tensor"):
            f.fit(x, seeds=torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"seeds: expected 2 values \(one per image\), got 3"):
            f.fit(x, seeds=range(3))
        # The whole range manual_seed takes works, including seeds a LongTensor cannot hold.
        big = f.fit(x, seeds=[2**64 - 1, 2**63])
        assert not torch.equal(big.logits[:, 0], big.logits[:, 1])
        assert torch.equal(big.logits, f.fit(x, seeds=[2**64 - 1, 2**63]).logits)
        ref = f.fit(x, seeds=[3, 4]).logits
        for same in ((3, 4), np.array([3, 4]), torch.tensor([3, 4]), range(3, 5)):
            assert torch.equal(f.fit(x, seeds=same).logits, ref)
        one = f.fit(x, seeds=7).logits  # one int: the same seed for every image
        assert torch.equal(one, f.fit(x, seeds=[7, 7]).logits)

    def test_generator_int_is_a_seed(self):
        f = FIDO(RegionClassifier(), FIDOConfig(iterations=2, samples=1))
        x = bright_images(2)
        a = f.fit(x, generator=0)
        assert torch.equal(a.logits, f.fit(x, generator=torch.Generator().manual_seed(0)).logits)
        assert not torch.equal(a.logits, f.fit(x, generator=1).logits)
        with pytest.raises(TypeError, match="generator: expected a torch.Generator or an int seed, got str"):
            f.fit(x, generator="0")
        for bad in (-1, 2**64):
            with pytest.raises(ValueError, match=r"generator: expected an int seed in \[0, 2\*\*64\)"):
                f.fit(x, generator=bad)
