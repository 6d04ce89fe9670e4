"""How good is an attribution map? Scores against ground truth, faithfulness, coherence.

Three families, all vectorised over a batch of maps ``Tensor[N, H, W]`` (higher = more relevant):

- **localisation against ground truth** (an object segmentation, part masks, a box):
  :func:`relevance_mass` and :func:`relevance_rank` (Arras, Osman, Samek, 2022),
  :func:`pointing_game` (Zhang et al., 2018), :func:`map_iou`, :func:`box_iou` and
  :func:`mass_outside` (the box IoU and the share of salient pixels outside the box follow the
  metrics of the SCD reference code, cvjena/fido-pytorch);
- **faithfulness to the model**: :func:`deletion_curve`, :func:`insertion_curve` and their
  :func:`curve_auc` (Petsiuk, Das, Saenko, 2018);
- **coherence**: :func:`normalized_tv`, the mean absolute difference between neighbouring pixels.

:func:`score_maps` computes every localisation score whose ground truth it is given, plus the
total variation. Masks are ``BoolTensor[N, H, W]``; ``uint8`` (0/1 or 0/255), integer and float
masks (thresholded at 0.5) are accepted, and a channel of 1 is squeezed everywhere. Boxes are
``Tensor[N, 4]`` in ``xyxy`` pixel edges (``x0, y0, x1, y1``); CUB's ``xywh`` boxes convert with
``torchvision.ops.box_convert(boxes, "xywh", "xyxy")``.

A score that is undefined for an image is NaN, never a silent 0: relevance mass of a map without
positive mass, relevance rank against an empty mask, IoU when both sets are empty. Average with
``torch.nanmean`` and report how many images were left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .data.birds import PART_TYPES
from .fido import frozen_model, total_variation
from .infill import INFILLS, RANDOM_INFILLS
from .parts import PART_LABELS

__all__ = [
    "relevance_mass", "relevance_rank", "pointing_game", "map_iou", "box_iou", "mass_outside",
    "normalize_maps", "box_masks", "part_union_masks", "deletion_curve", "insertion_curve",
    "curve_auc", "normalized_tv", "score_maps",
]


# ------------------------------------------------------------------------------------------
# Input conversion
# ------------------------------------------------------------------------------------------

def _as_maps(maps, name: str = "maps") -> Tensor:
    """``Tensor[N, H, W]`` float, finite."""
    maps = _checks.squeeze_channel(_checks.check_float(maps, name), name)
    return _checks.check_finite(maps, name)


def _as_masks(masks, name: str = "masks") -> Tensor:
    """``BoolTensor[N, H, W]`` from bool, integer (non-zero = in) or float (>= 0.5 = in) masks."""
    masks = _checks.squeeze_channel(_checks.check_tensor(masks, name), name)
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point():
        _checks.check_finite(masks, name)
        if masks.numel() and (float(masks.min()) < 0 or float(masks.max()) > 1):
            raise ValueError(f"{name}: expected float masks in [0, 1], got range "
                             f"[{float(masks.min()):.4g}, {float(masks.max()):.4g}]")
        return masks >= 0.5
    if masks.is_complex():
        raise TypeError(f"{name}: expected a bool, integer or float mask, got dtype {masks.dtype}")
    return masks != 0  # uint8 0/1 and 0/255 alike


def _same_shape(maps: Tensor, other: Tensor, name: str) -> None:
    if maps.shape != other.shape:
        raise ValueError(f"maps, {name}: expected the same (N, H, W) shape, got "
                         f"{tuple(maps.shape)} and {tuple(other.shape)}")


def _as_boxes(boxes, n: int | None, name: str = "boxes") -> Tensor:
    """``Tensor[n, 4]`` float xyxy boxes (``n=None``: any number)."""
    boxes = _checks.check_float(boxes, name)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or (n is not None and boxes.shape[0] != n):
        raise ValueError(f"{name}: expected shape ({'N' if n is None else n}, 4) (xyxy per image), "
                         f"got {tuple(boxes.shape)}")
    _checks.check_finite(boxes, name)
    if bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        raise ValueError(f"{name}: expected xyxy boxes with x1 >= x0 and y1 >= y0 (convert CUB's "
                         "xywh boxes with torchvision.ops.box_convert(boxes, 'xywh', 'xyxy'))")
    return boxes


def _nan_where(values: Tensor, undefined: Tensor) -> Tensor:
    return values.masked_fill(undefined, float("nan"))


# ------------------------------------------------------------------------------------------
# Localisation against ground truth
# ------------------------------------------------------------------------------------------

def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy: the share of a map's positive mass that lies in the mask.

    ``mass_n = Σ_{p ∈ mask_n} max(map_n(p), 0) / Σ_p max(map_n(p), 0)`` (Arras, Osman, Samek,
    "CLEVR-XAI", Information Fusion 2022). Negative values count as no relevance, so a signed
    map is scored by its positive part.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps (float, finite).
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.

    Returns:
        Tensor[N]: in [0, 1] (float64). NaN for a map with no positive mass; 0 for an empty
        mask (when the map has mass).

    Example::

        >>> relevance_mass(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[False, True]]]))
        tensor([0.7500], dtype=torch.float64)
    """
    maps = _as_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    pos = maps.clamp(min=0).flatten(1).double()  # (N, HW)
    total = pos.sum(1)
    inside = (pos * masks.flatten(1)).sum(1)
    return _nan_where(inside / total.clamp(min=torch.finfo(torch.float64).tiny), total == 0)


