"""The specs of the book's experiments: one frozen dataclass per chapter experiment.

A spec holds an experiment's sizes (images, iterations, samples, snapshots, seeds ...). Its
values per profile live in :mod:`fidobook.profiles` only (``profile.cd_vs_scd`` and so on); a
chapter's ``parameters`` cell overrides fields through ``get_profile(profile,
cd_vs_scd={"n_images": 50})``. Memory bounds (``max_batch``) are not spec fields: they change
speed and memory, never results, so they take no part in any cache key.

This module imports nothing heavy, so :mod:`fidobook.profiles` can import it.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

__all__ = ["ConcreteSpec", "OneBirdSpec", "BirdsSpec", "CDvsSCDSpec", "EnhanceSpec", "OverMAPSpec",
           "MethodsSpec", "SPECS"]


def _validate(spec) -> None:
    """Every int field >= 0 (>= 1 unless named ``seed``/``image``/offsets), every tuple of ints
    sorted and positive, every float finite and >= 0; messages name the spec and the field."""
    name = type(spec).__name__
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        where = f"{name}.{f.name}"
        if isinstance(v, bool):
            continue
        if isinstance(v, numbers.Integral):
            low = 0 if f.name in ("seed", "image") else 1
            if v < low:
                raise ValueError(f"{where}: expected an int >= {low}, got {v}")
        elif isinstance(v, float):
            if not v >= 0 or v == float("inf"):
                raise ValueError(f"{where}: expected a finite number >= 0, got {v}")
        elif isinstance(v, tuple):
            if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in v):
                raise ValueError(f"{where}: expected a tuple of ints >= 1, got {v!r}")
            if list(v) != sorted(set(v)):
                raise ValueError(f"{where}: expected increasing values without repeats, got {v!r}")
        elif isinstance(v, list):
            raise TypeError(f"{where}: expected a tuple (specs are frozen and hashable), got a list")


class _Spec:
    def __post_init__(self):
        _validate(self)

    def replace(self, **changes):
        """A copy with ``changes`` applied (unknown fields are an error naming them)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"{type(self).__name__}: expected fields among {sorted(names)}, "
                             f"got unknown {unknown}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ConcreteSpec(_Spec):
    """Chapter 1, the concrete relaxation: Monte Carlo sizes.

    Attributes:
        mc: draws per (θ, t) for the moments of the pathwise gradient.
        replicates: replicate S-sample means per S.
        hist: draws per histogram (the temperature explorer uses at most 50,000 of them).
        seed: the Monte Carlo draws' seed (each statistic its own offset from it).
    """

    mc: int = 1_000_000
    replicates: int = 10_000
    hist: int = 200_000
    seed: int = 0


@dataclass(frozen=True)
class OneBirdSpec(_Spec):
    """Chapter 2, FIDO end to end on one bird.

    Attributes:
        iterations: FIDO steps.
        samples: mask samples per step (S).
        mask_size: side of the low-resolution mask.
        image: index of the explained image in the test split; None: the chapter's rule
            (among the correctly classified test birds whose class has a one-part neighbour,
            the first of those with the fewest separating part types; on data without a class
            table, the first correctly classified test image).
        seed: the masks' noise seed (every fit of the chapter uses it) and, plus 1 and 2, the
            seeds of the random pixel control and of the random infills.
    """

    iterations: int = 150
    samples: int = 8
    mask_size: int = 16
    image: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class BirdsSpec(_Spec):
    """Chapter 3, the data set and the classifier: how many examples the report keeps.

    The report itself always covers the whole test split (accuracy, confusions, errors by part,
    attention shares); these fields only size its galleries.

    Attributes:
        examples: test images of the ground-truth and attention galleries (the first test image
            of each of the first classes).
        train_examples: training images of the missing-parts gallery (birds only).
        error_examples: errors between classes one part apart shown (birds only).
        seed: render seed of the variant gallery and of a class with its neighbours (birds only).
    """

    examples: int = 6
    train_examples: int = 12
    error_examples: int = 8
    seed: int = 0


