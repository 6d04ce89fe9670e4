"""The book's experiments as package objects: one module per chapter experiment.

Each experiment module (``concrete``, ``one_bird``, ``birds``, ``cd_vs_scd``, ``enhance``,
``overmap``, ``methods``) has a frozen spec (:mod:`fidobook.experiments.specs`; the per-profile
values are fields of :class:`fidobook.profiles.Profile`) and
``run(spec, context, *, progress=True, cache=True) -> Result``. A :class:`Context` is the data
source and the models (the generated birds, or a CUB-format folder with the reader's weights).
Results are small verified files, cached by spec, data, models and package code, so a chapter and
the headless command (``fidobook run EXPERIMENT|all``) read the same numbers::

    from fidobook.experiments import Context, run
    ctx = Context.create("cpu")
    result = run("cd_vs_scd", ctx)                 # the profile's spec
    result.table("claim_a"), result["accuracy"]    # a DataFrame, a number
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ._base import Result, cached, result_key
from .context import Context, EvaluationSet
from .specs import SPECS

__all__ = ["EXPERIMENTS", "Context", "EvaluationSet", "Result", "cached", "result_key", "get", "run",
           "SPECS"]

#: The experiments, in chapter order.
EXPERIMENTS = tuple(SPECS)


def get(name: str) -> ModuleType:
    """The module of experiment ``name`` (imported on first use)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"name: expected one of {list(EXPERIMENTS)}, got {name!r}")
    return importlib.import_module(f".{name}", __name__)


def run(name: str, context: Context, spec=None, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) experiment ``name`` on ``context``.

    Args:
        name (str): one of :data:`EXPERIMENTS`.
        context (Context): data and models.
        spec (optional): the experiment's spec; default the context's profile's
            (``getattr(context.profile, name)``).
        progress (bool): progress bars. Default: True.
        cache (bool): read and write the result cache. Default: True.

    Returns:
        Result
    """
    module = get(name)
    if not isinstance(context, Context):
        raise TypeError(f"context: expected a fidobook.experiments.Context, got {type(context).__name__}")
    spec = getattr(context.profile, name) if spec is None else spec
    return module.run(spec, context, progress=progress, cache=cache)