def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy: the share of the map's ``K`` highest pixels that lie in the mask,
    with ``K = |mask|`` (Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022).

    Pixels are ranked by value, descending; ties keep row-major order (a stable sort: of two
    equal pixels, the one with the lower ``row · W + col`` ranks higher), so a constant map
    selects the first ``K`` pixels in reading order.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps (float, finite).
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.

    Returns:
        Tensor[N]: in [0, 1] (float64); NaN for an empty mask (``K = 0``).
    """
    maps = _as_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    flat_masks = masks.flatten(1)  # (N, HW)
    k = flat_masks.sum(1)  # (N,)
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices  # (N, HW)
    in_mask_sorted = flat_masks.gather(1, order)  # (N, HW): is the r-th ranked pixel in the mask?
    top = torch.arange(order.shape[1], device=maps.device)[None, :] < k[:, None]  # (N, HW)
    hits = (in_mask_sorted & top).sum(1).double()
    return _nan_where(hits / k.clamp(min=1).double(), k == 0)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game: does the map's maximum fall on the mask (within ``tolerance`` pixels)?

    The point is the first maximum in row-major order (``argmax`` of the flattened map). It is a
    hit when it lies in the mask dilated by ``tolerance`` pixels in the Chebyshev metric (a
    ``(2·tolerance + 1)²`` max-pool), as in Zhang et al., "Top-down neural attention by
    excitation backprop", IJCV 2018 (who use 15 px at ImageNet scale).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps (float, finite).
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.
        tolerance (int, optional): dilation radius in pixels, ``>= 0``. Default: 0.

    Returns:
        BoolTensor[N]: hits. An empty mask is always a miss (:func:`score_maps` reports NaN).
    """
    maps = _as_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    _checks.check_positive_int(tolerance, "tolerance", minimum=0)
    n = maps.shape[0]
    if tolerance > 0:
        masks = F.max_pool2d(masks[:, None].float(), 2 * tolerance + 1, stride=1,
                             padding=tolerance)[:, 0] > 0
    point = maps.flatten(1).argmax(1)  # (N,): the first maximum
    return masks.flatten(1)[torch.arange(n, device=maps.device), point]


