"""Maps and predictions read against the birds' parts: where a map's mass lies, which part
types separate two classes, in which part a classifier's errors lie.

The synthetic birds (:mod:`fidobook.data.birds`) come with a part-label mask per image (labels
of :data:`~fidobook.data.PART_NAMES`, 0 = background) and a class table (the variant of each of
:data:`~fidobook.data.PART_TYPES` per class). These helpers relate attribution maps and
classifier errors to that ground truth, vectorised over a batch::

    mass = part_mass(result.joint, test["part_masks"])       # (N, 8): share of each label
    area = part_mass(torch.ones_like(result.joint), test["part_masks"])  # the area shares
    errors = error_parts(labels, predictions, read_class_parts(root))

Real data (CUB-200-2011) has no part masks, only keypoints with visibility flags.
:func:`keypoint_discs` turns those into part labels of the same form (0 = background, ``p + 1``
for part ``p``): a disc around each visible keypoint, its radius a fixed fraction
(:data:`DISC_RADIUS`) of the square root of the bird's box area, so that the discs scale with the
bird and not with the image.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import _checks
from .data.birds import PART_NAMES, PART_TYPES

__all__ = ["PART_LABELS", "part_mass", "class_table", "discriminative_parts", "ErrorParts",
           "error_parts", "DISC_RADIUS", "keypoint_discs", "disc_radii"]

#: The part-mask label of each varying part type: ``PART_LABELS["foot"] == PART_NAMES.index("foot")``.
PART_LABELS: dict[str, int] = {p: PART_NAMES.index(p) for p in PART_TYPES}


#: Radius of a keypoint disc, as a fraction of ``sqrt(box width * box height)``. On a CUB bird
#: filling a 224 px crop (a box of about 150 x 150 px) that is 15 px: about an eye with its
#: surroundings, a third of a wing, neighbouring keypoints (eyes, crown, forehead) sharing the
#: space between them.
DISC_RADIUS = 0.1
#: The smallest radius, px: every visible keypoint keeps at least the pixel it lies in.
_MIN_RADIUS = 1.0


def disc_radii(boxes: Tensor, radius: float = DISC_RADIUS) -> Tensor:
    """The disc radius of each image for :func:`keypoint_discs`:
    ``max(radius * sqrt(w * h), 1)`` px.

    Args:
        boxes (Tensor[N, 4]): x, y, w, h of the bird in pixels.
        radius (float, optional): the fraction. Default: :data:`DISC_RADIUS`.

    Returns:
        Tensor[N] (float64).
    """
    boxes = _checks.check_finite(_checks.check_tensor(boxes, "boxes"), "boxes")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (N, 4) (x, y, w, h), got {tuple(boxes.shape)}")
    radius = _checks.check_positive_float(radius, "radius")
    area = (boxes[:, 2].double().clamp(min=0) * boxes[:, 3].double().clamp(min=0))
    return (radius * area.sqrt()).clamp(min=_MIN_RADIUS)


def keypoint_discs(parts: Tensor, boxes: Tensor, size, *, radius: float = DISC_RADIUS,
                   dtype: torch.dtype = torch.long) -> Tensor:
    """Part labels from keypoints, for data without part masks: discs around the visible ones.

    Pixel (i, j) (centre ``(j + 0.5, i + 0.5)`` in the keypoints' continuous pixel coordinates)
    gets label ``p + 1`` when the visible keypoint of part ``p`` is the nearest visible keypoint
    of its image and lies within ``r`` of the centre, where ``r = max(radius * sqrt(w * h), 1)``
    px from the image's box (:func:`disc_radii`); otherwise 0 (background). Where discs overlap,
    the nearest keypoint wins (a tie goes to the lower part index). An image without a visible
    keypoint is all background.

    Args:
        parts (Tensor[N, P, 3]): x, y, visible per part (as :func:`fidobook.data.load_tensors`
            returns them, in pixels of the images).
        boxes (Tensor[N, 4]): x, y, w, h of each bird, in the same pixels.
        size (int or (int, int)): the images' H x W (an int: square).
        radius (float, optional): the disc radius as a fraction of ``sqrt(w * h)``.
            Default: :data:`DISC_RADIUS` (0.1).
        dtype (torch.dtype, optional): integer dtype of the result; ``torch.uint8`` takes an
            eighth of the memory (at most 255 parts). Default: ``torch.long``.

    Returns:
        Tensor[N, H, W] of ``dtype`` (LongTensor by default): 0 = background, ``p + 1`` = part p.

    Example::

        >>> parts = torch.tensor([[[2.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])   # part 0 at (2, 2)
        >>> keypoint_discs(parts, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 5)[0]   # r = 1 px
        tensor([[0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0]])
    """
    parts = _checks.check_tensor(parts, "parts")
    if parts.ndim != 3 or parts.shape[2] != 3:
        raise ValueError(f"parts: expected shape (N, P, 3) (x, y, visible), got {tuple(parts.shape)}")
    if not parts.is_floating_point():
        parts = parts.double()
    _checks.check_finite(parts, "parts")
    radii = disc_radii(boxes, radius)  # (N,)
    if boxes.shape[0] != parts.shape[0]:
        raise ValueError(f"parts, boxes: expected one box per image, got {parts.shape[0]} images "
                         f"and {boxes.shape[0]} boxes")
    if isinstance(size, (tuple, list)) and len(size) == 2:
        H, W = (_checks.check_positive_int(v, "size") for v in size)
    else:
        H = W = _checks.check_positive_int(size, "size")
    if (not isinstance(dtype, torch.dtype) or dtype.is_floating_point or dtype.is_complex
            or dtype == torch.bool):
        raise TypeError(f"dtype: expected an integer torch.dtype, got {dtype!r}")
    N, P, _ = parts.shape
    if P + 1 > torch.iinfo(dtype).max + 1:
        raise ValueError(f"dtype: expected one that holds labels up to {P}, got {dtype}")
    work = np.uint8 if P < 256 else np.int64  # labels 0..P; uint8 keeps CUB's split small
    labels = _discs(parts.detach().cpu().double().numpy(), radii.cpu().numpy(), H, W, work)
    return torch.from_numpy(labels).to(dtype)


def _discs(parts: np.ndarray, radii: np.ndarray, H: int, W: int, dtype) -> np.ndarray:
    """keypoint_discs' worker: each visible keypoint updates only the window its disc can reach.

    Pixel centres within ``r`` of a keypoint lie in its window; a pixel takes the label of the
    nearest such keypoint (strictly nearer than the ones before: a tie keeps the lower part), so
    the result equals the nearest visible keypoint over the whole image, kept within ``r``.
    About 20 µs per keypoint: CUB's test split (5,794 images, 15 parts) at 224 px in seconds.
    """
    N, P, _ = parts.shape
    out = np.zeros((N, H, W), dtype)  # [N, H, W]
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5  # pixel centres
    best = np.empty((H, W))
    for n in range(N):
        r = float(radii[n])
        best.fill(np.inf)
        for p in np.flatnonzero(parts[n, :, 2] > 0):
            x, y = float(parts[n, p, 0]), float(parts[n, p, 1])
            # pixels j with |j + 0.5 - x| <= r (a pixel more is harmless: the distance decides)
            j0, j1 = max(0, math.floor(x - r - 0.5)), min(W, math.floor(x + r - 0.5) + 1)
            i0, i1 = max(0, math.floor(y - r - 0.5)), min(H, math.floor(y + r - 0.5) + 1)
            if j0 >= j1 or i0 >= i1:
                continue  # the disc misses the image
            d2 = (ys[i0:i1, None] - y) ** 2 + (xs[None, j0:j1] - x) ** 2  # [h, w]
            window = best[i0:i1, j0:j1]  # views: the updates land in best and out
            take = (d2 <= r * r) & (d2 < window)
            window[take] = d2[take]
            out[n, i0:i1, j0:j1][take] = p + 1
    return out


def part_mass(maps: Tensor, part_masks: Tensor, num_labels: int | None = None) -> Tensor:
    """Share of each map's total mass that lies on each part label.

    ``mass[n, l] = Σ_{p : label_n(p) = l} map_n(p) / Σ_p map_n(p)``, computed with one
    ``scatter_add`` for the whole batch. A map of ones gives the area share of each label.

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): non-negative maps (attribution, attention).
        part_masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): integer part labels in
            ``[0, num_labels)`` (0 = background, see ``PART_NAMES``).
        num_labels (int, optional): L, the number of labels. Default: ``len(PART_NAMES)`` (8).

    Returns:
        Tensor[N, L]: each row sums to 1 (float64); a row whose map has no mass is NaN.

    Example::

        >>> m = torch.tensor([[[1.0, 3.0]]]); labels = torch.tensor([[[0, 5]]])
        >>> part_mass(m, labels, 8)[0, 5]
        tensor(0.7500, dtype=torch.float64)
    """
    maps = _checks.squeeze_channel(_checks.check_float(maps, "maps"), "maps")
    part_masks = _checks.squeeze_channel(_checks.check_tensor(part_masks, "part_masks"),
                                         "part_masks")
    if part_masks.is_floating_point() or part_masks.dtype == torch.bool:
        raise TypeError(f"part_masks: expected an integer tensor of labels, got dtype {part_masks.dtype}")
    if maps.shape != part_masks.shape:
        raise ValueError(f"maps, part_masks: expected the same (N, H, W) shape, got "
                         f"{tuple(maps.shape)} and {tuple(part_masks.shape)}")
    _checks.check_finite(maps, "maps")
    if maps.numel() and float(maps.min()) < 0:
        raise ValueError(f"maps: expected non-negative values, got a minimum of {float(maps.min()):.4g}")
    num_labels = len(PART_NAMES) if num_labels is None else _checks.check_positive_int(num_labels, "num_labels")
    labels = part_masks.flatten(1).long()  # (N, H*W)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"part_masks: expected labels in [0, {num_labels - 1}], got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    values = maps.flatten(1).double()  # (N, H*W)
    mass = torch.zeros((values.shape[0], num_labels), dtype=torch.float64, device=values.device)
    mass.scatter_add_(1, labels.to(values.device), values)  # (N, L)
    total = mass.sum(1, keepdim=True)  # (N, 1)
    return mass / total.where(total > 0, torch.full_like(total, float("nan")))


def class_table(classes: Sequence[Mapping[str, int]]) -> Tensor:
    """The class table as a tensor: row k holds class k's variant of each part type.

    Args:
        classes (list of dict): K dicts ``{"beak": b, "eye": e, ...}``
            (:func:`fidobook.data.read_class_parts`, :func:`fidobook.data.class_parts`).

    Returns:
        LongTensor[K, 5]: columns in ``PART_TYPES`` order.
    """
    if isinstance(classes, Mapping) or not isinstance(classes, Sequence) or not classes:
        raise TypeError(f"classes: expected a non-empty list of part dicts, got {type(classes).__name__}")
    rows = []
    for k, c in enumerate(classes):
        if not isinstance(c, Mapping) or set(c) != set(PART_TYPES):
            raise ValueError(f"classes[{k}]: expected a dict with the keys {list(PART_TYPES)}, got {c!r}")
        rows.append([int(c[p]) for p in PART_TYPES])
    return torch.tensor(rows, dtype=torch.long)


def discriminative_parts(classes: Sequence[Mapping[str, int]]) -> Tensor:
    """For each class, the part types that alone separate it from another class.

    Part type ``p`` is discriminative for class ``k`` when some class differs from ``k`` in
    ``p`` and in nothing else: that part is then the only evidence that tells the two apart.

    Returns:
        BoolTensor[K, 5]: columns in ``PART_TYPES`` order.
    """
    table = class_table(classes)  # (K, 5)
    differ = table[:, None, :] != table[None, :, :]  # (K, K, 5)
    single = differ.sum(-1) == 1  # (K, K): pairs one part apart
    return (differ & single[..., None]).any(dim=1)  # (K, 5)


class ErrorParts(NamedTuple):
    """Result of :func:`error_parts`.

    Attributes:
        index (LongTensor[E]): positions of the errors in the inputs.
        distance (LongTensor[E]): number of part types in which true and predicted class differ.
        differs (BoolTensor[E, 5]): the part types in which they differ (``PART_TYPES`` order).
    """

    index: Tensor
    distance: Tensor
    differs: Tensor


def error_parts(targets: Tensor, predictions: Tensor,
                classes: Sequence[Mapping[str, int]]) -> ErrorParts:
    """In which part types the true and the predicted class of each error differ.

    Args:
        targets (LongTensor[N]): true classes.
        predictions (LongTensor[N]): predicted classes.
        classes (list of dict): the K classes' part variants.

    Returns:
        ErrorParts: ``(index, distance, differs)`` for the E predictions that are wrong.
    """
    table = class_table(classes)
    k = table.shape[0]
    targets = _checks.check_targets(targets, _len(targets), k, name="targets")
    predictions = _checks.check_targets(predictions, targets.numel(), k, name="predictions")
    index = torch.nonzero(targets != predictions).flatten()  # (E,)
    differs = table[targets[index]] != table[predictions[index]]  # (E, 5)
    return ErrorParts(index, differs.sum(1), differs)


def _len(x) -> int:
    if isinstance(x, Tensor):
        return x.numel()
    if isinstance(x, Sequence):
        return len(x)
    raise TypeError(f"targets: expected a LongTensor or a sequence of ints, got {type(x).__name__}")
