"""Over-MAP: confidence from where the classifier looks, and the tools to judge any confidence.

Over-MAP (Kantor et al., AAAI 2021) scores a prediction by the **overlap** between the model's
attention (Grad-CAM, CBAM spatial attention, or any attribution map) and a segmentation of the
object; a failed segmentation means "estimation not available" and the overlap is 0::

    seg = guided_segmentation(probs, cams)                  # masks (N, H, W), available (N,)
    confidence = overlap_mass(cams, seg.masks, seg.available)   # Tensor[N] in [0, 1]

A confidence score is judged by **selective classification**: accept the most confident
predictions, reject the rest, and look at the risk of what is accepted::

    coverage, risk = risk_coverage(confidence, correct)     # the risk–coverage curve
    aurc(confidence, correct), e_aurc(...), augrc(...)      # its areas
    rejection_table(confidence, logits, labels)             # the paper's table: top-1/top-3,
                                                            # micro and macro, per rejection rate

Baselines: the maximum softmax probability, the negative predictive entropy, and Monte-Carlo
dropout (predictive entropy and mutual information over T stochastic passes).

The whole pipeline, batched (attention source → segmentation → overlap), is one call::

    scores = overmap_scores(model, images, segmenter=segnet)   # dict of Tensor[N]
    scores["gradcam/guided"]       # Grad-CAM mass inside the guided segmentation: Over-MAP
    scores["available/guided"]     # whether that segmentation was available
    compare_scores("e_aurc", scores["gradcam/guided"], max_softmax(logits), correct,
                   generator=0)    # a paired bootstrap comparison and its verdict word

Conventions:

- ``confidence``: ``Tensor[N]`` or ``ndarray[N]``, higher = more certain; NaN is an error.
- ``correct``: ``BoolTensor[N]`` (or a boolean array): whether the prediction was right.
- **Ties** in the risk–coverage curve and its areas are handled by expectation: within a block of
  equal confidences, the samples are accepted in a random order, and the curves report the
  expected value over those orders (the block's errors spread evenly over its positions). The
  curves therefore do not depend on the order of the inputs. The rejection table, which reports
  per-class accuracies of one concrete accepted set, breaks ties by input order instead (stable
  sort: among equal confidences the earlier sample is accepted first), or at random when given a
  ``generator`` (:func:`accept_order`). Ties are common: a saturated softmax gives many
  probabilities of exactly 1, and "not available" many overlaps of exactly 0; when the inputs
  are sorted (say, by case), breaking such ties by input order favours some inputs.
- Curves are float64 tensors on the CPU; scalar areas are Python floats.
- ``labels`` may hold −1 for a bird of no known class (the "novel" hard case): such a prediction
  is always wrong.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import _checks, _maps
from .models.cnn import mc_dropout
from .segmentation import SEGMENTATION_KINDS, Segmentation, object_segmentations
from .stats import Comparison, bootstrap_indices, percentile_interval, verdict

__all__ = [
    "overmap_scores", "overmap_maps", "attention_sources", "SOURCES", "compare_scores",
    "compare_rejection",
    "overlap_mass", "overlap_iou",
    "risk_coverage", "aurc", "e_aurc", "augrc", "auroc", "bootstrap",
    "rejection_table", "REJECTION_RATES", "accept_order", "topk_correct",
    "max_softmax", "negative_entropy", "mc_dropout_probs", "mc_dropout_scores",
]

#: Rejection rates of the default table: the paper's 12–18 % window and a few around it.
REJECTION_RATES = (0.0, 0.05, 0.10, 0.12, 0.15, 0.18, 0.20, 0.25, 0.30)


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------

def _as_tensor(x, name: str) -> Tensor:
    """A tensor from a Tensor, an ndarray or a sequence; anything else is a TypeError."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(x)
        except ValueError as err:  # ragged nesting
            raise ValueError(f"{name}: expected a flat sequence of numbers, got a ragged one "
                             f"({err})") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected numbers (or booleans), got an array of "
                            f"{array.dtype} values")
        return torch.from_numpy(np.ascontiguousarray(array))
    raise TypeError(f"{name}: expected a Tensor, a numpy array or a sequence, got {type(x).__name__}")


def _as_confidence(confidence, name: str = "confidence") -> Tensor:
    """``Tensor[N]`` float64 on the CPU; non-empty, 1-D, numeric, no NaN (±inf is ordered)."""
    c = _as_tensor(confidence, name)
    if c.dtype == torch.bool or c.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {c.dtype}")
    if c.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (N,), got shape {tuple(c.shape)}")
    if c.numel() == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty array")
    c = c.detach().to("cpu", torch.float64)
    if bool(torch.isnan(c).any()):
        raise ValueError(f"{name}: expected no NaN, got {int(torch.isnan(c).sum())} NaN entries")
    return c


def _as_correct(correct, n: int, name: str = "correct") -> Tensor:
    """``BoolTensor[n]`` on the CPU."""
    c = _as_tensor(correct, name)
    if c.dtype != torch.bool:
        raise TypeError(f"{name}: expected booleans (whether each prediction is right), got "
                        f"dtype {c.dtype}")
    if c.ndim != 1 or c.numel() != n:
        raise ValueError(f"{name}: expected shape ({n},) like confidence, got {tuple(c.shape)}")
    return c.detach().cpu()


def _pair(confidence, correct) -> tuple[Tensor, Tensor]:
    conf = _as_confidence(confidence)
    return conf, _as_correct(correct, conf.numel())


def _as_logits(logits, name: str = "logits") -> Tensor:
    """``Tensor[N, K]`` float, finite, K >= 2 (a Tensor or an ndarray)."""
    x = _as_tensor(logits, name)
    _checks.check_float(x, name)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"{name}: expected a non-empty Tensor[N, K] with K >= 2, got shape "
                         f"{tuple(x.shape)}")
    return _checks.check_finite(x, name)


def _as_labels(labels, n: int, num_classes: int, name: str = "labels") -> Tensor:
    """``LongTensor[n]`` in ``[-1, K)`` (−1: no known class)."""
    y = _as_tensor(labels, name)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if y.ndim != 1 or y.numel() != n:
        raise ValueError(f"{name}: expected shape ({n},) (one per row of logits), got "
                         f"{tuple(y.shape)}")
    y = y.long()
    if int(y.min()) < -1 or int(y.max()) >= num_classes:
        raise ValueError(f"{name}: expected class indices in [-1, {num_classes - 1}] (−1: no "
                         f"known class), got range [{int(y.min())}, {int(y.max())}]")
    return y


# --------------------------------------------------------------------------------------------
# Overlap scores
# --------------------------------------------------------------------------------------------