def map_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of the thresholded map ``{p : map(p) >= threshold}`` with the mask.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): maps on the scale of ``threshold``
            (FIDO's masks are in [0, 1]; other maps: :func:`normalize_maps` first).
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.
        threshold (float, optional): Default: 0.5.

    Returns:
        Tensor[N]: ``|A ∩ B| / |A ∪ B|`` (float64); NaN when both sets are empty.
    """
    maps = _as_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    threshold = _check_threshold(threshold)
    a = (maps >= threshold).flatten(1)
    b = masks.flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return _nan_where(inter / union.clamp(min=1), union == 0)


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise TypeError(f"threshold: expected a number, got {threshold!r}")
    return float(threshold)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Rasterises ``xyxy`` boxes: pixel ``(i, j)`` is in when its centre ``(j + ½, i + ½)`` is.

    Args:
        boxes (Tensor[N, 4]): ``x0, y0, x1, y1`` in pixel edges (float).
        height (int): H.
        width (int): W.

    Returns:
        BoolTensor[N, H, W].
    """
    _checks.check_positive_int(height, "height")
    _checks.check_positive_int(width, "width")
    boxes = _as_boxes(boxes, None)
    y = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5  # (H,)
    x = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5  # (W,)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))  # each (N, 1)
    rows = (y[None] >= y0) & (y[None] < y1)  # (N, H)
    cols = (x[None] >= x0) & (x[None] < x1)  # (N, W)
    return rows[:, :, None] & cols[:, None, :]


def _mask_boxes(masks: Tensor) -> tuple[Tensor, Tensor]:
    """The tight ``xyxy`` box (pixel edges) of each mask, and whether the mask is non-empty."""
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    # argmax of a bool row gives its first True; on the flipped row, its last.
    y0 = rows.int().argmax(1)
    y1 = h - rows.flip(1).int().argmax(1)
    x0 = cols.int().argmax(1)
    x1 = w - cols.flip(1).int().argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float(), rows.any(1)


def box_iou(maps: Tensor, boxes: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU between the box around the thresholded map and a ground-truth box.

    The predicted box is the tightest box (in pixel edges) around ``{p : map(p) >= threshold}``,
    as the SCD reference code (cvjena/fido-pytorch) scores masks against CUB's boxes.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): maps on the scale of ``threshold``.
        boxes (Tensor[N, 4]): ground-truth boxes, ``xyxy`` pixel edges.
        threshold (float, optional): Default: 0.5.

    Returns:
        Tensor[N]: float64. 0 when no pixel reaches the threshold (no box is predicted); NaN
        when that happens and the ground-truth box has no area either.
    """
    maps = _as_maps(maps)
    boxes = _as_boxes(boxes, maps.shape[0]).double()
    threshold = _check_threshold(threshold)
    pred, found = _mask_boxes(maps >= threshold)
    pred = pred.double().to(boxes.device)
    wh = (torch.minimum(pred[:, 2:], boxes[:, 2:]) - torch.maximum(pred[:, :2], boxes[:, :2])).clamp(min=0)
    inter = wh.prod(1) * found
    area_p = (pred[:, 2:] - pred[:, :2]).prod(1) * found
    area_b = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    union = area_p + area_b - inter
    return _nan_where(inter / union.clamp(min=torch.finfo(torch.float64).tiny), union == 0)


def mass_outside(maps: Tensor, masks: Tensor, threshold: float | None = None) -> Tensor:
    """How much of the map lies outside the mask.

    - ``threshold=None``: the share of the positive mass outside, ``1 − relevance_mass``;
    - a threshold: the share of salient pixels (``map >= threshold``) that lie outside the mask.
      With the ground-truth box as the mask this is the reference code's "false discovery
      rate" of a mask (cvjena/fido-pytorch).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps.
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks (see
            :func:`box_masks` for boxes).
        threshold (float, optional): Default: None (mass).

    Returns:
        Tensor[N]: in [0, 1] (float64); NaN when the map has no positive mass
        (``threshold=None``) or no salient pixel.
    """
    if threshold is None:
        return 1 - relevance_mass(maps, masks)
    maps = _as_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    salient = (maps >= _check_threshold(threshold)).flatten(1)
    n_salient = salient.sum(1)
    outside = (salient & ~masks.flatten(1)).sum(1).double()
    return _nan_where(outside / n_salient.clamp(min=1).double(), n_salient == 0)


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-map min–max scaling to [0, 1]: ``(m − min m) / (max m − min m)``.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): float maps.

    Returns:
        Tensor[N, H, W]: a constant map becomes all zeros.
    """
    maps = _as_maps(maps)
    lo = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp(min=torch.finfo(maps.dtype).tiny),
                       torch.zeros_like(maps))


def part_union_masks(part_masks: Tensor, parts: Tensor) -> Tensor:
    """Per image, the union of the pixels of the chosen part types.

    Args:
        part_masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): integer labels of
            :data:`fidobook.data.PART_NAMES` (0 = background).
        parts (BoolTensor[N, 5]): the part types to take for each image, in ``PART_TYPES``
            order (beak, eye, foot, tail, wing), e.g. ``discriminative_parts(classes)[labels]``.

    Returns:
        BoolTensor[N, H, W]: empty for an image with no part chosen.
    """
    part_masks = _checks.squeeze_channel(_checks.check_tensor(part_masks, "part_masks"), "part_masks")
    if part_masks.is_floating_point() or part_masks.dtype == torch.bool or part_masks.is_complex():
        raise TypeError(f"part_masks: expected an integer tensor of labels, got dtype {part_masks.dtype}")
    parts = _checks.check_tensor(parts, "parts")
    if parts.dtype != torch.bool:
        raise TypeError(f"parts: expected a BoolTensor, got dtype {parts.dtype}")
    if parts.shape != (part_masks.shape[0], len(PART_TYPES)):
        raise ValueError(f"parts: expected shape ({part_masks.shape[0]}, {len(PART_TYPES)}) "
                         f"(one row of {list(PART_TYPES)} per image), got {tuple(parts.shape)}")
    labels = torch.tensor([PART_LABELS[p] for p in PART_TYPES], device=part_masks.device)  # (5,)
    hit = part_masks.long()[:, None] == labels[None, :, None, None]  # (N, 5, H, W)
    return (hit & parts.to(part_masks.device)[:, :, None, None]).any(1)


# ------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion
# ------------------------------------------------------------------------------------------

def deletion_curve(model: nn.Module, images: Tensor, maps: Tensor, targets=None, *, steps: int = 16,
                   infill: str = "blur", max_batch: int | None = None) -> Tensor:
    """Deletion curve: the target's probability as the most relevant pixels are removed.

    Pixels are ranked by the map (descending; ties in row-major order, a stable sort). At step
    ``k = 0, …, steps`` the top ``⌊k · H W / steps⌋`` pixels are replaced by the infill, and the
    softmax probability of the target is read from the model (Petsiuk, Das, Saenko, "RISE",
    BMVC 2018). A faithful map makes the curve fall fast: a small :func:`curve_auc`.

    All ``N · (steps + 1)`` composites go through the model in chunks of ``max_batch`` (each
    built when its chunk runs), in eval mode with frozen parameters and without gradients.

    Args:
        model (nn.Module): images in [0, 1] → logits ``Tensor[N, K]``.
        images (Tensor[N, C, H, W]): images in [0, 1], on the model's device.
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps at image resolution.
        targets: int, sequence, ``LongTensor[N]``, or ``None`` (the prediction on the image).
        steps (int, optional): curve points minus one. Default: 16.
        infill (str, optional): a deterministic infill of :data:`fidobook.infill.INFILLS`
            (``blur``, ``mean``, ``zeros``, ``original``). Default: ``"blur"``.
        max_batch (int, optional): most composites per forward pass. Default: all at once.

    Returns:
        Tensor[N, steps + 1]: probabilities; column 0 is the intact image, the last column the
        infill alone.
    """
    return _perturbation_curve(model, images, maps, targets, steps, infill, max_batch, insert=False)


def insertion_curve(model: nn.Module, images: Tensor, maps: Tensor, targets=None, *, steps: int = 16,
                    infill: str = "blur", max_batch: int | None = None) -> Tensor:
    """Insertion curve: the target's probability as the most relevant pixels are put back.

    Starts from the infill and, at step ``k``, restores the image's top ``⌊k · H W / steps⌋``
    pixels (ranked as in :func:`deletion_curve`; Petsiuk, Das, Saenko, "RISE", BMVC 2018). A
    faithful map makes the curve rise fast: a large :func:`curve_auc`.

    Args: as :func:`deletion_curve`.

    Returns:
        Tensor[N, steps + 1]: probabilities; column 0 is the infill alone, the last column the
        intact image.
    """
    return _perturbation_curve(model, images, maps, targets, steps, infill, max_batch, insert=True)


def _perturbation_curve(model, images, maps, targets, steps, infill, max_batch, *, insert: bool) -> Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    _checks.check_images(images, channels=getattr(model, "in_channels", None))
    n, c, h, w = images.shape
    maps = _as_maps(maps)
    if maps.shape != (n, h, w):
        raise ValueError(f"maps: expected shape ({n}, {h}, {w}) (one map per image, at image "
                         f"resolution), got {tuple(maps.shape)}")
    _checks.check_positive_int(steps, "steps")
    deterministic = [k for k in INFILLS if k not in RANDOM_INFILLS]
    if infill in RANDOM_INFILLS:
        raise ValueError(f"infill: expected a deterministic infill {sorted(deterministic)} (a random "
                         f"one would make the curve depend on the draw), got {infill!r}")
    _checks.check_choice(infill, "infill", deterministic)
    if max_batch is not None:
        _checks.check_positive_int(max_batch, "max_batch")
    rows = n * (steps + 1)
    chunk = max_batch or rows

    fill = INFILLS[infill](images)  # (N, C, H, W)
    # rank[n, p]: position of pixel p in the image's descending order (0 = most relevant).
    order = torch.sort(maps.to(images.device).flatten(1), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=images.device).expand(n, -1))
    counts = torch.arange(steps + 1, device=images.device) * (h * w) // steps  # pixels changed at step k
    src, dst = (fill, images) if insert else (images, fill)  # start from src, move top pixels to dst
    probs = torch.empty(rows, device=images.device, dtype=images.dtype)
    with frozen_model(model) as m, torch.no_grad():
        if targets is None:
            targets = m(images).argmax(1)
        else:
            num_classes = _checks.check_logits_output(m(images[:1]), 1).shape[1]
            targets = _checks.check_targets(targets, n, num_classes, name="targets", device=images.device)
        for a in range(0, rows, chunk):
            b = min(a + chunk, rows)
            r = torch.arange(a, b, device=images.device)
            img, k = r // (steps + 1), r % (steps + 1)  # row r = (image, step) in C order
            moved = (rank[img] < counts[k, None]).view(-1, 1, h, w).to(images.dtype)  # (R, 1, H, W)
            composite = torch.addcmul(src[img], moved, dst[img] - src[img])
            logits = _checks.check_logits_output(m(composite), b - a)
            probs[a:b] = logits.softmax(1).gather(1, targets[img, None]).squeeze(1)
    return probs.view(n, steps + 1)


