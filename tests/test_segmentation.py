"""Tests of fidobook.models.segnet (SegNet, its cached training), fidobook.segmentation
(segment, guided_segmentation, the not-available rule), prepare_segmenter and the profiles'
segmenter configuration."""
import dataclasses
import warnings

import pytest
import torch
from torch import nn

from fidobook import workflow
from fidobook.models import segnet
from fidobook.models import SegConfig, SegNet, TrainConfig, as_masks, mask_iou, train_segmenter
from fidobook.profiles import PROFILES, Profile, get_profile
from fidobook.segmentation import Segmentation, guided_segmentation, segment


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def _squares(n, size=16, generator=None):
    """Toy data: a bright square of random size and place on a dark noisy background.

    Returns (images uint8 (n, 3, size, size), masks bool (n, size, size)).
    """
    g = generator or torch.Generator().manual_seed(1)
    side = torch.randint(size // 4, size // 2 + 1, (n,), generator=g)
    y0 = (torch.rand(n, generator=g) * (size - side)).long()
    x0 = (torch.rand(n, generator=g) * (size - side)).long()
    r = torch.arange(size)
    rows = (r >= y0[:, None]) & (r < (y0 + side)[:, None])  # (n, size)
    cols = (r >= x0[:, None]) & (r < (x0 + side)[:, None])
    masks = rows[:, :, None] & cols[:, None, :]
    images = 0.2 * torch.rand(n, 3, size, size, generator=g) + 0.7 * masks[:, None].float()
    return (images * 255).round().to(torch.uint8), masks


@pytest.fixture(scope="module")
def toy():
    return _squares(96), _squares(32, generator=torch.Generator().manual_seed(2))


TINY = SegConfig(width=8, levels=2, epochs=4, batch_size=8, lr=1e-2)


class TestSegNet:
    @pytest.mark.parametrize("levels", [1, 3])
    @pytest.mark.parametrize("hw", [(32, 32), (37, 45)])
    def test_shapes(self, levels, hw):
        net = SegNet(width=8, levels=levels)
        assert net(torch.rand(2, 3, *hw)).shape == (2, 1, *hw)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="width"):
            SegNet(width=1)
        with pytest.raises(ValueError, match="levels"):
            SegNet(levels=0)


