"""Relaxed-Bernoulli mask samplers: concrete dropout (CD) and simplified concrete dropout (SCD).

One convention everywhere in fidobook: ``logits`` θ is the logit of the **keep** probability.
A sample is a keep-mask in (0, 1); ``expected(θ) = σ(θ)`` and ``hard(θ) = θ > 0``.

Both samplers draw the binary concrete (relaxed Bernoulli) distribution of Maddison et al. and
Jang et al. (2017): with ``u ~ U(0, 1)`` and logistic noise ``n = log u − log(1 − u)``,

    keep = σ((θ + n) / t),        P(keep > 1/2) = P(n > −θ) = σ(θ).

They differ in *how* the sample is computed, which is the subject of Korsch et al. (GCPR 2023):

- :class:`ConcreteDropout` reproduces FIDO's original nested computation: it turns the logit
  into a drop rate ``p = σ(−θ)``, takes logs of it again behind an ``eps`` guard, and returns
  ``1 − σ((log(p+ε) − log(1−p+ε) + log(v+ε) − log(1−v+ε)) / t)``. Autograd runs through it as
  written, so its float32 failure modes (a frozen gradient once ``σ`` saturates) are kept.
- :class:`SimplifiedConcreteDropout` notices that ``log p − log(1 − p)`` is just ``−θ`` and
  samples ``σ((θ + log u − log(1 − u)) / t)`` directly: one sigmoid, gradient ``z (1 − z) / t``.

CD's original code draws its uniform for the *drop* event; we feed it ``v = 1 − u`` (exact for
``torch.rand``'s float32 draws), so that both samplers map the same draw ``u`` to the same mask
wherever CD is not saturated. Differences between the two are then numerics, not noise.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks

__all__ = [
    "MaskSampler",
    "ConcreteDropout",
    "SimplifiedConcreteDropout",
    "SAMPLERS",
    "get_sampler",
    "logistic_noise",
    "open_uniform",
    "stable_sigmoid",
]


def logistic_noise(u: Tensor) -> Tensor:
    """Logistic noise ``log u − log(1 − u)`` from uniforms ``u`` in (0, 1), any shape."""
    return torch.log(u) - torch.log1p(-u)


class MaskSampler:
    """Base class: a relaxed-Bernoulli keep-mask sampler with an explicit temperature.

    Subclasses implement :meth:`relax` only; drawing, expectation and hard decisions are shared.

    Args:
        temperature: relaxation temperature ``t > 0``; ``None`` takes the class default. Lower is
            closer to Bernoulli (samples near 0 or 1) with a spikier pathwise gradient.
    """

    default_temperature: float = 1.0
    name: str = "base"

    def __init__(self, temperature: float | None = None) -> None:
        t = self.default_temperature if temperature is None else temperature
        self.temperature = _checks.check_positive_float(t, "temperature")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature:g})"

    # The one method that differs between samplers.
    def relax(self, logits: Tensor, u: Tensor) -> Tensor:
        """Maps uniforms to keep-masks.

        Args:
            logits (Tensor[*]): keep logits θ, broadcastable against ``u``.
            u (Tensor[*]): uniforms in (0, 1).

        Returns:
            Tensor[*]: keep-masks in [0, 1], differentiable in ``logits``.
        """
        raise NotImplementedError

    def sample(self, logits: Tensor, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``n`` keep-masks.

        Args:
            logits (Tensor[*]): keep logits θ (float, finite).
            n: number of samples.
            generator: source of the uniforms: a ``torch.Generator`` on ``logits``' device, an
                int (the seed of a new CPU generator, in ``[0, 2**64)``) or ``None`` (torch's
                global generator).

        Returns:
            Tensor[n, *logits.shape]: keep-masks in (0, 1), differentiable in ``logits``.
        """
        _checks.check_float(logits, "logits")
        _checks.check_finite(logits, "logits")
        _checks.check_positive_int(n, "n")
        if generator is not None:
            generator = _checks.check_generator(generator)
        u = open_uniform((n, *logits.shape), generator=generator, dtype=logits.dtype, device=logits.device)
        return self.relax(logits, u)

    @staticmethod
    def expected(logits: Tensor) -> Tensor:
        """Keep probability ``σ(θ)``: the mean of the hard decisions ``1{keep > 1/2}``."""
        return torch.sigmoid(logits)

    @staticmethod
    def hard(logits: Tensor) -> Tensor:
        """Most likely hard mask ``θ > 0`` (bool, same shape)."""
        return logits > 0


