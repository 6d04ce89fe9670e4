"""Chapter 1, the concrete relaxation: its samples, its float32 gradients and their noise, measured.

No data set and no classifier (``USES = ()``): everything is drawn from the package's samplers
(:mod:`fidobook.samplers`) and checked against :mod:`fidobook.relaxation`'s exact references. The
Monte Carlo draws come from generators on ``context.device`` seeded ``spec.seed + offset`` (one
offset per statistic, so no statistic depends on another's draws).

The result holds

- scalars: ``hist_n``, ``rounding_gap`` (largest ``|P(z > 1/2) − σ(θ)|``), ``explorer_n``
  (samples per explorer histogram), ``mc_n``,
  ``cv_worst`` (largest relative difference of a Monte Carlo CV from the quadrature),
  ``cv_t01_0`` … ``cv_t1_5`` (the quadrature CV at ``t ∈ {0.1, 1}``, ``θ ∈ {0, 2, 5}``),
  ``replicates``, ``slope_01``, ``slope_1`` (log–log slopes of the S-sample mean's variance),
  ``equiv_0``, ``equiv_2``, ``equiv_5`` (samples at ``t = 0.1`` as quiet as one at ``t = 1``),
  and the float32 scan: ``cd_zero_theta``, ``naive_zero_theta``, ``scd_max_rel_err``,
  ``scd_zero_points``,
  ``cd_bad_lo``, ``cd_bad_hi``, ``cd_bad_max``, ``cd_large_err``;
- tables: ``above_half`` (θ, t: σ(θ), P(z > 1/2), mean of z), ``cv`` (t, θ: E[g], CV by
  quadrature, by Monte Carlo with SCD and, at t = 0.1, CD), ``variance`` (t, S: the measured
  variance of the S-sample mean gradient, Var[g]/S, its relative CV), ``freeze`` (one row per
  float32 gradient: where it is exactly zero, its largest relative error);
- arrays: ``explorer_t`` (Tensor[T]) with ``explorer_density`` (Tensor[T, 50], histogram
  densities of the keep samples at θ = 1 on 50 bins of [0, 1]) and ``explorer_above``
  (Tensor[T], P(z > 1/2) of those samples); ``cv_curve_t`` (Tensor[41]) and ``cv_curve``
  (Tensor[3, 41], the quadrature CV for θ = 0, 2, 5); ``freeze_theta`` (Tensor[8001]),
  ``freeze_grads`` (Tensor[3, 8001], float32, rows in ``FREEZE_METHODS`` order) and
  ``freeze_truth`` (Tensor[8001], float64).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..relaxation import (
    NaiveSimplifiedConcreteDropout,
    gradient_moments_mc,
    keep_gradient,
    keep_gradient_exact,
    mean_gradient_variance,
    pathwise_gradient_moments,
)
from ..samplers import ConcreteDropout, SimplifiedConcreteDropout
from ._base import Result, cached, check_spec, spec_dict
from .specs import ConcreteSpec as Spec

__all__ = [
    "CV_TEMPERATURES",
    "CV_THETAS",
    "EXPLORER_TEMPERATURES",
    "FREEZE_METHODS",
    "HIST_TEMPERATURES",
    "HIST_THETAS",
    "NAME",
    "SAMPLE_SIZES",
    "USES",
    "Spec",
    "run",
]

NAME = "concrete"
USES: tuple = ()

#: θ and t of the rounding table (the fraction of samples above ½ against σ(θ)).
HIST_THETAS = (-2.0, 0.0, 1.0, 3.0)
HIST_TEMPERATURES = (0.1, 1.0, 3.0)
#: θ and t of the coefficient-of-variation table.
CV_THETAS = (0.0, 2.0, 5.0)
CV_TEMPERATURES = (0.1, 0.3, 1.0, 3.0)
#: S of the variance of the S-sample mean gradient (at θ = 0, t = 0.1 and 1).
SAMPLE_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Temperatures of the histogram explorer (θ = 1).
EXPLORER_TEMPERATURES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)
#: The float32 gradients scanned over θ ∈ [−40, 40] at u = ½, t = 1.
FREEZE_METHODS = ("CD, nested", "SCD, naive autograd", "SCD, fidobook")

_EXPLORER_BINS = 50
_EXPLORER_MAX = 50_000


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) chapter 1's measurements.

    Args:
        spec (ConcreteSpec): the Monte Carlo sizes and seed.
        context (Context): only its device and cache folder are used (no data, no classifier).
        progress (bool): progress bars. Default: True.
        cache (bool): read and write the result cache. Default: True.

    Returns:
        Result: see the module docstring.

    Raises:
        TypeError: ``spec`` is not a :class:`ConcreteSpec`.
        ValueError: ``mc`` or ``replicates`` below 2 (a variance needs two draws).
    """
    check_spec(spec, Spec, NAME)
    for name in ("mc", "replicates"):
        if getattr(spec, name) < 2:
            raise ValueError(f"ConcreteSpec.{name}: expected an int >= 2 (a variance needs two "
                             f"draws), got {getattr(spec, name)}")
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


