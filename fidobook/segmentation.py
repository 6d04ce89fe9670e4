"""Object segmentations for Over-MAP: from the trained segmenter, or guided by a class activation map.

Over-MAP (Kantor et al., 2021) scores a prediction by how much of the model's attention falls on
the object; the object comes from a segmentation, and "a failed segmentation means estimation not
available". This module makes both kinds of segmentation and applies that rule:

- :func:`segment` thresholds the probabilities of a segmentation network
  (:class:`fidobook.models.SegNet`, trained by :func:`fidobook.workflow.prepare_segmenter`).
- :func:`guided_segmentation` refines a coarse object region with a class activation map (CAM,
  e.g. :func:`fidobook.cam.grad_cam`), in three steps, all vectorised over the batch:

  1. **box**: the bounding box of the thresholded segmentation ``p ≥ threshold`` (or a detector's
     box), widened by ``pad`` × its width and height on each side and clipped to the image;
  2. **refine**: inside the box, the score of a pixel is the geometric mean of the two maps,
     ``s = sqrt(p · c)``; outside the box ``s = 0``;
  3. **binarise**: the mask is ``s ≥ threshold``.

  So a pixel is kept when the segmentation *and* the CAM agree on it (``p · c ≥ threshold²``):
  with a sharp segmentation (``p ≈ 1`` on the object) this is the part of the object where the CAM
  reaches ``threshold²`` (0.25 at the default 0.5); with a detector's box (``p = 1`` in the box)
  it is the CAM thresholded at ``threshold²`` inside the box.

Both apply the **not-available rule**: a mask that is empty or covers less than ``min_area`` of
the image is not available; its ``available`` flag is False and its mask is all False (so an
overlap computed from it is 0, as Over-MAP prescribes).

:func:`object_segmentations` makes the kinds Over-MAP scores against (:data:`SEGMENTATION_KINDS`)
in one call: ``"plain"`` (:func:`segment`), ``"guided"`` (:func:`guided_segmentation` of the
plain probabilities and a CAM) and ``"true"`` (ground-truth object masks, the oracle, always
available); :func:`fidobook.overmap.overmap_scores` uses it batch by batch.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import _checks
from .fido import frozen_model
from .metrics import _mask_boxes, box_masks

__all__ = ["Segmentation", "segment", "guided_segmentation", "object_segmentations",
           "SEGMENTATION_KINDS"]

#: The segmentations :func:`object_segmentations` makes (and Over-MAP scores against).
SEGMENTATION_KINDS = ("guided", "plain", "true")


class Segmentation(NamedTuple):
    """Object masks with their availability.

    Attributes:
        masks (BoolTensor[N, H, W]): the object; all False where not available.
        available (BoolTensor[N]): False where the segmentation failed (empty or below
            ``min_area``).
        probs (Tensor[N, H, W]): the map that was thresholded: the segmenter's probabilities for
            :func:`segment`, the refined score ``sqrt(p · c)`` (0 outside the box) for
            :func:`guided_segmentation`.
    """

    masks: Tensor
    available: Tensor
    probs: Tensor


def _check_fraction(value, name: str) -> float:
    value = _checks.check_positive_float(value, name, allow_zero=True)
    if value > 1:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
    return value


def _check_maps(maps, name: str) -> Tensor:
    """``Tensor[N, H, W]`` (or ``[N, 1, H, W]``), float, finite, in [0, 1]."""
    maps = _checks.squeeze_channel(_checks.check_float(maps, name), name, non_empty=True)
    _checks.check_finite(maps, name)
    lo, hi = float(maps.min()), float(maps.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return maps


def _apply_min_area(masks: Tensor, min_area: float) -> tuple[Tensor, Tensor]:
    """The not-available rule: empty or ``area < min_area`` (fraction of the image) → unavailable."""
    area = masks.flatten(1).float().mean(1)  # (N,) fraction of the image
    available = masks.flatten(1).any(1) & (area >= min_area)
    return masks & available[:, None, None], available


def segment(model: nn.Module, images: Tensor, *, threshold: float = 0.5, min_area: float = 0.01,
            batch_size: int | None = None) -> Segmentation:
    """Segments images with a segmentation network and applies the not-available rule.

    Args:
        model (nn.Module): images in [0, 1] → logits ``Tensor[N, 1, H, W]`` (e.g. ``SegNet``), on the
            images' device; run in eval mode with frozen parameters (restored afterwards).
        images (Tensor[N, 3, H, W]): float in [0, 1].
        threshold (float, optional): object where the probability is ≥ this. Default: 0.5.
        min_area (float, optional): smallest mask, as a fraction of the image, that counts as a
            segmentation. Default: 0.01.
        batch_size (int, optional): images per forward pass; None: all at once. Default: None.

    Returns:
        Segmentation: ``masks`` BoolTensor[N, H, W] (all False where not available),
        ``available`` BoolTensor[N], ``probs`` Tensor[N, H, W] (sigmoid of the logits).
    """
    _checks.check_images(images)
    threshold = _check_fraction(threshold, "threshold")
    min_area = _check_fraction(min_area, "min_area")
    n, _, height, width = images.shape
    batch_size = n if batch_size is None else _checks.check_positive_int(batch_size, "batch_size")
    probs = []
    with frozen_model(model), torch.no_grad():
        for a in range(0, n, batch_size):
            x = images[a:a + batch_size]
            logits = model(x)
            if not isinstance(logits, Tensor) or logits.shape != (x.shape[0], 1, height, width):
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"model: expected logits of shape {(x.shape[0], 1, height, width)}, "
                                 f"got {got}")
            probs.append(torch.sigmoid(logits[:, 0]).to(images.dtype))
    probs = torch.cat(probs)  # (N, H, W)
    masks, available = _apply_min_area(probs >= threshold, min_area)
    return Segmentation(masks, available, probs)


def guided_segmentation(probs: Tensor | None, cams: Tensor, *, threshold: float = 0.5,
                        min_area: float = 0.01, pad: float = 0.1,
                        boxes: Tensor | None = None) -> Segmentation:
    """A segmentation refined with a class activation map (see the module docstring for the rule).

    Box of ``probs ≥ threshold`` (or ``boxes``), widened by ``pad``; inside it
    ``s = sqrt(probs · cams)``, outside 0; mask ``s ≥ threshold``; empty or smaller than
    ``min_area`` → not available.

    Args:
        probs (Tensor[N, H, W] or None): object probabilities in [0, 1] (``Segmentation.probs`` of
            :func:`segment`; a binary mask as float works too). None: only with ``boxes``, and then
            treated as 1 everywhere (the CAM alone decides inside the box).
        cams (Tensor[N, H, W]): class activation maps in [0, 1] (e.g. :func:`fidobook.cam.grad_cam`).
        threshold (float, optional): threshold of the segmentation (for its box) and of the refined
            score. Default: 0.5.
        min_area (float, optional): smallest refined mask, as a fraction of the image. Default: 0.01.
        pad (float, optional): the box is widened by this fraction of its width (height) on the
            left and the right (top and bottom), then clipped to the image. Default: 0.1.
        boxes (Tensor[N, 4], optional): ``xyxy`` boxes in pixel edges (e.g. from a detector, or
            ``torchvision.ops.box_convert(gt_xywh, "xywh", "xyxy")``) used instead of the
            segmentation's box. Default: None.

    Returns:
        Segmentation: ``masks`` (all False where not available), ``available``, and ``probs`` = the
        refined score ``s`` (0 outside the box).
    """
    cams = _check_maps(cams, "cams")
    n, height, width = cams.shape
    if probs is None:
        if boxes is None:
            raise ValueError("probs: expected a Tensor[N, H, W] of object probabilities, got None "
                             "(None needs boxes=...)")
        probs = torch.ones_like(cams)
    probs = _check_maps(probs, "probs")
    if probs.shape != cams.shape:
        raise ValueError(f"cams: expected shape {tuple(probs.shape)} (as probs), got {tuple(cams.shape)}")
    threshold = _check_fraction(threshold, "threshold")
    min_area = _check_fraction(min_area, "min_area")
    pad = _checks.check_positive_float(pad, "pad", allow_zero=True)

    if boxes is None:
        # The tight xyxy box (pixel edges) of the thresholded segmentation; none if it is empty.
        boxes, has_box = _mask_boxes(probs >= threshold)  # (N, 4), (N,)
    else:
        _checks.check_float(boxes, "boxes")
        if boxes.shape != (n, 4):
            raise ValueError(f"boxes: expected Tensor[{n}, 4] (x0, y0, x1, y1), got shape "
                             f"{tuple(boxes.shape)}")
        _checks.check_finite(boxes, "boxes")
        boxes = boxes.to(cams.device, cams.dtype)
        has_box = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes.to(cams.dtype)
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (N, 4): w, h, w, h
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=cams.device, dtype=cams.dtype)
    limit = torch.tensor([width, height, width, height], device=cams.device, dtype=cams.dtype)
    padded = torch.minimum(torch.clamp_min(boxes + sign * pad * size, 0), limit)
    inside = box_masks(padded, height, width) & has_box[:, None, None]  # (N, H, W)

    score = torch.where(inside, torch.sqrt(probs * cams), torch.zeros_like(cams))
    # ``inside &``: at threshold 0 the zero score outside the box must not count as object.
    masks, available = _apply_min_area(inside & (score >= threshold), min_area)
    return Segmentation(masks, available, score)


def object_segmentations(segmenter: nn.Module | None, images: Tensor, cams: Tensor | None = None, *,
                         kinds=("guided", "plain"), objects: Tensor | None = None,
                         threshold: float = 0.5, min_area: float = 0.01, pad: float = 0.1,
                         batch_size: int | None = None) -> dict[str, Segmentation]:
    """The segmentations Over-MAP scores against, by kind (:data:`SEGMENTATION_KINDS`).

    - ``"plain"``: :func:`segment` of ``images`` with ``segmenter``;
    - ``"guided"``: :func:`guided_segmentation` of the plain probabilities and ``cams`` (the
      segmenter's box, refined by the class activation map);
    - ``"true"``: the ground-truth ``objects`` (an oracle no deployed system has): ``masks`` the
      objects, ``available`` all True (the truth is never "not available"), ``probs`` the masks
      as 0/1 floats.

    Args:
        segmenter (nn.Module or None): images in [0, 1] → logits ``Tensor[N, 1, H, W]``; needed
            for ``"plain"`` and ``"guided"``.
        images (Tensor[N, 3, H, W]): float in [0, 1], on the segmenter's device.
        cams (Tensor[N, H, W], optional): class activation maps in [0, 1]; needed for
            ``"guided"``.
        kinds (sequence of str, optional): which segmentations, each once. Default:
            ``("guided", "plain")``.
        objects (Tensor[N, H, W], optional): object masks by the package's one rule (bool, 0/1 or
            0/255 integers, float >= 0.5 = in); needed for ``"true"``.
        threshold, min_area, pad: as for :func:`segment` and :func:`guided_segmentation`.
        batch_size (int, optional): images per forward pass of the segmenter; None: all at once.

    Returns:
        dict[str, Segmentation]: one per kind, in the order of ``kinds``; masks ``BoolTensor[N, H,
        W]``, ``available`` ``BoolTensor[N]``, ``probs`` ``Tensor[N, H, W]``, on the images'
        device.

    Raises:
        ValueError: an unknown or repeated kind, or a kind without what it needs (the message
            says which argument is missing).
    """
    kinds = _check_kinds(kinds)
    _checks.check_images(images)
    n, _, height, width = images.shape
    out: dict[str, Segmentation] = {}
    plain = None
    if "plain" in kinds or "guided" in kinds:
        if segmenter is None:
            raise ValueError(f"segmenter: expected a segmentation network for the kinds "
                             f"{[k for k in kinds if k != 'true']}, got None")
        plain = segment(segmenter, images, threshold=threshold, min_area=min_area,
                        batch_size=batch_size)
    if "guided" in kinds and cams is None:
        raise ValueError("cams: expected class activation maps Tensor[N, H, W] for the 'guided' "
                         "segmentation, got None")
    truth = None
    if "true" in kinds:
        if objects is None:
            raise ValueError("objects: expected ground-truth object masks Tensor[N, H, W] for the "
                             "'true' segmentation, got None")
        from ._maps import as_masks

        truth = as_masks(objects, "objects", non_empty=True).to(images.device)
        if truth.shape != (n, height, width):
            raise ValueError(f"objects: expected shape {(n, height, width)} (the images'), got "
                             f"{tuple(truth.shape)}")
    for kind in kinds:
        if kind == "plain":
            out[kind] = plain
        elif kind == "guided":
            out[kind] = guided_segmentation(plain.probs, cams, threshold=threshold,
                                            min_area=min_area, pad=pad)
        else:
            out[kind] = Segmentation(truth, torch.ones(n, dtype=torch.bool, device=images.device),
                                     truth.to(images.dtype))
    return out


def _check_kinds(kinds) -> tuple[str, ...]:
    """``kinds`` as a non-empty tuple of distinct :data:`SEGMENTATION_KINDS`."""
    if isinstance(kinds, str) or not isinstance(kinds, (tuple, list)):
        raise TypeError(f"kinds: expected a sequence of names among {list(SEGMENTATION_KINDS)}, "
                        f"got {kinds!r}")
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(f"kinds: expected at least one of {list(SEGMENTATION_KINDS)}, got none")
    for k in kinds:
        _checks.check_choice(k, "kinds", SEGMENTATION_KINDS)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: expected each kind once, got {list(kinds)}")
    return kinds
