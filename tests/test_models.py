"""Tests of fidobook.models: CBAM, SmallCNN, ResNets, MC dropout, loading weights."""
import pytest
import torch
import torchvision
from torch import nn

from fidobook.models import (CBAM, IMAGENET_MEAN, IMAGENET_STD, Normalize, SegNet, SmallCNN,
                             SpatialAttention, load_weights, mc_dropout, resnet)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def _x(n=2, size=32):
    return torch.rand(n, 3, size, size)


class TestCBAM:
    def test_shapes_and_range(self):
        m = CBAM(16)
        x = torch.randn(3, 16, 8, 6)
        y = m(x)
        assert y.shape == x.shape
        a = m.last_attention
        assert a.shape == (3, 1, 8, 6)
        assert not a.requires_grad
        assert float(a.min()) >= 0 and float(a.max()) <= 1

    def test_hook_on_spatial_gate_sees_the_map(self):
        m = CBAM(8)
        seen = []
        handle = m.spatial.register_forward_hook(lambda mod, inp, out: seen.append(out))
        try:
            m(torch.randn(2, 8, 5, 5))
        finally:
            handle.remove()
        assert isinstance(m.spatial, SpatialAttention)
        assert seen[0].shape == (2, 1, 5, 5)
        torch.testing.assert_close(seen[0].detach(), m.last_attention)

    def test_matches_manual_computation(self):
        m = CBAM(8).eval()
        x = torch.randn(2, 8, 4, 4)
        mlp = m.channel.mlp
        mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        x1 = x * mc
        pooled = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
        ms = torch.sigmoid(m.spatial.bn(m.spatial.conv(pooled)))
        torch.testing.assert_close(m(x), x1 * ms)

    def test_residual_form(self):
        m = CBAM(8, residual=True).eval()
        plain = CBAM(8).eval()
        plain.load_state_dict(m.state_dict())
        x = torch.randn(2, 8, 4, 4)
        torch.testing.assert_close(m(x), x + plain(x))
        torch.testing.assert_close(m.last_attention, plain.last_attention)

    def test_even_kernel_rejected(self):
        with pytest.raises(ValueError, match="kernel_size"):
            SpatialAttention(6)


class TestNormalize:
    def test_mean_maps_to_zero_and_not_in_state_dict(self):
        norm = Normalize()
        x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
        torch.testing.assert_close(norm(x), torch.zeros(2, 3, 4, 4))
        x = x + torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(norm(x), torch.ones(2, 3, 4, 4))
        assert norm.state_dict() == {}


