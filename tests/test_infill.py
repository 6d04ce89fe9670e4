import math

import pytest
import torch

from fidobook.infill import INFILLS, RANDOM_INFILLS, blur_sigma, infill


def images(n=2, size=32):
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(0))


class TestInfill:
    @pytest.mark.parametrize("name", sorted(INFILLS))
    def test_shape_dtype_range(self, name):
        x = images()
        out = infill(x, name, generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0

    @pytest.mark.parametrize("name", sorted(RANDOM_INFILLS))
    def test_random_infills_follow_the_generator(self, name):
        x = images()
        a = infill(x, name, generator=torch.Generator().manual_seed(1))
        b = infill(x, name, generator=torch.Generator().manual_seed(1))
        c = infill(x, name, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_deterministic_infills(self):
        x = images()
        assert torch.equal(infill(x, "original"), x)
        assert torch.equal(infill(x, "zeros"), torch.zeros_like(x))
        mean = infill(x, "mean")
        assert torch.allclose(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
        assert torch.equal(mean.amax(dim=(2, 3)), mean.amin(dim=(2, 3)))

    def test_blur_sigma_scales_with_size(self):
        assert blur_sigma(224) == 10.0
        assert math.isclose(blur_sigma(64), 10 * 64 / 224)

    def test_blur_smooths_and_keeps_constants(self):
        const = torch.full((1, 3, 64, 64), 0.3)
        assert torch.allclose(infill(const, "blur"), const, atol=1e-6)
        x = images(1, 64)
        blurred = infill(x, "blur")
        tv = lambda m: (m[..., 1:, :] - m[..., :-1, :]).abs().mean()
        assert tv(blurred) < 0.1 * tv(x)
        assert torch.allclose(blurred.mean(), x.mean(), atol=0.02)  # reflect padding ~ preserves the mean

    def test_blur_matches_torchvision_and_stays_in_range(self):
        from torchvision.transforms.v2 import functional as TF

        x = images(2, 64)
        sigma = blur_sigma(64)
        k = 2 * math.ceil(3 * sigma) + 1  # 19 taps: the kernel rule, unchanged
        reference = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])  # the old infill
        torch.testing.assert_close(infill(x, "blur"), reference, atol=2e-6, rtol=0)
        ones = torch.ones(1, 3, 31, 31)
        blurred = infill(ones, "blur")  # the float32 sums round to 1 ± 1e-7: clamped into [0, 1]
        assert float(blurred.max()) <= 1.0 and torch.allclose(blurred, ones, atol=1e-6, rtol=0)
        small = images(1, 2)  # a 2-pixel image: nothing to blur
        assert torch.equal(infill(small, "blur"), small)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_blur_of_a_batch_is_the_blur_of_each_image(self, dtype):
        x = images(5, 48).to(dtype)  # FIDO fits images in batches: no batch-size dependence
        batch = infill(x, "blur")
        for i in range(5):
            assert torch.equal(batch[i], infill(x[i : i + 1], "blur")[0])

    def test_knockoff_permutes_patches(self):
        x = images(2, 32)
        out = infill(x, "knockoff", generator=torch.Generator().manual_seed(3))
        # same multiset of values per image and channel, different arrangement
        assert torch.equal(out.flatten(2).sort(dim=2).values, x.flatten(2).sort(dim=2).values)
        assert not torch.equal(out, x)
        # every 4x4 patch of the output is some 4x4 patch of the input
        patches = lambda t: t.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 64, 16).permute(0, 2, 1, 3).reshape(2, 64, -1)
        po, pi = patches(out), patches(x)
        for i in range(2):
            assert torch.cdist(po[i], pi[i], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max() == 0

    def test_bad_input(self):
        with pytest.raises(ValueError, match=r"infill: expected one of \["):
            infill(images(), "inpaint")
        with pytest.raises(ValueError, match="images: expected a 4-D tensor"):
            infill(torch.rand(3, 8, 8))
        with pytest.raises(ValueError, match="images: expected at least 8 px"):
            infill(torch.rand(1, 3, 4, 4), "knockoff")
