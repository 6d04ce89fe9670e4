"""Executing the chapters with papermill: the table of contents, the hashes that decide what runs
again, the run records and the appendix page built from them."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._common import (CHAPTERS_DIR, ROOT, _RECORDS_PAGE, _TOC_PREFIX, _file_sha, _log,
                      _sha)
from ..chapter import RECORD_ENV
from ..chapter import resolve_device as _resolve_device


def _toc_files(node) -> list[str]:
    """Every ``file:`` entry of a (nested) jupyter-book toc, in order."""
    out = []
    if isinstance(node, Mapping):
        if isinstance(node.get("file"), str):
            out.append(node["file"])
        if isinstance(node.get("root"), str):
            out.append(node["root"])
        for value in node.values():
            if isinstance(value, (list, Mapping)):
                out.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_toc_files(item))
    return out


def chapters(root: str | os.PathLike = ROOT) -> list[str]:
    """The chapter names ``_toc.yml`` lists under ``book/chapters/``, in book order.

    Each name ``N`` has its source at ``notebooks/N.ipynb``.
    """
    import yaml

    root = Path(root)
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = []
    for f in _toc_files(toc):
        f = re.sub(r"\.ipynb$", "", f)
        if f.startswith(_TOC_PREFIX):
            name = f[len(_TOC_PREFIX):]
            if name not in names:
                names.append(name)
    for name in names:
        if not (root / "notebooks" / f"{name}.ipynb").is_file():
            raise FileNotFoundError(f"_toc.yml lists {_TOC_PREFIX}{name}, but its source "
                                    f"notebooks/{name}.ipynb does not exist")
    return names



def _source_hash(path: Path) -> str:
    """Hash of a notebook's cells (type, source, tags): metadata and outputs do not count."""
    nb = json.loads(path.read_text())
    cells = [(c.get("cell_type"), "".join(c.get("source", "")),
              sorted(c.get("metadata", {}).get("tags", []))) for c in nb.get("cells", [])]
    return _sha(json.dumps(cells).encode())


