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
        hist: draws per histogram.
    """

    mc: int = 1_000_000
    replicates: int = 10_000
    hist: int = 200_000


@dataclass(frozen=True)
class OneBirdSpec(_Spec):
    """Chapter 2, FIDO end to end on one bird.

    Attributes:
        iterations: FIDO steps.
        samples: mask samples per step (S).
        mask_size: side of the low-resolution mask.
        image: index of the explained image in the test split.
    """

    iterations: int = 150
    samples: int = 8
    mask_size: int = 16
    image: int = 0


@dataclass(frozen=True)
class BirdsSpec(_Spec):
    """Chapter 3, the data set and the classifier: how many examples the report keeps.

    Attributes:
        examples: example images kept for the galleries.
    """

    examples: int = 8


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


@dataclass(frozen=True)
class EnhanceSpec(_Spec):
    """Chapter 5, mask-guided classification.

    Attributes:
        n_test: normal test images.
        n_small: small birds of the hard test set (birds only).
        iterations: FIDO steps per mask.
        samples: mask samples per step.
        mask_size: side of the low-resolution mask.
        chunk: images per cached fit.
        resamples: bootstrap resamples.
        threshold: the mask threshold of fido-pytorch's procedure.
    """

    n_test: int = 200
    n_small: int = 100
    iterations: int = 30
    samples: int = 4
    mask_size: int = 16
    chunk: int = 50
    resamples: int = 2000
    threshold: float = 0.5


@dataclass(frozen=True)
class OverMAPSpec(_Spec):
    """Chapter 6, Over-MAP.

    Attributes:
        per_case: hard images per case (birds only).
        n_fido: images explained by FIDO (a balanced subset of the cases).
        fido_iterations, fido_samples, mask_size: the FIDO fits.
        mc_passes: MC-dropout passes T.
        n_boot: bootstrap resamples.
        batch: images per forward pass.
    """

    per_case: int = 100
    n_fido: int = 42
    fido_iterations: int = 100
    fido_samples: int = 2
    mask_size: int = 16
    mc_passes: int = 10
    n_boot: int = 1000
    batch: int = 128


@dataclass(frozen=True)
class MethodsSpec(_Spec):
    """Chapter 7, other attribution methods. The images and FIDO settings match chapter 4's,
    so its cached fits are reused.

    Attributes:
        n_images: test images explained.
        fido_iterations, fido_snapshots, fido_s_max, fido_chunk, mask_size: chapter 4's fits.
        batch: images per attribution call.
        ig_steps: integrated-gradients steps.
        smooth_samples: SmoothGrad samples.
        steps: steps of the deletion / insertion curves.
        resamples: bootstrap resamples.
    """

    n_images: int = 100
    fido_iterations: int = 20
    fido_snapshots: tuple = (5, 10)
    fido_s_max: int = 16
    fido_chunk: int = 25
    mask_size: int = 16
    batch: int = 25
    ig_steps: int = 32
    smooth_samples: int = 16
    steps: int = 16
    resamples: int = 2000


#: Experiment name -> spec class; the names are the :class:`fidobook.profiles.Profile` fields.
SPECS = {"concrete": ConcreteSpec, "one_bird": OneBirdSpec, "birds": BirdsSpec,
         "cd_vs_scd": CDvsSCDSpec, "enhance": EnhanceSpec, "overmap": OverMAPSpec,
         "methods": MethodsSpec}
