"""The book pipeline: execute the chapters with papermill, build the HTML, check it offline.

The chapters are the notebooks the table of contents (``_toc.yml``) lists under
``book/chapters/``: an entry ``book/chapters/01_concrete`` is executed from
``notebooks/01_concrete.ipynb`` into ``book/chapters/01_concrete.ipynb``, which jupyter-book
renders (``execute_notebooks: "off"``). Adding a chapter is one line in ``_toc.yml``.

::

    python -m fidobook.book run --profile auto      # execute what changed, with progress
    python -m fidobook.book run --chapters 01_concrete --force
    python -m fidobook.book build                   # strict HTML build into book/_build/html
    python -m fidobook.book check                   # no CDN script; Chromium renders maths, figures, widgets
    python -m fidobook.book vendor                  # MathJax 3 + ipywidgets embed scripts from npm

Each executed chapter gets a run record ``<chapter>.run.json`` beside it (profile, device, seed,
wall time, versions, date, a hash of the source notebook, the package code and the parameters,
and the SHA-256 of the executed copy). A chapter is executed again when that hash changes (or
with ``force``), and when its executed copy or its record is damaged: reuse verifies the copy's
SHA-256 and reports what it re-executes. Records and copies are written atomically; partial
copies left by a killed run are removed by the next one. The reproducibility appendix renders
the records (``run_records.md``, written by :func:`run` and :func:`build`).

The chapter side: :func:`chapter_setup` fixes threads, determinism and the seed;
:func:`static_explorer` builds a slider that works without a kernel in the static book.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "ROOT",
    "CHAPTERS_DIR",
    "VENDOR_DIR",
    "VENDOR_PACKAGES",
    "chapter_setup",
    "static_explorer",
    "chapters",
    "chapter_hash",
    "run",
    "write_run_records_page",
    "vendor",
    "vendor_problems",
    "build",
    "external_resources",
    "find_chromium",
    "render_dom",
    "screenshot",
    "browser_check",
    "main",
]

#: The repository root (the folder holding ``_toc.yml``).
ROOT = Path(__file__).resolve().parent.parent
#: Where :func:`run` writes executed chapters by default (ignored by git).
CHAPTERS_DIR = ROOT / "book" / "chapters"
#: Vendored JavaScript (ignored by git); Sphinx copies it into ``_static/``.
VENDOR_DIR = ROOT / "book" / "_vendor"
#: npm packages vendored for offline HTML, pinned.
VENDOR_PACKAGES = ("mathjax@3.2.2", "requirejs@2.3.8", "@jupyter-widgets/html-manager@1.0.6")
#: Parameters every chapter's ``parameters`` cell defines (papermill injects them).
PARAMETERS = ("profile", "device", "seed", "data_dir", "cache_dir")
_TOC_PREFIX = "book/chapters/"
_RECORDS_PAGE = "run_records.md"


# --------------------------------------------------------------------------------------------
# Chapter side
# --------------------------------------------------------------------------------------------

def chapter_setup(seed: int = 0, device: str = "auto", threads: int | None = 2):
    """Makes a chapter's results reproducible; returns the resolved ``torch.device``.

    Fixes torch's intra-op thread count (float sums then reproduce bit for bit on CPU),
    switches on deterministic algorithms, and seeds torch's global generator. Chapters should
    still pass explicit generators to every random call.

    Args:
        seed (int, optional): seed of the global generator. Default: 0.
        device (str, optional): ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
            ``"cuda"``, ... Default: ``"auto"``.
        threads (int, optional): intra-op threads; ``None`` leaves torch's choice. Default: 2.

    Returns:
        torch.device: the device to compute on.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    resolved = _resolve_device(device)
    # On CUDA a few kernels have no deterministic version: warn there instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=resolved.type == "cuda")
    torch.manual_seed(seed)
    return resolved


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested, but CUDA is not available on this "
                             f"machine (torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} requested, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return resolved


def glue_number(name: str, value, digits: int | None = 3) -> None:
    """Glues a number for the chapter's prose as a plain Python number (never a numpy or torch
    scalar, whose repr would leak into the text); ``digits`` 0 or None glues an int."""
    from myst_nb import glue

    value = round(float(value), digits) if digits else int(round(float(value)))
    glue(name, value, display=False)