def _package_hash(root: Path) -> str:
    """Hash of every ``.py`` file of the package (path and bytes)."""
    h = hashlib.sha256()
    for p in sorted((root / "fidobook").rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def chapter_hash(name: str, parameters: Mapping, root: str | os.PathLike = ROOT) -> dict:
    """The hashes deciding whether chapter ``name`` must run again.

    Returns:
        dict: ``source`` (the notebook's cells), ``package`` (fidobook's code),
        ``parameters`` (the papermill parameters and what ``auto`` resolved to) and ``hash``
        (all three together).
    """
    root = Path(root)
    parts = {
        "source": _source_hash(root / "notebooks" / f"{name}.ipynb"),
        "package": _package_hash(root),
        "parameters": _sha(json.dumps(dict(parameters), sort_keys=True, default=str).encode()),
    }
    parts["hash"] = _sha(json.dumps(parts, sort_keys=True).encode())
    return parts




def _resolved(profile: str, device: str) -> tuple[str, str]:
    from ..profiles import get_profile

    return get_profile(profile).name, str(_resolve_device(device))


def _versions() -> dict:
    import torch

    from .. import __version__

    out = {"fidobook": __version__, "torch": torch.__version__,
           "python": platform.python_version()}
    for mod in ("papermill", "jupyter_book", "myst_nb", "ipywidgets", "matplotlib", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional tool is recorded as absent
            out[mod] = None
    return out


def _read_record(path: Path) -> dict | None:
    """A run record, or None (with a message) when it is missing or does not parse."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        _log(f"{path}: damaged run record ({type(e).__name__}: {e}); ignored")
        return None
    if not isinstance(record, dict):
        _log(f"{path}: damaged run record (expected a JSON object); ignored")
        return None
    return record



def _read_used(path: Path) -> list[dict]:
    """The experiments a chapter recorded (one JSON object a line); the file is removed."""
    if not path.is_file():
        return []
    used = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            used.append(json.loads(line))
        except ValueError:
            _log(f"{path}: skipping a damaged line of the experiments record")
    path.unlink(missing_ok=True)
    return used


def _sweep_partials(out_dir: Path) -> None:
    """Removes executed copies that a killed run left half-written (``.<name>.running-<pid>.ipynb``)."""
    from .._io import _pid_alive

    for p in out_dir.glob(".*.running-*.ipynb"):
        pid = p.name[: -len(".ipynb")].rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            _log(f"removing a partial executed copy left by an interrupted run: {p}")
            with contextlib.suppress(OSError):
                p.unlink()
    for p in out_dir.glob(".*.experiments-*.jsonl"):
        pid = p.name[: -len(".jsonl")].rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()
    for p in out_dir.glob(".*.running.ipynb"):  # the name older versions used
        with contextlib.suppress(OSError):
            p.unlink()



@contextlib.contextmanager
def _kernel_environment(root: Path):
    """The environment the kernels inherit; the caller's is restored on exit, also on error."""
    saved = {k: os.environ.get(k) for k in ("FIDOBOOK_CACHE", "PYDEVD_DISABLE_FILE_VALIDATION", "MPLBACKEND")}
    try:
        os.environ.setdefault("FIDOBOOK_CACHE", str(root / ".cache"))
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        if os.environ.pop("MPLBACKEND", None):
            _log("MPLBACKEND unset for the kernels (a non-inline backend drops every figure)")
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(profile: str = "auto", device: str = "auto", seed: int = 0, *,
        data_dir: str | None = None, cache_dir: str | None = None, weights: str | None = None,
        arch: str | None = None,
        only: Sequence[str] | None = None, force: bool = False,
        out_dir: str | os.PathLike = CHAPTERS_DIR, timeout: int = 3600,
        progress: bool = True, root: str | os.PathLike = ROOT) -> list[dict]:
    """Executes the book's chapters with papermill; skips those whose hash is unchanged.

    Args:
        profile (str, optional): ``smoke``, ``cpu``, ``gpu`` or ``auto``. Default: ``"auto"``.
        device (str, optional): ``auto``, ``cpu``, ``cuda``, ... Default: ``"auto"``.
        seed (int, optional): the chapters' seed. Default: 0.
        data_dir (str, optional): passed to the chapters (``None``: their default).
        cache_dir (str, optional): passed to the chapters (made absolute: the kernels run in
            ``out_dir``); ``None`` keeps their default, the ``FIDOBOOK_CACHE`` folder, which
            this sets to ``<root>/.cache`` when unset, so that data and checkpoints are shared
            with ``make train`` and reused.
        only (sequence of str, optional): chapter names to consider (default: all in the toc).
        force (bool, optional): execute even if up to date. Default: False.
        out_dir (path, optional): where executed copies and run records go.
            Default: ``book/chapters``.
        timeout (int, optional): papermill's per-cell execution timeout, s. Default: 3600.
        progress (bool, optional): show papermill's progress bar. Default: True.
        root (path, optional): the repository root. Default: this checkout.

    Returns:
        list of dict: one run record per chapter considered (``status`` is ``"ok"``,
        ``"up to date"`` or ``"failed"``).

    Raises:
        RuntimeError: a chapter failed (after the others have been tried).
    """
    import papermill as pm

    from .._io import atomic_write_text, sweep_tmp

    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _sweep_partials(out_dir)
    sweep_tmp(out_dir)
    names = chapters(root)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"only: expected chapters among {names}, got unknown {unknown}")
        names = [n for n in names if n in only]
    with _kernel_environment(root):
        # The kernels run in out_dir: relative folders would point somewhere else there.
        data_dir = str(Path(data_dir).resolve()) if data_dir is not None else None
        cache_dir = str(Path(cache_dir).resolve()) if cache_dir is not None else None
        weights = str(Path(weights).resolve()) if weights is not None else None
        profile_resolved, device_resolved = _resolved(profile, device)
        parameters = {"profile": profile, "device": device, "seed": int(seed),
                      "data_dir": data_dir, "cache_dir": cache_dir, "weights": weights, "arch": arch}
        key = dict(parameters, profile_resolved=profile_resolved, device_resolved=device_resolved)

        records, failed = [], []
        for i, name in enumerate(names, 1):
            source = root / "notebooks" / f"{name}.ipynb"
            target = out_dir / f"{name}.ipynb"
            record_path = out_dir / f"{name}.run.json"
            hashes = chapter_hash(name, key, root)
            old = None if force else _read_record(record_path)
            if old is not None and old.get("status") == "ok" and old.get("hash") == hashes["hash"]:
                # Reuse only a copy whose bytes are those the record was written for.
                if target.is_file() and old.get("executed_sha256") == _file_sha(target):
                    _log(f"[{i}/{len(names)}] {name}: up to date (hash {hashes['hash'][:12]}), skipped")
                    records.append(dict(old, status="up to date"))
                    continue
                _log(f"[{i}/{len(names)}] {name}: executed copy {target} is "
                     f"{'damaged (SHA-256 differs from its run record)' if target.is_file() else 'missing'}; "
                     f"executing again")
            _log(f"[{i}/{len(names)}] {name}: executing with profile={profile} ({profile_resolved}), "
                 f"device={device} ({device_resolved}), seed={seed}")
            partial = out_dir / f".{name}.running-{os.getpid()}.ipynb"
            # The chapter's fidobook.chapter.record() calls append the experiments it used here.
            used_path = out_dir / f".{name}.experiments-{os.getpid()}.jsonl"
            used_path.unlink(missing_ok=True)
            os.environ[RECORD_ENV] = str(used_path)
            t0 = time.perf_counter()
            status, error = "ok", None
            try:
                pm.execute_notebook(str(source), str(partial), parameters=parameters,
                                    kernel_name="python3", execution_timeout=timeout,
                                    progress_bar=progress, cwd=str(out_dir), log_output=False)
            except Exception as exc:  # noqa: BLE001 - reported, the other chapters still run
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            wall = time.perf_counter() - t0
            os.environ.pop(RECORD_ENV, None)
            experiments = _read_used(used_path)
            record = {
                "chapter": name, "status": status, "error": error,
                "source": source.relative_to(root).as_posix(),
                "executed": target.name,
                **parameters, "profile_resolved": profile_resolved,
                "device_resolved": device_resolved,
                "wall_seconds": round(wall, 1),
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                **_versions(),
                "host": {"system": platform.system(), "machine": platform.machine(),
                         "cpu_count": os.cpu_count(),
                         "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
                "hash": hashes["hash"], "hashes": hashes,
                "experiments": experiments,
            }
            if status == "ok":
                record["executed_sha256"] = _file_sha(partial)
                partial.replace(target)
                _log(f"[{i}/{len(names)}] {name}: done in {wall:.1f} s -> {target}")
            else:
                failed_copy = out_dir / f"{name}.failed.ipynb"
                if partial.exists():
                    partial.replace(failed_copy)
                _log(f"[{i}/{len(names)}] {name}: FAILED after {wall:.1f} s: {error.splitlines()[0]}"
                     f" (executed copy with the error: {failed_copy})")
                failed.append(name)
            atomic_write_text(json.dumps(record, indent=2) + "\n", record_path)
            records.append(record)
        write_run_records_page(out_dir, root=root)
        if failed:
            raise RuntimeError(f"chapters failed: {failed}")
        return records


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _spec_text(spec: Mapping) -> str:
    """``a=1, b=(1, 2)`` for a table cell (pipes would break the markdown table)."""
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in spec.items()).replace("|", "/")


def write_run_records_page(chapters_dir: str | os.PathLike = CHAPTERS_DIR, *,
                           root: str | os.PathLike = ROOT) -> Path:
    """Writes ``run_records.md`` (included by the appendix) from the chapters' run records.

    It tabulates how each chapter was executed, the environment of the runs, the experiments
    each chapter ran with the specs it used (recorded by :func:`fidobook.chapter.record`), and
    the profiles (read from :mod:`fidobook.profiles`), so that none of it is typed by hand.
    """
    chapters_dir = Path(chapters_dir)
    records = []
    for name in chapters(root):
        record = _read_record(chapters_dir / f"{name}.run.json")
        if record is not None:
            records.append(record)
    out = ["<!-- generated by fidobook.book from the run records; do not edit -->\n"]
    if not records:
        out.append("No chapter has been executed yet.\n")
    else:
        rows = [(f"`{r['chapter']}`", f"{r['profile']} → {r['profile_resolved']}",
                 f"{r['device']} → {r['device_resolved']}", r["seed"],
                 f"{r['wall_seconds']:.1f} s", r["date"], f"`{r['hash'][:12]}`") for r in records]
        out.append("**How each chapter was executed** (papermill; the hash covers the source "
                   "notebook, the package code and the parameters):\n\n")
        out.append(_md_table(["chapter", "profile", "device", "seed", "wall time", "date", "hash"],
                             rows))
        last = max(records, key=lambda r: r["date"])
        host = last.get("host", {})
        env = [("fidobook", last.get("fidobook")), ("torch", last.get("torch")),
               ("Python", last.get("python")), ("papermill", last.get("papermill")),
               ("jupyter-book", last.get("jupyter_book")), ("myst-nb", last.get("myst_nb")),
               ("ipywidgets", last.get("ipywidgets")), ("matplotlib", last.get("matplotlib")),
               ("machine", f"{host.get('system')} {host.get('machine')}, "
                           f"{host.get('cpu_count')} CPUs, OMP_NUM_THREADS="
                           f"{host.get('omp_num_threads')}")]
        out.append("\n**Environment of the latest run:**\n\n")
        out.append(_md_table(["", "version"], [(k, v) for k, v in env]))
    used = [(r["chapter"], e) for r in records for e in r.get("experiments", [])]
    if used:
        out.append("\n**The experiments each chapter ran, with their specs** (the sizes actually "
                   "used, from the run records; `fidobook run NAME` computes the same result "
                   "headless):\n\n")
        rows = [(f"`{chapter}`", f"`{e['experiment']}`", _spec_text(e.get("spec", {})),
                 e.get("context", {}).get("source", ""), f"`{str(e.get('key', ''))[:12]}`")
                for chapter, e in used]
        out.append(_md_table(["chapter", "experiment", "spec", "data", "result key"], rows))
    try:
        from ..profiles import PROFILES

        fields = ["n_classes", "train_per_class", "test_per_class", "image_size", "max_batch"]
        rows = [[f"`{f}`"] + [getattr(p, f) for p in PROFILES.values()] for f in fields]
        rows.append(["classifier"] + [f"{p.classifier.arch}, {p.classifier.epochs} epochs"
                                      for p in PROFILES.values()])
        out.append("\n**The profiles** (`fidobook.profiles`; `auto` is `gpu` with CUDA, else "
                   "`cpu`; each also holds every experiment's spec):\n\n")
        out.append(_md_table(["field"] + [f"`{name}`" for name in PROFILES], rows))
    except Exception as exc:  # noqa: BLE001 - the page still renders without the profiles
        out.append(f"\n(The profiles could not be read: {type(exc).__name__}.)\n")
    from .._io import atomic_write_text

    path = chapters_dir / _RECORDS_PAGE
    atomic_write_text("".join(out), path)
    return path


