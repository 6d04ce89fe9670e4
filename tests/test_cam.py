"""Tests of fidobook.cam: Grad-CAM through Captum, and the CBAM spatial-attention read-out."""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from fidobook.cam import attention_maps, cbam_attention, grad_cam
from fidobook.metrics import normalize_maps
from fidobook.models import CBAM, SmallCNN


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


class ChannelPool(nn.Module):
    """Known-answer classifier: channel c of the image, 2×2 average-pooled, then global mean.

    ``logit_c = mean(x_c)``, so Grad-CAM on the pooling layer for class c has weights
    ``α_k = [k == c] / 16`` (16 = the 4×4 pooled map) and equals ``avgpool(x_c) / 16``.
    """

    def __init__(self):
        super().__init__()
        self.identity = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.identity.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.pool = nn.AvgPool2d(2)
        self.dropout = nn.Dropout(0.5)  # must be off (eval) during Grad-CAM

    @property
    def cam_layer(self):
        return self.pool

    def forward(self, x):
        return self.dropout(self.pool(self.identity(x))).mean(dim=(2, 3))  # (N, 3)


class Boom(nn.Module):
    """A layer that raises when armed (to test hook removal on error)."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


def _square_image(n=1, colour=0, corner=(0, 0), size=8, side=2):
    x = torch.zeros(n, 3, size, size)
    i, j = corner
    x[:, colour, i:i + side, j:j + side] = 1.0
    return x


class TestGradCam:
    def test_known_answer(self):
        model = ChannelPool()
        x = _square_image(colour=1, corner=(4, 2))  # green 2x2 square
        x[:, 0] = 0.3  # a constant red channel: no evidence for class 1
        maps = grad_cam(model, x, 1)
        expected = F.interpolate(F.avg_pool2d(x[:, 1:2], 2), size=(8, 8), mode="bilinear",
                                 align_corners=False)[:, 0]
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        torch.testing.assert_close(maps, expected)
        # The map peaks on the square, and is 0 far from it.
        assert maps.shape == (1, 8, 8)
        peak = divmod(int(maps[0].argmax()), 8)
        assert 4 <= peak[0] < 6 and 2 <= peak[1] < 4
        assert float(maps[0, 0, 7]) == 0.0

    def test_target_none_is_prediction(self):
        model = ChannelPool()
        x = torch.cat([_square_image(colour=2, corner=(0, 0)), _square_image(colour=0, corner=(6, 6))])
        torch.testing.assert_close(grad_cam(model, x), grad_cam(model, x, [2, 0]))
        # Explaining an absent class: zero evidence → all-zero map (no NaN).
        assert torch.equal(grad_cam(model, x, 1), torch.zeros(2, 8, 8))

    def test_equals_captum_upsampled_and_normalised(self):
        model = SmallCNN(5, width=8).eval()
        x = torch.rand(3, 3, 32, 32)
        target = torch.tensor([0, 3, 4])
        raw = LayerGradCam(model, model.cam_layer).attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(raw.detach(), (32, 32), interpolate_mode="bilinear")[:, 0]
        lo = up.flatten(1).amin(1)[:, None, None]
        hi = up.flatten(1).amax(1)[:, None, None]
        assert bool((hi > lo).any())
        expected = torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))
        torch.testing.assert_close(grad_cam(model, x, target), expected)

    def test_range_batches_and_layer(self):
        model = SmallCNN(5, width=8)
        x = torch.rand(5, 3, 32, 32)
        maps = grad_cam(model, x)
        assert maps.shape == (5, 32, 32) and not maps.requires_grad
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        torch.testing.assert_close(grad_cam(model, x, batch_size=2), maps)
        other = grad_cam(model, x, layer=model.stages[1])
        assert other.shape == (5, 32, 32) and not torch.allclose(other, maps)

    def test_modes_grads_and_hooks_restored(self):
        model = SmallCNN(5, width=8).train()
        model.fc.weight.requires_grad_(False)
        with torch.no_grad():  # works inside a caller's no_grad
            grad_cam(model, torch.rand(2, 3, 32, 32))
        assert all(m.training for m in model.modules())
        assert model.fc.weight.requires_grad is False
        assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc.weight")
        assert all(p.grad is None for p in model.parameters())
        assert all(len(m._forward_hooks) == 0 for m in model.modules())

    def test_hooks_removed_when_forward_raises(self):
        model = ChannelPool()
        model.boom = Boom()
        inner = model.forward
        model.forward = lambda x: inner(model.boom(x))
        model.train()
        x = _square_image(2)
        grad_cam(model, x, 0)  # works unarmed
        model.boom.armed = True
        with pytest.raises(RuntimeError, match="boom"):
            grad_cam(model, x, 0)
        assert len(model.pool._forward_hooks) == 0
        assert all(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())

    def test_errors(self):
        model = ChannelPool()
        x = _square_image(2)
        with pytest.raises(ValueError, match="target"):
            grad_cam(model, x, 3)  # K = 3
        with pytest.raises(ValueError, match="target"):
            grad_cam(model, x, [0, 1, 2])
        with pytest.raises(TypeError, match="target"):
            grad_cam(model, x, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match="images"):
            grad_cam(model, 2 * x)
        with pytest.raises(ValueError, match="layer"):
            grad_cam(model, x, layer=nn.Conv2d(3, 3, 1))
        with pytest.raises(TypeError, match="layer"):
            grad_cam(model, x, layer="pool")
        with pytest.raises(ValueError, match="batch_size"):
            grad_cam(model, x, batch_size=0)
        bare = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with pytest.raises(ValueError, match="layer.*cam_layer"):
            grad_cam(bare, x)
        with pytest.raises(ValueError, match="layer"):  # a 2-D layer output has no map
            grad_cam(bare, x, 0, layer=bare[2])


class CBAMNet(nn.Module):
    """Two CBAM blocks at 8 and 4 px, then a head; optionally raising after the first block."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cbam1 = CBAM(8)
        self.pool = nn.AvgPool2d(2)
        self.cbam2 = CBAM(8)
        self.boom = Boom()
        self.fc = nn.Linear(8, 3)

    @property
    def cbam_modules(self):
        return [self.cbam1, self.cbam2]

    def forward(self, x):
        f = self.boom(self.cbam1(self.conv(x)))
        f = self.cbam2(self.pool(f))
        return self.fc(f.mean(dim=(2, 3)))