def _overlap_inputs(maps, segmentations, available):
    """Checked ``(maps Tensor[N, H, W], masks BoolTensor[N, H, W], available BoolTensor[N])``."""
    if available is None and hasattr(segmentations, "available") and hasattr(segmentations, "masks"):
        available = segmentations.available  # a Segmentation (masks, available, probs)
    if hasattr(segmentations, "masks") and not isinstance(segmentations, Tensor):
        segmentations = segmentations.masks
    maps = _checks.squeeze_channel(_checks.check_float(maps, "maps"), "maps", non_empty=True)
    _checks.check_finite(maps, "maps")
    if float(maps.min()) < 0:
        raise ValueError(f"maps: expected non-negative values (higher = more relevant), got a "
                         f"minimum of {float(maps.min()):.4g}")
    masks = _maps.as_masks(segmentations, "segmentations", non_empty=True).to(maps.device)
    if masks.shape != maps.shape:
        raise ValueError(f"segmentations: expected the maps' shape {tuple(maps.shape)}, got "
                         f"{tuple(masks.shape)}")
    n = maps.shape[0]
    if available is None:
        available = torch.ones(n, dtype=torch.bool, device=maps.device)
    else:
        _checks.check_tensor(available, "available")
        if available.dtype != torch.bool or available.shape != (n,):
            raise ValueError(f"available: expected a BoolTensor[{n}], got dtype {available.dtype} "
                             f"and shape {tuple(available.shape)}")
        available = available.to(maps.device)
    return maps, masks, available


def overlap_mass(maps: Tensor, segmentations, available: Tensor | None = None) -> Tensor:
    """Share of each map's mass that lies inside the segmentation: Over-MAP's overlap score.

    ``overlap[n] = Σ_p map_n(p) · seg_n(p) / Σ_p map_n(p)``, and 0 where the segmentation is
    not available (the paper's rule: no mask, no estimate, lowest confidence) or where the map
    has no mass at all (a model that looks nowhere is not confident).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): non-negative attention or attribution maps
            at the segmentation's resolution.
        segmentations (Tensor[N, H, W] or Tensor[N, 1, H, W]): object masks by the package's
            one rule (:mod:`fidobook._maps`): bool; integer 0/1 or 0/255 (non-zero = in; other
            values, e.g. part labels, are an error); float in [0, 1] (>= 0.5 = in). A
            ``Segmentation`` (with ``masks`` and ``available``) is accepted too.
        available (BoolTensor[N], optional): whether each segmentation succeeded. Default: all
            (or the ``Segmentation``'s own flags).

    Returns:
        Tensor[N]: float64 in [0, 1], on the maps' device.

    Examples::

        >>> maps = torch.tensor([[[1.0, 3.0]], [[1.0, 1.0]]])        # (2, 1, 2)
        >>> seg = torch.tensor([[[False, True]], [[True, True]]])
        >>> overlap_mass(maps, seg, torch.tensor([True, False]))
        tensor([0.7500, 0.0000], dtype=torch.float64)
    """
    maps, masks, available = _overlap_inputs(maps, segmentations, available)
    values = maps.flatten(1).double()  # (N, H*W)
    total = values.sum(1)  # (N,)
    inside = (values * masks.flatten(1)).sum(1)  # (N,)
    mass = inside / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(available & (total > 0), mass, torch.zeros_like(mass))


def overlap_iou(maps: Tensor, segmentations, threshold: float = 0.5,
                available: Tensor | None = None, *, normalize: bool = True) -> Tensor:
    """IoU between the thresholded map and the segmentation, with Over-MAP's "not available = 0".

    Each map is first min-max normalised to [0, 1] (``normalize=True``, the package's one
    normalisation, :func:`fidobook.metrics.normalize_maps`: the threshold is then a share of the
    map's own range, as for a Grad-CAM map; a constant map becomes zeros, an empty region), then
    ``region = map >= threshold`` and the IoU of ``region`` and the segmentation is the
    package's one IoU (:func:`fidobook._maps.iou`, as :func:`fidobook.metrics.map_iou` and
    :func:`fidobook.models.mask_iou`), which is undefined (NaN) when both are empty.

    Over-MAP's policy is applied on top of it, because a confidence must be a number for every
    prediction: the score is **0** where the segmentation is not available (the paper's rule: no
    mask, no estimate, lowest confidence) and where the IoU is undefined (an empty region and an
    empty segmentation: the attention marks no place on no object, which is no evidence either).

    Args:
        maps (Tensor[N, H, W] or Tensor[N, 1, H, W]): non-negative maps.
        segmentations: object masks, as for :func:`overlap_mass`.
        threshold (float, optional): in (0, 1]. Default: 0.5.
        available (BoolTensor[N], optional): as for :func:`overlap_mass`.
        normalize (bool, optional): min-max normalise each map first. Default: True.

    Returns:
        Tensor[N]: float64 in [0, 1], on the maps' device.
    """
    threshold = _checks.check_positive_float(threshold, "threshold")
    if threshold > 1:
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {normalize!r}")
    maps, masks, available = _overlap_inputs(maps, segmentations, available)
    if normalize:
        maps = _maps.min_max(maps)
    iou = _maps.iou(maps >= threshold, masks)  # (N,) NaN where both are empty
    return torch.where(available & ~torch.isnan(iou), iou, torch.zeros_like(iou))


# --------------------------------------------------------------------------------------------
# The pipeline: attention source → segmentation → overlap, batched
# --------------------------------------------------------------------------------------------

#: The attention sources :func:`overmap_scores` computes itself: ``"gradcam"``, Grad-CAM of the
#: target class (:func:`fidobook.cam.grad_cam`), and ``"cbam"``, the spatial attention of the
#: model's CBAM blocks (:func:`fidobook.cam.cbam_attention`, the same for every class).
SOURCES = ("gradcam", "cbam")


