"""One rule per concept for maps and masks: conversion to a mask, IoU, Gaussian blur, min–max.

Every module that binarises a mask, compares two masks, blurs an image or a map, or scales a map to
[0, 1] calls the function here, so the same input gets the same answer whichever chapter or module
asked (``metrics``, ``overmap``, ``enhance``, ``infill``, ``models.segnet``). Private: the public
wrappers (:func:`fidobook.models.as_masks`, :func:`fidobook.models.mask_iou`,
:func:`fidobook.metrics.normalize_maps`, the ``"blur"`` infill, …) check their arguments and call
these workers. Only ``torch`` and :mod:`fidobook._checks` are imported, so any module may import
this one without a cycle.

The rules
---------

**Masks** (:func:`as_masks`) → ``BoolTensor[N, H, W]`` (a channel of 1 is squeezed):

- ``bool``: as is;
- integer (any integer dtype): every value must be **0, 1 or 255**; ``in ⇔ value ≠ 0``. One rule
  covers 0/1 flags and 0/255 PNG masks alike. Any other value is an error, not a guess: part
  labels (0…K) are not a mask (take their union with :func:`fidobook.metrics.part_union_masks`),
  and the grey levels of a soft or bilinearly resized mask need a threshold the caller chooses
  (``masks >= 128``, or ``masks / 255`` for the float rule below);
- floating point: every value must be finite and in **[0, 1]**; ``in ⇔ value >= 0.5`` (a value of
  exactly 0.5 is in: the same ``>=`` as every map threshold in the package, e.g.
  ``map >= threshold`` in :func:`fidobook.metrics.map_iou` and ``probs >= threshold`` in
  :func:`fidobook.segmentation.segment`);
- complex: an error.

**IoU** (:func:`iou`): ``|A ∩ B| / |A ∪ B|`` in float64, and **NaN when both masks are empty**.
0/0 is undefined: 1 ("they agree") would reward a predictor that marks nothing, 0 would punish it,
and either silently moves a mean. NaN makes the caller count those images and decide
(``torch.nanmean`` and the number left out, as :mod:`fidobook.metrics` reports). A policy on top of
the IoU — Over-MAP's "no segmentation, no estimate: confidence 0"
(:func:`fidobook.overmap.overlap_iou`) — is applied by the caller and documented there; it is not a
different IoU. One empty mask and one non-empty mask give 0.

**Blur** (:func:`gaussian_blur`): a Gaussian of σ pixels with ``k = 2⌈3σ⌉ + 1`` taps (±3σ, 99.7 %
of the mass), cut to the largest odd size ``≤ min(H, W)`` that reflect padding allows; reflect
padding (``101``: index −1 reads pixel 1, as ``torch.nn.functional.pad(mode="reflect")``,
``torchvision``'s ``gaussian_blur`` and OpenCV's default border). The weights are computed in
float64 and normalised to sum to 1; the separable blur is two matrix products ``B_H · x · B_Wᵀ``
(reflect padding folded into the matrices). It is the same linear map as
``torchvision.transforms.v2.functional.gaussian_blur`` with that kernel, up to float rounding: the
matrix form rounds once per product where the convolution rounds its float32 ``k × k`` kernel and
its ``k²`` products, so it is closer to the float64 result (about 2·10⁻⁷ against 1·10⁻⁶ at 64 px,
float32), and 8–50× faster on a CPU at 64–224 px (float32, 8 images).

**Min–max normalisation** (:func:`min_max`): per map, ``(m − min m) / (max m − min m)`` in the
maps' dtype; a constant map (no location) becomes **all zeros**, so every threshold ``> 0`` gives an
empty region.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks

__all__: list[str] = []  # private module

#: The values an integer mask may hold (``in ⇔ value ≠ 0``).
INTEGER_MASK_VALUES = (0, 1, 255)
#: The float mask threshold (``in ⇔ value >= FLOAT_MASK_THRESHOLD``).
FLOAT_MASK_THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Masks


def as_masks(masks, name: str = "masks", *, non_empty: bool = False) -> Tensor:
    """``BoolTensor[N, H, W]`` from ``Tensor[N, H, W]`` or ``Tensor[N, 1, H, W]`` (module rules).

    Args:
        masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): bool; integer 0/1 or 0/255 (non-zero =
            in); float in [0, 1] (``>= 0.5`` = in).
        name (str): the argument's name in error messages.
        non_empty (bool): also reject a tensor without elements.

    Returns:
        BoolTensor[N, H, W].
    """
    m = _checks.squeeze_channel(_checks.check_tensor(masks, name), name, non_empty=non_empty)
    if m.dtype == torch.bool:
        return m
    if m.is_complex():
        raise TypeError(f"{name}: expected a bool, integer (0/1 or 0/255) or float ([0, 1]) mask, "
                        f"got dtype {m.dtype}")
    if m.is_floating_point():
        _checks.check_finite(m, name)
        if m.numel() and (float(m.min()) < 0 or float(m.max()) > 1):
            raise ValueError(f"{name}: expected float masks in [0, 1] (>= {FLOAT_MASK_THRESHOLD} = "
                             f"in), got range [{float(m.min()):.4g}, {float(m.max()):.4g}]")
        return m >= FLOAT_MASK_THRESHOLD
    wide = m if m.dtype == torch.uint8 else m.long()  # int8 would wrap 255 to −1
    bad = (wide != 0) & (wide != 1) & (wide != 255)
    if bool(bad.any()):
        odd = torch.unique(wide[bad])
        shown = ", ".join(str(int(v)) for v in odd[:5]) + (", ..." if odd.numel() > 5 else "")
        raise ValueError(
            f"{name}: expected a binary integer mask (values 0/1 or 0/255, non-zero = in), got "
            f"other values ({shown}). Part labels are not a mask: take their union with "
            f"fidobook.metrics.part_union_masks; grey levels need a threshold you choose "
            f"(e.g. masks >= 128, or masks / 255 for the float rule, >= 0.5)")
    return m != 0


# --------------------------------------------------------------------------------------------
# IoU


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Per-row intersection over union of boolean masks; NaN where both are empty.

    Args:
        a (BoolTensor[N, ...]), b (BoolTensor[N, ...]): the same shape (unchecked: a worker).

    Returns:
        Tensor[N]: float64, ``|a ∩ b| / |a ∪ b|``; NaN where ``a ∪ b`` is empty.
    """
    a, b = a.flatten(1), b.flatten(1)  # (N, P)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return (inter / union.clamp(min=1)).masked_fill(union == 0, float("nan"))


