"""Statistics shared by the chapters: percentile-bootstrap intervals and McNemar's exact test.

One rule turns an interval into words everywhere (:func:`verdict`, :func:`paired_comparison`):
a chapter that compares two settings on the same images reports the paired difference, its
interval and the word, never a ranking of point estimates.

The percentile bootstrap (Efron, 1979) resamples the ``N`` observations with replacement ``B``
times (:func:`bootstrap_indices`: all resamples at once, ``LongTensor[B, N]``), recomputes the
statistic on each resample, and reports the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of
the ``B`` values (:func:`percentile_interval`). :func:`bootstrap_ci` does this for a mean;
:func:`fidobook.overmap.bootstrap` for the selective-classification areas and
:func:`fidobook.enhance.paired_accuracy` for a paired difference of accuracies use the same two
pieces, so equal generators give equal intervals whichever function draws them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks

__all__ = ["bootstrap_indices", "percentile_interval", "bootstrap_ci", "mcnemar_p", "VERDICTS",
           "verdict", "Comparison", "paired_comparison"]


def bootstrap_indices(n: int, resamples: int, generator: torch.Generator | None = None) -> Tensor:
    """The indices of ``resamples`` bootstrap resamples of ``n`` observations.

    Args:
        n (int): observations N.
        resamples (int): resamples B.
        generator (torch.Generator, optional): the source of the draws (on its own device); None:
            torch's global CPU generator.

    Returns:
        LongTensor[B, N]: on the CPU; row b holds the observations of resample b.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(n, (resamples, n), generator=generator, device=device).cpu()


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap values: their ``(1 − level)/2`` and ``(1 + level)/2``
    quantiles (linear interpolation, as ``torch.quantile``).

    Args:
        values (Tensor[B] or sequence of float): the statistic on each resample; NaN values (a
            statistic undefined on a resample) are left out.
        level (float, optional): coverage of the interval, in (0, 1). Default: 0.95.

    Returns:
        tuple: ``(low, high)`` Python floats; both NaN when no value is left.
    """
    level = _checks.check_level(level)
    v = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(v, q).tolist()
    return low, high


def bootstrap_ci(values, *, level: float = 0.95, resamples: int = 2000,
                 generator: torch.Generator | None = None) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile-bootstrap confidence interval for it (Efron, 1979).

    NaN entries (a score undefined for an image) are left out before resampling. For a paired
    comparison of two settings on the same images, pass the per-image differences: the
    interval of the mean difference is then much narrower than the two intervals suggest.

    Args:
        values (Tensor[N] or sequence of float): one value per image.
        level (float, optional): coverage of the interval, in (0, 1). Default: 0.95.
        resamples (int, optional): bootstrap resamples B. Default: 2000.
        generator (torch.Generator, optional): source of the resampling indices.

    Returns:
        tuple: ``(mean, low, high)`` as Python floats; all NaN when no value is left.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    level = _checks.check_level(level)
    _checks.check_positive_int(resamples, "resamples")
    x = x[~torch.isnan(x)]
    if x.numel() == 0:
        return (float("nan"),) * 3
    means = x[bootstrap_indices(x.numel(), resamples, generator)].mean(1)  # (B,)
    low, high = percentile_interval(means, level)
    return float(x.mean()), low, high


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: ``min(1, 2 P(X <= min(b, c)))``, ``X ~ Bin(b + c, ½)``.

    Only the discordant pairs carry information on a difference; under "no difference" each of
    them is a fair coin. ``fixed = broken = 0`` gives 1.
    """
    for value, name in ((fixed, "fixed"), (broken, "broken")):
        _checks.check_positive_int(value, name, minimum=0)
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return 1.0
    i = torch.arange(k + 1, dtype=torch.float64)
    # log C(n, i) − n log 2, summed in log space (no overflow for thousands of pairs)
    log_terms = (math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1) - n * math.log(2.0))
    return float(min(1.0, 2.0 * float(torch.logsumexp(log_terms, 0).exp())))


#: The words :func:`verdict` returns.
VERDICTS = ("better", "not worse", "not measurably different", "worse", "inconclusive")


def verdict(low: float, high: float, margin: float = 0.0) -> str:
    """The word for a confidence interval ``[low, high]`` of a difference A − B, signed so that
    a positive difference favours A.

    With ``margin = 0`` (a superiority question): ``"better"`` when the interval lies above 0,
    ``"worse"`` when it lies below 0, else ``"not measurably different"``.

    With ``margin = m > 0`` (a non-inferiority question, the margin declared before the run):
    ``"better"`` when ``low > 0``; ``"not worse"`` when ``low > −m`` (A loses less than ``m``,
    whatever the sign of the estimate); ``"worse"`` when ``high < 0`` and ``low <= −m``;
    ``"inconclusive"`` otherwise (the interval reaches below ``−m`` and above 0).

    Args:
        low, high (float): the interval; NaN gives ``"inconclusive"``.
        margin (float, optional): m >= 0. Default: 0.

    Returns:
        str: one of :data:`VERDICTS`.
    """
    margin = _checks.check_positive_float(margin, "margin", allow_zero=True)
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > high:
        raise ValueError(f"low, high: expected low <= high, got [{low}, {high}]")
    if low > 0:
        return "better"
    if margin == 0:
        return "worse" if high < 0 else "not measurably different"
    if low > -margin:
        return "not worse"
    if high < 0:
        return "worse"
    return "inconclusive"


class Comparison(NamedTuple):
    """A paired comparison of A against B on the same items.

    Attributes:
        mean (float): the mean per-item difference A − B (signed so that > 0 favours A).
        low, high (float): its percentile-bootstrap interval.
        word (str): :func:`verdict` of the interval against ``margin``.
        margin (float): the margin the word was judged against.
        n (int): items with both values defined.
    """

    mean: float
    low: float
    high: float
    word: str
    margin: float
    n: int


def paired_comparison(a, b, *, higher_is_better: bool = True, margin: float = 0.0,
                      level: float = 0.95, resamples: int = 2000,
                      generator: torch.Generator | None = None) -> Comparison:
    """Compares A with B on the same items: the mean paired difference, its bootstrap interval
    and the word of :func:`verdict`.

    Args:
        a, b (Tensor[N] or sequence): one value per item (image), paired by position; items
            where either is NaN are left out.
        higher_is_better (bool, optional): False flips the sign, so that a positive difference
            always favours A. Default: True.
        margin (float, optional): the non-inferiority margin (see :func:`verdict`). Default: 0.
        level, resamples, generator: as :func:`bootstrap_ci`.

    Returns:
        Comparison
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten().cpu()
    b = torch.as_tensor(b, dtype=torch.float64).flatten().cpu()
    if a.shape != b.shape:
        raise ValueError(f"a, b: expected paired values of equal length, got {a.numel()} and {b.numel()}")
    d = a - b if higher_is_better else b - a
    n = int((~torch.isnan(d)).sum())
    mean, low, high = bootstrap_ci(d, level=level, resamples=resamples, generator=generator)
    return Comparison(mean, low, high, verdict(low, high, margin), float(margin), n)