def curve_auc(curve: Tensor) -> Tensor:
    """Area under a curve sampled at ``x = 0, 1/T, …, 1`` (trapezoid rule).

    Args:
        curve (Tensor[N, T + 1]): e.g. a deletion or insertion curve, ``T >= 1``.

    Returns:
        Tensor[N]: ``Σ_k (y_k + y_{k+1}) / (2T)``.
    """
    curve = _checks.check_float(curve, "curve")
    if curve.ndim != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve: expected shape (N, T + 1) with T >= 1, got {tuple(curve.shape)}")
    _checks.check_finite(curve, "curve")
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


# ------------------------------------------------------------------------------------------
# Coherence
# ------------------------------------------------------------------------------------------

def normalized_tv(maps: Tensor) -> Tensor:
    """Total variation per neighbour pair: the mean ``|m(p) − m(q)|`` over the
    ``H (W − 1) + W (H − 1)`` horizontally and vertically adjacent pixel pairs.

    ``TV(m) = Σ |∂_y m| + Σ |∂_x m|`` (:func:`fidobook.total_variation`) divided by the number of
    pairs, so maps of different sizes compare. Lower = more coherent. For maps in [0, 1] it is
    in [0, 1].

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): float maps, ``H · W >= 2``.

    Returns:
        Tensor[N].
    """
    maps = _as_maps(maps)
    h, w = maps.shape[-2:]
    pairs = h * (w - 1) + w * (h - 1)
    if pairs == 0:
        raise ValueError(f"maps: expected at least two pixels per map, got {h}x{w}")
    return total_variation(maps) / pairs