def attention_sources(model: nn.Module) -> tuple[str, ...]:
    """The :data:`SOURCES` a model has: ``"gradcam"`` when it names its Grad-CAM layer
    (``model.cam_layer``, as fidobook's classifiers do), ``"cbam"`` when it has CBAM blocks
    (``model.cbam_modules`` not empty; a plain ResNet has none).

    Args:
        model (nn.Module): a classifier.

    Returns:
        tuple of str: in the order of :data:`SOURCES`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    out = []
    if isinstance(getattr(model, "cam_layer", None), nn.Module):
        out.append("gradcam")
    if list(getattr(model, "cbam_modules", None) or []):
        out.append("cbam")
    return tuple(out)


def _names(values, name: str, choices: Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """``values`` as a tuple of distinct names among ``choices``."""
    if isinstance(values, str) or not isinstance(values, (tuple, list)):
        raise TypeError(f"{name}: expected a sequence of names among {list(choices)}, got {values!r}")
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{name}: expected at least one of {list(choices)}, got none")
    for v in values:
        _checks.check_choice(v, name, choices)
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected each name once, got {list(values)}")
    return values


class _Pipeline:
    """The checked arguments of :func:`overmap_scores` / :func:`overmap_maps`."""

    def __init__(self, model, images, targets, segmenter, objects, sources, segmentations,
                 extra_maps, batch_size, layer):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        _checks.check_tensor(images, "images")
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
            raise ValueError(f"images: expected a non-empty Tensor[N, C, H, W], got shape "
                             f"{tuple(images.shape)}")
        channels = getattr(model, "in_channels", None)
        if channels is not None and images.shape[1] != channels:
            raise ValueError(f"images: expected {channels} channels (model.in_channels), got "
                             f"{images.shape[1]} (shape {tuple(images.shape)})")
        if images.dtype != torch.uint8:
            _checks.check_images(images.detach(), "images")  # float in [0, 1]
        n, _, height, width = images.shape
        self.sources = _names(sources, "sources", SOURCES, allow_empty=True)
        self.kinds = _names(segmentations, "segmentations", SEGMENTATION_KINDS)
        if "cbam" in self.sources and "cbam" not in attention_sources(model):
            raise ValueError(f"sources: 'cbam' needs CBAM blocks, and {type(model).__name__} has "
                             f"none (no model.cbam_modules): leave 'cbam' out "
                             f"(attention_sources(model) = {list(attention_sources(model))})")
        if segmenter is None and any(k != "true" for k in self.kinds):
            raise ValueError(f"segmenter: expected a segmentation network for the segmentations "
                             f"{[k for k in self.kinds if k != 'true']}, got None")
        if segmenter is not None and not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter: expected an nn.Module, got {type(segmenter).__name__}")
        self.objects = None
        if "true" in self.kinds:
            if objects is None:
                raise ValueError("objects: expected ground-truth object masks Tensor[N, H, W] for "
                                 "the 'true' segmentation, got None")
            self.objects = _maps.as_masks(objects, "objects", non_empty=True)
            if self.objects.shape != (n, height, width):
                raise ValueError(f"objects: expected shape {(n, height, width)} (the images'), got "
                                 f"{tuple(self.objects.shape)}")
        self.targets = None
        if targets is not None:
            k = getattr(model, "num_classes", None)
            self.targets = _checks.check_targets(targets, n, k if isinstance(k, int) else None)
        self.extra = {}
        if extra_maps is not None:
            if not isinstance(extra_maps, dict):
                raise TypeError(f"extra_maps: expected a dict name -> Tensor[N, H, W], got "
                                f"{type(extra_maps).__name__}")
            for key, value in extra_maps.items():
                where = f"extra_maps[{key!r}]"
                if not isinstance(key, str) or not key or "/" in key or key in SOURCES \
                        or key == "available":
                    raise ValueError(f"extra_maps: expected names without '/' other than "
                                     f"{list(SOURCES)} and 'available', got {key!r}")
                m = _checks.squeeze_channel(_checks.check_float(value, where), where, non_empty=True)
                _checks.check_finite(m, where)
                if m.shape != (n, height, width):
                    raise ValueError(f"{where}: expected shape {(n, height, width)} (the images'), "
                                     f"got {tuple(m.shape)}")
                if float(m.min()) < 0:
                    raise ValueError(f"{where}: expected non-negative values, got a minimum of "
                                     f"{float(m.min()):.4g}")
                self.extra[key] = m.detach()
        if not self.sources and not self.extra:
            raise ValueError("sources: expected at least one attention source (sources or "
                             "extra_maps), got none")
        self.batch_size = n if batch_size is None else _checks.check_positive_int(batch_size,
                                                                                  "batch_size")
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else images.device
        self.dtype = _checks.model_dtype(model) or torch.float32
        self.model, self.images, self.segmenter, self.layer = model, images, segmenter, layer
        self.n = n

    def batch(self, a: int, b: int) -> tuple[dict[str, Tensor], dict[str, Segmentation]]:
        """Maps ``Tensor[B, H, W]`` by source and segmentations by kind of images ``[a, b)``, on
        the model's device."""
        from .cam import cbam_attention, grad_cam  # cam imports captum on use

        x = self.images[a:b].to(self.device)
        x = x.to(self.dtype).div_(255) if x.dtype == torch.uint8 else x  # (B, C, H, W)
        t = None if self.targets is None else self.targets[a:b].to(self.device)
        cam = None
        if "gradcam" in self.sources or "guided" in self.kinds:
            cam = grad_cam(self.model, x, t, layer=self.layer)  # (B, H, W) in [0, 1]
        maps = {}
        if "gradcam" in self.sources:
            maps["gradcam"] = cam
        if "cbam" in self.sources:
            maps["cbam"] = cbam_attention(self.model, x)  # (B, H, W)
        for key, m in self.extra.items():
            maps[key] = m[a:b].to(self.device)
        truth = None if self.objects is None else self.objects[a:b].to(self.device)
        segs = object_segmentations(self.segmenter, x, cam, kinds=self.kinds, objects=truth)
        return maps, segs


def overmap_scores(model: nn.Module, images: Tensor, targets=None, *,
                   segmenter: nn.Module | None = None, objects: Tensor | None = None,
                   sources: Sequence[str] = SOURCES,
                   segmentations: Sequence[str] = ("guided", "plain"),
                   extra_maps: dict[str, Tensor] | None = None, iou_threshold: float = 0.5,
                   batch_size: int | None = None, layer: nn.Module | None = None
                   ) -> dict[str, Tensor]:
    """Over-MAP's confidences for a batch of predictions: attention → segmentation → overlap.

    For each batch of ``batch_size`` images (moved to the model's device, uint8 scaled to [0, 1]):

    1. the attention maps: Grad-CAM of ``targets`` (``"gradcam"``, :func:`fidobook.cam.grad_cam`)
       and the CBAM spatial attention (``"cbam"``, :func:`fidobook.cam.cbam_attention`), plus any
       precomputed ``extra_maps`` (e.g. FIDO's joint masks);
    2. the segmentations (:func:`fidobook.segmentation.object_segmentations`): ``"plain"`` (the
       segmenter's mask), ``"guided"`` (its box refined with the Grad-CAM map of ``targets``,
       :func:`fidobook.segmentation.guided_segmentation`; the paper's guided segmentation) and
       ``"true"`` (``objects``, the oracle); empty or tiny masks are *not available*;
    3. the overlaps of every map with every segmentation: :func:`overlap_mass` (Over-MAP's score)
       and :func:`overlap_iou`, both 0 where the segmentation is not available.

    Only the per-image numbers are kept, so memory does not grow with N beyond the inputs; the
    scores do not depend on ``batch_size`` (eval mode: no batch statistics).

    Args:
        model (nn.Module): a classifier, images in [0, 1] → logits ``Tensor[N, K]``.
        images (Tensor[N, C, H, W]): uint8 (0–255) or float in [0, 1] of the model's dtype, on any
            device (batches are moved to the model's).
        targets (int, sequence of int, LongTensor[N] or None, optional): the class whose Grad-CAM
            map is scored and guides the segmentation; None: the model's prediction (Over-MAP
            scores the predicted class). Default: None.
        segmenter (nn.Module, optional): images in [0, 1] → object logits ``Tensor[N, 1, H, W]``,
            on the model's device; needed for ``"plain"`` and ``"guided"``.
        objects (Tensor[N, H, W], optional): ground-truth object masks (bool, 0/1, 0/255 or float
            >= 0.5); needed for ``"true"``.
        sources (sequence of str, optional): among :data:`SOURCES`; ``"cbam"`` needs CBAM blocks
            (:func:`attention_sources`). May be empty with ``extra_maps``. Default: both.
        segmentations (sequence of str, optional): among ``"guided"``, ``"plain"``, ``"true"``.
            ``"guided"`` always uses the Grad-CAM map of ``targets``, also when ``"gradcam"`` is not
            among the sources. Default: ``("guided", "plain")``.
        extra_maps (dict[str, Tensor[N, H, W]], optional): further non-negative maps at the images'
            resolution, scored like the sources (names without ``/``, not a source name).
        iou_threshold (float, optional): the threshold of :func:`overlap_iou` in (0, 1]. Default: 0.5.
        batch_size (int, optional): images per batch; None: all at once. Default: None.
        layer (nn.Module, optional): Grad-CAM's layer. Default: ``model.cam_layer``.

    Returns:
        dict[str, Tensor]: on the CPU, every value with N entries:

        - ``"<source>/<segmentation>"`` (float64 in [0, 1]): the attention mass inside the
          segmentation (:func:`overlap_mass`); ``"gradcam/guided"`` is Over-MAP as published;
        - ``"<source>/<segmentation>/iou"`` (float64 in [0, 1]): :func:`overlap_iou` at
          ``iou_threshold``;
        - ``"available/<segmentation>"`` (bool): whether the segmentation was available;
        - ``"segmentation_iou"`` (float64, NaN where both masks are empty), with ``"plain"`` and
          ``"true"``: the IoU of the segmenter's mask with the true object.

        Sources come in the order of ``sources`` then ``extra_maps``, segmentations in the order
        of ``segmentations``.

    Raises:
        TypeError / ValueError: a bad argument (the message names it), e.g. ``"cbam"`` for a model
            without CBAM blocks or a segmentation without what it needs.
        FloatingPointError: a Grad-CAM or CBAM map is not finite.

    Examples::

        >>> s = overmap_scores(model, images, segmenter=segnet, batch_size=128)
        >>> s["gradcam/guided"].shape, s["available/guided"].dtype
        (torch.Size([N]), torch.bool)
    """
    iou_threshold = _checks.check_positive_float(iou_threshold, "iou_threshold")
    if iou_threshold > 1:
        raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
    p = _Pipeline(model, images, targets, segmenter, objects, sources, segmentations, extra_maps,
                  batch_size, layer)
    columns: dict[str, list[Tensor]] = {}

    def put(key: str, value: Tensor) -> None:
        columns.setdefault(key, []).append(value.cpu())

    for a in range(0, p.n, p.batch_size):
        maps, segs = p.batch(a, min(a + p.batch_size, p.n))
        for source, m in maps.items():
            for kind, seg in segs.items():
                put(f"{source}/{kind}", overlap_mass(m, seg.masks, seg.available))
                put(f"{source}/{kind}/iou", overlap_iou(m, seg.masks, iou_threshold, seg.available))
        for kind, seg in segs.items():
            put(f"available/{kind}", seg.available)
        if "plain" in segs and "true" in segs:
            put("segmentation_iou", _maps.iou(segs["plain"].masks, segs["true"].masks))
    return {k: torch.cat(v) for k, v in columns.items()}


