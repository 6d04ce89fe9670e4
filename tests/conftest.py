"""Shared fixtures.

``smoke_context``: the experiments' :class:`~fidobook.experiments.Context` on the smoke birds. The
data set and the trained smoke classifier and segmenter are cached in the repository's
``.cache/`` (or ``$FIDOBOOK_CACHE``), the cache the book's smoke run uses too, so they are built
once per machine. Tests of an experiment call ``run(spec, ctx, cache=False)`` so that they always
compute.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_cache() -> Path:
    """The cache of data and checkpoints shared by the test session and the book's smoke run."""
    return Path(os.environ.get("FIDOBOOK_CACHE", ROOT / ".cache")).resolve()


@pytest.fixture(scope="session")
def smoke_context():
    from fidobook.experiments import Context

    return Context.create("smoke", device="cpu", cache_dir=shared_cache())
