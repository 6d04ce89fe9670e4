"""Infill strategies: what a dropped pixel is replaced with.

A masked image is ``keep * image + (1 − keep) * infill(image)``. Images are ``Tensor[N, C, H, W]``
in [0, 1]; every infill returns a tensor of the same shape, also in [0, 1].

Deterministic infills (``blur``, ``mean``, ``zeros``, ``original``) are computed once per fit;
random ones (``uniform``, ``gaussian``, ``knockoff``) are redrawn for every mask sample, each
from the ``generator`` it is given.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _checks, _maps

__all__ = ["INFILLS", "RANDOM_INFILLS", "infill", "blur_sigma"]

#: FIDO blurs with σ = 10 px at 224 px; we keep the same blur relative to the image size.
BLUR_SIGMA_AT_224 = 10.0


def blur_sigma(size: int) -> float:
    """Blur σ in pixels for an image whose shorter side is ``size`` (10 px at 224 px)."""
    return BLUR_SIGMA_AT_224 * size / 224.0


def _blur(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The package's one Gaussian blur (:func:`fidobook._maps.gaussian_blur`) with σ =
    :func:`blur_sigma` of the shorter side: ``2⌈3σ⌉ + 1`` taps (±3σ, 99.7 % of the mass) cut to
    the image, reflect padding, two matrix products. The same linear map as torchvision's
    ``gaussian_blur`` with that kernel (used here before), up to float rounding (≤ 1e-6 at 64 px
    in float32, and closer to the exact float64 result)."""
    h, w = images.shape[-2:]
    # A convex combination of values in [0, 1]: the clamp only removes float rounding (~1e-7).
    return _maps.gaussian_blur(images, blur_sigma(min(h, w))).clamp(0.0, 1.0)


def _mean(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)


def _zeros(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return torch.zeros_like(images)


def _original(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return images


def _uniform(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)


def _gaussian(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    # Noise with each image's own per-channel mean and spread, so the infill is not an
    # easy "this pixel was removed" signal of a different brightness.
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True, unbiased=False)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (mean + std * noise).clamp_(0.0, 1.0)


def _knockoff(images: Tensor, generator: torch.Generator | None = None, grid: int = 8) -> Tensor:
    """Shuffles an image's patches on a ``grid × grid`` lattice (one permutation per image)."""
    n, c, h, w = images.shape
    ph, pw = h // grid, w // grid
    if ph == 0 or pw == 0:
        raise ValueError(f"images: expected at least {grid} px per side for the knockoff infill, got {h}x{w}")
    out = images.clone()
    core = images[..., : ph * grid, : pw * grid]
    # (N, C, g, ph, g, pw) -> (N, g*g, C, ph, pw): one row per patch
    patches = core.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    perm = torch.argsort(torch.rand((n, grid * grid), generator=generator, device=images.device), dim=1)
    patches = patches.gather(1, perm.view(n, -1, 1, 1, 1).expand_as(patches))
    out[..., : ph * grid, : pw * grid] = (
        patches.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)
    )
    return out


INFILLS: dict[str, Callable[..., Tensor]] = {
    "blur": _blur,
    "mean": _mean,
    "zeros": _zeros,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "knockoff": _knockoff,
    "original": _original,
}

#: Infills that draw random numbers: FIDO redraws them for every mask sample.
RANDOM_INFILLS = frozenset({"uniform", "gaussian", "knockoff"})


def infill(images: Tensor, name: str = "blur", generator: torch.Generator | None = None) -> Tensor:
    """Computes the infill of a batch of images.

    Args:
        images (Tensor[N, C, H, W]): images in [0, 1].
        name: one of :data:`INFILLS` (``blur``, ``mean``, ``zeros``, ``uniform``, ``gaussian``,
            ``knockoff``, ``original``).
        generator: source of randomness for the random infills.

    Returns:
        Tensor[N, C, H, W]: the infill, in [0, 1].
    """
    _checks.check_choice(name, "infill", list(INFILLS))
    _checks.check_images(images)
    return INFILLS[name](images, generator)