def _describe(context) -> dict:
    """The context, as far as this experiment uses it (nothing is loaded: no data, no model)."""
    return {"profile": context.profile.name, "source": "none (no data, no classifier)",
            "device": str(context.device), "threads": torch.get_num_threads()}


def _compute(spec: Spec, context, progress: bool) -> Result:
    device = context.device

    def generator(offset: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(spec.seed + offset)

    scalars, tables, arrays = {}, {}, {}
    bar = tqdm(total=5, desc=NAME, disable=not progress, leave=False)

    # 1. Rounding: P(z > 1/2) = σ(θ) at every temperature (the same draws for every t).
    rows = {"θ": [], "t": [], "σ(θ)": [], "P(z > 1/2), measured": [], "mean of z": []}
    for theta in HIST_THETAS:
        for t in HIST_TEMPERATURES:
            z = SimplifiedConcreteDropout(t).sample(torch.tensor(theta, device=device), spec.hist,
                                                    generator=generator(1))
            for k, v in zip(rows, (theta, t, 1 / (1 + math.exp(-theta)),
                                   (z > 0.5).double().mean().item(), z.double().mean().item())):
                rows[k].append(v)
    tables["above_half"] = rows
    gaps = [abs(a - b) for a, b in zip(rows["P(z > 1/2), measured"], rows["σ(θ)"])]
    scalars.update(hist_n=spec.hist, rounding_gap=max(gaps))

    # The explorer: histograms of the keep samples at θ = 1 (float64 draws on the CPU).
    gen = torch.Generator().manual_seed(spec.seed + 2)
    n_shown = min(spec.hist, _EXPLORER_MAX)
    density, above = [], []
    for t in EXPLORER_TEMPERATURES:
        z = SimplifiedConcreteDropout(t).sample(torch.tensor(1.0, dtype=torch.float64), n_shown,
                                                generator=gen)
        counts = torch.histc(z, bins=_EXPLORER_BINS, min=0.0, max=1.0)  # (50,)
        density.append(counts / (n_shown / _EXPLORER_BINS))  # counts / (n · bin width)
        above.append((z > 0.5).double().mean())
    arrays.update(explorer_t=torch.tensor(EXPLORER_TEMPERATURES, dtype=torch.float64),
                  explorer_density=torch.stack(density), explorer_above=torch.stack(above))
    scalars["explorer_n"] = n_shown
    bar.update()

    # 2. Float32: where the gradients freeze (u = 1/2, t = 1, θ ∈ [−40, 40] in steps of 0.01).
    scalars.update(_freeze(tables, arrays))
    bar.update()

    # 3. The CV of ∂z/∂θ: quadrature against Monte Carlo (SCD, and CD at FIDO's t = 0.1).
    cv_rows = {"t": [], "θ": [], "E[g]": [], "CV, quadrature": [], "CV, Monte Carlo SCD": [],
               "CV, Monte Carlo CD": []}
    worst = 0.0
    for t in CV_TEMPERATURES:
        for th in CV_THETAS:
            exact = pathwise_gradient_moments(th, t)
            scd = gradient_moments_mc(SimplifiedConcreteDropout(t), th, spec.mc,
                                      generator=generator(10), device=device)
            cd = (gradient_moments_mc(ConcreteDropout(t), th, spec.mc, generator=generator(11),
                                      device=device) if t == 0.1 else None)
            for k, v in zip(cv_rows, (t, th, exact.mean, exact.cv, scd.cv,
                                      None if cd is None else cd.cv)):
                cv_rows[k].append(v)
            worst = max([worst, abs(scd.cv / exact.cv - 1)]
                        + ([abs(cd.cv / exact.cv - 1)] if cd is not None else []))
            if t in (0.1, 1.0):
                scalars[f"cv_t{t:g}_{th:g}".replace(".", "")] = exact.cv
    tables["cv"] = cv_rows
    scalars.update(mc_n=spec.mc, cv_worst=worst)
    t_grid = np.geomspace(0.05, 5, 41)
    arrays["cv_curve_t"] = torch.from_numpy(t_grid)
    arrays["cv_curve"] = torch.tensor([[pathwise_gradient_moments(th, float(t)).cv for t in t_grid]
                                       for th in CV_THETAS], dtype=torch.float64)
    bar.update()

    # 4. The variance of the S-sample mean gradient at θ = 0: 1/S, a log–log slope of −1.
    var_rows = {"t": [], "S": [], "Var of the S-sample mean": [], "Var[g]/S": [],
                "relative CV (std/mean)": []}
    for t in (0.1, 1.0):
        measured = mean_gradient_variance(SimplifiedConcreteDropout(t), 0.0, SAMPLE_SIZES,
                                          spec.replicates, generator=generator(20), device=device)
        exact = pathwise_gradient_moments(0.0, t)
        slope = np.polyfit(np.log(SAMPLE_SIZES), np.log(measured.numpy()), 1)[0]
        scalars[f"slope_{t:g}".replace(".", "")] = float(slope)
        for s, v in zip(SAMPLE_SIZES, measured.tolist()):
            for k, x in zip(var_rows, (t, s, v, exact.variance / s, math.sqrt(v) / exact.mean)):
                var_rows[k].append(x)
    tables["variance"] = var_rows
    scalars["replicates"] = spec.replicates
    bar.update()

    # 5. S at t = 0.1 as quiet as one sample at t = 1: (CV_0.1 / CV_1)², by quadrature.
    for th in CV_THETAS:
        scalars[f"equiv_{th:g}"] = (pathwise_gradient_moments(th, 0.1).cv
                                    / pathwise_gradient_moments(th, 1.0).cv) ** 2
    bar.update()
    bar.close()
    return Result(name=NAME, spec=spec_dict(spec), context=_describe(context), scalars=scalars,
                  tables=tables, arrays=arrays)


def _freeze(tables: dict, arrays: dict) -> dict:
    """The float32 gradient scan: fills ``tables["freeze"]`` and the ``freeze_*`` arrays and
    returns its scalars."""
    theta = torch.linspace(-40, 40, 8001)  # float32, step 0.01
    u_half = torch.full_like(theta, 0.5)
    samplers = dict(zip(FREEZE_METHODS, (ConcreteDropout(1.0), NaiveSimplifiedConcreteDropout(1.0),
                                         SimplifiedConcreteDropout(1.0))))
    grads = {name: keep_gradient(s, theta, u_half)[1] for name, s in samplers.items()}  # float32
    truth = keep_gradient_exact(theta, u_half, 1.0)  # float64
    rel_err = {name: (g.double() - truth).abs() / truth for name, g in grads.items()}
    rows = {"method": [], "exactly zero for θ ≤": [], "exactly zero for θ ≥": [],
            "zero points (of 8001)": [], "max relative error": []}
    for name, g in grads.items():
        neg, pos = (g == 0) & (theta < 0), (g == 0) & (theta > 0)
        for k, v in zip(rows, (name, _extreme(theta, neg, "max"), _extreme(theta, pos, "min"),
                               int((g == 0).sum()), rel_err[name].max().item())):
            rows[k].append(v)
    tables["freeze"] = rows
    arrays.update(freeze_theta=theta, freeze_grads=torch.stack([grads[m] for m in FREEZE_METHODS]),
                  freeze_truth=truth)
    cd, naive = grads["CD, nested"], grads["SCD, naive autograd"]
    cd_rel = rel_err["CD, nested"]
    cd_bad = (cd_rel > 0.01) & (cd != 0)  # off by more than 1 % before it freezes
    return {
        "cd_zero_theta": _extreme(theta, (cd == 0) & (theta < 0), "max"),
        "naive_zero_theta": _extreme(theta, (naive == 0) & (theta > 0), "min"),
        "scd_max_rel_err": rel_err["SCD, fidobook"].max().item(),
        "scd_zero_points": int((grads["SCD, fidobook"] == 0).sum()),
        "cd_bad_lo": _extreme(theta, cd_bad, "min"),
        "cd_bad_hi": _extreme(theta, cd_bad, "max"),
        "cd_bad_max": _extreme(cd_rel, cd_bad, "max"),
        "cd_large_err": cd_rel[theta >= 0].max().item(),
    }


def _extreme(values, where, how: str):
    """``values[where].max()`` (or ``min``) as a float; None when ``where`` selects nothing."""
    if not bool(where.any()):
        return None
    return getattr(values[where], how)().item()
