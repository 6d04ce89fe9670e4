"""Maps and predictions read against the birds' parts: where a map's mass lies, which part
types separate two classes, in which part a classifier's errors lie.

The synthetic birds (:mod:`fidobook.data.birds`) come with a part-label mask per image (labels
of :data:`~fidobook.data.PART_NAMES`, 0 = background) and a class table (the variant of each of
:data:`~fidobook.data.PART_TYPES` per class). These helpers relate attribution maps and
classifier errors to that ground truth, vectorised over a batch::

    mass = part_mass(result.joint, test["part_masks"])       # (N, 8): share of each label
    area = part_mass(torch.ones_like(result.joint), test["part_masks"])  # the area shares
    errors = error_parts(labels, predictions, read_class_parts(root))
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks
from .data.birds import PART_NAMES, PART_TYPES

__all__ = ["PART_LABELS", "part_mass", "class_table", "discriminative_parts", "ErrorParts",
           "error_parts"]

#: The part-mask label of each varying part type: ``PART_LABELS["foot"] == PART_NAMES.index("foot")``.
PART_LABELS: dict[str, int] = {p: PART_NAMES.index(p) for p in PART_TYPES}


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