def overmap_maps(model: nn.Module, images: Tensor, targets=None, *,
                 segmenter: nn.Module | None = None, objects: Tensor | None = None,
                 sources: Sequence[str] = SOURCES,
                 segmentations: Sequence[str] = ("guided", "plain"),
                 extra_maps: dict[str, Tensor] | None = None, batch_size: int | None = None,
                 layer: nn.Module | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, Segmentation]]:
    """The maps and segmentations behind :func:`overmap_scores`, for a few images (figures).

    The same computation as :func:`overmap_scores` (same arguments, same meaning), keeping the
    maps instead of reducing them to overlaps: ``overlap_mass(maps[s], segs[k].masks,
    segs[k].available)`` equals ``overmap_scores(...)[f"{s}/{k}"]``.

    Returns:
        tuple: ``maps`` (dict source → Tensor[N, H, W] in the sources' order, then
        ``extra_maps``) and ``segmentations`` (dict kind → :class:`~fidobook.segmentation.Segmentation`
        with masks BoolTensor[N, H, W], available BoolTensor[N], probs Tensor[N, H, W]), on the CPU.
    """
    p = _Pipeline(model, images, targets, segmenter, objects, sources, segmentations, extra_maps,
                  batch_size, layer)
    maps: dict[str, list[Tensor]] = {}
    segs: dict[str, list[Segmentation]] = {}
    for a in range(0, p.n, p.batch_size):
        m, s = p.batch(a, min(a + p.batch_size, p.n))
        for k, v in m.items():
            maps.setdefault(k, []).append(v.cpu())
        for k, v in s.items():
            segs.setdefault(k, []).append(Segmentation(*(t.cpu() for t in v)))
    return ({k: torch.cat(v) for k, v in maps.items()},
            {k: Segmentation(*(torch.cat(parts) for parts in zip(*v))) for k, v in segs.items()})


# --------------------------------------------------------------------------------------------
# Risk–coverage curves and their areas (batched workers: rows are independent samples)
# --------------------------------------------------------------------------------------------

