import math

import pytest
import torch
from torch import nn

from fidobook.data import PART_NAMES
from fidobook.metrics import (
    box_iou,
    box_masks,
    curve_auc,
    deletion_curve,
    insertion_curve,
    map_iou,
    mass_outside,
    normalize_maps,
    normalized_tv,
    part_union_masks,
    pointing_game,
    relevance_mass,
    relevance_rank,
    score_maps,
)

NAN = float("nan")


def t(rows, dtype=torch.float32):
    """One map or mask (H, W) from nested lists, as a batch of one (1, H, W)."""
    return torch.tensor(rows, dtype=dtype)[None]


def close(got, expected):
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(got.double(), expected, equal_nan=True, atol=1e-12), (got, expected)


def at(i, j, h=4, w=4, value=1.0):
    m = torch.zeros(1, h, w)
    m[0, i, j] = value
    return m


class TestRelevanceMass:
    def test_hand_computed(self):
        maps = t([[1.0, -2.0], [3.0, 0.0]])  # positive part 1, 0, 3, 0: total 4
        close(relevance_mass(maps, t([[True, True], [False, False]], torch.bool)), [0.25])
        close(relevance_mass(maps, t([[0, 0], [255, 0]], torch.uint8)), [0.75])  # 0/255 masks
        close(relevance_mass(maps[:, None], t([[0.0, 1.0], [1.0, 1.0]])[:, None]), [0.75])  # channel

    def test_no_mass_is_nan_and_empty_mask_is_zero(self):
        masks = torch.tensor([[[True, False]], [[False, False]]])
        maps = torch.tensor([[[-1.0, 0.0]], [[2.0, 1.0]]])
        close(relevance_mass(maps, masks), [NAN, 0.0])


class TestRelevanceRank:
    def test_hand_computed_3x3(self):
        maps = t([[9.0, 1, 1], [1, 5, 1], [1, 1, 7]])  # top 3: pixels 0, 8, 4
        diagonal = t([[1, 0, 0], [0, 1, 0], [0, 0, 1]], torch.bool)
        first_row = t([[1, 1, 1], [0, 0, 0], [0, 0, 0]], torch.bool)
        close(relevance_rank(maps, diagonal), [1.0])
        close(relevance_rank(maps, first_row), [1 / 3])

    def test_ties_keep_row_major_order(self):
        # a constant map ranks pixels in reading order: the top 2 are pixels 0 and 1
        close(relevance_rank(torch.ones(1, 2, 3), t([[0, 1, 0], [0, 0, 1]], torch.bool)), [0.5])
        maps = t([[0.0, 2.0], [2.0, 1.0]])  # pixels 1 and 2 tie: pixel 1 ranks first
        close(relevance_rank(maps, t([[0, 0], [1, 0]], torch.bool)), [0.0])
        close(relevance_rank(maps, t([[0, 1], [0, 0]], torch.bool)), [1.0])

    def test_empty_mask_is_nan(self):
        close(relevance_rank(torch.rand(2, 3, 3), torch.zeros(2, 3, 3, dtype=torch.bool)), [NAN, NAN])


class TestPointingGame:
    def test_hit_miss_and_tolerance_4x4(self):
        maps = at(1, 2)
        assert pointing_game(maps, at(1, 2).bool()).tolist() == [True]
        far = at(3, 3).bool()  # Chebyshev distance max(2, 1) = 2 from the maximum
        assert pointing_game(maps, far).tolist() == [False]
        assert pointing_game(maps, far, tolerance=1).tolist() == [False]
        assert pointing_game(maps, far, tolerance=2).tolist() == [True]
        assert pointing_game(maps, at(3, 0).bool(), tolerance=2).tolist() == [True]  # diagonal

    def test_ties_take_the_first_maximum_in_row_major_order(self):
        maps = at(0, 3) + at(2, 0)
        assert pointing_game(maps, at(0, 3).bool()).tolist() == [True]
        assert pointing_game(maps, at(2, 0).bool()).tolist() == [False]

    def test_empty_mask_is_a_miss_and_batch(self):
        maps = torch.cat([at(0, 0), at(3, 3)])
        masks = torch.cat([at(0, 0), torch.zeros(1, 4, 4)]).bool()
        assert pointing_game(maps, masks).tolist() == [True, False]

    def test_bad_tolerance(self):
        with pytest.raises(ValueError, match="tolerance"):
            pointing_game(at(0, 0), at(0, 0).bool(), tolerance=-1)


