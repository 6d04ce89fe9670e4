"""Figure helpers shared by the chapters: images, maps over images, ground-truth overlays, grids.

Every helper draws on a matplotlib ``Axes`` it is given (or returns a new figure) and accepts
images in the forms the package produces: ``Tensor[3, H, W]`` (uint8 0–255 or float in [0, 1])
or ``ndarray[H, W, 3]``. Maps of any resolution are upsampled bilinearly to the image::

    fig, axes = plt.subplots(1, 3)
    overlay(axes[0], test["images"][i], result.joint[0], title="joint")
    show_ground_truth(axes[1], test["images"][i], part_mask=test["part_masks"][i],
                      box=test["boxes"][i], keypoints=test["parts"][i])
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.birds import PART_NAMES

__all__ = ["PART_COLOURS", "as_image", "resize_map", "show_image", "overlay", "part_mask_rgb",
           "part_legend", "show_ground_truth", "image_grid"]

#: A colour per part label (``PART_NAMES`` order), for part masks and keypoints.
PART_COLOURS: dict[str, tuple[float, float, float]] = {
    "background": (1.0, 1.0, 1.0),
    "body": (0.62, 0.62, 0.62),
    "head": (0.35, 0.35, 0.35),
    "beak": (0.93, 0.76, 0.0),
    "eye": (0.58, 0.2, 0.72),
    "foot": (0.85, 0.4, 0.05),
    "tail": (0.0, 0.62, 0.62),
    "wing": (0.2, 0.45, 0.85),
}


def as_image(image) -> np.ndarray:
    """An image as ``ndarray[H, W, 3]`` float in [0, 1].

    Args:
        image: ``Tensor[3, H, W]`` / ``Tensor[1, 3, H, W]`` (uint8 or float in [0, 1]), or
            ``ndarray[H, W, 3]`` (uint8 or float in [0, 1]).
    """
    if isinstance(image, Tensor):
        x = image.detach().cpu()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"image: expected a Tensor[3, H, W], got shape {tuple(image.shape)}")
        x = x.expand(3, -1, -1).permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        x = image
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=-1)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"image: expected an ndarray[H, W, 3], got shape {image.shape}")
    else:
        raise TypeError(f"image: expected a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.clip(x.astype(np.float32), 0.0, 1.0)


def resize_map(heat, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized bilinearly to ``size = (H, W)``: ``ndarray[H, W]`` float.

    Args:
        heat: ``Tensor[h, w]`` / ``Tensor[1, h, w]`` / ``Tensor[1, 1, h, w]`` or an ndarray.
        size ((int, int)): the target height and width.
    """
    t = torch.as_tensor(np.asarray(heat) if not isinstance(heat, Tensor) else heat.detach().cpu())
    t = t.float().squeeze()
    if t.ndim != 2:
        raise ValueError(f"heat: expected a 2-D map (h, w), got shape {tuple(t.shape)}")
    if tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return t.numpy()