def _tie_blocks(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positions, and first and last position of each position's block of equal values.

    Args:
        s (Tensor[B, n]): rows sorted (either direction).

    Returns:
        tuple: ``idx``, ``start``, ``end``, each LongTensor[B, n].
    """
    b, n = s.shape
    idx = torch.arange(n).expand(b, n)
    starts_block = torch.ones(b, n, dtype=torch.bool)
    starts_block[:, 1:] = s[:, 1:] != s[:, :-1]
    ends_block = torch.ones(b, n, dtype=torch.bool)
    ends_block[:, :-1] = starts_block[:, 1:]
    # A running max of block starts / a reversed running min of block ends.
    start = torch.where(starts_block, idx, 0).cummax(1).values
    end = torch.where(ends_block, idx, n - 1).flip(1).cummin(1).values.flip(1)
    return idx, start, end


def _expected_errors(conf: Tensor, wrong: Tensor) -> Tensor:
    """Expected number of errors among the ``k`` most confident samples, ``k = 1..n``.

    Args:
        conf (Tensor[B, n]): float64 confidences (no NaN).
        wrong (Tensor[B, n]): float64, 1 where the prediction is wrong.

    Returns:
        Tensor[B, n]: column ``k − 1`` holds the expected errors at coverage ``k / n``; within a
        block of tied confidences the block's errors are spread evenly over its positions (the
        mean over all orders of the tied samples), so the result ignores the input order.
    """
    order = torch.argsort(conf, dim=1, descending=True, stable=True)
    s = conf.gather(1, order)  # (B, n) sorted, most confident first
    cum = wrong.gather(1, order).cumsum(1)  # (B, n) errors among the first k (one order)
    idx, start, end = _tie_blocks(s)
    before = torch.where(start > 0, cum.gather(1, (start - 1).clamp_min(0)),
                         torch.zeros_like(cum))  # errors before the block
    in_block = cum.gather(1, end) - before  # (B, n) errors inside the block
    size = (end - start + 1).double()
    return before + (idx - start + 1).double() * in_block / size


def _perfect_aurc(n_wrong: Tensor, n: int) -> Tensor:
    """Exact AURC of the ranking that accepts every correct sample first.

    With ``c = n − e`` correct samples, the risk at coverage ``k/n`` is ``max(0, k − c) / k``.

    Args:
        n_wrong (Tensor[B]): e, errors per row. n (int): samples per row.

    Returns:
        Tensor[B]: float64.
    """
    k = torch.arange(1, n + 1, dtype=torch.float64)  # (n,)
    c = (n - n_wrong.double())[:, None]  # (B, 1)
    return ((k - c).clamp_min(0) / k).mean(1)


def _aurc_rows(conf: Tensor, wrong: Tensor) -> Tensor:
    k = torch.arange(1, conf.shape[1] + 1, dtype=torch.float64)
    return (_expected_errors(conf, wrong) / k).mean(1)


def _e_aurc_rows(conf: Tensor, wrong: Tensor) -> Tensor:
    return _aurc_rows(conf, wrong) - _perfect_aurc(wrong.sum(1), conf.shape[1])


def _augrc_rows(conf: Tensor, wrong: Tensor) -> Tensor:
    return _expected_errors(conf, wrong).mean(1) / conf.shape[1]


def risk_coverage(confidence, correct) -> tuple[Tensor, Tensor]:
    """The risk–coverage curve: selective risk at each coverage ``k/n``.

    Samples are accepted in order of decreasing confidence. At coverage ``k/n`` (the ``k`` most
    confident accepted) the selective risk is the share of errors among the accepted ones.
    Ties are resolved by expectation (module docstring): for a block of ``m`` equal confidences
    holding ``e`` errors that starts after ``a`` accepted samples, the errors accepted at
    ``k = a + j`` are those before the block plus ``j·e/m``.

    Args:
        confidence (Tensor[N] or ndarray[N]): higher = more certain; no NaN.
        correct (BoolTensor[N] or bool ndarray[N]): whether each prediction is right.

    Returns:
        tuple: ``coverage`` Tensor[N] (``k/N`` for ``k = 1..N``) and ``risk`` Tensor[N] (float64,
        CPU).

    Examples::

        >>> risk_coverage(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]))
        (tensor([0.3333, 0.6667, 1.0000], dtype=torch.float64),
         tensor([0.0000, 0.5000, 0.3333], dtype=torch.float64))
    """
    conf, ok = _pair(confidence, correct)
    n = conf.numel()
    k = torch.arange(1, n + 1, dtype=torch.float64)
    errors = _expected_errors(conf[None], (~ok).double()[None])[0]
    return k / n, errors / k


def aurc(confidence, correct) -> float:
    """Area under the risk–coverage curve: the mean selective risk over coverages ``k/n``.

    ``AURC = (1/n) Σ_{k=1}^{n} r(k/n)`` (Geifman et al., 2019), with the tie rule of
    :func:`risk_coverage`. Lower is better; it mixes the ranking quality with the model's error
    rate (see :func:`e_aurc`, :func:`augrc`).

    This is the mean of the risk over the ``n`` coverages, not a trapezoid. The AUGRC paper's
    code (``RiskCoverageStats.aurc`` in IML-DKFZ/fd-shifts) integrates with the trapezoid rule
    over the points at the ends of tie blocks plus ``(0, r(1/n))`` (the first risk held down to
    coverage 0). Without ties the two differ by exactly
    ``AURC − AURC_trapezoid = (r(1) − r(1/n)) / (2n)``, where ``r(1)`` is the error rate and
    ``r(1/n)`` is 1 if the most confident prediction is wrong, else 0. With ties there is no
    closed form (that code interpolates the risk linearly between block ends; here every
    coverage gets its expected risk).

    Args:
        confidence (Tensor[N] or ndarray[N]), correct (BoolTensor[N]): as for
            :func:`risk_coverage`.

    Returns:
        float
    """
    return _single(aurc, confidence, correct)


def e_aurc(confidence, correct) -> float:
    """Excess AURC: AURC minus the AURC of a perfect ranking of the same predictions.

    The perfect ranking accepts every correct prediction before any wrong one. Its AURC is
    computed exactly on the finite sample: with ``c`` correct of ``n``,
    ``AURC* = (1/n) Σ_{k=c+1}^{n} (k − c)/k``. (Geifman et al. approximate it by the integral
    ``r̂ + (1 − r̂) ln(1 − r̂)`` with the error rate ``r̂``, which is off by O(ln n / n).)
    0 means a perfect ranking; larger is worse.

    Args:
        confidence (Tensor[N] or ndarray[N]), correct (BoolTensor[N]): as for
            :func:`risk_coverage`.

    Returns:
        float: >= 0 up to rounding.
    """
    return _single(e_aurc, confidence, correct)


def augrc(confidence, correct) -> float:
    """Area under the generalized risk–coverage curve (Traub et al., 2024).

    The generalized risk at coverage ``k/n`` counts the accepted *and* wrong predictions over
    **all** ``n`` samples: ``g(k/n) = errors among the k most confident / n``, and
    ``AUGRC = (1/n) Σ_{k=1}^{n} g(k/n)``. Unlike the selective risk it does not blow up a few
    early errors at low coverage. Lower is better. Ties as in :func:`risk_coverage`.

    This is the mean of ``g`` over the ``n`` coverages. The paper's own code
    (``RiskCoverageStats.augrc`` in IML-DKFZ/fd-shifts) integrates instead with the trapezoid rule
    over the points at the ends of tie blocks plus ``(0, 0)``. The two differ by exactly half a
    step of the last point::

        AUGRC − AUGRC_trapezoid = g(1) / (2n) = err / (2n),    err = (wrong predictions) / n

    with or without ties: within a tie block the expected errors here grow linearly, which is the
    trapezoid's linear interpolation, and a right-endpoint sum of a piecewise-linear curve on the
    grid ``k/n`` exceeds its integral by ``(g(1) − g(0)) / (2n)``. The difference vanishes as
    ``n`` grows (0.0005 at ``n = 100`` and 10 % errors); subtract it to compare with that code.

    Args:
        confidence (Tensor[N] or ndarray[N]), correct (BoolTensor[N]): as for
            :func:`risk_coverage`.

    Returns:
        float
    """
    return _single(augrc, confidence, correct)


def auroc(confidence, correct) -> float:
    """Probability that a correct prediction is more confident than a wrong one (ties count ½).

    The area under the ROC curve of ``confidence`` as a detector of correct predictions
    (Mann–Whitney statistic with mid-ranks): 0.5 is chance, 1 a perfect separation. NaN when
    all predictions are right or all wrong.

    Args:
        confidence (Tensor[N] or ndarray[N]), correct (BoolTensor[N]): as for
            :func:`risk_coverage`.

    Returns:
        float
    """
    return _single(auroc, confidence, correct)


def _auroc_rows(conf: Tensor, ok: Tensor) -> Tensor:
    b, n = conf.shape
    # Mid-ranks: the rank of a tied block is the mean of its positions (1-based, ascending).
    order = torch.argsort(conf, dim=1, stable=True)
    _, start, end = _tie_blocks(conf.gather(1, order))
    ranks = torch.empty(b, n, dtype=torch.float64)
    ranks.scatter_(1, order, (start + end).double() / 2 + 1)
    n_pos = ok.sum(1).double()
    n_neg = n - n_pos
    u = (ranks * ok).sum(1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)  # 0/0 = NaN when one class is absent


# The statistics computed for many resamples at once: (conf, wrong) rows -> a value per row.
_BATCHED: dict[Callable, Callable[[Tensor, Tensor], Tensor]] = {
    aurc: _aurc_rows, e_aurc: _e_aurc_rows, augrc: _augrc_rows,
    auroc: lambda conf, wrong: _auroc_rows(conf, wrong == 0),
}
_BY_NAME = {"aurc": aurc, "e_aurc": e_aurc, "augrc": augrc, "auroc": auroc}


def _single(statistic: Callable, confidence, correct) -> float:
    """``statistic`` of one sample: its batched form (:data:`_BATCHED`) on a batch of one row."""
    conf, ok = _pair(confidence, correct)
    return float(_BATCHED[statistic](conf[None], (~ok).double()[None])[0])


def bootstrap(statistic, confidence, correct, *, n_boot: int = 1000,
              generator: torch.Generator | int, level: float = 0.95) -> tuple[float, float, float]:
    """Percentile bootstrap interval of a selective-classification statistic.

    Draws ``n_boot`` resamples of the ``n`` (confidence, correct) pairs with replacement and
    returns the statistic on the full sample with the ``(1 − level)/2`` and ``(1 + level)/2``
    quantiles of its resampled values. :func:`aurc`, :func:`e_aurc`, :func:`augrc` and
    :func:`auroc` are evaluated for many resamples at once (rows of one batched computation);
    any other callable ``statistic(confidence, correct) -> float`` is called per resample.
    Resamples repeat samples, which creates ties: the tie rule makes that harmless.

    Args:
        statistic (callable or str): e.g. :func:`aurc`, or ``"aurc"``, ``"e_aurc"``,
            ``"augrc"``, ``"auroc"``.
        confidence (Tensor[N] or ndarray[N]), correct (BoolTensor[N]): as for
            :func:`risk_coverage`.
        n_boot (int, optional): resamples. Default: 1000.
        generator (torch.Generator or int): the source of the resampling (a CPU generator, or a
            seed for a new one).
        level (float, optional): coverage of the interval, in (0, 1). Default: 0.95.

    Returns:
        tuple: ``(estimate, low, high)`` floats (NaN resamples, e.g. AUROC without errors, are
        left out of the quantiles).
    """
    if isinstance(statistic, str):
        _checks.check_choice(statistic, "statistic", list(_BY_NAME))
        statistic = _BY_NAME[statistic]
    if not callable(statistic):
        raise TypeError(f"statistic: expected a callable or a name among {sorted(_BY_NAME)}, "
                        f"got {type(statistic).__name__}")
    n_boot = _checks.check_positive_int(n_boot, "n_boot")
    level = _checks.check_level(level)
    generator = _checks.check_generator(generator)
    conf, ok = _pair(confidence, correct)
    n = conf.numel()
    estimate = float(statistic(conf, ok))
    idx = bootstrap_indices(n, n_boot, generator)  # (n_boot, n)
    if statistic in _BATCHED:
        rows = _BATCHED[statistic]
        # Bound the work per batch (~4 M entries of each (B, n) intermediate).
        chunk = max(1, (1 << 22) // n)
        values = torch.cat([rows(conf[i], (~ok[i]).double()) for i in idx.split(chunk)])
    else:
        values = torch.tensor([float(statistic(conf[i], ok[i])) for i in idx],
                              dtype=torch.float64)
    low, high = percentile_interval(values, level)  # NaN resamples left out
    return estimate, low, high


#: Whether a lower value of a named statistic is better (the areas) or a higher one (AUROC).
_LOWER_IS_BETTER = {"aurc": True, "e_aurc": True, "augrc": True, "auroc": False}


def compare_scores(statistic: str, a, b, correct, *, n_boot: int = 1000,
                   generator: torch.Generator | int, level: float = 0.95,
                   margin: float = 0.0) -> Comparison:
    """Compares two confidence scores of the same predictions by a paired bootstrap.

    Both scores are evaluated on the same ``n_boot`` resamples of the N predictions; the
    difference of the statistic, signed so that a positive value favours A (``B − A`` for the
    areas, where lower is better; ``A − B`` for AUROC), gives a percentile interval and the word
    of :func:`fidobook.stats.verdict` against ``margin``: the package's one rule for "better".
    The pairing removes what both share (the error rate, the resample's difficulty), so the
    interval is much narrower than the two separate intervals suggest.

    Args:
        statistic (str): ``"aurc"``, ``"e_aurc"``, ``"augrc"`` or ``"auroc"``.
        a, b (Tensor[N] or ndarray[N]): the two confidences (higher = more certain), no NaN.
        correct (BoolTensor[N]): whether each prediction is right.
        n_boot (int, optional): resamples. Default: 1000.
        generator (torch.Generator or int): the resampling's source (or a seed).
        level (float, optional): coverage of the interval. Default: 0.95.
        margin (float, optional): the non-inferiority margin of :func:`fidobook.stats.verdict`.
            Default: 0.

    Returns:
        fidobook.stats.Comparison: ``mean`` the difference on the full sample (favouring A when
        > 0), ``low``/``high`` its interval (NaN resamples left out), ``word``, ``margin`` and
        ``n`` = N.

    Examples::

        >>> c = compare_scores("e_aurc", overmap, max_softmax(logits), correct, generator=0)
        >>> c.word      # "better": Over-MAP's E-AURC is lower on (nearly) every resample
    """
    if not isinstance(statistic, str) or statistic not in _LOWER_IS_BETTER:
        raise ValueError(f"statistic: expected one of {sorted(_LOWER_IS_BETTER)}, got {statistic!r}")
    n_boot = _checks.check_positive_int(n_boot, "n_boot")
    level = _checks.check_level(level)
    margin = _checks.check_positive_float(margin, "margin", allow_zero=True)
    generator = _checks.check_generator(generator)
    conf_a, ok = _pair(a, correct)
    conf_b = _as_confidence(b, "b")
    if conf_b.shape != conf_a.shape:
        raise ValueError(f"b: expected shape {tuple(conf_a.shape)} like a, got {tuple(conf_b.shape)}")
    rows = _BATCHED[_BY_NAME[statistic]]
    sign = -1.0 if _LOWER_IS_BETTER[statistic] else 1.0
    wrong = (~ok).double()
    n = conf_a.numel()
    estimate = sign * float(rows(conf_a[None], wrong[None])[0] - rows(conf_b[None], wrong[None])[0])
    idx = bootstrap_indices(n, n_boot, generator)  # (n_boot, n)
    chunk = max(1, (1 << 22) // n)
    diffs = torch.cat([sign * (rows(conf_a[i], wrong[i]) - rows(conf_b[i], wrong[i]))
                       for i in idx.split(chunk)])
    low, high = percentile_interval(diffs, level)
    return Comparison(estimate, low, high, verdict(low, high, margin), float(margin), n)


# --------------------------------------------------------------------------------------------
# Rejection tables
# --------------------------------------------------------------------------------------------

def topk_correct(logits, labels, k: int = 1) -> Tensor:
    """Whether each label is among the ``k`` highest logits; a label of −1 is never right.

    Args:
        logits (Tensor[N, K]): class scores.
        labels (LongTensor[N]): classes in ``[-1, K)``; −1 marks a sample of no known class.
        k (int, optional): in ``[1, K]``. Default: 1.

    Returns:
        BoolTensor[N] on the logits' device.
    """
    logits = _as_logits(logits)
    labels = _as_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
    k = _checks.check_positive_int(k, "k")
    if k > logits.shape[1]:
        raise ValueError(f"k: expected at most the number of classes {logits.shape[1]}, got {k}")
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(1)  # −1 matches no index


def accept_order(confidence, *, generator: torch.Generator | int | None = None) -> Tensor:
    """Indices from the most to the least confident sample: the order of acceptance.

    Args:
        confidence (Tensor[N] or ndarray[N]): higher = more certain; no NaN.
        generator (torch.Generator or int, optional): None breaks ties by input order (the earlier
            sample first); a generator (or a seed) breaks them by a random permutation drawn from
            it. Default: None.

    Returns:
        LongTensor[N] on the CPU: ``confidence[order]`` is non-increasing.
    """
    conf = _as_confidence(confidence)
    if generator is None:
        return torch.argsort(conf, descending=True, stable=True)
    generator = _checks.check_generator(generator)
    shuffle = torch.randperm(conf.numel(), generator=generator, device=generator.device).cpu()
    # A stable sort of the shuffled samples: ties keep the random order.
    return shuffle[torch.argsort(conf[shuffle], descending=True, stable=True)]


def _sequence(values, name: str, what: str) -> list:
    """A non-empty list from a sequence (not a string, not a scalar)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, Tensor)):
        raise TypeError(f"{name}: expected a sequence of {what}, got {type(values).__name__}")
    values = values.tolist() if isinstance(values, (np.ndarray, Tensor)) else list(values)
    if not values:
        raise ValueError(f"{name}: expected a non-empty sequence of {what}, got an empty one")
    return values


