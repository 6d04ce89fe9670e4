"""Mask-guided classification without fine-tuning: keep the masked region, blur the rest, crop to
the mask's box, classify again.

This is fido-pytorch's ``infill.enhance`` (Korsch et al., 2023), vectorised over a batch:

1. the joint map $\\sqrt{k \\cdot d}$ is the blending weight: ``image · map + blur(image) ·
   (1 − map)`` keeps what the map marks and blurs the rest (:func:`blend_with_blur`);
2. the map, smoothed with a Gaussian, is thresholded (:func:`region_masks`) and the tightest box
   around the region (:func:`box_from_mask`) is padded, grown to a minimum size and squared
   (:func:`expand_boxes`); :func:`mask_boxes` does both;
3. the blended image is cropped to the box and resized to the classifier's input size with
   ``torchvision.ops.roi_align`` (:func:`crop_boxes`), optionally from a higher-resolution copy
   of the image (``source``).

The reference works at 224 px: Gaussian σ = 3 px for the map, padding 10 px in all (5 per side),
a minimum box side of 64 px, a blur of σ = 10 px. Here every default is that value scaled to the
image's shorter side ``s`` (``value · s / 224``, :func:`default_settings`), so a 64-px bird gets
the same relative treatment as a 224-px one.

Boxes are ``xyxy`` pixel edges (``x0, y0, x1, y1``, float; pixel ``(i, j)`` covers
``[j, j + 1) × [i, i + 1)``). An **empty region** (no pixel over the threshold) gives the box of
the whole image: nothing is cropped, which is what "no localisation" should mean.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import roi_align

from . import _checks
from ._maps import as_masks as _as_masks
from ._maps import gaussian_blur as _gaussian_blur
from .infill import BLUR_SIGMA_AT_224
from .metrics import _mask_boxes
from .stats import bootstrap_indices, mcnemar_p, percentile_interval  # mcnemar_p: re-exported

__all__ = ["SIGMA_AT_224", "PAD_AT_224", "MIN_SIZE_AT_224", "BLUR_AT_224", "default_settings",
           "region_masks", "box_from_mask", "expand_boxes", "mask_boxes", "blend_with_blur",
           "crop_boxes", "enhance", "random_boxes_like", "PairedComparison", "mcnemar_p",
           "paired_accuracy"]

#: fido-pytorch's settings at 224 px: the map's smoothing σ, the padding added to each box side
#: in all (half per side), the minimum box side, the background blur σ.
SIGMA_AT_224 = 3.0
PAD_AT_224 = 10.0
MIN_SIZE_AT_224 = 64.0
BLUR_AT_224 = BLUR_SIGMA_AT_224  # 10 px: the same blur as fidobook.infill's "blur"


def default_settings(size: int) -> dict[str, float]:
    """fido-pytorch's 224-px settings scaled to an image whose shorter side is ``size`` px.

    Returns:
        dict: ``sigma`` (map smoothing), ``pad`` (total padding per box side, half on each end),
        ``min_size`` (smallest box side) and ``blur`` (background blur σ), in pixels.
    """
    _checks.check_positive_int(size, "size")
    f = size / 224.0
    return {"sigma": SIGMA_AT_224 * f, "pad": PAD_AT_224 * f, "min_size": MIN_SIZE_AT_224 * f,
            "blur": BLUR_AT_224 * f}


# --------------------------------------------------------------------------------------------
# Input checks


def _maps(maps, name: str = "maps") -> Tensor:
    """``Tensor[N, H, W]`` float, finite (a channel of 1 squeezed)."""
    maps = _checks.squeeze_channel(_checks.check_float(maps, name), name, non_empty=True)
    return _checks.check_finite(maps, name)


def _masks(masks, name: str = "masks") -> Tensor:
    """``BoolTensor[N, H, W]`` by the package's one mask rule (:func:`fidobook._maps.as_masks`)."""
    return _as_masks(masks, name, non_empty=True)


