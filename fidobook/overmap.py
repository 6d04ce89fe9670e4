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
from .stats import bootstrap_indices, percentile_interval

__all__ = [
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