class TestMasksAndIoU:
    """The package's one mask rule and one IoU, through their public wrappers in models.segnet."""

    def test_as_masks_forms(self):
        expected = torch.tensor([[[True, False], [False, True]]])
        for m in (expected, expected.to(torch.uint8), 255 * expected.to(torch.uint8),
                  expected.long(), expected.float() * 0.8 + 0.1, expected[:, None]):
            assert torch.equal(as_masks(m), expected)
        with pytest.raises(ValueError, match="masks"):
            as_masks(torch.full((1, 2, 2), 2.0))
        with pytest.raises(ValueError, match="masks"):
            as_masks(torch.zeros(2, 2))

    def test_uint8_0_255_and_0_1_are_the_same_mask(self):
        flags = torch.randint(0, 2, (3, 5, 5), generator=torch.Generator().manual_seed(0))
        assert torch.equal(as_masks(flags.to(torch.uint8)), as_masks(flags.to(torch.uint8) * 255))
        assert torch.equal(as_masks(flags.to(torch.uint8)), flags.bool())

    def test_float_at_exactly_the_threshold_is_in(self):
        got = as_masks(torch.tensor([[[0.5, 0.49999997, 0.5000001, 0.0, 1.0]]]))
        assert got.tolist() == [[[True, False, True, False, True]]]
        # the same >= as every map threshold: a 0.5 map pixel counts in map_iou too
        from fidobook.metrics import map_iou
        assert map_iou(torch.tensor([[[0.5]]]), torch.tensor([[[True]]])).tolist() == [1.0]

    @pytest.mark.parametrize("values, shown", [([0, 3, 7], "3, 7"), ([0, 128, 255], "128"),
                                               ([0, -1, 1], "-1"), ([0, 256, 1], "256")])
    @pytest.mark.parametrize("dtype", [torch.int16, torch.int64])
    def test_other_integers_are_an_error_not_a_guess(self, values, shown, dtype):
        m = torch.tensor([[values]], dtype=dtype)
        with pytest.raises(ValueError, match=rf"masks: expected a binary integer mask .*\({shown}\)"):
            as_masks(m)
        if min(values) >= 0 and max(values) <= 255:  # uint8 too: part labels and grey levels
            with pytest.raises(ValueError, match="part_union_masks"):
                as_masks(m.to(torch.uint8))

    def test_int8_minus_one_is_not_255(self):
        with pytest.raises(ValueError, match=r"\(-1\)"):
            as_masks(torch.tensor([[[0, -1]]], dtype=torch.int8))  # −1 is 255 wrapped in int8
        assert as_masks(torch.tensor([[[0, 1]]], dtype=torch.int8)).tolist() == [[[False, True]]]

    def test_complex_and_non_finite_floats(self):
        with pytest.raises(TypeError, match="masks: expected a bool, integer"):
            as_masks(torch.zeros(1, 2, 2, dtype=torch.complex64))
        with pytest.raises(ValueError, match="masks: expected finite"):
            as_masks(torch.full((1, 2, 2), float("nan")))

    def test_iou_by_hand(self):
        a = torch.zeros(4, 4, 4, dtype=torch.bool)
        b = torch.zeros(4, 4, 4, dtype=torch.bool)
        a[0, :2, :2] = True  # 4 px
        b[0, :2, :3] = True  # 6 px, 4 shared → 4/6
        a[1, 0, 0] = True  # disjoint → 0
        b[1, 3, 3] = True
        # image 2: both empty → NaN (undefined); image 3: empty vs full → 0
        b[3] = True
        got = mask_iou(a, b)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, torch.tensor([4 / 6, 0.0, float("nan"), 0.0], dtype=torch.float64),
                                   equal_nan=True)
        torch.testing.assert_close(mask_iou(b, a), got, equal_nan=True)  # symmetric
        with pytest.raises(ValueError, match="target"):
            mask_iou(a, b[:2])
        with pytest.raises(ValueError, match="pred: expected a binary integer mask"):
            mask_iou(a.long() * 3, b)

    def test_iou_matches_a_slow_reference(self):
        g = torch.Generator().manual_seed(3)
        a = torch.rand(5, 6, 7, generator=g) < 0.4
        b = torch.rand(5, 6, 7, generator=g) < 0.4
        got = mask_iou(a, b.to(torch.uint8) * 255)
        for i in range(5):
            inter = sum(bool(a[i, y, x] and b[i, y, x]) for y in range(6) for x in range(7))
            union = sum(bool(a[i, y, x] or b[i, y, x]) for y in range(6) for x in range(7))
            assert float(got[i]) == pytest.approx(inter / union, abs=1e-15)


def _case():
    """probs: 1 on a 4x4 square (rows/cols 2–5), 0.3 on rows 2–5 × cols 7–9; cams: 1 on cols ≥ 4,
    0.16 elsewhere (sqrt = 0.4 < 0.5)."""
    probs = torch.zeros(1, 10, 10)
    probs[0, 2:6, 2:6] = 1.0
    probs[0, 2:6, 7:10] = 0.3
    cams = torch.full((1, 10, 10), 0.16)
    cams[0, :, 4:] = 1.0
    return probs, cams