def static_explorer(images: Mapping[str, bytes], description: str = "", *,
                    initial: str | None = None, width: int | None = None):
    """A slider over pre-rendered images that also works in the static book (no kernel).

    ``interact`` recomputes in the kernel, so the static HTML can only show the state it was
    saved in. Here every image is rendered up front into an ``Image`` inside a ``Stack``, and
    the slider's index is linked to the stack in the browser (``jslink``): moving the slider
    in the built book switches images.

    Args:
        images (Mapping[str, bytes]): slider label -> PNG bytes, in slider order.
        description (str, optional): the slider's label.
        initial (str, optional): the label shown first. Default: the first.
        width (int, optional): displayed image width in px.

    Returns:
        ipywidgets.VBox: the slider above the stack.
    """
    import ipywidgets as widgets

    if not images:
        raise ValueError("images: expected at least one image, got none")
    labels = list(images)
    if initial is None:
        initial = labels[0]
    if initial not in labels:
        raise ValueError(f"initial: expected one of {labels}, got {initial!r}")
    layout = widgets.Layout(width=f"{width}px") if width else widgets.Layout()
    pictures = [widgets.Image(value=images[k], format="png", layout=layout) for k in labels]
    stack = widgets.Stack(pictures, selected_index=labels.index(initial))
    slider = widgets.SelectionSlider(options=labels, value=initial, description=description,
                                     continuous_update=True,
                                     style={"description_width": "initial"},
                                     layout=widgets.Layout(width="520px"))
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


# --------------------------------------------------------------------------------------------
# Chapters and their hashes
# --------------------------------------------------------------------------------------------

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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


# --------------------------------------------------------------------------------------------
# Running the chapters
# --------------------------------------------------------------------------------------------

def _resolved(profile: str, device: str) -> tuple[str, str]:
    from .profiles import get_profile

    return get_profile(profile).name, str(_resolve_device(device))


def _versions() -> dict:
    import torch

    from . import __version__

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


def _file_sha(path: Path) -> str:
    return _sha(path.read_bytes())


def _sweep_partials(out_dir: Path) -> None:
    """Removes executed copies that a killed run left half-written (``.<name>.running-<pid>.ipynb``)."""
    from ._io import _pid_alive

    for p in out_dir.glob(".*.running-*.ipynb"):
        pid = p.name[: -len(".ipynb")].rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            _log(f"removing a partial executed copy left by an interrupted run: {p}")
            with contextlib.suppress(OSError):
                p.unlink()
    for p in out_dir.glob(".*.running.ipynb"):  # the name older versions used
        with contextlib.suppress(OSError):
            p.unlink()


def _log(msg: str) -> None:
    print(f"[fidobook.book] {msg}", flush=True)


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
        data_dir: str | None = None, cache_dir: str | None = None,
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

    from ._io import atomic_write_text, sweep_tmp

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
        profile_resolved, device_resolved = _resolved(profile, device)
        parameters = {"profile": profile, "device": device, "seed": int(seed),
                      "data_dir": data_dir, "cache_dir": cache_dir}
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
            t0 = time.perf_counter()
            status, error = "ok", None
            try:
                pm.execute_notebook(str(source), str(partial), parameters=parameters,
                                    kernel_name="python3", execution_timeout=timeout,
                                    progress_bar=progress, cwd=str(out_dir), log_output=False)
            except Exception as exc:  # noqa: BLE001 - reported, the other chapters still run
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            wall = time.perf_counter() - t0
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