def show_image(ax, image, title: str | None = None, fontsize: float = 9):
    """Draws an image without axes; returns the ``AxesImage``."""
    im = ax.imshow(as_image(image), interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    return im


def overlay(ax, image, heat, *, cmap: str = "inferno", alpha: float = 0.6, vmin: float | None = 0.0,
            vmax: float | None = 1.0, outline=None, title: str | None = None, fontsize: float = 9):
    """Draws ``heat`` semi-transparently over a greyed copy of ``image``.

    The image is shown in grey so that the colours of the map are not confused with those of the
    bird; the map is upsampled bilinearly to the image.

    Args:
        ax: matplotlib axes.
        image: the image (see :func:`as_image`).
        heat: a 2-D map of any resolution (see :func:`resize_map`).
        cmap (str, optional): colour map of the heat. Default: ``"inferno"``.
        alpha (float, optional): opacity of the heat. Default: 0.6.
        vmin, vmax (float, optional): colour range (``None``: the map's own). Default: 0, 1.
        outline (optional): a 2-D boolean mask (e.g. the object's segmentation) whose contour is
            drawn in white.
        title (str, optional): axes title.

    Returns:
        AxesImage: the heat layer (for a colour bar).
    """
    img = as_image(image)
    h, w = img.shape[:2]
    grey = img.mean(-1)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im = ax.imshow(resize_map(heat, (h, w)), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    if outline is not None:
        ax.contour(_numpy_2d(outline).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    return im


def _numpy_2d(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {a.shape}")
    return a


def part_mask_rgb(part_mask, names: Sequence[str] = PART_NAMES) -> np.ndarray:
    """A part-label mask coloured with :data:`PART_COLOURS`: ``ndarray[H, W, 3]`` float.

    Args:
        part_mask: 2-D integer labels (``Tensor[H, W]`` or ndarray), ``names[label]`` naming each.
        names (sequence of str, optional): label names. Default: ``PART_NAMES``.
    """
    labels = _numpy_2d(part_mask).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"part_mask: expected labels in [0, {len(names) - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    lut = np.array([PART_COLOURS.get(n, (0.5, 0.5, 0.5)) for n in names], dtype=np.float32)
    return lut[labels]


def part_legend(ax, names: Sequence[str] = PART_NAMES[1:], **kwargs):
    """Adds a legend of part colours to ``ax`` (or a figure); keyword arguments go to ``legend``."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PART_COLOURS.get(n, (0.5, 0.5, 0.5)), edgecolor="0.3", label=n)
               for n in names]
    kwargs.setdefault("fontsize", 8)
    kwargs.setdefault("frameon", False)
    return ax.legend(handles=handles, **kwargs)


def show_ground_truth(ax, image, *, part_mask=None, segmentation=None, box=None, keypoints=None,
                      names: Sequence[str] = PART_NAMES[1:], alpha: float = 0.55,
                      title: str | None = None, fontsize: float = 9) -> None:
    """Draws an image with any of its ground truths on top.

    Args:
        ax: matplotlib axes.
        image: the image (see :func:`as_image`).
        part_mask (optional): 2-D part labels, blended in with :data:`PART_COLOURS` (the
            background stays as it is).
        segmentation (optional): 2-D object mask; its contour is drawn in white.
        box (optional): ``(x, y, w, h)`` in pixels (pixel edges), drawn as a rectangle.
        keypoints (optional): ``(P, 3)`` rows ``(x, y, visible)`` (pixel-edge coordinates),
            ``names[i]`` naming row ``i``; visible ones are drawn as dots in the part's colour.
        names (sequence of str, optional): the keypoints' part names. Default: ``PART_NAMES[1:]``.
        alpha (float, optional): opacity of the part colours. Default: 0.55.
        title (str, optional): axes title.
    """
    from matplotlib.patches import Rectangle

    img = as_image(image)
    if part_mask is not None:
        labels = _numpy_2d(part_mask)
        on = (labels > 0)[..., None]
        img = np.where(on, (1 - alpha) * img + alpha * part_mask_rgb(labels), img)
    ax.imshow(img, interpolation="nearest")
    if segmentation is not None:
        ax.contour(_numpy_2d(segmentation).astype(float), levels=[0.5], colors="white",
                   linewidths=0.8)
    if box is not None:
        x, y, w, h = (float(v) for v in (box.tolist() if isinstance(box, Tensor) else box))
        # imshow puts pixel (i, j) on [j - 0.5, j + 0.5]: shift pixel-edge coordinates by 0.5.
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="black", lw=1.0))
    if keypoints is not None:
        kp = keypoints.detach().cpu().numpy() if isinstance(keypoints, Tensor) else np.asarray(keypoints)
        for (x, y, visible), name in zip(kp, names):
            if visible > 0:
                ax.plot(x - 0.5, y - 0.5, "o", ms=3.5, mfc=PART_COLOURS.get(name, (0.5, 0.5, 0.5)),
                        mec="black", mew=0.6)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.3,
               fontsize: float = 7):
    """A grid of images without axes.

    Args:
        images: ``Tensor[N, 3, H, W]`` or a sequence of images (see :func:`as_image`).
        titles (sequence of str, optional): one per image.
        ncols (int, optional): images per row. Default: 8.
        size (float, optional): inches per image. Default: 1.3.

    Returns:
        tuple: ``(fig, axes)``, ``axes`` a 2-D array (unused cells switched off).
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("images: expected at least one image, got none")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: expected {n} titles (one per image), got {len(titles)}")
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.25 * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i], None if titles is None else titles[i], fontsize=fontsize)
        else:
            ax.set_axis_off()
    return fig, axes