class TestSmallCNN:
    @pytest.mark.parametrize("cbam", [True, False])
    @pytest.mark.parametrize("size", [32, 48])
    def test_forward_shapes(self, cbam, size):
        net = SmallCNN(7, width=8, cbam=cbam)
        assert net(_x(2, size)).shape == (2, 7)
        assert len(net.cbam_modules) == (3 if cbam else 0)
        if cbam:
            maps = [m.last_attention for m in net.cbam_modules]
            assert [tuple(a.shape) for a in maps] == [(2, 1, size // 2, size // 2),
                                                       (2, 1, size // 4, size // 4),
                                                       (2, 1, size // 8, size // 8)]
            assert all(float(a.min()) >= 0 and float(a.max()) <= 1 for a in maps)

    def test_cbam_stages(self):
        net = SmallCNN(4, width=8, cbam_stages=(3,))
        net(_x(2, 32))
        assert len(net.cbam_modules) == 1
        assert net.cbam_modules[0].last_attention.shape == (2, 1, 4, 4)
        with pytest.raises(ValueError, match="cbam_stages"):
            SmallCNN(4, cbam_stages=(4,))

    def test_single_image(self):
        net = SmallCNN(3, width=8).eval()
        assert net(_x(1, 16)).shape == (1, 3)

    def test_normalisation_inside(self):
        net = SmallCNN(3, width=8).eval()
        seen = []
        h = net.stem.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
        try:
            x = _x(2, 16)
            net(x)
        finally:
            h.remove()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(seen[0], (x - mean) / std)

    def test_cam_layer_is_last_conv_block(self):
        net = SmallCNN(3, width=8)
        out = []
        h = net.cam_layer.register_forward_hook(lambda m, i, o: out.append(o))
        try:
            net(_x(2, 32))
        finally:
            h.remove()
        assert out[0].shape == (2, 32, 4, 4)
        assert any(isinstance(m, nn.Conv2d) for m in net.cam_layer.modules())

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="num_classes"):
            SmallCNN(1)
        with pytest.raises(ValueError, match="dropout"):
            SmallCNN(3, dropout=1.0)
        with pytest.raises(ValueError, match="depths"):
            SmallCNN(3, depths=(1, 1))


class TestMCDropout:
    def test_passes_differ_only_under_mc_dropout(self):
        net = SmallCNN(5, width=8, dropout=0.5)
        net(_x(4, 16))  # one train-mode pass so BN running stats are not trivial
        net.eval()
        x = _x(4, 16)
        with torch.no_grad():
            torch.testing.assert_close(net(x), net(x))
            with mc_dropout(net):
                a, b = net(x), net(x)
                assert net.dropout.training
                assert not net.stem[1].training  # BN stays in eval
            assert not torch.allclose(a, b)

    def test_restores_modes(self):
        net = SmallCNN(5, width=8)
        net.train()
        net.stem.eval()  # a mixed state must come back exactly
        before = [m.training for m in net.modules()]
        with mc_dropout(net):
            pass
        assert [m.training for m in net.modules()] == before

    def test_restores_modes_on_error(self):
        net = SmallCNN(5, width=8).eval()
        before = [m.training for m in net.modules()]
        with pytest.raises(RuntimeError, match="boom"):
            with mc_dropout(net):
                raise RuntimeError("boom")
        assert [m.training for m in net.modules()] == before

    def test_needs_dropout(self):
        with pytest.raises(ValueError, match="dropout"):
            with mc_dropout(SmallCNN(5, width=8, dropout=0.0)):
                pass


class TestResNet:
    @pytest.mark.parametrize("cbam", [False, True])
    def test_resnet18_forward(self, cbam):
        net = resnet("resnet18", 6, cbam=cbam)
        assert net(_x(2, 32)).shape == (2, 6)
        assert len(net.cbam_modules) == (8 if cbam else 0)
        if cbam:
            a = net.cbam_modules[-1].last_attention
            assert a.shape == (2, 1, 1, 1)
            assert net.cbam_modules[0].last_attention.shape == (2, 1, 8, 8)
        assert net.cam_layer is net.layer4

    def test_small_stem_keeps_resolution(self):
        net = resnet("resnet18", 4, cbam=True, stem="small")
        net(_x(2, 32))
        assert net.cbam_modules[-1].last_attention.shape == (2, 1, 4, 4)

    def test_mc_dropout(self):
        net = resnet("resnet18", 4, dropout=0.5).eval()
        x = _x(2, 32)
        with torch.no_grad(), mc_dropout(net):
            assert not torch.allclose(net(x), net(x))

    def test_torchvision_state_dict_loads(self, tmp_path):
        tv = torchvision.models.resnet18(weights=None, num_classes=5)
        path = tmp_path / "tv.pth"
        torch.save(tv.state_dict(), path)
        net = resnet("resnet18", 5, weights_path=path).eval()
        x = _x(2, 32)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(net(x), tv.eval()((x - mean) / std))

    def test_cbam_keeps_torchvision_keys(self, tmp_path):
        tv_keys = set(torchvision.models.resnet18(weights=None, num_classes=5).state_dict())
        own = set(resnet("resnet18", 5, cbam=True).state_dict())
        assert tv_keys <= own
        assert all(".cbam." in k for k in own - tv_keys)
        path = tmp_path / "tv.pth"
        torch.save(torchvision.models.resnet18(weights=None, num_classes=5).state_dict(), path)
        report = load_weights(resnet("resnet18", 5, cbam=True), path, strict=False)
        assert report.missing and all(".cbam." in k for k in report.missing)
        assert not report.unexpected and not report.mismatched

    def test_round_trip_with_cbam(self, tmp_path):
        a = resnet("resnet18", 3, cbam=True)
        path = tmp_path / "a.pt"
        torch.save({"state_dict": a.state_dict(), "note": "checkpoint-style"}, path)
        b = resnet("resnet18", 3, cbam=True, weights_path=path)
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v)

    def test_module_prefix_stripped(self, tmp_path):
        a = resnet("resnet18", 3)
        path = tmp_path / "ddp.pt"
        torch.save({f"module.{k}": v for k, v in a.state_dict().items()}, path)
        b = resnet("resnet18", 3, weights_path=path)
        torch.testing.assert_close(b.fc.weight, a.fc.weight)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="nope.pt"):
            resnet("resnet18", 3, weights_path=tmp_path / "nope.pt")

    def test_mismatched_keys_named(self, tmp_path):
        path = tmp_path / "plain.pt"
        torch.save(resnet("resnet18", 3).state_dict(), path)
        with pytest.raises(ValueError, match=r"plain\.pt.*missing keys.*layer1\.0\.bn2\.cbam"):
            resnet("resnet18", 3, cbam=True, weights_path=path)

    def test_shape_mismatch_named_and_non_strict(self, tmp_path):
        path = tmp_path / "ten.pt"
        torch.save(resnet("resnet18", 10).state_dict(), path)
        with pytest.raises(ValueError, match=r"ten\.pt.*fc\.weight: file \(10, 512\) vs model \(3, 512\)"):
            resnet("resnet18", 3, weights_path=path)
        net = resnet("resnet18", 3)
        report = load_weights(net, path, strict=False)
        assert report.mismatched == ["fc.weight", "fc.bias"] and not report.missing

    def test_not_a_state_dict(self, tmp_path):
        path = tmp_path / "junk.pt"
        path.write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="junk.pt"):
            resnet("resnet18", 3, weights_path=path)

    def test_bad_name(self):
        with pytest.raises(ValueError, match="resnet18"):
            resnet("resnet19", 3)


class TestInChannels:
    """fidobook's models declare the channels they take; the public entry points check images against it."""

    @pytest.mark.parametrize("build", [lambda: SmallCNN(3, width=4), lambda: resnet("resnet18", num_classes=3),
                                       lambda: SegNet(width=4, levels=1)], ids=["SmallCNN", "ResNet", "SegNet"])
    def test_declared_channels_match_the_first_conv(self, build):
        from fidobook._checks import check_model_inputs

        model = build()
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert model.in_channels == first.in_channels == 3
        with pytest.raises(ValueError, match=r"images: expected 3 channels, got 1"):
            check_model_inputs(torch.rand(1, 1, 16, 16), model)
        x = torch.rand(1, 3, 16, 16)
        assert check_model_inputs(x, model) is x