def write_run_records_page(chapters_dir: str | os.PathLike = CHAPTERS_DIR, *,
                           root: str | os.PathLike = ROOT) -> Path:
    """Writes ``run_records.md`` (included by the appendix) from the chapters' run records.

    It tabulates how each chapter was executed, the environment of the runs, and the sizes of
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
    try:
        from .profiles import PROFILES

        fields = ["n_classes", "train_per_class", "test_per_class", "image_size",
                  "fido_iterations", "fido_samples", "n_explain", "mask_size"]
        rows = [[f"`{f}`"] + [getattr(p, f) for p in PROFILES.values()] for f in fields]
        rows.append(["classifier"] + [f"{p.classifier.arch}, {p.classifier.epochs} epochs"
                                      for p in PROFILES.values()])
        out.append("\n**The profiles** (`fidobook.profiles`; `auto` is `gpu` with CUDA, else "
                   "`cpu`):\n\n")
        out.append(_md_table(["field"] + [f"`{name}`" for name in PROFILES], rows))
    except Exception as exc:  # noqa: BLE001 - the page still renders without the profiles
        out.append(f"\n(The profiles could not be read: {type(exc).__name__}.)\n")
    from ._io import atomic_write_text

    path = chapters_dir / _RECORDS_PAGE
    atomic_write_text("".join(out), path)
    return path


# --------------------------------------------------------------------------------------------
# Offline assets
# --------------------------------------------------------------------------------------------

def vendor(dest: str | os.PathLike = VENDOR_DIR, *, force: bool = False) -> Path:
    """Fetches MathJax 3, RequireJS and the ipywidgets embed scripts from the npm registry.

    Runs ``npm pack`` for :data:`VENDOR_PACKAGES` and unpacks what the HTML needs into
    ``dest/vendor/`` (``mathjax/``, ``require.js``, ``html-manager/``); Sphinx copies
    ``dest`` into the built site's ``_static/`` (see ``_config.yml``). Skipped when
    ``dest/vendor.json`` lists the same packages and every vendored file still has the size and
    SHA-256 recorded there (:func:`vendor_problems`); otherwise the damage is reported and the
    files fetched again. The new copy is assembled beside ``dest`` and swapped in whole, so an
    interrupted run never leaves a partial folder that looks complete.

    Returns:
        Path: ``dest``.
    """
    dest = Path(dest)
    if not force and (dest / "vendor.json").is_file():
        problems = vendor_problems(dest)
        if not problems:
            return dest
        _log(f"vendored files in {dest} are damaged ({'; '.join(problems[:3])}"
             f"{' ...' if len(problems) > 3 else ''}); fetching them again")
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("vendor: expected npm on PATH (the offline HTML needs MathJax and "
                           "the ipywidgets embed scripts from the npm registry), got none")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _log(f"npm pack {' '.join(VENDOR_PACKAGES)}")
        subprocess.run([npm, "pack", "--silent", "--pack-destination", str(tmp),
                        *VENDOR_PACKAGES], check=True, stdout=subprocess.DEVNULL)
        unpacked = {}
        for tgz in sorted(tmp.glob("*.tgz")):
            where = tmp / tgz.name[:-4]
            with tarfile.open(tgz) as tar:
                tar.extractall(where, filter="data")
            unpacked[tgz.name] = where / "package"

        def find(prefix):
            hits = [v for k, v in unpacked.items() if k.startswith(prefix)]
            if len(hits) != 1:
                raise RuntimeError(f"vendor: expected one {prefix}*.tgz from npm, got {hits}")
            return hits[0]

        staging = tmp / "out" / "vendor"
        staging.mkdir(parents=True)
        shutil.copytree(find("mathjax-") / "es5", staging / "mathjax")
        shutil.copy2(find("requirejs-") / "require.js", staging / "require.js")
        shutil.copytree(find("jupyter-widgets-html-manager-") / "dist", staging / "html-manager",
                        ignore=shutil.ignore_patterns("*.map", "embed.js", "*.LICENSE.txt"))
        for pkg, prefix in (("mathjax", "mathjax-"), ("html-manager", "jupyter-widgets-html-manager-")):
            lic = find(prefix) / "LICENSE"
            if lic.is_file():
                shutil.copy2(lic, staging / pkg / "LICENSE")
        # Fetched at set-up time, never committed (the folder ignores itself).
        (tmp / "out" / ".gitignore").write_text("*\n")
        files = {p.relative_to(tmp / "out").as_posix(): {"size": p.stat().st_size, "sha256": _file_sha(p)}
                 for p in sorted((tmp / "out" / "vendor").rglob("*")) if p.is_file()}
        (tmp / "out" / "vendor.json").write_text(json.dumps(
            {"packages": list(VENDOR_PACKAGES), "tarballs": sorted(unpacked), "files": files},
            indent=2) + "\n")
        # Copy beside dest, then swap: a killed run leaves either the old folder or the new one.
        dest.parent.mkdir(parents=True, exist_ok=True)
        incoming = dest.with_name(f"{dest.name}.incoming-{os.getpid()}")
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        shutil.copytree(tmp / "out", incoming)
        if dest.exists():
            dest.replace(old)
        incoming.replace(dest)
        shutil.rmtree(old, ignore_errors=True)
    _log(f"vendored into {dest}")
    return dest


def vendor_problems(dest: str | os.PathLike = VENDOR_DIR) -> list[str]:
    """What is wrong with a vendored folder: an empty list when it is complete and intact.

    Checks that ``vendor.json`` parses, lists :data:`VENDOR_PACKAGES`, and that every file it
    records exists with the recorded size and SHA-256 (about 6 MB to hash: milliseconds).
    """
    dest = Path(dest)
    stamp = dest / "vendor.json"
    try:
        meta = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return [f"{stamp}: unreadable ({type(e).__name__})"]
    if not isinstance(meta, dict) or meta.get("packages") != list(VENDOR_PACKAGES):
        return [f"{stamp}: lists other packages than {list(VENDOR_PACKAGES)}"]
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{stamp}: no file digests (written by an older version)"]
    problems = []
    for rel, want in files.items():
        p = dest / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want.get("size") or _file_sha(p) != want.get("sha256"):
            problems.append(f"{p}: size or SHA-256 differs from {stamp.name}")
    return problems


# --------------------------------------------------------------------------------------------
# Building the HTML
# --------------------------------------------------------------------------------------------

def _stage(root: Path, chapters_dir: Path, stage: Path) -> Path:
    """A source tree for jupyter-book: the root's book files with ``chapters_dir`` as chapters."""
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "book").mkdir(parents=True)
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / f, stage / f)
    for p in (root / "book").iterdir():  # pages, bibliography, any folder of figures
        if p.name in ("_build", "_vendor") or p.name.startswith("chapters"):
            continue
        if p.is_file():
            shutil.copy2(p, stage / "book" / p.name)
        elif p.is_dir():
            shutil.copytree(p, stage / "book" / p.name)
    (stage / "book" / "_vendor").symlink_to((root / "book" / "_vendor").resolve())
    shutil.copytree(chapters_dir, stage / "book" / "chapters",
                    ignore=shutil.ignore_patterns(".*", "*.failed.ipynb"))
    return stage


