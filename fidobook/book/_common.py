"""Paths, constants and small helpers shared by the book pipeline's modules."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path


#: The repository root (the folder holding ``_toc.yml``).
ROOT = Path(__file__).resolve().parent.parent.parent
#: Where :func:`run` writes executed chapters by default (ignored by git).
CHAPTERS_DIR = ROOT / "book" / "chapters"
#: Vendored JavaScript (ignored by git); Sphinx copies it into ``_static/``.
VENDOR_DIR = ROOT / "book" / "_vendor"
#: npm packages vendored for offline HTML, pinned.
VENDOR_PACKAGES = ("mathjax@3.2.2", "requirejs@2.3.8", "@jupyter-widgets/html-manager@1.0.6")
#: Parameters every chapter's ``parameters`` cell defines (papermill injects them).
PARAMETERS = ("profile", "device", "seed", "data_dir", "cache_dir", "weights", "arch")
_TOC_PREFIX = "book/chapters/"
_RECORDS_PAGE = "run_records.md"


def _log(msg: str) -> None:
    print(f"[fidobook.book] {msg}", file=sys.stdout, flush=True)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    return _sha(path.read_bytes())
