import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fidobook.data import PART_NAMES, render_bird  # noqa: E402
from fidobook.plots import (PART_COLOURS, as_image, image_grid, overlay, part_legend,  # noqa: E402
                            part_mask_rgb, resize_map, show_ground_truth)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def bird():
    return render_bird({"beak": 0, "eye": 1, "foot": 2, "tail": 3, "wing": 4}, 0, 32)


class TestAsImage:
    def test_forms_agree(self, bird):
        hwc = as_image(bird.image)
        chw_uint8 = torch.from_numpy(bird.image).permute(2, 0, 1)
        assert hwc.shape == (32, 32, 3) and hwc.dtype == np.float32
        np.testing.assert_allclose(as_image(chw_uint8), hwc)
        np.testing.assert_allclose(as_image(chw_uint8[None].float() / 255), hwc, atol=1e-6)

    def test_bad(self):
        with pytest.raises(ValueError, match="Tensor"):
            as_image(torch.zeros(4, 8, 8))
        with pytest.raises(TypeError):
            as_image([1, 2, 3])


class TestMaps:
    def test_resize_map(self):
        m = torch.arange(4.0).view(1, 1, 2, 2)
        out = resize_map(m, (8, 8))
        assert out.shape == (8, 8) and out.min() >= 0 and out.max() <= 3
        assert resize_map(np.ones((8, 8)), (8, 8)).shape == (8, 8)
        with pytest.raises(ValueError, match="2-D"):
            resize_map(torch.zeros(2, 3, 3), (4, 4))

    def test_part_mask_rgb(self, bird):
        rgb = part_mask_rgb(bird.part_mask)
        assert rgb.shape == (32, 32, 3)
        foot = bird.part_mask == PART_NAMES.index("foot")
        assert foot.any()
        np.testing.assert_allclose(rgb[foot][0], PART_COLOURS["foot"])
        with pytest.raises(ValueError, match="labels"):
            part_mask_rgb(np.full((2, 2), 9))


class TestDrawing:
    def test_overlay_and_ground_truth_draw(self, bird):
        fig, (a, b) = plt.subplots(1, 2)
        im = overlay(a, bird.image, torch.rand(4, 4), outline=bird.segmentation, title="t")
        assert im.get_array().shape == (32, 32)
        show_ground_truth(b, bird.image, part_mask=bird.part_mask, segmentation=bird.segmentation,
                          box=bird.box(), keypoints=bird.keypoints(), names=PART_NAMES[1:])
        assert len(b.patches) == 1  # the box
        assert len(b.lines) == int((bird.keypoints()[:, 2] > 0).sum())
        legend = part_legend(fig)
        assert len(legend.get_texts()) == len(PART_NAMES) - 1

    def test_image_grid(self, bird):
        fig, axes = image_grid([bird.image] * 5, [str(i) for i in range(5)], ncols=3)
        assert axes.shape == (2, 3)
        assert not axes[1, 2].axison
        with pytest.raises(ValueError, match="titles"):
            image_grid([bird.image] * 2, ["a"])
        with pytest.raises(ValueError, match="at least one"):
            image_grid([])