def build(chapters_dir: str | os.PathLike = CHAPTERS_DIR, path_output: str | os.PathLike | None = None,
          *, strict: bool = True, fresh: bool = True, root: str | os.PathLike = ROOT) -> Path:
    """Builds the HTML with jupyter-book from executed chapters.

    With the default ``chapters_dir`` the book is built in place from the repository root
    (``jupyter-book build . --path-output book``); another ``chapters_dir`` (e.g. smoke-profile
    copies in a temporary folder) is staged with the root's ``_config.yml``, ``_toc.yml`` and
    ``book/`` pages into ``<path_output>/_source`` first.

    Args:
        chapters_dir (path, optional): executed chapters. Default: ``book/chapters``.
        path_output (path, optional): the HTML lands in ``<path_output>/_build/html``.
            Default: ``book`` (in place) or the parent of ``chapters_dir`` (staged).
        strict (bool, optional): warnings are errors (``-W -n --keep-going``). Default: True.
        fresh (bool, optional): rebuild every page (``--all``). Default: True.
        root (path, optional): the repository root.

    Returns:
        Path: the folder of the built HTML.

    Raises:
        RuntimeError: the build failed (its output says why).
    """
    root, chapters_dir = Path(root).resolve(), Path(chapters_dir).resolve()
    if not (root / "book" / "_vendor" / "vendor.json").is_file():
        raise RuntimeError("build: expected vendored scripts in book/_vendor (offline MathJax "
                           "and widgets), got none; run `python -m fidobook.book vendor`")
    names = chapters(root)
    missing = [n for n in names if not (chapters_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise RuntimeError(f"build: expected executed chapters {missing} in {chapters_dir}; "
                           f"run `python -m fidobook.book run` first")
    write_run_records_page(chapters_dir, root=root)
    if chapters_dir == (root / "book" / "chapters").resolve():
        source = root
        path_output = Path(path_output) if path_output is not None else root / "book"
    else:
        path_output = Path(path_output) if path_output is not None else chapters_dir.parent
        source = _stage(root, chapters_dir, Path(path_output).resolve() / "_source")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(source),
           "--path-output", str(path_output), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    if fresh:
        cmd += ["--all"]
    _log(" ".join(cmd))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"build: jupyter-book exited with {proc.returncode} (see its output)")
    html = Path(path_output) / "_build" / "html"
    _log(f"HTML built in {time.perf_counter() - t0:.1f} s: {html / 'index.html'}")
    return html


# --------------------------------------------------------------------------------------------
# Checking the HTML: offline, rendered
# --------------------------------------------------------------------------------------------

_EXTERNAL = re.compile(r"""<(script|link|img|iframe)\b[^>]*?\b(src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""",
                       re.IGNORECASE)


def external_resources(html_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Scripts, style sheets, images and frames a built page would load from the network.

    Returns:
        dict: page (relative path) -> list of external URLs it loads (only pages that load any).
        Plain links (``<a href>``) do not count; ``<link rel=...>`` tags other than style
        sheets, preloads and icons do not either.
    """
    html_dir = Path(html_dir)
    out = {}
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(errors="replace")
        urls = []
        for m in _EXTERNAL.finditer(text):
            tag = m.group(0)
            if m.group(1).lower() == "link" and not re.search(
                    r"""rel\s*=\s*["'](stylesheet|preload|modulepreload|icon|shortcut icon)["']""",
                    tag, re.IGNORECASE):
                continue
            urls.append(m.group(3))
        if urls:
            out[page.relative_to(html_dir).as_posix()] = urls
    return out


def find_chromium() -> str:
    """The headless browser: ``$CHROMIUM`` or the first of chromium / chromium-browser /
    google-chrome on PATH."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("find_chromium: expected a Chromium on PATH (Debian: apt-get install -y "
                       "chromium; `make setup` does it), got none")


def _chromium_cmd(extra: Sequence[str], budget_ms: int) -> list[str]:
    # The network is made unreachable: every host name fails to resolve and every request
    # would go through a proxy that does not exist. file:// pages load normally.
    return [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--allow-file-access-from-files", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            f"--virtual-time-budget={budget_ms}", *extra]


def render_dom(page: str | os.PathLike, *, budget_ms: int = 20000, timeout: int = 120) -> str:
    """The DOM of a page after its scripts ran (headless Chromium, network unreachable)."""
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory() as profile:
        cmd = _chromium_cmd([f"--user-data-dir={profile}", "--dump-dom", page.as_uri()], budget_ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"render_dom: chromium exited with {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1280,
               height: int = 1600, budget_ms: int = 20000, timeout: int = 120) -> Path:
    """A PNG of what a reader sees at the top of ``page`` (headless Chromium, offline)."""
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = _chromium_cmd([f"--user-data-dir={profile}", f"--screenshot={png}",
                             f"--window-size={width},{height}", "--hide-scrollbars",
                             page.as_uri()], budget_ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"screenshot: chromium exited with {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return png


def _dom_report(page: Path, dom: str) -> dict:
    """Counts what rendered in a page's DOM: maths, figures, widgets."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(dom, "html.parser")
    main = soup.find("main") or soup
    math_blocks = main.select("div.math, span.math")
    untypeset = [m for m in math_blocks if m.find("mjx-container") is None]
    images = main.find_all("img")
    broken = []
    for img in images:
        src = img.get("src", "")
        if src.startswith(("data:", "blob:")):  # inline data; widget images are blob URLs
            continue
        target = (page.parent / src.split("?")[0].split("#")[0]).resolve()
        if not src or not target.is_file():
            broken.append(src)
    widget_scripts = soup.find_all("script", attrs={"type": "application/vnd.jupyter.widget-view+json"})
    return {
        "page": page.name,
        "mjx_containers": len(main.find_all("mjx-container")),
        "math_blocks": len(math_blocks),
        "math_untypeset": len(untypeset),
        "images": len(images),
        "images_broken": broken,
        "widget_views_expected": len(widget_scripts),
        "widget_views": len(main.select(".jupyter-widgets.widget-container, .widget-box")),
        "widget_sliders": len(main.select(".widget-slider")),
        "widget_images": len(main.select(".widget-image, img.jupyter-widgets")),
    }


def browser_check(html_dir: str | os.PathLike, pages: Sequence[str] | None = None, *,
                  screenshots: str | os.PathLike | None = None) -> list[dict]:
    """Loads built pages in headless Chromium (offline) and reports what rendered.

    Args:
        html_dir (path): the built site.
        pages (sequence of str, optional): pages relative to ``html_dir``. Default: every
            chapter page, the intro and the appendix.
        screenshots (path, optional): also write ``<page>.png`` screenshots there.

    Returns:
        list of dict: per page, counts of typeset maths (``mjx_containers``, ``math_blocks``,
        ``math_untypeset``), figures (``images``, ``images_broken``) and widgets
        (``widget_views_expected``, ``widget_views``, ``widget_sliders``, ``widget_images``).
    """
    html_dir = Path(html_dir)
    if pages is None:
        pages = ["book/intro.html"] + [f"book/chapters/{n}.html" for n in chapters()] + [
            "book/appendix.html"]
    reports = []
    for rel in pages:
        page = html_dir / rel
        if not page.is_file():
            raise FileNotFoundError(f"browser_check: expected a built page {page}, got none")
        report = _dom_report(page, render_dom(page))
        report["page"] = rel
        if screenshots is not None:
            report["screenshot"] = str(screenshot(page, Path(screenshots) / (
                rel.replace("/", "_").removesuffix(".html") + ".png")))
        reports.append(report)
    return reports


def _problems(report: dict) -> list[str]:
    out = []
    if report["math_untypeset"]:
        out.append(f"{report['math_untypeset']} of {report['math_blocks']} maths not typeset")
    if report["images_broken"]:
        out.append(f"broken images {report['images_broken']}")
    if report["widget_views_expected"] and not report["widget_views"]:
        out.append(f"{report['widget_views_expected']} widget views not rendered")
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fidobook.book", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the chapters (only those that changed)")
    p.add_argument("--profile", default="auto", choices=["auto", "smoke", "cpu", "gpu"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--chapters", default=os.environ.get("CHAPTERS") or None,
                   help="comma-separated chapter names (default: $CHAPTERS, else all)")
    p.add_argument("--force", action="store_true", help="execute even if up to date")
    p.add_argument("--out", default=str(CHAPTERS_DIR))
    p.add_argument("--timeout", type=int, default=3600, help="per-cell timeout, s")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("build", help="strict HTML build of the executed chapters")
    p.add_argument("--chapters-dir", default=str(CHAPTERS_DIR))
    p.add_argument("--path-output", default=None)
    p.add_argument("--no-strict", action="store_true")

    p = sub.add_parser("check", help="offline check of the built HTML (no CDN; Chromium renders)")
    p.add_argument("--html", default=str(ROOT / "book" / "_build" / "html"))
    p.add_argument("--screenshots", default=None, help="folder for page screenshots")
    p.add_argument("--no-browser", action="store_true")

    p = sub.add_parser("screenshot", help="PNG of a built page as a reader sees it")
    p.add_argument("page")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1600)

    p = sub.add_parser("vendor", help="fetch MathJax and the widget scripts from npm")
    p.add_argument("--dest", default=str(VENDOR_DIR))
    p.add_argument("--force", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "run":
        only = [c.strip() for c in args.chapters.split(",") if c.strip()] if args.chapters else None
        try:
            run(args.profile, args.device, args.seed, data_dir=args.data_dir,
                cache_dir=args.cache_dir, only=only, force=args.force, out_dir=args.out,
                timeout=args.timeout, progress=not args.no_progress)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.command == "build":
        try:
            build(args.chapters_dir, args.path_output, strict=not args.no_strict)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.command == "check":
        external = external_resources(args.html)
        for page, urls in external.items():
            print(f"{page}: loads from the network: {urls}")
        bad = bool(external)
        if not args.no_browser:
            t0 = time.perf_counter()
            for r in browser_check(args.html, screenshots=args.screenshots):
                problems = _problems(r)
                bad |= bool(problems)
                print(f"{r['page']}: {r['mjx_containers']} typeset maths, {r['images']} images, "
                      f"{r['widget_views']} widget views, {r['widget_sliders']} sliders"
                      + (f" -- PROBLEMS: {'; '.join(problems)}" if problems else ""))
            _log(f"browser check in {time.perf_counter() - t0:.1f} s")
        return 1 if bad else 0
    elif args.command == "screenshot":
        print(screenshot(args.page, args.png, width=args.width, height=args.height))
    elif args.command == "vendor":
        vendor(args.dest, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