@dataclass(frozen=True)
class CDvsSCDSpec(_Spec):
    """Chapter 4, CD vs SCD: the grid sampler × temperature × S × iterations.

    Attributes:
        n_images: test images explained.
        iterations: FIDO steps of every fit.
        snapshots: earlier iterations at which the masks are also scored.
        samples: the values of S (mask samples per step).
        mask_size: side of the low-resolution mask.
        chunk: images per cached fit.
        steps: steps of the deletion / insertion curves.
        resamples: bootstrap resamples.
        margin: non-inferiority margin on scores in [0, 1], declared before the run.
        seed: the images' permutation, their noise seeds (image ``i`` of the split draws from
            ``i + seed · n_test``), the bootstrap and the random baseline order.
    """

    n_images: int = 100
    iterations: int = 20
    snapshots: tuple = (5, 10)
    samples: tuple = (1, 2, 4, 8, 16)
    mask_size: int = 16
    chunk: int = 25
    steps: int = 16
    resamples: int = 2000
    margin: float = 0.02
    seed: int = 0


@dataclass(frozen=True)
class EnhanceSpec(_Spec):
    """Chapter 5, mask-guided classification.

    Attributes:
        n_test: normal test images (evenly spaced over the test split).
        n_small: small birds of the hard test set (birds only: a CUB-format folder has none).
        iterations: FIDO steps per mask.
        samples: mask samples per step.
        mask_size: side of the low-resolution mask.
        chunk: images per cached fit.
        resamples: bootstrap resamples.
        threshold: the mask threshold of fido-pytorch's procedure (the sweep adds others).
        seed: the masks' noise seeds (image ``i`` of both sets draws from
            ``seed · 100000 + i``), the bootstrap and (plus 1) the random boxes.
    """

    n_test: int = 200
    n_small: int = 100
    iterations: int = 30
    samples: int = 4
    mask_size: int = 16
    chunk: int = 50
    resamples: int = 2000
    threshold: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class OverMAPSpec(_Spec):
    """Chapter 6, Over-MAP: the whole test split plus hard cases, scored by every confidence.

    Attributes:
        n_normal: test images scored as the ``normal`` case, evenly spaced over the split (which
            is ordered by class); None: the whole test split.
        per_case: images per hard case: the generated cases on the birds; on a CUB-format folder
            the one case the package can make from real images, ``corrupted`` (noise, blur or
            contrast loss applied to this many test images, evenly spaced over the split).
        n_fido: images explained by FIDO (the same number from every case, at least one).
        fido_iterations, fido_samples, mask_size: the FIDO-SCD fits (steps, S, mask side).
        mc_passes: MC-dropout passes T.
        mc_batch: images per MC-dropout forward pass. The dropout masks are drawn per batch, so
            it changes the draws: it is part of the spec, not a memory bound (the other passes
            use ``context.profile.max_batch``).
        n_boot: bootstrap resamples of every interval.
        seed: MC dropout's masks, the random tie-breaking of the rejection tables, the
            bootstrap resamples, FIDO's noise (image ``i`` of the evaluation set draws from
            ``seed + i``) and the corruptions of real images.
    """

    n_normal: int | None = None
    per_case: int = 100
    n_fido: int = 42
    fido_iterations: int = 100
    fido_samples: int = 2
    mask_size: int = 16
    mc_passes: int = 10
    mc_batch: int = 128
    n_boot: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class MethodsSpec(_Spec):
    """Chapter 7, other attribution methods. The images and FIDO settings match chapter 4's,
    so its cached fits are reused.

    Attributes:
        n_images: test images explained (chapter 4's first ``n_images``, with ``seed``).
        fido_iterations, fido_snapshots, fido_chunk, mask_size: chapter 4's fits (its
            ``iterations``, ``snapshots``, ``chunk``, ``mask_size``).
        fido_s_max: S of the CD fit (chapter 4's largest S); the SCD fit uses S = 1.
        ig_steps: integrated-gradients steps.
        smooth_samples: SmoothGrad samples.
        sigma: SmoothGrad's noise standard deviation, on the [0, 1] pixel scale.
        steps: steps of the deletion / insertion curves.
        resamples: bootstrap resamples.
        seed: chapter 4's seed (the images, FIDO's noise), SmoothGrad's noise, the bootstrap
            and (plus 1) the random map.
    """

    n_images: int = 100
    fido_iterations: int = 20
    fido_snapshots: tuple = (5, 10)
    fido_s_max: int = 16
    fido_chunk: int = 25
    mask_size: int = 16
    ig_steps: int = 32
    smooth_samples: int = 16
    sigma: float = 0.15
    steps: int = 16
    resamples: int = 2000
    seed: int = 0


#: Experiment name -> spec class; the names are the :class:`fidobook.profiles.Profile` fields.
SPECS = {"concrete": ConcreteSpec, "one_bird": OneBirdSpec, "birds": BirdsSpec,
         "cd_vs_scd": CDvsSCDSpec, "enhance": EnhanceSpec, "overmap": OverMAPSpec,
         "methods": MethodsSpec}