class TestPointingGameTolerance:
    def test_the_tolerance_is_a_chebyshev_square_not_a_disc(self):
        mask = torch.zeros(1, 5, 5, dtype=torch.bool)
        mask[0, 3, 3] = True  # diagonal neighbour of the point (2, 2): Chebyshev 1, Euclid √2
        maps = at(2, 2, 5, 5)
        assert pointing_game(maps, mask, tolerance=1).tolist() == [True]
        # TorchRay's disc (Euclidean distance < tolerance) would need tolerance 2 = ⌊1·√2⌋ + 1
        assert pointing_game(maps, mask, tolerance=0).tolist() == [False]

    def test_matches_a_slow_reference(self):
        g = torch.Generator().manual_seed(5)
        maps = torch.rand(8, 7, 6, generator=g)
        masks = torch.rand(8, 7, 6, generator=g) < 0.08
        for tol in (0, 1, 2):
            got = pointing_game(maps, masks, tolerance=tol)
            for n in range(8):
                p = int(maps[n].flatten().argmax())
                py, px = divmod(p, 6)
                hit = any(bool(masks[n, y, x]) and max(abs(y - py), abs(x - px)) <= tol
                          for y in range(7) for x in range(6))
                assert bool(got[n]) == hit


class TestMapIou:
    def test_hand_computed(self):
        maps = t([[0.6, 0.5], [0.4, 0.9]])  # >= 0.5: pixels 0, 1, 3
        close(map_iou(maps, t([[0, 1], [1, 0]], torch.bool)), [0.25])  # {1} / {0, 1, 2, 3}
        close(map_iou(maps, t([[0, 1], [1, 0]], torch.bool), threshold=0.55), [0.0])  # {0, 3} vs {1, 2}

    def test_both_empty_is_nan_one_empty_is_zero(self):
        maps = torch.full((2, 2, 2), 0.1)
        masks = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)]).bool()
        close(map_iou(maps, masks), [NAN, 0.0])
        close(map_iou(torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)), [0.0])  # full vs empty

    def test_threshold_in_unit_interval(self):
        maps, masks = torch.rand(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)
        for bad in (-0.1, 1.5, NAN):
            with pytest.raises(ValueError, match=r"threshold: expected a number in \[0, 1\]"):
                map_iou(maps, masks, threshold=bad)
        with pytest.raises(TypeError, match="threshold"):
            map_iou(maps, masks, threshold=True)
        close(map_iou(maps, masks, threshold=0), [1.0])  # every pixel is salient


class TestBoxes:
    def test_box_masks_take_pixel_centres(self):
        got = box_masks(torch.tensor([[0.5, 0.0, 2.0, 1.0]]), 2, 3)
        assert got.tolist() == [[[True, True, False], [False, False, False]]]

    def test_box_iou_hand_computed_4x4(self):
        maps = at(1, 1) + at(2, 2)  # box of the salient pixels: x 1..3, y 1..3 (area 4)
        close(box_iou(maps, torch.tensor([[2.0, 2.0, 4.0, 4.0]])), [1 / 7])  # inter 1, union 7
        close(box_iou(maps, torch.tensor([[1.0, 1.0, 3.0, 3.0]])), [1.0])

    def test_box_iou_has_no_smoothing_and_no_minimum_box(self):
        # one salient pixel on a 40x40 map: its own 1x1 box (the SCD reference code would smooth
        # the map and grow the box to at least 32 px, giving an IoU of about 1/1024 here)
        maps = at(5, 7, 40, 40)
        close(box_iou(maps, torch.tensor([[7.0, 5.0, 8.0, 6.0]])), [1.0])
        maps[0, 5, 8] = 0.5  # exactly the threshold counts: the box grows by one pixel
        close(box_iou(maps, torch.tensor([[7.0, 5.0, 8.0, 6.0]])), [0.5])

    def test_box_iou_without_salient_pixels(self):
        maps = torch.zeros(2, 4, 4)
        close(box_iou(maps, torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])), [0.0, NAN])

    def test_box_iou_matches_torchvision_on_random_maps(self):
        from torchvision.ops import box_iou as tv_box_iou

        g = torch.Generator().manual_seed(0)
        maps = torch.rand((6, 9, 7), generator=g) ** 4
        boxes = torch.tensor([[0.0, 1.0, 5.0, 8.0]]).repeat(6, 1)
        got = box_iou(maps, boxes)
        for n in range(6):
            ys, xs = torch.nonzero(maps[n] >= 0.5, as_tuple=True)
            pred = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            assert math.isclose(float(got[n]), float(tv_box_iou(pred, boxes[n : n + 1])), rel_tol=1e-6)

    def test_bad_boxes(self):
        with pytest.raises(ValueError, match=r"boxes: expected shape \(1, 4\)"):
            box_iou(at(0, 0), torch.zeros(2, 4))
        with pytest.raises(ValueError, match="boxes: expected xyxy boxes"):
            box_iou(at(0, 0), torch.tensor([[3.0, 0.0, 1.0, 2.0]]))
        with pytest.raises(TypeError, match="boxes: expected a floating-point"):
            box_masks(torch.zeros(1, 4, dtype=torch.long), 2, 2)


