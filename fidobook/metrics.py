"""How good is an attribution map? Scores against ground truth, faithfulness, coherence.

Three families, all vectorised over a batch of maps ``Tensor[N, H, W]`` (higher = more relevant):

- **localisation against ground truth** (an object segmentation, part masks, a box):
  :func:`relevance_mass` and :func:`relevance_rank` (Arras, Osman, Samek, 2022),
  :func:`pointing_game` (Zhang et al., 2018), :func:`map_iou`, :func:`box_iou` and
  :func:`mass_outside` (the box IoU and the share of salient pixels outside the box are modelled
  on the two metrics of the SCD reference code, cvjena/fido-pytorch, but are not the same
  numbers: each docstring says how they differ);
- **faithfulness to the model**: :func:`deletion_curve`, :func:`insertion_curve` and their
  :func:`curve_auc` (Petsiuk, Das, Saenko, 2018);
- **coherence**: :func:`normalized_tv`, the mean absolute difference between neighbouring pixels.

:func:`score_maps` computes every localisation score whose ground truth it is given, plus the
total variation. Boxes are ``Tensor[N, 4]`` in ``xyxy`` pixel edges (``x0, y0, x1, y1``); CUB's
``xywh`` boxes convert with ``torchvision.ops.box_convert(boxes, "xywh", "xyxy")``.

**Masks** follow the package's one rule (:mod:`fidobook._maps`), with a channel of 1 squeezed
everywhere: bool as is; integers must be 0/1 or 0/255 (non-zero = in), so part labels or grey
levels are an error, not a guess; floats must lie in [0, 1] and are in at ``>= 0.5``.

**Maps**: the scores that threshold a map (:func:`map_iou`, :func:`box_iou`,
:func:`mass_outside` with a threshold, and :func:`score_maps`, which applies its threshold to the
maps as given) need maps in [0, 1] and reject others (scale them with :func:`normalize_maps`). The
scale-free scores (relevance mass and rank, the pointing game, the curves) take any finite map;
relevance mass scores a signed map by its positive part.

A score that is undefined for an image is NaN, never a silent 0: relevance mass of a map without
positive mass, relevance rank against an empty mask, IoU when both sets are empty (the package's
one IoU, :func:`fidobook._maps.iou`). Average with ``torch.nanmean`` and report how many images
were left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks, _maps
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
    """``BoolTensor[N, H, W]`` by the package's one mask rule (:func:`fidobook._maps.as_masks`)."""
    return _maps.as_masks(masks, name)