def _boxes(boxes, name: str = "boxes") -> Tensor:
    _checks.check_float(boxes, name)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected a tensor of shape (N, 4) (x0, y0, x1, y1), got "
                         f"{tuple(boxes.shape)}")
    _checks.check_finite(boxes, name)
    if boxes.numel() and bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError(f"{name}: expected x1 >= x0 and y1 >= y0 (xyxy boxes), got a box with "
                         f"a negative side")
    return boxes


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _nonneg(value, name: str) -> float:
    return _checks.check_positive_float(value, name, allow_zero=True)


def _gaussian(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``Tensor[N, C, H, W]`` with σ in pixels: the package's one blur
    (:func:`fidobook._maps.gaussian_blur`, also the ``"blur"`` infill): ``2⌈3σ⌉ + 1`` taps cut to
    the image, reflect padding, two matrix products; σ = 0 returns ``x``."""
    return _gaussian_blur(x, sigma)


# --------------------------------------------------------------------------------------------
# Regions and boxes


def region_masks(maps: Tensor, threshold: float = 0.5, *, sigma: float | None = None) -> Tensor:
    """The region a map marks: the map smoothed with a Gaussian, then thresholded.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps, higher = more relevant
            (FIDO's joint map is in [0, 1]; the threshold applies to the raw values).
        threshold (float): a pixel is in the region when its smoothed value is >= this.
            Default: 0.5 (fido-pytorch).
        sigma (float, optional): smoothing σ in pixels; 0 switches smoothing off. Default:
            3 px at 224 px, scaled to the map's shorter side.

    Returns:
        BoolTensor[N, H, W].
    """
    maps = _maps(maps)
    threshold = _real(threshold, "threshold")
    h, w = maps.shape[-2:]
    sigma = default_settings(min(h, w))["sigma"] if sigma is None else _nonneg(sigma, "sigma")
    return _gaussian(maps[:, None], sigma)[:, 0] >= threshold


def box_from_mask(masks: Tensor) -> Tensor:
    """The tightest box around each mask's pixels; the whole image for an empty mask.

    Args:
        masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): bool, 0/1 or 0/255 integers (non-zero =
            in; other integers are an error), or floats in [0, 1] (``>= 0.5`` = in): the
            package's one mask rule (:mod:`fidobook._maps`).

    Returns:
        Tensor[N, 4] (float32): ``x0, y0, x1, y1`` pixel edges (a single pixel ``(i, j)`` gives
        ``(j, i, j + 1, i + 1)``).

    Example::

        >>> m = torch.zeros(1, 4, 6, dtype=torch.bool); m[0, 1:3, 2:5] = True
        >>> box_from_mask(m)
        tensor([[2., 1., 5., 3.]])
    """
    masks = _masks(masks)
    h, w = masks.shape[-2:]
    boxes, found = _mask_boxes(masks)
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=masks.device)
    return torch.where(found[:, None], boxes, full)


def expand_boxes(boxes: Tensor, height: int, width: int, *, pad: float = 0.0,
                 min_size: float = 0.0, square: bool = True) -> Tensor:
    """Pads, grows and squares boxes around their centres, then moves them into the image.

    In this order (fido-pytorch's): each side grows by ``pad`` (half on each end); a side
    shorter than ``min_size`` grows to it; with ``square`` the shorter side grows to the longer.
    A box that sticks out of the image is shifted back inside, keeping its size; a side longer
    than the image is cut to the image (so a box is never larger than the image). fido-pytorch
    clips only the near edge at 0 and lets slicing cut the far one, which can shrink and
    unsquare a box near the border; shifting keeps the crop's zoom.

    Args:
        boxes (Tensor[N, 4]): ``x0, y0, x1, y1`` pixel edges.
        height, width (int): the image size.
        pad (float): total padding per side, in pixels. Default: 0.
        min_size (float): the smallest side, in pixels. Default: 0.
        square (bool): make the boxes square. Default: True.

    Returns:
        Tensor[N, 4]: inside ``[0, width] × [0, height]``.
    """
    boxes = _boxes(boxes)
    _checks.check_positive_int(height, "height")
    _checks.check_positive_int(width, "width")
    pad, min_size = _nonneg(pad, "pad"), _nonneg(min_size, "min_size")
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    side = (boxes[:, 2:] - boxes[:, :2] + pad).clamp(min=min_size)  # [N, 2]: w, h
    if square:
        side = side.max(1, keepdim=True).values.expand(-1, 2)
    limit = torch.tensor([float(width), float(height)], device=boxes.device, dtype=boxes.dtype)
    side = torch.minimum(side, limit)
    lo = (centre - side / 2).clamp(min=0)  # shift right/down if it starts before 0 ...
    lo = torch.minimum(lo, limit - side)  # ... and left/up if it ends after the edge
    return torch.cat([lo, lo + side], 1)


def mask_boxes(maps: Tensor, threshold: float = 0.5, *, sigma: float | None = None,
               pad: float | None = None, min_size: float | None = None,
               square: bool = True) -> Tensor:
    """Crop boxes from attribution maps: smooth, threshold, box, pad, grow, square.

    ``expand_boxes(box_from_mask(region_masks(maps, threshold, sigma=sigma)), ...)``. An empty
    region gives the whole image.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps.
        threshold (float): see :func:`region_masks`. Default: 0.5.
        sigma, pad, min_size (float, optional): in pixels; ``None`` takes fido-pytorch's 224-px
            values scaled to the maps' shorter side (:func:`default_settings`).
        square (bool): square boxes. Default: True.

    Returns:
        Tensor[N, 4]: ``x0, y0, x1, y1`` pixel edges inside the map.
    """
    maps = _maps(maps)
    h, w = maps.shape[-2:]
    d = default_settings(min(h, w))
    boxes = box_from_mask(region_masks(maps, threshold, sigma=sigma))
    return expand_boxes(boxes, h, w, pad=d["pad"] if pad is None else pad,
                        min_size=d["min_size"] if min_size is None else min_size, square=square)


def random_boxes_like(boxes: Tensor, height: int, width: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """Boxes of the same sizes as ``boxes`` at uniformly random positions inside the image.

    The control for a mask's box: as much zoom, no localisation. A side longer than the image
    is cut to it first.

    Args:
        boxes (Tensor[N, 4]): ``x0, y0, x1, y1`` pixel edges.
        height, width (int): the image size.
        generator (torch.Generator, optional): the source of the positions (on ``boxes``'s
            device).

    Returns:
        Tensor[N, 4]: each box of the same width and height, inside ``[0, width] × [0, height]``.
    """
    boxes = _boxes(boxes)
    _checks.check_positive_int(height, "height")
    _checks.check_positive_int(width, "width")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    limit = torch.tensor([float(width), float(height)], device=boxes.device, dtype=boxes.dtype)
    side = torch.minimum(boxes[:, 2:] - boxes[:, :2], limit)  # [N, 2]
    u = torch.rand(side.shape, generator=generator, device=boxes.device, dtype=boxes.dtype)
    lo = u * (limit - side)
    return torch.cat([lo, lo + side], 1)


# --------------------------------------------------------------------------------------------
# Images


def blend_with_blur(images: Tensor, maps: Tensor, *, sigma: float | None = None) -> Tensor:
    """Keeps what a map marks and blurs the rest: ``image · m + blur(image) · (1 − m)``.

    Args:
        images (Tensor[N, C, H, W]): in [0, 1].
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): the weights, clipped to [0, 1] (FIDO's joint
            map, as fido-pytorch; or a 0/1 mask); resized bilinearly to the images if needed.
        sigma (float, optional): the blur σ in pixels of the images. Default: 10 px at 224 px,
            scaled to the images' shorter side.

    Returns:
        Tensor[N, C, H, W] in [0, 1].
    """
    _checks.check_images(images)
    maps = _maps(maps).to(images.dtype)
    n, _, h, w = images.shape
    if maps.shape[0] != n:
        raise ValueError(f"maps: expected {n} maps (one per image), got {maps.shape[0]}")
    sigma = default_settings(min(h, w))["blur"] if sigma is None else _nonneg(sigma, "sigma")
    m = maps.clamp(0, 1)[:, None]
    if m.shape[-2:] != (h, w):
        m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    background = _gaussian(images, sigma)
    return torch.lerp(background, images, m)  # background + m · (image − background)


def crop_boxes(images: Tensor, boxes: Tensor, size: int | tuple[int, int], *,
               source: Tensor | None = None) -> Tensor:
    """Crops boxes and resizes them, all at once with ``torchvision.ops.roi_align``.

    Each output pixel averages bilinear samples of its cell of the box (``roi_align``'s adaptive
    sampling: ``ceil(box side / output side)`` samples per cell and axis), so shrinking is
    anti-aliased and a box of the output's size at integer positions returns its pixels exactly.
    Samples near the box's edge interpolate with the pixels just outside it (the image goes on
    there); outside the image they read 0, which :func:`expand_boxes` prevents.

    Args:
        images (Tensor[N, C, H, W]): float images; the boxes are in their pixels.
        boxes (Tensor[N, 4]): one ``x0, y0, x1, y1`` box per image, pixel edges of ``images``.
        size (int or (int, int)): the output's height and width.
        source (Tensor[N, C, H', W'], optional): a higher- (or lower-) resolution copy of
            ``images`` to crop from instead; boxes are scaled by ``W' / W`` and ``H' / H``.

    Returns:
        Tensor[N, C, size, size] (or ``(h, w)``), on the images' device.
    """
    _checks.check_float(images, "images")
    if images.ndim != 4 or 0 in images.shape:
        raise ValueError(f"images: expected a non-empty tensor of shape (N, C, H, W), got "
                         f"{tuple(images.shape)}")
    boxes = _boxes(boxes)
    n, c, h, w = images.shape
    if boxes.shape[0] != n:
        raise ValueError(f"boxes: expected {n} boxes (one per image), got {boxes.shape[0]}")
    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ValueError(f"size: expected an int >= 1 or a pair (h, w), got {size!r}")
    src = images
    if source is not None:
        _checks.check_float(source, "source")
        if source.ndim != 4 or source.shape[:2] != images.shape[:2] or 0 in source.shape:
            raise ValueError(f"source: expected shape ({n}, {c}, H', W') like images, got "
                             f"{tuple(source.shape)}")
        sh, sw = source.shape[-2:]
        scale = torch.tensor([sw / w, sh / h, sw / w, sh / h], device=boxes.device, dtype=boxes.dtype)
        boxes = boxes * scale
        src = source
    rois = torch.cat([torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1)
    # aligned=True: box coordinates are pixel edges, pixel centres sit at +0.5.
    return roi_align(src, rois.to(src.device, src.dtype), output_size=tuple(size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def enhance(images: Tensor, maps: Tensor, *, threshold: float = 0.5, sigma: float | None = None,
            blur: bool = True, pad: float | None = None, min_size: float | None = None,
            square: bool = True, size: int | None = None, source: Tensor | None = None,
            return_boxes: bool = False):
    """fido-pytorch's ``enhance``: blend with a blur by the map, crop to the map's box, resize.

    Args:
        images (Tensor[N, C, H, W]): in [0, 1].
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps at the images' resolution
            (FIDO's joint map).
        threshold, sigma, pad, min_size, square: the box (:func:`mask_boxes`); ``None`` takes
            fido-pytorch's 224-px values scaled to the images (:func:`default_settings`).
        blur (bool): blend with a blurred copy by the map before cropping (σ = 10 px at 224 px,
            scaled); False crops the image as it is. Default: True.
        size (int, optional): output side. Default: the images' height.
        source (Tensor[N, C, H', W'], optional): a higher-resolution copy to blend and crop
            (the map is resized to it, the blur scaled to its size).
        return_boxes (bool): also return the boxes. Default: False.

    Returns:
        Tensor[N, C, size, size] in [0, 1] (and ``Tensor[N, 4]``, the ``xyxy`` boxes in pixels of
        ``images``, with ``return_boxes``). An empty region crops nothing: the whole image.
    """
    _checks.check_images(images)
    maps = _maps(maps)
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps: expected shape ({n}, {h}, {w}) like the images, got {tuple(maps.shape)}")
    if size is None:
        size = h
    _checks.check_positive_int(size, "size")
    if source is not None:
        _checks.check_images(source, "source")
        if source.shape[:2] != images.shape[:2]:
            raise ValueError(f"source: expected shape ({n}, {images.shape[1]}, H', W') like images, "
                             f"got {tuple(source.shape)}")
    boxes = mask_boxes(maps, threshold, sigma=sigma, pad=pad, min_size=min_size, square=square)
    picture = images if source is None else source
    if blur:
        picture = blend_with_blur(picture, maps)
    if source is None:
        out = crop_boxes(picture, boxes, size)
    else:
        out = crop_boxes(images, boxes, size, source=picture)
    out = out.clamp(0, 1)  # roi_align's bilinear samples stay in range up to rounding
    return (out, boxes) if return_boxes else out


# --------------------------------------------------------------------------------------------
# Before and after: paired comparisons of accuracy on the same images


class PairedComparison(NamedTuple):
    """Accuracy of two classifications of the same images (:func:`paired_accuracy`).

    Attributes:
        before, after (float): the two accuracies.
        difference (float): ``after − before``.
        low, high (float): percentile bootstrap interval of the difference.
        fixed (int): images wrong before and right after; ``broken``: right before, wrong after.
        p_value (float): exact two-sided McNemar test on ``fixed`` vs ``broken``
            (:func:`fidobook.stats.mcnemar_p`).
        n (int): images.
    """

    before: float
    after: float
    difference: float
    low: float
    high: float
    fixed: int
    broken: int
    p_value: float
    n: int


def _correct(x, name: str) -> Tensor:
    _checks.check_tensor(x, name)
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D tensor (one entry per image), got shape "
                         f"{tuple(x.shape)}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name}: expected a BoolTensor (correct or not), got dtype {x.dtype}")
    return x.cpu()


def paired_accuracy(before: Tensor, after: Tensor, *, n_boot: int = 2000,
                    generator: torch.Generator | int = 0, level: float = 0.95) -> PairedComparison:
    """Compares two classifications of the same images: accuracy, interval, McNemar.

    The bootstrap resamples images (pairs), so the interval of ``after − before`` accounts for
    both being measured on the same images; all ``n_boot`` resamples are drawn as one
    ``Tensor[n_boot, N]`` of indices.

    Args:
        before, after (BoolTensor[N]): whether each image was classified correctly.
        n_boot (int): bootstrap resamples. Default: 2000.
        generator (torch.Generator or int): source of the resamples (a CPU generator or a seed).
            Default: 0.
        level (float): coverage of the interval, in (0, 1). Default: 0.95.

    Returns:
        PairedComparison.
    """
    before, after = _correct(before, "before"), _correct(after, "after")
    if before.shape != after.shape:
        raise ValueError(f"before, after: expected the same images, got {before.numel()} and "
                         f"{after.numel()} entries")
    _checks.check_positive_int(n_boot, "n_boot")
    level = _checks.check_level(level)
    generator = _checks.check_generator(generator)
    n = before.numel()
    delta = after.double() - before.double()  # [N]: +1 fixed, −1 broken, 0 unchanged
    boot = delta[bootstrap_indices(n, n_boot, generator)].mean(1)  # [B]
    low, high = percentile_interval(boot, level)
    fixed, broken = int((delta > 0).sum()), int((delta < 0).sum())
    return PairedComparison(before=float(before.double().mean()), after=float(after.double().mean()),
                            difference=float(delta.mean()), low=low, high=high, fixed=fixed,
                            broken=broken, p_value=mcnemar_p(fixed, broken), n=n)