def _check_rates(rates) -> list[float]:
    rates = _sequence(rates, "rates", "rejection rates in [0, 1]")
    for r in rates:
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"rates: expected rejection rates in [0, 1] (numbers), got {r!r}")
    if any(not (0.0 <= r <= 1.0) for r in rates):  # NaN fails too
        raise ValueError(f"rates: expected rejection rates in [0, 1], got {rates}")
    return [float(r) for r in rates]


def _check_ks(ks, num_classes: int) -> tuple[int, ...]:
    ks = _sequence(ks, "ks", f"ints in [1, {num_classes}] (the k of the top-k columns)")
    for k in ks:
        _checks.check_positive_int(k, "ks")
        if k > num_classes:
            raise ValueError(f"ks: expected values in [1, {num_classes}] (the number of classes), "
                             f"got {k}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks: expected distinct values (one top-k column each), got {ks}")
    return tuple(ks)


def rejection_table(confidence, logits, labels, rates: Sequence[float] = REJECTION_RATES, *,
                    ks: Sequence[int] = (1, 3),
                    generator: torch.Generator | int | None = None) -> list[dict]:
    """Accuracy of the accepted predictions after rejecting the least confident ones.

    For each rejection rate ``r`` the ``round(r·N)`` least confident samples are rejected
    (halves rounded up). Among equal confidences the later sample in the input is rejected
    first, or, with a ``generator``, the samples are taken in a random order
    (:func:`accept_order`). On the accepted samples it reports
    top-k accuracy **micro** (over samples) and **macro** (the mean over groups of each group's
    accuracy). Groups are the true classes, plus one group for the label −1 ("no known class",
    always wrong); a group with no accepted sample is left out of the mean.

    Args:
        confidence (Tensor[N] or ndarray[N]): higher = more certain; no NaN.
        logits (Tensor[N, K]): the classifier's scores (top-k is read from them).
        labels (LongTensor[N]): true classes in ``[-1, K)``.
        rates (sequence of float, optional): rejection rates in [0, 1], at least one. Default:
            :data:`REJECTION_RATES`.
        ks (sequence of int, optional): the k of the top-k columns: at least one, distinct,
            each in ``[1, K]``. Default: (1, 3).
        generator (torch.Generator or int, optional): breaks ties at random (see
            :func:`accept_order`); None: by input order. Default: None.

    Returns:
        list of dict: one row per rate with ``rate``, ``rejected`` (count), ``kept`` (fraction
        of the data remaining), ``threshold`` (lowest accepted confidence; NaN if none) and
        ``top{k}_micro``, ``top{k}_macro`` for each k (NaN when nothing is kept);
        ``pandas.DataFrame(rows)`` makes it a table.
    """
    logits = _as_logits(logits)
    conf = _as_confidence(confidence)
    n = conf.numel()
    if logits.shape[0] != n:
        raise ValueError(f"logits: expected {n} rows (one per confidence), got {logits.shape[0]}")
    labels = _as_labels(labels, n, logits.shape[1]).to(logits.device)
    rates = _check_rates(rates)
    ks = _check_ks(ks, logits.shape[1])
    order = accept_order(conf, generator=generator)  # accepted first
    hits = torch.stack([topk_correct(logits, labels, k).cpu() for k in ks])[:, order]  # (J, N)
    groups = torch.unique(labels.cpu(), return_inverse=True)[1][order]  # (N,) group ids
    onehot = torch.nn.functional.one_hot(groups).double()  # (N, G)
    count = onehot.cumsum(0)  # (N, G) accepted per group among the first k
    right = (hits.double()[:, :, None] * onehot).cumsum(1)  # (J, N, G)
    cum_hits = hits.double().cumsum(1)  # (J, N)
    rows = []
    for r in rates:
        rejected = min(n, math.floor(r * n + 0.5 + 1e-9))
        kept = n - rejected
        row = {"rate": r, "rejected": rejected, "kept": kept / n,
               "threshold": float(conf[order[kept - 1]]) if kept else float("nan")}
        for j, k in enumerate(ks):
            if kept == 0:
                micro = macro = float("nan")
            else:
                micro = float(cum_hits[j, kept - 1]) / kept
                c = count[kept - 1]
                macro = float((right[j, kept - 1][c > 0] / c[c > 0]).mean())
            row[f"top{k}_micro"], row[f"top{k}_macro"] = micro, macro
        rows.append(row)
    return rows