def _up(a, size):
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False)[:, 0]


class TestCBAMAttention:
    def test_last_matches_last_attention(self):
        model = SmallCNN(5, width=8).eval()
        x = torch.rand(3, 3, 32, 32)
        maps = cbam_attention(model, x, reduce="last")
        model(x)
        expected = normalize_maps(_up(model.cbam_modules[-1].last_attention, (32, 32)))
        assert maps.shape == (3, 32, 32)
        torch.testing.assert_close(maps, expected)
        assert float(maps.min()) >= 0 and float(maps.max()) == 1

    def test_mean_max_first_of_upsampled_maps(self):
        model = CBAMNet().eval()
        x = torch.rand(4, 3, 8, 8)
        model(x)
        a1 = _up(model.cbam1.last_attention, (8, 8))  # already 8x8
        a2 = _up(model.cbam2.last_attention, (8, 8))  # 4x4 upsampled
        torch.testing.assert_close(cbam_attention(model, x), normalize_maps((a1 + a2) / 2))
        torch.testing.assert_close(cbam_attention(model, x, reduce="max"),
                                   normalize_maps(torch.maximum(a1, a2)))
        torch.testing.assert_close(cbam_attention(model, x, reduce="first"), normalize_maps(a1))
        torch.testing.assert_close(cbam_attention(model, x, batch_size=3), cbam_attention(model, x))

    def test_modes_restored_and_no_hooks(self):
        model = CBAMNet().train()
        cbam_attention(model, torch.rand(2, 3, 8, 8))
        assert all(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
        assert all(len(m._forward_hooks) == 0 for m in model.modules())

    def test_hooks_removed_on_error(self):
        model = CBAMNet().train()
        model.boom.armed = True
        with pytest.raises(RuntimeError, match="boom"):
            cbam_attention(model, torch.rand(2, 3, 8, 8))
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
        assert all(m.training for m in model.modules())
        with pytest.raises(RuntimeError, match="boom"):
            with attention_maps(model):
                model(torch.rand(2, 3, 8, 8))
        assert all(len(m._forward_hooks) == 0 for m in model.modules())

    def test_attention_maps_records_each_pass(self):
        model = CBAMNet().eval()
        with attention_maps(model) as captured:
            model(torch.rand(2, 3, 8, 8))
            model(torch.rand(1, 3, 8, 8))
        assert [len(c) for c in captured] == [2, 2]
        assert captured[0][0].shape == (2, 1, 8, 8) and captured[1][1].shape == (1, 1, 4, 4)
        torch.testing.assert_close(captured[1][1], model.cbam2.last_attention)

    def test_errors(self):
        x = torch.rand(2, 3, 8, 8)
        plain = SmallCNN(3, width=8, cbam=False)
        with pytest.raises(ValueError, match="model.*CBAM"):
            cbam_attention(plain, torch.rand(2, 3, 32, 32))
        with pytest.raises(ValueError, match="reduce"):
            cbam_attention(CBAMNet(), x, reduce="sum")
        with pytest.raises(ValueError, match="images"):
            cbam_attention(CBAMNet(), x[0])
        with pytest.raises(TypeError, match=r"modules\[0\]"):
            with attention_maps(plain, [plain.fc]):
                pass


class NaNForColour(ChannelPool):
    """ChannelPool whose logits (and so their gradient) are NaN for images with channel ``colour`` on."""

    def __init__(self, colour):
        super().__init__()
        self.colour = colour

    def forward(self, x):
        out = super().forward(x)
        hit = x[:, self.colour].flatten(1).amax(1) > 0  # (N,)
        scale = torch.where(hit, float("nan"), 1.0)  # a constant: the other rows' gradient stays finite
        return out * scale[:, None]


class TestModelInputs:
    """grad_cam and cbam_attention check images against the model (fidobook._checks.check_model_inputs)."""

    @pytest.mark.parametrize("explain", [grad_cam, cbam_attention])
    def test_channels_dtype_and_grad(self, explain):
        import warnings

        model = SmallCNN(3, width=8)
        x = torch.rand(2, 3, 32, 32)
        with pytest.raises(ValueError, match=r"images: expected 3 channels, got 1"):
            explain(model, x[:, :1])  # fidobook's model declares in_channels = 3
        with pytest.raises(TypeError, match=r"images: expected dtype torch.float32 .*got torch.float64"):
            explain(model, x.double())
        xg = x.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            maps = explain(model, xg)
        assert xg.grad is None and not maps.requires_grad
        torch.testing.assert_close(maps, explain(model, x), rtol=0, atol=0)


class TestNonFinite:
    def test_grad_cam_names_the_images_with_nan(self):
        x = torch.cat([_square_image(colour=0), _square_image(colour=1), _square_image(colour=2)])
        with pytest.raises(FloatingPointError, match=r"grad_cam: the Grad-CAM map of NaNForColour at layer AvgPool2d "
                                                     r".* is not finite \(NaN or inf\) for images \[1\]$"):
            grad_cam(NaNForColour(1), x, 0)
        with pytest.raises(FloatingPointError, match=r"for images \[2\]$"):  # the image, not its row in the batch
            grad_cam(NaNForColour(2), x, 0, batch_size=2)
        assert grad_cam(NaNForColour(0), x[1:], 0).isfinite().all()

    def test_cbam_attention_names_the_images_with_nan(self):
        model = CBAMNet().eval()
        with torch.no_grad():
            model.conv.bias[0] = float("nan")
        with pytest.raises(FloatingPointError, match=r"cbam_attention: the spatial attention of CBAMNet's "
                                                     r"CBAM blocks is not finite \(NaN or inf\) for images \[0, 1, 2\]$"):
            cbam_attention(model, torch.rand(3, 3, 8, 8))
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