class TestGuidedSegmentation:
    def test_known_answer_no_pad(self):
        probs, cams = _case()
        out = guided_segmentation(probs, cams, pad=0.0)
        expected = torch.zeros(1, 10, 10, dtype=torch.bool)
        expected[0, 2:6, 4:6] = True  # box (2, 2, 6, 6); sqrt(1 · 1) = 1 on cols 4–5, 0.4 on 2–3
        # cols 7–9 score sqrt(0.3) = 0.55 ≥ 0.5 but lie outside the box
        assert isinstance(out, Segmentation)
        assert torch.equal(out.masks, expected) and out.available.tolist() == [True]
        score = torch.zeros(1, 10, 10)
        score[0, 2:6, 2:4] = 0.4
        score[0, 2:6, 4:6] = 1.0
        torch.testing.assert_close(out.probs, score)

    def test_known_answer_padded(self):
        probs, cams = _case()
        # pad 0.5 of the 4 px box = 2 px each side: box (0, 0, 8, 8) now reaches col 7.
        out = guided_segmentation(probs, cams, pad=0.5)
        expected = torch.zeros(1, 10, 10, dtype=torch.bool)
        expected[0, 2:6, 4:6] = True
        expected[0, 2:6, 7] = True  # sqrt(0.3 · 1) = 0.548 ≥ 0.5
        assert torch.equal(out.masks, expected)
        # A pad that would leave the image is clipped (no wrap-around, no error).
        out = guided_segmentation(probs, cams, pad=10.0)
        expected[0, 2:6, 7:10] = True
        assert torch.equal(out.masks, expected)

    def test_threshold_moves_both_steps(self):
        probs, cams = _case()
        # threshold 0.2: the 0.3 region joins the box (2, 2, 10, 6); scores: 0.4 (cols 2–3),
        # 1 (cols 4–5), sqrt(0.3) on 7–9; col 6 has p = 0 → out.
        out = guided_segmentation(probs, cams, threshold=0.2, pad=0.0)
        expected = torch.zeros(1, 10, 10, dtype=torch.bool)
        expected[0, 2:6, 2:6] = True
        expected[0, 2:6, 7:10] = True
        assert torch.equal(out.masks, expected)

    def test_not_available(self):
        probs, cams = _case()
        empty_seg = torch.zeros_like(probs)  # no segmentation → no box
        no_cam = torch.zeros_like(cams)  # CAM empty → empty refinement
        out = guided_segmentation(torch.cat([probs, empty_seg, probs, probs]),
                                  torch.cat([cams, cams, no_cam, cams]), pad=0.0)
        assert out.available.tolist() == [True, False, False, True]
        assert not out.masks[1:3].any()
        # min_area: the refined mask has 8 px = 8 % of the image.
        out = guided_segmentation(probs, cams, pad=0.0, min_area=0.08)
        assert out.available.tolist() == [True]
        out = guided_segmentation(probs, cams, pad=0.0, min_area=0.09)
        assert out.available.tolist() == [False] and not out.masks.any()

    def test_detector_boxes_and_batch(self):
        probs, cams = _case()
        boxes = torch.tensor([[3.0, 0.0, 6.0, 2.0]])  # cols 3–5, rows 0–1
        out = guided_segmentation(None, cams, boxes=boxes, pad=0.0)
        expected = torch.zeros(1, 10, 10, dtype=torch.bool)
        expected[0, 0:2, 4:6] = True  # p = 1 in the box; CAM ≥ 0.25 on cols ≥ 4
        assert torch.equal(out.masks, expected)
        # Batched results equal the single ones (everything is per image).
        both = guided_segmentation(torch.cat([probs, probs]), torch.cat([cams, cams.flip(-1)]),
                                   pad=0.1)
        one = guided_segmentation(probs, cams.flip(-1), pad=0.1)
        assert torch.equal(both.masks[1:], one.masks)
        torch.testing.assert_close(both.probs[1:], one.probs)

    def test_errors(self):
        probs, cams = _case()
        with pytest.raises(ValueError, match="cams"):
            guided_segmentation(probs, 2 * cams)
        with pytest.raises(ValueError, match="cams"):
            guided_segmentation(probs, cams[:, :5])
        with pytest.raises(TypeError, match="probs"):
            guided_segmentation(probs.bool(), cams)
        with pytest.raises(ValueError, match="probs.*boxes"):
            guided_segmentation(None, cams)
        with pytest.raises(ValueError, match="boxes"):
            guided_segmentation(None, cams, boxes=torch.zeros(2, 4))
        with pytest.raises(ValueError, match="threshold"):
            guided_segmentation(probs, cams, threshold=1.5)
        with pytest.raises(ValueError, match="min_area"):
            guided_segmentation(probs, cams, min_area=-0.1)
        with pytest.raises(ValueError, match="pad"):
            guided_segmentation(probs, cams, pad=-1.0)