def compare_rejection(a, b, logits, labels, rates: Sequence[float] = (0.12, 0.15, 0.18), *,
                      metric: str = "top3_macro", n_boot: int = 1000,
                      generator: torch.Generator | int, level: float = 0.95,
                      margin: float = 0.0) -> Comparison:
    """Compares two confidence scores by the accuracy they leave after rejection, paired.

    The statistic is the mean over ``rates`` of ``metric`` (a column of :func:`rejection_table`,
    e.g. the paper's top-3 macro accuracy) on the predictions A accepts minus the same on those B
    accepts. Since both start from the same accuracy without rejection, this is the difference of
    their gains. It is computed on the full sample and on ``n_boot`` resamples of the N
    predictions (the same for A and B); ties are broken at random, with the same permutation for
    A and B (common random numbers), so with an int seed the full-sample values equal those of
    ``rejection_table(..., generator=seed)``. The interval gets the word of
    :func:`fidobook.stats.verdict` (> 0 favours A).

    Args:
        a, b (Tensor[N] or ndarray[N]): the two confidences (higher = more certain).
        logits (Tensor[N, K]), labels (LongTensor[N]): as for :func:`rejection_table`.
        rates (sequence of float, optional): rejection rates averaged over. Default: the
            paper's window, 12, 15 and 18 %.
        metric (str, optional): ``"top{k}_micro"`` or ``"top{k}_macro"``. Default: ``"top3_macro"``.
        n_boot, generator, level, margin: as for :func:`compare_scores`.

    Returns:
        fidobook.stats.Comparison: ``mean`` the difference (a share, not percentage points).
    """
    import re

    match = re.fullmatch(r"top(\d+)_(micro|macro)", metric) if isinstance(metric, str) else None
    if match is None:
        raise ValueError(f"metric: expected 'top{{k}}_micro' or 'top{{k}}_macro', got {metric!r}")
    k = int(match.group(1))
    n_boot = _checks.check_positive_int(n_boot, "n_boot")
    level = _checks.check_level(level)
    margin = _checks.check_positive_float(margin, "margin", allow_zero=True)
    generator = _checks.check_generator(generator)
    logits = _as_logits(logits)
    conf_a = _as_confidence(a, "a")
    conf_b = _as_confidence(b, "b")
    n = conf_a.numel()
    if conf_b.shape != conf_a.shape or logits.shape[0] != n:
        raise ValueError(f"b, logits: expected {n} entries like a, got {conf_b.numel()} and "
                         f"{logits.shape[0]} rows")
    labels = _as_labels(labels, n, logits.shape[1]).cpu()
    rates = _check_rates(rates)
    _check_ks((k,), logits.shape[1])
    logits = logits.cpu()

    def difference(index) -> float:
        state = generator.get_state()  # the same tie-breaking permutation for A and B
        values = []
        for conf in (conf_a, conf_b):
            generator.set_state(state)
            rows = rejection_table(conf[index], logits[index], labels[index], rates, ks=(k,),
                                   generator=generator)
            values.append(sum(r[metric] for r in rows) / len(rows))
        return values[0] - values[1]

    estimate = difference(torch.arange(n))
    idx = bootstrap_indices(n, n_boot, generator)  # (n_boot, n)
    diffs = torch.tensor([difference(i) for i in idx], dtype=torch.float64)
    low, high = percentile_interval(diffs, level)
    return Comparison(estimate, low, high, verdict(low, high, margin), float(margin), n)