class TestMassOutside:
    def test_mass_and_thresholded_share(self):
        maps = t([[0.9, 0.8], [0.1, 0.7]])
        mask = t([[1, 0], [0, 0]], torch.bool)
        close(mass_outside(maps, mask), [1 - 0.9 / 2.5])
        close(mass_outside(maps, mask, threshold=0.5), [2 / 3])  # salient 0, 1, 3; outside 1, 3

    def test_no_salient_pixel_is_nan(self):
        close(mass_outside(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), threshold=0.5), [NAN])

    def test_divides_by_the_salient_pixels_not_by_the_pixels_outside(self):
        # 4x4 image, box = the left half (8 px); salient: 2 px inside and 1 px outside the box.
        maps = at(0, 0) + at(1, 1) + at(0, 3)
        box = box_masks(torch.tensor([[0.0, 0.0, 2.0, 4.0]]), 4, 4)
        close(mass_outside(maps, box, threshold=0.5), [1 / 3])  # FP / (TP + FP): 1 of 3 salient
        # fido-pytorch's "fdr" would be FP / (pixels outside the box) = 1 / 8: not this number
        assert float(mass_outside(maps, box, threshold=0.5)) != pytest.approx(1 / 8)


class TestNormalizeAndTv:
    def test_normalize(self):
        got = normalize_maps(torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.full((2, 2), 7.0)]))
        assert torch.equal(got, torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_all_equal_maps_become_zeros(self, dtype):
        for value in (0.0, -3.0, 1e30):
            got = normalize_maps(torch.full((2, 1, 3, 3), value, dtype=dtype))
            assert got.dtype == dtype and torch.equal(got, torch.zeros(2, 3, 3, dtype=dtype))

    def test_min_zero_max_one_and_an_overflowing_range(self):
        g = torch.Generator().manual_seed(0)
        got = normalize_maps(torch.randn(4, 5, 6, generator=g) * 1e3)
        assert torch.equal(got.amin((1, 2)), torch.zeros(4)) and torch.equal(got.amax((1, 2)), torch.ones(4))
        big = torch.tensor([[[-3e38, 0.0], [3e38, 1.5e38]]])  # max − min overflows float32
        torch.testing.assert_close(normalize_maps(big), torch.tensor([[[0.0, 0.5], [1.0, 0.75]]]))

    def test_normalized_tv_hand_computed(self):
        close(normalized_tv(t([[0.0, 1.0], [1.0, 1.0]])), [2 / 4])  # TV 2 over 4 pairs
        checker = (torch.arange(9).view(3, 3) % 2).float()[None]  # every one of 12 pairs differs
        close(normalized_tv(checker), [1.0])
        close(normalized_tv(torch.ones(1, 1, 5)), [0.0])  # a 1x5 map has 4 pairs

    def test_normalized_tv_needs_two_pixels(self):
        with pytest.raises(ValueError, match="maps: expected at least two pixels"):
            normalized_tv(torch.ones(1, 1, 1))


class TestPartUnion:
    def test_union_of_chosen_labels(self):
        assert [PART_NAMES[i] for i in (3, 4, 5, 6, 7)] == ["beak", "eye", "foot", "tail", "wing"]
        labels = torch.tensor([[[0, 3, 4], [5, 6, 7]]] * 2, dtype=torch.uint8)
        parts = torch.tensor([[True, False, False, False, True], [False] * 5])  # beak + wing; none
        got = part_union_masks(labels, parts)
        assert got.tolist() == [[[False, True, False], [False, False, True]], [[False] * 3] * 2]

    def test_bad_input(self):
        labels = torch.zeros(1, 2, 2, dtype=torch.uint8)
        with pytest.raises(ValueError, match=r"parts: expected shape \(1, 5\)"):
            part_union_masks(labels, torch.zeros(1, 4, dtype=torch.bool))
        with pytest.raises(TypeError, match="parts: expected a BoolTensor"):
            part_union_masks(labels, torch.zeros(1, 5))
        with pytest.raises(TypeError, match="part_masks: expected an integer tensor"):
            part_union_masks(labels.float(), torch.zeros(1, 5, dtype=torch.bool))


class SumModel(nn.Module):
    """logits (s, 0) with s the sum of the pixels: p(class 0) = σ(s)."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.forwards = []
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        self.forwards.append((x.shape[0], self.training, self.scale.requires_grad, torch.is_grad_enabled()))
        s = self.scale * x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


IMAGE = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])  # (1, 1, 2, 2)
RANK_MAP = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # pixels ranked 0, 1, 2, 3


class TestDeletionInsertion:
    def test_deletion_hand_computed(self):
        got = deletion_curve(SumModel(), IMAGE, RANK_MAP, 0, steps=4, infill="zeros")
        close(got, [torch.sigmoid(torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0])).tolist()])
        got = deletion_curve(SumModel(), IMAGE, RANK_MAP, [0], steps=2, infill="mean")
        # the mean infill is 0.25 everywhere: sums 1.0, 0.25 + 0.25 + 0.7, 1.0
        close(got, [torch.sigmoid(torch.tensor([1.0, 1.2, 1.0])).tolist()])

    def test_insertion_hand_computed(self):
        got = insertion_curve(SumModel(), IMAGE, RANK_MAP, 0, steps=4, infill="zeros")
        close(got, [torch.sigmoid(torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0])).tolist()])
        other = insertion_curve(SumModel(), IMAGE, RANK_MAP, 1, steps=4, infill="zeros")
        close(other, (1 - got).tolist())

    def test_floor_of_the_pixel_count_and_ties(self):
        # steps = 3 on 4 pixels: floor(k * 4 / 3) = 0, 1, 2, 4 pixels; a constant map removes in
        # reading order
        got = deletion_curve(SumModel(), IMAGE, torch.zeros(1, 2, 2), 0, steps=3, infill="zeros")
        close(got, [torch.sigmoid(torch.tensor([1.0, 0.9, 0.7, 0.0])).tolist()])

    def test_batched_over_images_and_steps_and_chunked(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand((3, 1, 5, 4), generator=g)
        maps = torch.rand((3, 5, 4), generator=g)
        model = SumModel()
        model.train()
        full = deletion_curve(model, images, maps, [0, 1, 0], steps=5)
        assert model.forwards[-1][0] == 3 * 6  # every composite in one pass
        assert all(not training and not grad_p and not grad for _, training, grad_p, grad in model.forwards)
        assert model.training and model.scale.requires_grad  # restored
        for max_batch in (1, 4, 7):
            model.forwards.clear()
            part = deletion_curve(model, images, maps, [0, 1, 0], steps=5, max_batch=max_batch)
            assert torch.allclose(full, part, atol=1e-6)
            assert max(b for b, *_ in model.forwards) <= max_batch
        for i in range(3):  # each image's curve as if alone
            alone = deletion_curve(model, images[i : i + 1], maps[i : i + 1], [[0, 1, 0][i]], steps=5)
            assert torch.allclose(full[i], alone[0], atol=1e-6)

    def test_targets_none_is_the_prediction(self):
        got = deletion_curve(SumModel(), IMAGE, RANK_MAP, None, steps=4, infill="zeros")
        assert float(got[0, 0]) > 0.5  # σ(1) for class 0, the prediction

    def test_bad_input(self):
        m = SumModel()
        with pytest.raises(ValueError, match="infill: expected a deterministic infill"):
            deletion_curve(m, IMAGE, RANK_MAP, 0, infill="uniform")
        with pytest.raises(ValueError, match="infill: expected one of"):
            insertion_curve(m, IMAGE, RANK_MAP, 0, infill="inpaint")
        with pytest.raises(ValueError, match=r"maps: expected shape \(1, 2, 2\)"):
            deletion_curve(m, IMAGE, torch.zeros(1, 3, 3), 0)
        with pytest.raises(ValueError, match=r"targets: expected class indices in \[0, 1\]"):
            deletion_curve(m, IMAGE, RANK_MAP, 2)
        with pytest.raises(ValueError, match="steps"):
            deletion_curve(m, IMAGE, RANK_MAP, 0, steps=0)
        with pytest.raises(ValueError, match="max_batch"):
            deletion_curve(m, IMAGE, RANK_MAP, 0, max_batch=0)
        with pytest.raises(ValueError, match="images: expected 1 channels"):
            deletion_curve(m, IMAGE.expand(1, 3, 2, 2), RANK_MAP, 0)
        with pytest.raises(TypeError, match="model"):
            deletion_curve(lambda x: x, IMAGE, RANK_MAP, 0)

    def test_images_are_checked_against_the_model(self):
        m = SumModel()
        with pytest.raises(TypeError, match=r"images: expected dtype torch.float32 \(the model's"):
            deletion_curve(m, IMAGE.double(), RANK_MAP, 0)
        with pytest.raises(TypeError, match="images: expected dtype"):
            insertion_curve(m, IMAGE.double(), RANK_MAP, 0)
        with pytest.raises(ValueError, match="images: expected 1 channels"):
            insertion_curve(m, IMAGE.expand(1, 2, 2, 2), RANK_MAP, 0)
        with pytest.raises(ValueError, match=r"images: expected values in \[0, 1\]"):
            deletion_curve(m, IMAGE * 5, RANK_MAP, 0)
        # images that require grad are detached (documented cast), not an autograd error
        graph = IMAGE.clone().requires_grad_()
        got = deletion_curve(m, graph, RANK_MAP, 0, steps=4, infill="zeros")
        assert not got.requires_grad
        close(got, deletion_curve(m, IMAGE, RANK_MAP, 0, steps=4, infill="zeros").tolist())


class TestCurveAuc:
    def test_trapezoid(self):
        close(curve_auc(torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.5, 1.0]])), [0.5, 1.0, 0.5])
        close(curve_auc(torch.tensor([[0.2, 0.6]])), [0.4])

    def test_bad_curve(self):
        with pytest.raises(ValueError, match="curve: expected shape"):
            curve_auc(torch.ones(3))
        with pytest.raises(ValueError, match="curve: expected shape"):
            curve_auc(torch.ones(2, 1))
        with pytest.raises(ValueError, match="curve: expected finite"):
            curve_auc(torch.tensor([[0.0, NAN]]))


class TestScoreMaps:
    def test_keys_values_and_nans(self):
        maps = torch.stack([at(1, 1)[0] + 0.5 * at(1, 2)[0], at(0, 0)[0]])  # (2, 4, 4)
        objects = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        objects[:, 0, 1:3, 1:3] = 255
        labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
        labels[:, 1, 1] = PART_NAMES.index("beak")
        labels[:, 1, 2] = PART_NAMES.index("wing")
        parts = torch.tensor([[True, False, False, False, False], [False] * 5])
        boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]])
        got = score_maps(maps, objects=objects, part_masks=labels, parts=parts, boxes=boxes)
        assert sorted(got) == sorted(["mass_object", "rank_object", "pointing_object", "iou_object",
                                      "mass_parts", "rank_parts", "pointing_parts", "box_iou",
                                      "outside", "tv"])
        close(got["mass_object"], [1.0, 0.0])
        close(got["pointing_object"], [1.0, 0.0])
        close(got["iou_object"], [2 / 4, 0.0])  # image 0: {(1,1), (1,2)} inside the 2x2 object
        close(got["mass_parts"], [1 / 1.5, NAN])  # the beak only; image 1 has no part chosen
        close(got["rank_parts"], [1.0, NAN])
        close(got["pointing_parts"], [1.0, NAN])
        close(got["box_iou"], [2 / 4, 0.0])  # image 1: box (0, 0, 1, 1) is outside
        close(got["outside"], [0.0, 1.0])
        close(got["tv"], normalized_tv(maps).tolist())
        assert all(v.shape == (2,) and v.dtype == torch.float64 for v in got.values())

    def test_rejects_maps_outside_the_unit_interval(self):
        objects = torch.ones(1, 3, 3, dtype=torch.bool)
        for maps in (torch.full((1, 3, 3), 1.5), torch.full((1, 3, 3), -0.5)):
            with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\].*normalize_maps"):
                score_maps(maps, objects=objects)
            with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\]"):
                score_maps(maps)  # even for the TV alone: every threshold would be meaningless
        with pytest.raises(ValueError, match="threshold"):
            score_maps(torch.rand(1, 3, 3), objects=objects, threshold=2.0)
        score_maps(torch.tensor([[[0.0, 1.0, 0.5]]]), objects=torch.ones(1, 1, 3, dtype=torch.bool))  # edges ok

    def test_rejects_part_labels_where_a_mask_is_expected(self):
        labels = torch.zeros(1, 3, 3, dtype=torch.uint8)
        labels[0, 1, 1] = PART_NAMES.index("wing")
        labels[0, 0, 0] = PART_NAMES.index("beak")
        with pytest.raises(ValueError, match="objects: expected a binary integer mask.*part_union_masks"):
            score_maps(torch.rand(1, 3, 3), objects=labels)
        with pytest.raises(ValueError, match="objects: expected a binary integer mask"):
            score_maps(torch.rand(1, 3, 3), objects=labels.long()[:, None])
        grey = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)  # a resized 0/255 mask
        with pytest.raises(ValueError, match="objects: .*grey levels need a threshold"):
            score_maps(torch.rand(1, 1, 3), objects=grey)

    def test_only_tv_without_ground_truth(self):
        assert list(score_maps(torch.rand(2, 3, 3))) == ["tv"]

    def test_parts_need_part_masks(self):
        with pytest.raises(ValueError, match="part_masks: expected it together with parts"):
            score_maps(torch.rand(1, 3, 3), parts=torch.ones(1, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="parts: expected it together with part_masks"):
            score_maps(torch.rand(1, 3, 3), part_masks=torch.zeros(1, 3, 3, dtype=torch.uint8))


class TestBadMapsAndMasks:
    @pytest.mark.parametrize("fn", [relevance_mass, relevance_rank, pointing_game, map_iou, mass_outside])
    def test_errors_name_the_argument(self, fn):
        maps, masks = torch.rand(2, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"maps, masks: expected the same \(N, H, W\) shape"):
            fn(maps, masks[:1])
        with pytest.raises(ValueError, match="maps: expected finite values"):
            fn(torch.full((2, 3, 3), NAN), masks)
        with pytest.raises(TypeError, match="maps: expected a floating-point tensor"):
            fn(torch.ones(2, 3, 3, dtype=torch.long), masks)
        with pytest.raises(ValueError, match=r"maps: expected shape \(N, H, W\)"):
            fn(torch.rand(3, 3), masks)
        with pytest.raises(ValueError, match=r"masks: expected float masks in \[0, 1\]"):
            fn(maps, torch.full((2, 3, 3), 2.0))
        with pytest.raises(ValueError, match="masks: expected finite"):
            fn(maps, torch.full((2, 3, 3), NAN))
        with pytest.raises(TypeError, match="masks: expected a torch.Tensor"):
            fn(maps, [[1]])


class TestThresholdedScoresNeedUnitMaps:
    @pytest.mark.parametrize("fn", [map_iou, lambda m, k: mass_outside(m, k, threshold=0.5),
                                    lambda m, k: box_iou(m, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))])
    def test_maps_outside_the_unit_interval_are_rejected(self, fn):
        masks = torch.ones(1, 2, 2, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\]"):
            fn(torch.tensor([[[0.0, 2.0], [0.5, 0.1]]]), masks)
        with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\]"):
            fn(torch.tensor([[[0.0, -0.1], [0.5, 0.1]]]), masks)

    def test_scale_free_scores_take_any_map(self):
        signed = t([[-2.0, 3.0], [1.0, -1.0]])
        mask = t([[0, 1], [0, 0]], torch.bool)
        close(relevance_mass(signed, mask), [3 / 4])  # the positive part
        close(relevance_rank(signed, mask), [1.0])
        assert pointing_game(signed * 100, mask).tolist() == [True]
        close(mass_outside(signed, mask), [1 / 4])  # the mass form has no threshold


class TestOneRulePerConcept:
    """The same input gives the same answer whichever module is asked (fidobook._maps)."""

    FORMS = (lambda m: m, lambda m: m.to(torch.uint8), lambda m: m.to(torch.uint8) * 255,
             lambda m: m.long(), lambda m: m.float(), lambda m: 0.5 + 0.5 * m.float(),
             lambda m: m[:, None])

    @pytest.mark.parametrize("form", range(7))
    def test_one_mask_conversion(self, form):
        from fidobook import enhance, metrics, overmap
        from fidobook.models import as_masks

        base = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(form)) < 0.5
        m = self.FORMS[form](base)
        want = base if form != 5 else torch.ones_like(base)  # 0.5 is in: >= 0.5
        assert torch.equal(metrics._as_masks(m), want)
        assert torch.equal(enhance._masks(m), want)
        assert torch.equal(as_masks(m), want)
        # overmap: the mass of a uniform map inside the mask is the mask's share of the image
        got = overmap.overlap_mass(torch.ones(3, 5, 4), m)
        torch.testing.assert_close(got, want.flatten(1).double().mean(1))

    def test_one_iou_and_the_overmap_policy_on_top(self):
        from fidobook.models import mask_iou
        from fidobook.overmap import overlap_iou

        maps = torch.tensor([[[0.9, 0.1], [0.7, 0.2]],   # region {0, 2}
                             [[0.1, 0.1], [0.1, 0.1]],   # empty region
                             [[0.1, 0.2], [0.3, 0.4]],   # empty region
                             [[1.0, 1.0], [1.0, 1.0]]])  # full region
        masks = torch.tensor([[[True, True], [False, False]],
                              [[False, False], [False, False]],  # empty / empty
                              [[True, True], [True, True]],      # empty / full
                              [[False, False], [False, False]]])  # full / empty
        expected = [1 / 3, NAN, 0.0, 0.0]
        close(map_iou(maps, masks), expected)
        close(mask_iou(maps >= 0.5, masks), expected)
        # Over-MAP: the same IoU, with "undefined → 0" (and "not available → 0") on top
        close(overlap_iou(maps, masks, normalize=False), [1 / 3, 0.0, 0.0, 0.0])
        close(overlap_iou(maps, masks, normalize=False, available=torch.tensor([False, True, True, True])),
              [0.0, 0.0, 0.0, 0.0])

    def test_one_normalisation(self):
        from fidobook.overmap import overlap_iou

        g = torch.Generator().manual_seed(1)
        maps = torch.cat([torch.rand(3, 6, 6, generator=g) * 7, torch.full((1, 6, 6), 2.0)])
        seg = torch.rand(4, 6, 6, generator=g) < 0.5
        torch.testing.assert_close(overlap_iou(maps, seg), overlap_iou(normalize_maps(maps), seg, normalize=False))
        close(overlap_iou(maps, seg)[3:], [0.0])  # a constant map: zeros, an empty region

    def test_one_blur(self):
        from fidobook import _maps
        from fidobook.enhance import _gaussian
        from fidobook.infill import blur_sigma, infill

        x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(2))
        sigma = blur_sigma(20)
        assert torch.equal(infill(x, "blur"), _gaussian(x, sigma).clamp(0, 1))
        assert torch.equal(_gaussian(x, sigma), _maps.gaussian_blur(x, sigma))
