"""What every experiment shares: the result object, its verified file, the result cache.

An experiment is a module of :mod:`fidobook.experiments` with

- ``NAME`` (str) and a frozen ``Spec`` dataclass (its sizes; per-profile values live in
  :mod:`fidobook.profiles`, one field of :class:`fidobook.profiles.Profile` per experiment);
- ``run(spec, context, *, progress=True, cache=True) -> Result``, which calls :func:`cached`
  with its private ``_compute(spec, context, progress) -> Result``.

A :class:`Result` is small and plain: scalars, tables (columns of plain values) and a few
tensors (example maps). It is saved as one verified record (``<key>.pt``: atomic, versioned,
digest-checked by :func:`fidobook._io.load_record`) with a JSON copy of everything but the
tensors beside it (``<key>.json``) for people and other tools. The cache key digests the
experiment's name and spec, the context's data and model fingerprints, and the package's version
and code, so a chapter and ``fidobook run`` with the same spec on the same data and model read
the same file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from .. import _io

__all__ = ["Result", "cached", "result_key", "spec_dict"]

#: Bumped when the stored layout of a result changes: older files are recomputed.
FORMAT = "fidobook-experiment-1"


def spec_dict(spec) -> dict:
    """A spec as plain values (tuples as lists), for keys, JSON and run records."""
    if not dataclasses.is_dataclass(spec) or isinstance(spec, type):
        raise TypeError(f"spec: expected a spec dataclass instance, got {type(spec).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def _plain(value, where: str):
    """``value`` as JSON-able plain Python (numpy and torch scalars unwrapped), or an error."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"{where}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: expected plain values (numbers, strings, lists), got {type(value).__name__}")


@dataclass
class Result:
    """The outcome of one experiment run: small, plain and verifiable.

    Attributes:
        name (str): the experiment (``NAME`` of its module).
        spec (dict): the spec it ran with, as plain values.
        context (dict): :meth:`fidobook.experiments.Context.describe` of the data and models.
        scalars (dict[str, number | str | None]): headline numbers and short texts.
        tables (dict[str, dict[str, list]]): tables as columns of plain values (equal lengths);
            :meth:`table` returns one as a ``pandas.DataFrame``.
        arrays (dict[str, Tensor]): small tensors (example maps, per-image scores), on the CPU.
        seconds (float): compute time of the run that produced it (not of a cache hit).
        key (str): the cache key (empty until cached).
        created (str): UTC time of the computation.
    """

    name: str
    spec: dict
    context: dict
    scalars: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""
    created: str = ""

    def __post_init__(self):
        self.scalars = {str(k): _plain(v, f"scalars[{k!r}]") for k, v in self.scalars.items()}
        tables = {}
        for name, columns in self.tables.items():
            if hasattr(columns, "to_dict") and hasattr(columns, "columns"):  # a DataFrame
                columns = {str(c): columns[c].tolist() for c in columns.columns}
            columns = {str(c): _plain(list(v), f"tables[{name!r}][{c!r}]") for c, v in columns.items()}
            lengths = {len(v) for v in columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"tables[{name!r}]: expected columns of equal length, got {sorted(lengths)}")
            tables[str(name)] = columns
        self.tables = tables
        for k, v in self.arrays.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"arrays[{k!r}]: expected a Tensor, got {type(v).__name__}")
        self.arrays = {str(k): v.detach().cpu().contiguous() for k, v in self.arrays.items()}
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    # -- reading ---------------------------------------------------------------------------

    def table(self, name: str):
        """Table ``name`` as a ``pandas.DataFrame`` (pandas is imported here, not by the package)."""
        import pandas as pd

        if name not in self.tables:
            raise KeyError(f"table: expected one of {sorted(self.tables)}, got {name!r}")
        return pd.DataFrame(self.tables[name])

    def __getitem__(self, name: str):
        """A scalar by name (``result["accuracy"]``)."""
        if name not in self.scalars:
            raise KeyError(f"expected a scalar among {sorted(self.scalars)}, got {name!r}")
        return self.scalars[name]

    def numbers(self) -> dict:
        """Every finite numeric scalar, for comparisons between runs."""
        return {k: v for k, v in self.scalars.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (not isinstance(v, float) or math.isfinite(v))}

    # -- files -----------------------------------------------------------------------------

    def _record(self) -> dict:
        return {"name": self.name, "spec": self.spec, "context": self.context,
                "scalars": self.scalars, "tables": self.tables, "arrays": dict(self.arrays),
                "seconds": float(self.seconds), "key": self.key, "created": self.created}

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``path`` (a verified record) and ``path`` with suffix ``.json``, atomically."""
        path = Path(path)
        _io.save_record(self._record(), path, format=FORMAT)
        summary = {k: v for k, v in self._record().items() if k != "arrays"}
        summary["arrays"] = {k: list(v.shape) for k, v in self.arrays.items()}
        summary["format"] = FORMAT
        _io.atomic_write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n",
                              path.with_suffix(".json"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Reads a result written by :meth:`save`; a damaged file raises ``DamagedFile``."""
        record = _io.load_record(path, format=FORMAT,
                                 fields=("name", "spec", "context", "scalars", "tables", "arrays"))
        record.pop("format", None)
        return cls(**record)


# ----------------------------------------------------------------------------------------------
# The cache


def result_key(name: str, spec, context, uses=("data", "classifier")) -> str:
    """The cache key of experiment ``name`` with ``spec`` on ``context`` (20 hex characters);
    ``uses`` names the parts of the context the experiment depends on (see
    :meth:`fidobook.experiments.Context.fingerprint`)."""
    payload = {"format": FORMAT, "experiment": name, "spec": spec_dict(spec),
               "context": context.fingerprint(tuple(uses)), "package": _io.package_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cached(name: str, spec, context, compute: Callable, *, uses=("data", "classifier"),
           progress: bool = True, cache: bool = True) -> Result:
    """``compute(spec, context, progress)`` once per key; later calls load the stored result.

    The file is ``<context.cache_dir>/experiments/<name>/<key>.pt``. A damaged file is reported
    (a warning naming it) and recomputed; temporary files of killed writers are removed.
    ``cache=False`` computes and stores nothing.
    """
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {progress!r}")
    key = result_key(name, spec, context, uses)
    folder = Path(context.cache_dir) / "experiments" / name
    path = folder / f"{key}.pt"
    if cache:
        _io.sweep_tmp(folder)
        if path.is_file():
            try:
                return Result.load(path)
            except _io.DamagedFile as e:
                warnings.warn(f"{name}: recomputing a damaged result ({e})", stacklevel=3)
    t0 = time.perf_counter()
    result = compute(spec, context, progress)
    if not isinstance(result, Result):
        raise TypeError(f"{name}: the experiment returned {type(result).__name__}, expected a Result")
    result.seconds = time.perf_counter() - t0
    result.key = key
    if cache:
        result.save(path)
    return result


def new_result(name: str, spec, context, **fields) -> Result:
    """A :class:`Result` for ``name`` with the spec and the context filled in."""
    return Result(name=name, spec=spec_dict(spec), context=context.describe(), **fields)


def check_spec(spec, cls, name: str):
    """``spec`` itself if it is a ``cls``; a clear TypeError otherwise."""
    if not isinstance(spec, cls):
        raise TypeError(f"spec: expected a {name} spec ({cls.__module__}.{cls.__qualname__}), "
                        f"got {type(spec).__name__}")
    return spec