class RedSegmenter(nn.Module):
    """Known-answer segmenter: object where the red channel exceeds 0.5 (logit ±10)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)  # identity in eval mode (fresh running stats)

    def forward(self, x):
        return self.bn(20 * (x[:, :1] - 0.5))


class TestSegment:
    def test_known_answer_and_not_available(self):
        x = torch.zeros(3, 3, 10, 10)
        x[0, 0, 2:7, 3:8] = 1.0  # 25 px: 25 %
        x[2, 0, 0, 0] = 1.0  # 1 px: 1 %
        model = RedSegmenter().train()
        out = segment(model, x, min_area=0.02)
        expected = torch.zeros(3, 10, 10, dtype=torch.bool)
        expected[0, 2:7, 3:8] = True
        assert torch.equal(out.masks, expected)
        assert out.available.tolist() == [True, False, False]  # empty; below min_area
        torch.testing.assert_close(out.probs, torch.sigmoid(20 * (x[:, 0] - 0.5)))
        assert all(m.training for m in model.modules())  # modes restored
        assert segment(model, x, min_area=0.01).available.tolist() == [True, False, True]
        same = segment(model, x, min_area=0.02, batch_size=2)
        assert torch.equal(same.masks, out.masks)

    def test_errors(self):
        x = torch.rand(2, 3, 8, 8)
        with pytest.raises(ValueError, match="model"):
            segment(nn.Conv2d(3, 2, 1), x)
        with pytest.raises(ValueError, match="images"):
            segment(RedSegmenter(), x * 3)
        with pytest.raises(ValueError, match="threshold"):
            segment(RedSegmenter(), x, threshold=2.0)


class TestTrainSegmenter:
    def test_learns_toy_task(self, toy):
        (x, m), (xt, mt) = toy
        model, history = train_segmenter(TINY, (x, m), (xt, mt))
        assert history["epoch"] == list(range(1, TINY.epochs + 1))
        assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
        assert history["test_iou"][-1] > 0.8
        assert not model.training
        seg = segment(model, xt.float() / 255)
        torch.testing.assert_close(float(mask_iou(seg.masks, mt).mean()), history["test_iou"][-1],
                                   atol=0.02, rtol=0)

    def test_deterministic_and_rng_untouched(self, toy):
        (x, m), _ = toy
        cfg = dataclasses.replace(TINY, epochs=1)
        state = torch.get_rng_state()
        a, ha = train_segmenter(cfg, {"images": x, "segmentations": 255 * m[:, None].to(torch.uint8)})
        assert torch.equal(torch.get_rng_state(), state)
        b, hb = train_segmenter(cfg, (x, m))
        assert ha["train_loss"] == hb["train_loss"]
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
        assert ha["test_iou"][0] != ha["test_iou"][0]  # NaN without a test set

    def test_bad_inputs(self, toy):
        (x, m), _ = toy
        with pytest.raises(TypeError, match="config"):
            train_segmenter(TrainConfig(), (x, m))
        with pytest.raises(ValueError, match="train masks"):
            train_segmenter(TINY, (x, m[:5]))
        with pytest.raises(ValueError, match="train images"):
            train_segmenter(dataclasses.replace(TINY, image_size=32), (x, m))
        with pytest.raises(ValueError, match="train"):
            train_segmenter(TINY, {"images": x})
        with pytest.raises(ValueError, match="lr"):
            SegConfig(lr=0)
        with pytest.raises(TypeError, match="hflip"):
            SegConfig(hflip=1)


class TestSegmenterCache:
    @pytest.fixture
    def fit_counter(self, monkeypatch):
        calls = []
        real = segnet._fit

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(segnet, "_fit", counting)
        return calls

    def test_hit_without_retraining(self, toy, tmp_path, fit_counter):
        (x, m), test = toy
        cfg = dataclasses.replace(TINY, epochs=1)
        a, ha = train_segmenter(cfg, (x, m), test, cache_dir=tmp_path)
        files = list(tmp_path.glob("segnet-*.pt"))
        assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))
        b, hb = train_segmenter(cfg, (x, m), test, cache_dir=tmp_path)
        assert len(fit_counter) == 1 and ha == hb
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
        # Another configuration or other data: another key, another training run.
        train_segmenter(dataclasses.replace(cfg, seed=1), (x, m), test, cache_dir=tmp_path)
        train_segmenter(cfg, (x, m.flip(-1)), test, cache_dir=tmp_path)
        assert len(fit_counter) == 3 and len(list(tmp_path.glob("segnet-*.pt"))) == 3

    def test_damaged_checkpoint_is_retrained(self, toy, tmp_path, fit_counter):
        (x, m), _ = toy
        cfg = dataclasses.replace(TINY, epochs=1)
        train_segmenter(cfg, (x, m), cache_dir=tmp_path)
        path = next(tmp_path.glob("segnet-*.pt"))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="damaged"):
            train_segmenter(cfg, (x, m), cache_dir=tmp_path)
        assert len(fit_counter) == 2
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            train_segmenter(cfg, (x, m), cache_dir=tmp_path)  # the rewritten file loads cleanly
        assert len(fit_counter) == 2

    def test_wrong_key_and_kind_rejected(self, toy, tmp_path):
        (x, m), _ = toy
        cfg = dataclasses.replace(TINY, epochs=1)
        model, history = train_segmenter(cfg, (x, m))
        segnet.save_segmenter(tmp_path / "a.pt", model, cfg, history, key="abc")
        with pytest.raises(ValueError, match="cache key"):
            segnet.load_segmenter(tmp_path / "a.pt", key="xyz")
        loaded, config, _ = segnet.load_segmenter(tmp_path / "a.pt", key="abc")
        assert config == cfg and not loaded.training
        torch.save({"format": 1}, tmp_path / "b.pt")
        with pytest.raises(ValueError, match="segnet"):
            segnet.load_segmenter(tmp_path / "b.pt")
        with pytest.raises(FileNotFoundError, match="path"):
            segnet.load_segmenter(tmp_path / "none.pt")


class TestPrepareSegmenter:
    def test_trains_once_then_loads(self, tmp_path, monkeypatch):
        profile = Profile(name="tiny", n_classes=3, train_per_class=6, test_per_class=2,
                          image_size=24,
                          classifier=TrainConfig(arch="small_cnn", width=8, epochs=1, image_size=24),
                          fido_iterations=1, fido_samples=1, mask_size=4,
                          segmenter=SegConfig(width=4, levels=1, epochs=1, batch_size=6,
                                              image_size=24))
        model, history = workflow.prepare_segmenter(profile, tmp_path)
        assert isinstance(model, SegNet) and len(history["test_iou"]) == 1
        assert len(list((tmp_path / "models").glob("segnet-*.pt"))) == 1

        def fail(*args, **kwargs):
            raise AssertionError("decoded the data set instead of loading the cache")

        monkeypatch.setattr(workflow, "load_tensors", fail)
        again, h2 = workflow.prepare_segmenter(profile, tmp_path)
        assert h2 == history
        for k, v in model.state_dict().items():
            assert torch.equal(v, again.state_dict()[k]), k


class TestProfiles:
    @pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
    def test_each_profile_has_a_segmenter_for_its_size(self, name):
        p = PROFILES[name]
        assert isinstance(p.segmenter, SegConfig) and p.segmenter.image_size == p.image_size

    def test_overrides(self):
        p = get_profile("cpu", segmenter={"epochs": 1})
        assert p.segmenter.epochs == 1 and p.segmenter.width == PROFILES["cpu"].segmenter.width
        with pytest.raises(ValueError, match=r"SegConfig fields.*unknown \['epoch'\]"):
            get_profile("cpu", segmenter={"epoch": 1})
        with pytest.raises(TypeError, match="segmenter"):
            get_profile("cpu", segmenter=3)


class TestObjectSegmentations:
    """fidobook.segmentation.object_segmentations: the kinds Over-MAP scores against."""

    def _inputs(self):
        x = torch.zeros(3, 3, 10, 10)
        x[0, 0, 2:7, 3:8] = 1.0  # 25 px
        x[1, 0, 1:9, 1:9] = 1.0  # 64 px
        cams = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(0))
        objects = x[:, 0] > 0.5
        return x, cams, objects

    def test_each_kind_is_its_function(self):
        from fidobook.segmentation import SEGMENTATION_KINDS, object_segmentations

        x, cams, objects = self._inputs()
        out = object_segmentations(RedSegmenter(), x, cams, kinds=SEGMENTATION_KINDS,
                                   objects=objects.to(torch.uint8) * 255)
        assert list(out) == ["guided", "plain", "true"]
        plain = segment(RedSegmenter(), x)
        guided = guided_segmentation(plain.probs, cams)
        for got, want in ((out["plain"], plain), (out["guided"], guided)):
            assert isinstance(got, Segmentation)
            for a, b in zip(got, want):
                assert torch.equal(a, b)
        truth = out["true"]
        assert torch.equal(truth.masks, objects) and truth.available.tolist() == [True] * 3
        assert truth.probs.dtype == x.dtype and torch.equal(truth.probs, objects.float())
        only_truth = object_segmentations(None, x, kinds=("true",), objects=objects)
        assert list(only_truth) == ["true"]  # no segmenter, no CAM needed
        assert list(object_segmentations(RedSegmenter(), x, cams, kinds=["plain", "guided"])) == [
            "plain", "guided"]

    def test_errors(self):
        from fidobook.segmentation import object_segmentations

        x, cams, objects = self._inputs()
        with pytest.raises(ValueError, match="segmenter"):
            object_segmentations(None, x, cams)
        with pytest.raises(ValueError, match="cams"):
            object_segmentations(RedSegmenter(), x, kinds=("guided",))
        with pytest.raises(ValueError, match="objects"):
            object_segmentations(RedSegmenter(), x, kinds=("true",))
        with pytest.raises(ValueError, match="objects: expected shape"):
            object_segmentations(None, x, kinds=("true",), objects=objects[:2])
        with pytest.raises(ValueError, match="objects: expected a binary"):
            object_segmentations(None, x, kinds=("true",), objects=objects.long() * 3)
        with pytest.raises(ValueError, match="kinds"):
            object_segmentations(RedSegmenter(), x, cams, kinds=("box",))
        with pytest.raises(ValueError, match="kinds"):
            object_segmentations(RedSegmenter(), x, cams, kinds=("plain", "plain"))
        with pytest.raises(ValueError, match="kinds"):
            object_segmentations(RedSegmenter(), x, cams, kinds=())
        with pytest.raises(TypeError, match="kinds"):
            object_segmentations(RedSegmenter(), x, cams, kinds="plain")
        with pytest.raises(ValueError, match="images"):
            object_segmentations(RedSegmenter(), x * 2, cams)