def _as_unit_maps(maps, name: str = "maps") -> Tensor:
    """``Tensor[N, H, W]`` float, finite, in [0, 1]: maps a threshold on [0, 1] applies to."""
    maps = _as_maps(maps, name)
    if maps.numel() and (float(maps.min()) < 0 or float(maps.max()) > 1):
        raise ValueError(f"{name}: expected values in [0, 1] (the threshold applies to the maps as "
                         f"given: scale other maps with normalize_maps), got range "
                         f"[{float(maps.min()):.4g}, {float(maps.max()):.4g}]")
    return maps


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
    hit when a mask pixel lies within ``tolerance`` pixels of it in the **Chebyshev** metric,
    ``max(|Δrow|, |Δcol|) <= tolerance``: the mask dilated by a ``(2·tolerance + 1)²`` square
    (one max-pool for the whole batch). ``tolerance=0`` is the exact pixel.

    The benchmark of Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018
    (15 px at ImageNet scale) as TorchRay implements it (``torchray.benchmark.PointingGame``)
    uses a **disc** instead: a hit when a mask pixel lies at Euclidean distance strictly below
    ``tolerance`` (``Δrow² + Δcol² < tolerance²``, so its tolerance 0 accepts nothing). The
    square is used here because it is a separable max-pool, exact at 0, and at the book's image
    sizes tolerances are a few pixels, where the two differ only in the corners. The square of
    side ``2t + 1`` contains TorchRay's disc of radius ``t`` and lies inside the closed disc of
    radius ``t·√2``: a TorchRay hit at tolerance ``t`` is a hit here at ``t``, and a hit here at
    ``t`` is a TorchRay hit at ``⌊t·√2⌋ + 1``.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps (float, finite).
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.
        tolerance (int, optional): Chebyshev radius in pixels, ``>= 0``. Default: 0.

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

    The package's one IoU (:func:`fidobook._maps.iou`, also behind
    :func:`fidobook.models.mask_iou` and :func:`fidobook.overmap.overlap_iou`).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): maps in [0, 1] (FIDO's masks; other maps:
            :func:`normalize_maps` first); others are rejected.
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks.
        threshold (float, optional): in [0, 1]. Default: 0.5.

    Returns:
        Tensor[N]: ``|A ∩ B| / |A ∪ B|`` (float64); 0 when exactly one set is empty, NaN when
        both are (undefined).
    """
    maps = _as_unit_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    threshold = _check_threshold(threshold)
    return _maps.iou(maps >= threshold, masks)


def _check_threshold(threshold) -> float:
    """A threshold on the [0, 1] scale of the maps."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold: expected a number in [0, 1], got {threshold!r}")
    if not 0 <= threshold <= 1:  # NaN fails too
        raise ValueError(f"threshold: expected a number in [0, 1] (maps are in [0, 1]), got "
                         f"{threshold!r}")
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

    The predicted box is the tightest box, in pixel edges, around every pixel of
    ``{p : map(p) >= threshold}`` (no smoothing, no minimum size), and the IoU is that of the two
    boxes' areas.

    This is modelled on the box IoU of the SCD reference code (``fido.metrics.iou`` in
    cvjena/fido-pytorch), which scores masks against CUB's boxes, but it is **not the same
    number**. The reference (1) smooths the map with a Gaussian of σ = 3 px first
    (``scipy.ndimage.gaussian_filter``), (2) when no pixel exceeds the threshold, thresholds at
    the map's mean instead, (3) takes the box of the extreme salient pixel indices and enforces a
    minimum side of 32 px, and (4) rebuilds the box from its centre and size with integer
    halving, so it comes out one pixel short of the region (``x1 − x0`` pixels for a region
    spanning ``x1 − x0 + 1``). To score a smoothed map, smooth it first (e.g. the Gaussian of
    :func:`fidobook.enhance.region_masks`).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): maps in [0, 1]; others are rejected.
        boxes (Tensor[N, 4]): ground-truth boxes, ``xyxy`` pixel edges.
        threshold (float, optional): in [0, 1]. Default: 0.5.

    Returns:
        Tensor[N]: float64. 0 when no pixel reaches the threshold (no box is predicted); NaN
        when that happens and the ground-truth box has no area either.
    """
    maps = _as_unit_maps(maps)
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
    - a threshold: the share of the salient pixels (``map >= threshold``) that lie outside the
      mask, ``|S \\ M| / |S|``: with the mask as the positives this is the **false discovery
      rate** of the salient set, ``FP / (TP + FP)``.

    The SCD reference code (``fido.metrics.fdr`` in cvjena/fido-pytorch) reports a different
    number under the name "fdr": the salient pixels outside the ground-truth box divided by the
    **pixels outside the box**, ``|S \\ M| / |¬M| = FP / (FP + TN)`` (a false-positive rate).
    It also thresholds at the map's mean when no pixel exceeds the threshold, and returns 0 when
    nothing is salient or the box covers the image. The two agree only when ``|S| = |¬M|`` or
    no salient pixel lies outside.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps; in [0, 1] when a
            threshold is given (others are rejected), any finite map otherwise.
        masks (BoolTensor[N, H, W] or Tensor[N, 1, H, W]): ground-truth masks (see
            :func:`box_masks` for boxes).
        threshold (float, optional): in [0, 1]. Default: None (mass).

    Returns:
        Tensor[N]: in [0, 1] (float64); NaN when the map has no positive mass
        (``threshold=None``) or no salient pixel.
    """
    if threshold is None:
        return 1 - relevance_mass(maps, masks)
    maps = _as_unit_maps(maps)
    masks = _as_masks(masks)
    _same_shape(maps, masks, "masks")
    salient = (maps >= _check_threshold(threshold)).flatten(1)
    n_salient = salient.sum(1)
    outside = (salient & ~masks.flatten(1)).sum(1).double()
    return _nan_where(outside / n_salient.clamp(min=1).double(), n_salient == 0)


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-map min–max scaling to [0, 1]: ``(m − min m) / (max m − min m)``.

    The package's one normalisation (:func:`fidobook._maps.min_max`; Grad-CAM and
    :func:`fidobook.overmap.overlap_iou` use it too), computed in the maps' dtype.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): float, finite maps.

    Returns:
        Tensor[N, H, W]: a constant map (no location) becomes all zeros; every other map has
        minimum 0 and maximum 1.
    """
    return _maps.min_max(_as_maps(maps))


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
        images (Tensor[N, C, H, W]): images in [0, 1], on the model's device, with the model's
            channels (``model.in_channels`` when it declares them) and its parameters' dtype
            (checked; images that require grad are detached).
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
    # Channels against model.in_channels, dtype against the parameters; a graph is detached.
    images = _checks.check_model_inputs(images, model)
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
    given, so the maps must lie in [0, 1] (FIDO's masks, or :func:`normalize_maps`); other maps
    are rejected. ``objects`` must be a binary mask by the package's one rule (module docstring):
    part labels passed as ``objects`` are rejected (pass them as ``part_masks`` with ``parts``).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): attribution maps in [0, 1] at image
            resolution.
        objects (Tensor[N, H, W], optional): object segmentations: bool, integer 0/1 or 0/255
            (e.g. ``segmentations`` of :func:`fidobook.data.load_tensors` at their stored size,
            uint8 0/255 with a channel of 1), or float in [0, 1].
        part_masks (Tensor[N, H, W], optional): integer part labels.
        parts (BoolTensor[N, 5], optional): the part types that count, per image.
        boxes (Tensor[N, 4], optional): ground-truth boxes, ``xyxy`` pixel edges.
        threshold (float, optional): binarisation threshold, in [0, 1]. Default: 0.5.
        tolerance (int, optional): pointing-game tolerance in pixels (Chebyshev, see
            :func:`pointing_game`). Default: 0.

    Returns:
        dict[str, Tensor[N]].
    """
    maps = _as_unit_maps(maps)
    threshold = _check_threshold(threshold)
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
        # map_iou is NaN only when both are empty; score_maps leaves every score against an
        # empty ground truth undefined, the IoU included.
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