# --------------------------------------------------------------------------------------------
# Blur


def blur_kernel_size(sigma: float, height: int, width: int) -> int:
    """Taps of the Gaussian for σ on an ``height × width`` image: ``2⌈3σ⌉ + 1``, cut to the
    largest odd size ``<= min(height, width)`` (so that reflect padding, ``k // 2`` pixels, stays
    inside the image). 1 means no blur."""
    if sigma <= 0:
        return 1
    return min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(height, width) - 1) // 2) + 1)


def _blur_matrix(length: int, sigma: float, k: int) -> Tensor:
    """``Tensor[L, L]`` (float64, CPU): row i holds the weights output pixel i takes from each
    input pixel, reflect padding folded in (index −1 reads pixel 1, index L reads pixel L − 2).
    Built on the CPU, so it is the same on every device."""
    r = k // 2
    taps = torch.arange(-r, r + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()  # (k,)
    src = (torch.arange(length)[:, None] + torch.arange(-r, r + 1)).abs()  # (L, k), reflect at 0
    src = torch.where(src > length - 1, 2 * (length - 1) - src, src)  # reflect at L − 1
    m = torch.zeros((length, length), dtype=torch.float64)
    return m.scatter_add_(1, src, weights.expand(length, k).contiguous())


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``Tensor[..., H, W]`` with σ in pixels (module rules; σ <= 0: ``x``).

    Args:
        x (Tensor[..., H, W]): float.
        sigma (float): standard deviation in pixels (unchecked: a worker).

    Returns:
        Tensor[..., H, W]: same dtype and device. ``x`` itself when the kernel has fewer than 3
        taps (σ <= 0, or a 1- or 2-pixel side).
    """
    h, w = x.shape[-2:]
    k = blur_kernel_size(sigma, h, w)
    if k < 3:
        return x
    rows = _blur_matrix(h, sigma, k).to(x.device, x.dtype)  # (H, H)
    cols = _blur_matrix(w, sigma, k).to(x.device, x.dtype)  # (W, W)
    return torch.matmul(torch.matmul(rows, x), cols.T)  # (..., H, W)


# --------------------------------------------------------------------------------------------
# Min–max normalisation


def min_max(maps: Tensor) -> Tensor:
    """Per-map min–max scaling over the last two dimensions; a constant map becomes zeros.

    Args:
        maps (Tensor[..., H, W]): float, finite (unchecked: a worker).

    Returns:
        Tensor[..., H, W]: in [0, 1], the maps' dtype; each non-constant map has min 0 and max 1.
    """
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    if not bool(torch.isfinite(span).all()):
        # Finite maps whose range overflows (e.g. ±3e38 in float32): halve everything first.
        lo, span, maps = lo / 2, hi / 2 - lo / 2, maps / 2
    scaled = (maps - lo) / span.clamp(min=torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled, torch.zeros_like(maps))
