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

One module per job: :mod:`~fidobook.book.pipeline` (the toc, hashes, papermill runs, run
records), :mod:`~fidobook.book.assets` (vendored scripts), :mod:`~fidobook.book.html` (the strict
build), :mod:`~fidobook.book.browser` (offline checks in Chromium). A chapter imports none of
them: its helpers are in :mod:`fidobook.chapter`.

Each executed chapter gets a run record ``<chapter>.run.json`` beside it (profile, device, seed,
wall time, versions, date, a hash of the source notebook, the package code and the parameters,
and the SHA-256 of the executed copy). A chapter is executed again when that hash changes (or
with ``force``), and when its executed copy or its record is damaged: reuse verifies the copy's
SHA-256 and reports what it re-executes. Records and copies are written atomically; partial
copies left by a killed run are removed by the next one. The reproducibility appendix renders
the records (``run_records.md``, written by :func:`run` and :func:`build`).
"""
from __future__ import annotations

from ..chapter import chapter_setup, glue_number, static_explorer  # noqa: F401  (older imports)
from ._common import CHAPTERS_DIR, PARAMETERS, ROOT, VENDOR_DIR, VENDOR_PACKAGES
from .assets import vendor, vendor_problems
from .browser import _problems  # noqa: F401  (tests)
from .browser import browser_check, external_resources, find_chromium, render_dom, screenshot
from .html import build
from .pipeline import _source_hash  # noqa: F401  (tests)
from .pipeline import chapter_hash, chapters, run, write_run_records_page

__all__ = ["ROOT", "CHAPTERS_DIR", "VENDOR_DIR", "VENDOR_PACKAGES", "PARAMETERS", "chapters",
           "chapter_hash", "run", "write_run_records_page", "vendor", "vendor_problems", "build",
           "external_resources", "find_chromium", "render_dom", "screenshot", "browser_check",
           "main"]


def main(argv=None) -> int:
    """The command line (``python -m fidobook.book ...``)."""
    from .__main__ import main as _main

    return _main(argv)
