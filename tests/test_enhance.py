"""Tests of fidobook.enhance: mask regions, boxes, crops and the enhance pipeline."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fidobook.enhance import (
    BLUR_AT_224,
    MIN_SIZE_AT_224,
    PAD_AT_224,
    SIGMA_AT_224,
    blend_with_blur,
    box_from_mask,
    crop_boxes,
    default_settings,
    enhance,
    expand_boxes,
    mask_boxes,
    mcnemar_p,
    paired_accuracy,
    random_boxes_like,
    region_masks,
)


def _images(n=2, c=3, h=16, w=16, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


class TestDefaultSettings:
    def test_reference_values_at_224(self):
        assert default_settings(224) == {"sigma": SIGMA_AT_224, "pad": PAD_AT_224,
                                         "min_size": MIN_SIZE_AT_224, "blur": BLUR_AT_224}
        assert (SIGMA_AT_224, PAD_AT_224, MIN_SIZE_AT_224, BLUR_AT_224) == (3.0, 10.0, 64.0, 10.0)

    def test_scaled_to_the_size(self):
        d = default_settings(112)
        assert d == {"sigma": 1.5, "pad": 5.0, "min_size": 32.0, "blur": 5.0}

    def test_rejects_bad_size(self):
        with pytest.raises(ValueError, match="size"):
            default_settings(0)


class TestBoxFromMask:
    def test_rectangle(self):
        m = torch.zeros(1, 6, 8, dtype=torch.bool)
        m[0, 1:4, 2:7] = True  # rows 1..3, columns 2..6
        assert box_from_mask(m).tolist() == [[2.0, 1.0, 7.0, 4.0]]

    def test_single_pixel_and_scattered_pixels(self):
        m = torch.zeros(2, 5, 5, dtype=torch.bool)
        m[0, 3, 1] = True
        m[1, 0, 4] = m[1, 4, 0] = True
        assert box_from_mask(m).tolist() == [[1.0, 3.0, 2.0, 4.0], [0.0, 0.0, 5.0, 5.0]]

    def test_empty_mask_is_the_whole_image(self):
        m = torch.zeros(2, 4, 7, dtype=torch.bool)
        m[1, 2, 3] = True
        assert box_from_mask(m).tolist() == [[0.0, 0.0, 7.0, 4.0], [3.0, 2.0, 4.0, 3.0]]

    @pytest.mark.parametrize("convert", [
        lambda m: m.to(torch.uint8) * 255,  # 0/255 like the data's segmentations
        lambda m: m.to(torch.uint8),  # 0/1
        lambda m: m.float() * 0.8,  # float, thresholded at 0.5
        lambda m: m[:, None],  # a channel of 1
    ])
    def test_accepts_the_mask_conventions(self, convert):
        m = torch.zeros(1, 6, 6, dtype=torch.bool)
        m[0, 2:5, 1:3] = True
        assert box_from_mask(convert(m)).tolist() == [[1.0, 2.0, 3.0, 5.0]]

    def test_the_one_mask_rule_at_its_edges(self):
        m = torch.zeros(1, 4, 4)
        m[0, 1, 2] = 0.5  # exactly the threshold: in (>= 0.5, as everywhere in the package)
        assert box_from_mask(m).tolist() == [[2.0, 1.0, 3.0, 2.0]]
        labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
        labels[0, 1, 1], labels[0, 2, 2] = 3, 7  # part labels are not a mask
        with pytest.raises(ValueError, match="masks: expected a binary integer mask"):
            box_from_mask(labels)
        with pytest.raises(ValueError, match=r"masks: expected float masks in \[0, 1\]"):
            box_from_mask(m * 3)

    def test_rejects_bad_shapes(self):
        with pytest.raises(ValueError, match="masks"):
            box_from_mask(torch.zeros(4, 4, dtype=torch.bool))
        with pytest.raises(TypeError, match="masks"):
            box_from_mask([[0, 1]])


class TestRegionMasks:
    def test_no_smoothing_is_a_plain_threshold(self):
        maps = torch.tensor([[[0.2, 0.5], [0.7, 0.49]]])
        assert region_masks(maps, 0.5, sigma=0).tolist() == [[[False, True], [True, False]]]

    def test_smoothing_keeps_a_constant_map(self):
        maps = torch.full((2, 1, 12, 12), 0.6)
        assert region_masks(maps).all()
        assert not region_masks(maps, 0.7).any()

    def test_smoothing_spreads_a_peak(self):
        maps = torch.zeros(1, 21, 21)
        maps[0, 10, 10] = 1.0
        sharp = region_masks(maps, 0.01, sigma=0)
        smooth = region_masks(maps, 0.01, sigma=1.5)
        assert sharp.sum() == 1 and smooth.sum() > 9 and smooth[0, 10, 10]

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match="threshold"):
            region_masks(torch.zeros(1, 4, 4), float("nan"))
        with pytest.raises(ValueError, match="sigma"):
            region_masks(torch.zeros(1, 4, 4), sigma=-1.0)
        with pytest.raises(TypeError, match="maps"):
            region_masks(torch.zeros(1, 4, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="maps"):
            region_masks(torch.full((1, 4, 4), float("nan")))


class TestExpandBoxes:
    def test_pad_is_split_between_the_two_ends(self):
        b = torch.tensor([[10.0, 10.0, 20.0, 16.0]])
        out = expand_boxes(b, 40, 40, pad=4, square=False)
        assert out.tolist() == [[8.0, 8.0, 22.0, 18.0]]

    def test_min_size_and_square_around_the_centre(self):
        b = torch.tensor([[10.0, 10.0, 20.0, 14.0]])  # 10 x 4, centre (15, 12)
        assert expand_boxes(b, 40, 40, min_size=6, square=False).tolist() == [[10.0, 9.0, 20.0, 15.0]]
        assert expand_boxes(b, 40, 40, square=True).tolist() == [[10.0, 7.0, 20.0, 17.0]]

    def test_shifted_inside_the_image_keeping_the_size(self):
        b = torch.tensor([[0.0, 30.0, 4.0, 40.0], [36.0, 0.0, 40.0, 2.0]])
        out = expand_boxes(b, 40, 40, min_size=10)
        assert out.tolist() == [[0.0, 30.0, 10.0, 40.0], [30.0, 0.0, 40.0, 10.0]]

    def test_never_larger_than_the_image(self):
        b = torch.tensor([[5.0, 5.0, 15.0, 10.0]])
        assert expand_boxes(b, 12, 20, min_size=30).tolist() == [[0.0, 0.0, 20.0, 12.0]]

    def test_rejects_bad_boxes(self):
        with pytest.raises(ValueError, match="boxes"):
            expand_boxes(torch.zeros(2, 3), 8, 8)
        with pytest.raises(ValueError, match="boxes"):
            expand_boxes(torch.tensor([[4.0, 0.0, 2.0, 3.0]]), 8, 8)
        with pytest.raises(ValueError, match="pad"):
            expand_boxes(torch.zeros(1, 4), 8, 8, pad=-1)
        with pytest.raises(ValueError, match="height"):
            expand_boxes(torch.zeros(1, 4), 0, 8)


class TestMaskBoxes:
    def test_hand_made_map_without_extras_is_the_tight_box(self):
        maps = torch.zeros(1, 1, 32, 32)
        maps[0, 0, 8:12, 20:30] = 0.9
        out = mask_boxes(maps, sigma=0, pad=0, min_size=0, square=False)
        assert out.tolist() == [[20.0, 8.0, 30.0, 12.0]]

    def test_defaults_scale_with_the_size(self):
        maps = torch.zeros(1, 224, 224)
        maps[0, 100:120, 100:110] = 1.0  # 10 wide, 20 high: well above 0.5 after σ = 3
        (x0, y0, x1, y1), = mask_boxes(maps).tolist()
        assert x1 - x0 == y1 - y0 == 64.0  # below the 64-px minimum: grown to it, squared
        assert (x0 + x1) / 2 == pytest.approx(105.0) and (y0 + y1) / 2 == pytest.approx(110.0)

    def test_empty_region_is_the_whole_image(self):
        maps = torch.full((2, 20, 30), 0.1)
        assert mask_boxes(maps).tolist() == [[0.0, 0.0, 30.0, 20.0]] * 2
        assert mask_boxes(maps, square=False).tolist() == [[0.0, 0.0, 30.0, 20.0]] * 2


class TestCropBoxes:
    def test_same_size_integer_box_is_the_slice(self):
        x = _images(2, 3, 16, 16)
        boxes = torch.tensor([[3.0, 5.0, 11.0, 13.0], [0.0, 8.0, 8.0, 16.0]])
        out = crop_boxes(x, boxes, 8)
        torch.testing.assert_close(out[0], x[0, :, 5:13, 3:11])
        torch.testing.assert_close(out[1], x[1, :, 8:16, 0:8])

    def test_twice_the_size_is_the_area_average(self):
        x = _images(1, 3, 16, 16)
        out = crop_boxes(x, torch.tensor([[2.0, 4.0, 14.0, 16.0]]), 6)
        expected = F.avg_pool2d(x[:, :, 4:16, 2:14], 2)  # slice, then resize by area
        torch.testing.assert_close(out, expected)

    def test_whole_image_at_its_size_is_the_image(self):
        x = _images(2, 3, 12, 12)
        boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0]] * 2)
        torch.testing.assert_close(crop_boxes(x, boxes, 12), x)

    def test_source_boxes_are_scaled(self):
        hires = _images(1, 3, 32, 32, seed=3)
        low = F.avg_pool2d(hires, 2)  # (1, 3, 16, 16)
        box = torch.tensor([[2.0, 3.0, 10.0, 11.0]])
        out = crop_boxes(low, box, 16, source=hires)
        torch.testing.assert_close(out, hires[:, :, 6:22, 4:20])  # the box x 2, same size

    def test_rectangular_output(self):
        out = crop_boxes(_images(1), torch.tensor([[0.0, 0.0, 8.0, 4.0]]), (4, 8))
        assert out.shape == (1, 3, 4, 8)

    def test_rejects_bad_arguments(self):
        x = _images(2)
        ok = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
        with pytest.raises(ValueError, match="boxes"):
            crop_boxes(x, ok[:1], 8)
        with pytest.raises(ValueError, match="size"):
            crop_boxes(x, ok, 0)
        with pytest.raises(ValueError, match="source"):
            crop_boxes(x, ok, 8, source=_images(1, 3, 32, 32))
        with pytest.raises(TypeError, match="images"):
            crop_boxes(x.to(torch.uint8), ok, 8)


class TestRandomBoxesLike:
    def test_same_sizes_inside_the_image(self):
        boxes = torch.tensor([[0.0, 0.0, 10.0, 6.0], [5.0, 5.0, 25.0, 25.0], [0.0, 0.0, 30.0, 20.0]])
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            out = random_boxes_like(boxes, 20, 30, g)
            torch.testing.assert_close(out[:, 2:] - out[:, :2], boxes[:, 2:] - boxes[:, :2])
            assert (out[:, :2] >= 0).all() and (out[:, 2] <= 30).all() and (out[:, 3] <= 20).all()

    def test_seeded_and_random(self):
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 8)
        a = random_boxes_like(boxes, 32, 32, torch.Generator().manual_seed(1))
        b = random_boxes_like(boxes, 32, 32, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        assert len({tuple(r) for r in a.tolist()}) == 8

    def test_too_large_is_cut_to_the_image(self):
        # (a seeded draw: with the global RNG, y1 − y0 == 5 held or not by float rounding,
        # depending on which tests ran before)
        for seed in range(5):
            out = random_boxes_like(torch.tensor([[0.0, 0.0, 50.0, 5.0]]), 10, 20,
                                    torch.Generator().manual_seed(seed))
            assert out[0, 0] == 0 and out[0, 2] == 20
            assert float(out[0, 3] - out[0, 1]) == pytest.approx(5, abs=1e-5)
            assert 0 <= out[0, 1] and out[0, 3] <= 10

    def test_rejects_bad_generator(self):
        with pytest.raises(TypeError, match="generator"):
            random_boxes_like(torch.zeros(1, 4), 8, 8, generator=0)


class TestBlend:
    def test_ones_keep_and_zeros_blur(self):
        x = _images(2, 3, 16, 16)
        torch.testing.assert_close(blend_with_blur(x, torch.ones(2, 16, 16)), x)
        blurred = blend_with_blur(x, torch.zeros(2, 16, 16), sigma=2.0)
        assert (blurred - x).abs().max() > 0.1
        torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.05, rtol=0)

    def test_a_constant_image_is_unchanged(self):
        x = torch.full((1, 3, 16, 16), 0.3)
        torch.testing.assert_close(blend_with_blur(x, torch.rand(1, 16, 16)), x)

    def test_rejects_mismatched_maps(self):
        with pytest.raises(ValueError, match="maps"):
            blend_with_blur(_images(2), torch.ones(3, 16, 16))


class TestEnhance:
    def test_hand_made_mask_crops_its_box(self):
        x = _images(1, 3, 32, 32)
        maps = torch.zeros(1, 32, 32)
        maps[0, 4:20, 10:26] = 1.0  # a 16 x 16 square
        out, boxes = enhance(x, maps, sigma=0, pad=0, min_size=0, blur=False, size=16,
                             return_boxes=True)
        assert boxes.tolist() == [[10.0, 4.0, 26.0, 20.0]]
        torch.testing.assert_close(out, x[:, :, 4:20, 10:26])

    def test_blur_keeps_the_region_and_blurs_the_rest(self):
        x = _images(1, 3, 32, 32)
        maps = torch.zeros(1, 32, 32)
        maps[0, 8:24, 8:24] = 1.0
        full = enhance(x, maps, sigma=0, pad=32, blur=True)  # box = the whole image
        torch.testing.assert_close(full[:, :, 8:24, 8:24], x[:, :, 8:24, 8:24])
        assert (full[:, :, :4] - x[:, :, :4]).abs().max() > 0.1

    def test_empty_map_keeps_the_whole_image(self):
        x = _images(2, 3, 24, 24)
        torch.testing.assert_close(enhance(x, torch.zeros(2, 24, 24), blur=False), x)

    def test_source_gives_the_high_resolution_crop(self):
        hires = _images(1, 3, 64, 64, seed=5)
        low = F.avg_pool2d(hires, 2)
        maps = torch.zeros(1, 32, 32)
        maps[0, 4:20, 10:26] = 1.0
        out = enhance(low, maps, sigma=0, pad=0, min_size=0, blur=False, size=32, source=hires)
        torch.testing.assert_close(out, hires[:, :, 8:40, 20:52])

    def test_output_in_range_and_shape(self):
        x = _images(3, 3, 20, 20)
        out = enhance(x, torch.rand(3, 1, 20, 20), size=12)
        assert out.shape == (3, 3, 12, 12) and out.min() >= 0 and out.max() <= 1

    def test_rejects_bad_arguments(self):
        x = _images(2, 3, 16, 16)
        with pytest.raises(ValueError, match="maps"):
            enhance(x, torch.zeros(2, 8, 8))
        with pytest.raises(ValueError, match="images"):
            enhance(x * 2, torch.zeros(2, 16, 16))
        with pytest.raises(ValueError, match="size"):
            enhance(x, torch.zeros(2, 16, 16), size=0)
        with pytest.raises(ValueError, match="source"):
            enhance(x, torch.zeros(2, 16, 16), source=x[:1])


class TestPairedAccuracy:
    def test_mcnemar_hand_computed(self):
        assert mcnemar_p(0, 0) == 1.0
        assert mcnemar_p(3, 3) == 1.0
        assert mcnemar_p(5, 0) == pytest.approx(2 / 32)  # 2 · 0.5⁵
        assert mcnemar_p(1, 4) == pytest.approx(2 * 6 / 32)  # 2 · (1 + 5) / 2⁵
        assert mcnemar_p(0, 2000) < 1e-300  # no overflow for many pairs

    def test_counts_and_accuracies(self):
        before = torch.tensor([True, True, False, False, False, True])
        after = torch.tensor([True, False, True, True, False, True])
        r = paired_accuracy(before, after, n_boot=200, generator=0)
        assert (r.fixed, r.broken, r.n) == (2, 1, 6)
        assert r.before == pytest.approx(0.5) and r.after == pytest.approx(4 / 6)
        assert r.difference == pytest.approx(1 / 6)
        assert r.low <= r.difference <= r.high
        assert r.p_value == pytest.approx(mcnemar_p(2, 1))

    def test_identical_classifications_have_a_zero_interval(self):
        c = torch.tensor([True, False, True])
        r = paired_accuracy(c, c, n_boot=50)
        assert (r.difference, r.low, r.high, r.p_value) == (0.0, 0.0, 0.0, 1.0)

    def test_seeded(self):
        a = torch.rand(50, generator=torch.Generator().manual_seed(0)) > 0.5
        b = torch.rand(50, generator=torch.Generator().manual_seed(1)) > 0.5
        assert paired_accuracy(a, b, generator=3) == paired_accuracy(a, b, generator=3)

    def test_rejects_bad_arguments(self):
        c = torch.tensor([True, False])
        with pytest.raises(TypeError, match="before"):
            paired_accuracy(c.long(), c)
        with pytest.raises(ValueError, match="before, after"):
            paired_accuracy(c, c[:1])
        with pytest.raises(ValueError, match="level"):
            paired_accuracy(c, c, level=1.5)
        with pytest.raises(TypeError, match="generator"):
            paired_accuracy(c, c, generator="x")
        with pytest.raises(ValueError, match="fixed"):
            mcnemar_p(-1, 2)


class TestGaussian:
    def test_is_the_infills_blur(self):
        from fidobook.enhance import _gaussian
        from fidobook.infill import blur_sigma, infill

        x = torch.rand((2, 3, 32, 28), generator=torch.Generator().manual_seed(4))
        assert torch.equal(infill(x, "blur"), _gaussian(x, blur_sigma(28)).clamp(0, 1))

    def test_closer_to_float64_than_the_convolution(self):
        from torchvision.transforms.v2 import functional as TF

        from fidobook.enhance import _gaussian
        x = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
        sigma, k = 2.86, 19
        exact = _gaussian(x.double(), sigma)
        conv = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        ours = (_gaussian(x, sigma).double() - exact).abs().max()
        assert ours < 5e-7 and ours < (conv.double() - exact).abs().max()

    def test_degenerate_sizes_and_sigma(self):
        from fidobook.enhance import _gaussian
        x = torch.rand((1, 1, 2, 9))
        assert _gaussian(x, 3.0) is x  # a 2-pixel side: no 3-tap kernel fits
        assert _gaussian(x, 0.0) is x
        y = torch.rand((1, 1, 3, 3))
        torch.testing.assert_close(_gaussian(torch.full((1, 1, 3, 3), 0.25), 50.0),
                                   torch.full((1, 1, 3, 3), 0.25))  # kernel cut to 3 taps
        assert not torch.equal(_gaussian(y, 50.0), y)

    @pytest.mark.parametrize("shape, sigma", [((2, 3, 16, 20), 1.5), ((1, 1, 9, 9), 4.0),
                                              ((1, 3, 64, 64), 2.86)])
    def test_equals_torchvision_gaussian_blur(self, shape, sigma):
        import math

        from torchvision.transforms.v2 import functional as TF

        from fidobook.enhance import _gaussian
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        h, w = shape[-2:]
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(h, w) - 1) // 2) + 1)
        expected = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        torch.testing.assert_close(_gaussian(x, sigma), expected, atol=1e-5, rtol=0)