# ------------------------------------------------------------------------------------------
# Everything at once
# ------------------------------------------------------------------------------------------

def score_maps(maps: Tensor, *, objects: Tensor | None = None, part_masks: Tensor | None = None,
               parts: Tensor | None = None, boxes: Tensor | None = None, threshold: float = 0.5,
               tolerance: int = 0) -> dict[str, Tensor]:
    """Every localisation score whose ground truth is given, and the normalised TV.

    Keys (each ``Tensor[N]``, float64, NaN where undefined for an image, in particular for every
    score against an empty ground-truth mask):

    - ``objects`` given: ``mass_object``, ``rank_object``, ``pointing_object``, ``iou_object``
      (:func:`map_iou` at ``threshold``);
    - ``part_masks`` and ``parts`` given: ``mass_parts``, ``rank_parts``, ``pointing_parts``
      against :func:`part_union_masks` (NaN for an image with no part chosen);
    - ``boxes`` given: ``box_iou`` and ``outside`` (the share of the pixels at or above
      ``threshold`` that lie outside the box);
    - always: ``tv`` (:func:`normalized_tv`).

    Pointing-game hits are 1.0 / 0.0, NaN for an empty mask. Thresholds apply to the maps as
    given: pass maps in [0, 1] (FIDO's masks, or :func:`normalize_maps`).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps at image resolution.
        objects (Tensor[N, H, W], optional): object segmentations (e.g. ``segmentations`` of
            :func:`fidobook.data.load_tensors`, uint8 0/255 with a channel of 1).
        part_masks (Tensor[N, H, W], optional): part labels.
        parts (BoolTensor[N, 5], optional): the part types that count, per image.
        boxes (Tensor[N, 4], optional): ground-truth boxes, ``xyxy`` pixel edges.
        threshold (float, optional): binarisation threshold. Default: 0.5.
        tolerance (int, optional): pointing-game tolerance in pixels. Default: 0.

    Returns:
        dict[str, Tensor[N]].
    """
    maps = _as_maps(maps)
    n, h, w = maps.shape
    out: dict[str, Tensor] = {}

    def localise(suffix: str, masks: Tensor) -> None:
        empty = ~masks.flatten(1).any(1)  # no ground truth: every score undefined
        out[f"mass_{suffix}"] = _nan_where(relevance_mass(maps, masks), empty)
        out[f"rank_{suffix}"] = relevance_rank(maps, masks)
        out[f"pointing_{suffix}"] = _nan_where(pointing_game(maps, masks, tolerance).double(), empty)

    if objects is not None:
        objects = _as_masks(objects, "objects")
        _same_shape(maps, objects, "objects")
        localise("object", objects)
        out["iou_object"] = _nan_where(map_iou(maps, objects, threshold), ~objects.flatten(1).any(1))
    if (part_masks is None) != (parts is None):
        missing = "parts" if parts is None else "part_masks"
        raise ValueError(f"{missing}: expected it together with "
                         f"{'part_masks' if missing == 'parts' else 'parts'}, got None")
    if part_masks is not None:
        union = part_union_masks(part_masks, parts)
        _same_shape(maps, union, "part_masks")
        localise("parts", union)
    if boxes is not None:
        boxes = _as_boxes(boxes, n)
        out["box_iou"] = box_iou(maps, boxes, threshold)
        out["outside"] = mass_outside(maps, box_masks(boxes, h, w), threshold)
    out["tv"] = normalized_tv(maps).double()
    return out