def open_uniform(shape, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Uniforms in the open interval (0, 1): ``torch.rand`` can return exactly 0."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    return u.clamp_(min=tiny)


class ConcreteDropout(MaskSampler):
    """FIDO's concrete dropout, computed in its original nested form (default ``t = 0.1``).

    The guard ``eps`` differs from the reference codes'. FIDO-saliency's
    ``concrete_dropout_neuron`` (``arch/binary/ConcreteNeuron.py``) and fido-pytorch's
    ``concrete_dropout`` (``src/concrete_dropout/default.py``) both use
    ``numpy.finfo(float).eps`` ≈ 2.2e-16, the float64 machine epsilon. fidobook defaults to 1e-7,
    about the float32 machine epsilon (1.19e-7), because it computes in float32:

    - float32 cannot resolve ``1 − p`` below 2**-24 ≈ 6e-8 (the gap below 1). A guard of
      2.2e-16 is lost when added to anything larger, so it acts only where ``1 − p`` is exactly
      0: the term ``log(p+ε) − log(1−p+ε)`` follows −θ (ever more coarsely, as float32 rounds
      ``1 − p``: 5e-4 off at θ = −10) until ``σ(−θ)`` rounds to 1 at θ ≈ −16.6, and there leaps
      to −log(2.2e-16) ≈ 36.0. On the keep side ``p`` stays representable until θ ≈ 88, so
      there the term follows −θ far beyond θ = 16.
    - With 1e-7 the term saturates smoothly and symmetrically at ±16.1 (= −log 1e-7), near where
      float32 stops resolving ``1 − p`` anyway. The price: for ``|θ| ≳ 10`` it departs from −θ
      (by 2e-3 to 3e-3 at ``|θ| = 10``), its derivative shrinks (to about half at
      ``|θ| = 16``), and the uniform's logistic noise is capped near ±16 (±15.65 for the
      smallest non-zero float32 draw, 2**-24) instead of ±16.6.

    The freeze this class exists to show (the gradient is exactly 0 once ``σ(−θ)`` rounds to 1,
    θ ≲ −16.6) happens with either value. ``eps=float(numpy.finfo(float).eps)`` reproduces the
    reference codes' arithmetic.

    Args:
        temperature: ``t``; default 0.1 as in FIDO.
        eps: the guard added inside every log; default 1e-7 (see above; the reference codes use
            2.2e-16).
    """

    default_temperature = 0.1
    name = "cd"

    def __init__(self, temperature: float | None = None, eps: float = 1e-7) -> None:
        super().__init__(temperature)
        self.eps = _checks.check_positive_float(eps, "eps", allow_zero=True)

    def __repr__(self) -> str:
        return f"ConcreteDropout(temperature={self.temperature:g}, eps={self.eps:g})"

    def relax(self, logits: Tensor, u: Tensor) -> Tensor:
        eps, t = self.eps, self.temperature
        p = torch.sigmoid(-logits)  # drop rate: the original code parameterises the drop event
        v = 1.0 - u  # the drop event's uniform; exact for float32 draws of torch.rand
        drop = torch.sigmoid(
            (torch.log(p + eps) - torch.log(1.0 - p + eps) + torch.log(v + eps) - torch.log(1.0 - v + eps)) / t
        )
        return 1.0 - drop


class _StableSigmoid(torch.autograd.Function):
    """``σ(x)`` whose backward is ``σ(x) σ(−x)`` instead of autograd's ``y (1 − y)``.

    Autograd's form reads the rounded output: once ``σ(x)`` rounds to 1 in float32 (x ≳ 17),
    ``1 − y`` is exactly 0 and the gradient vanishes, the same freeze CD suffers on the other
    side. ``σ(−x)`` computed directly stays accurate until it underflows (x ≈ 88).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * torch.sigmoid(-x)


def stable_sigmoid(x: Tensor) -> Tensor:
    """``σ(x)`` with a gradient that does not vanish when the output rounds to 0 or 1."""
    return _StableSigmoid.apply(x)


class SimplifiedConcreteDropout(MaskSampler):
    """Simplified concrete dropout (Korsch et al., 2023): ``σ((θ + log u − log(1 − u)) / t)``.

    The gradient ``∂keep/∂θ = σ(x) σ(−x) / t`` with ``x = (θ + n) / t`` is computed without
    forming ``1 − keep`` (see :func:`stable_sigmoid`), so it stays non-zero in float32 on both
    sides, where CD's nested form is exactly zero once the drop rate rounds to 1.

    Args:
        temperature: ``t``; default 1.0, the seed code's value for SCD.
    """

    default_temperature = 1.0
    name = "scd"

    def relax(self, logits: Tensor, u: Tensor) -> Tensor:
        return stable_sigmoid((logits + logistic_noise(u)) / self.temperature)


SAMPLERS: dict[str, type[MaskSampler]] = {
    "cd": ConcreteDropout,
    "scd": SimplifiedConcreteDropout,
}


def get_sampler(name: str | MaskSampler, temperature: float | None = None) -> MaskSampler:
    """Builds a sampler from its name (``"cd"`` or ``"scd"``); an instance passes through."""
    if isinstance(name, MaskSampler):
        return name
    _checks.check_choice(name, "sampler", list(SAMPLERS))
    return SAMPLERS[name](temperature)