# --------------------------------------------------------------------------------------------
# Baseline confidences
# --------------------------------------------------------------------------------------------

def max_softmax(logits) -> Tensor:
    """Maximum softmax probability, the standard baseline confidence.

    Args:
        logits (Tensor[N, K]).

    Returns:
        Tensor[N] in [1/K, 1].
    """
    return _as_logits(logits).softmax(1).max(1).values


def _entropy(probs: Tensor) -> Tensor:
    """``−Σ_k p_k log p_k`` over the last dimension (0 log 0 = 0)."""
    return torch.special.entr(probs).sum(-1)


def negative_entropy(logits) -> Tensor:
    """Confidence ``−H(softmax(logits))``: the predictive entropy, negated (higher = surer).

    Args:
        logits (Tensor[N, K]).

    Returns:
        Tensor[N] in [−log K, 0].
    """
    logits = _as_logits(logits)
    log_p = logits.log_softmax(1)
    return (log_p.exp() * log_p).sum(1)


def mc_dropout_probs(model: nn.Module, images: Tensor, passes: int = 20, *,
                     generator: torch.Generator | int, batch_size: int = 256,
                     device: str | torch.device | None = None) -> Tensor:
    """Softmax outputs of ``passes`` stochastic forward passes with dropout on (MC dropout).

    Runs under :func:`fidobook.models.mc_dropout`: the dropout layers sample masks while batch
    norm keeps its running statistics (eval), and every module's mode is restored afterwards.
    Dropout draws from torch's global generator, so the passes run inside
    ``torch.random.fork_rng`` seeded from ``generator``: the result is reproducible and the
    caller's global random state is left untouched. The draws depend on ``batch_size``.

    Args:
        model (nn.Module): a classifier with at least one dropout layer of rate > 0.
        images (Tensor[N, 3, H, W]): uint8 (0–255) or float in [0, 1].
        passes (int, optional): T >= 2. Default: 20.
        generator (torch.Generator or int): the seed source (one draw) or a seed.
        batch_size (int, optional): images per forward. Default: 256.
        device (str or torch.device, optional): where to run; default: the model's device.

    Returns:
        Tensor[T, N, K]: float32 probabilities on the CPU.
    """
    _checks.check_tensor(images, "images")
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 3:
        raise ValueError(f"images: expected a non-empty Tensor[N, 3, H, W], got shape "
                         f"{tuple(images.shape)}")
    if images.dtype != torch.uint8:
        _checks.check_images(images, "images")
    passes = _checks.check_positive_int(passes, "passes", minimum=2)
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    if isinstance(generator, int) and not isinstance(generator, bool):
        seed = generator
    elif isinstance(generator, torch.Generator):
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    else:
        raise TypeError(f"generator: expected a torch.Generator or an int seed, got "
                        f"{type(generator).__name__}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=cuda), mc_dropout(model), torch.no_grad():
        # Seed only the generator the dropout layers draw from (torch.manual_seed would also
        # reseed every CUDA device, outside the fork).
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        for lo in range(0, images.shape[0], batch_size):
            x = images[lo:lo + batch_size].to(device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            out.append(torch.stack([model(x).float().softmax(1).cpu()
                                    for _ in range(passes)]))  # (T, B, K)
    return torch.cat(out, dim=1)  # (T, N, K)


def mc_dropout_scores(probs: Tensor) -> dict[str, Tensor]:
    """Confidences from MC-dropout samples.

    With the mean prediction ``p̄ = (1/T) Σ_t p_t``:

    - ``msp``: ``max_k p̄_k``;
    - ``negative_entropy``: ``−H(p̄)``, the predictive entropy negated;
    - ``negative_mutual_information``: ``−(H(p̄) − (1/T) Σ_t H(p_t))``, the epistemic part
      (the disagreement between passes) negated.

    Args:
        probs (Tensor[T, N, K]): probabilities, e.g. from :func:`mc_dropout_probs`.

    Returns:
        dict[str, Tensor[N]]
    """
    _checks.check_float(probs, "probs")
    if probs.ndim != 3 or probs.numel() == 0:
        raise ValueError(f"probs: expected a non-empty Tensor[T, N, K], got shape "
                         f"{tuple(probs.shape)}")
    _checks.check_finite(probs, "probs")
    if float(probs.min()) < 0 or float(probs.max()) > 1:
        raise ValueError(f"probs: expected probabilities in [0, 1], got range "
                         f"[{float(probs.min()):.4g}, {float(probs.max()):.4g}]")
    mean = probs.mean(0)  # (N, K)
    h_mean = _entropy(mean)  # (N,)
    h_each = _entropy(probs).mean(0)  # (N,)
    return {"msp": mean.max(1).values, "negative_entropy": -h_mean,
            "negative_mutual_information": -(h_mean - h_each).clamp_min(0)}
