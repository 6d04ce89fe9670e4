"""The strict HTML build (jupyter-book 1) of the executed chapters."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ._common import CHAPTERS_DIR, ROOT, _log
from .pipeline import chapters, write_run_records_page


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


