"""The book's data flow for a profile: generate the birds, load them, train (or load) the classifier.

Chapters and the ``fidobook`` command call these, so that every chapter sees the same data and
the same cached classifier for a given profile::

    profile = get_profile("cpu")
    root = prepare_data(profile, cache_dir=".cache")
    model, history = prepare_classifier(profile, cache_dir=".cache")

Everything lands under ``cache_dir``: ``data/birds-<profile>-<key>/`` (the generated set, keyed by
its generation arguments) and ``models/`` (checkpoints keyed by the training configuration and the
data set).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from .data import birds
from .data.cub import load_tensors
from .models.train import load_cached_classifier, train_classifier
from .profiles import Profile

__all__ = ["data_dir", "prepare_data", "load_split", "prepare_classifier", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$FIDOBOOK_CACHE`` if set, else ``.cache`` in the working directory."""
    return Path(os.environ.get("FIDOBOOK_CACHE", ".cache"))


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def data_dir(profile: Profile, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the profile's bird data set lives (keyed by its generation arguments)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / "data" / f"birds-{profile.name}-{_key(profile.birds_kwargs())}"


def prepare_data(profile: Profile, cache_dir: str | os.PathLike | None = None, *,
                 progress: bool = True, workers: int = 1) -> Path:
    """Generates the profile's birds unless they are already there; returns their folder."""
    return birds.generate(data_dir(profile, cache_dir), **profile.birds_kwargs(), progress=progress,
                          workers=workers)


def load_split(profile: Profile, split: str = "train", cache_dir: str | os.PathLike | None = None, *,
               progress: bool = False) -> dict:
    """The profile's ``split`` as stacked tensors (see :func:`fidobook.data.load_tensors`)."""
    return load_tensors(prepare_data(profile, cache_dir, progress=progress), split, progress=progress)


def prepare_classifier(profile: Profile, cache_dir: str | os.PathLike | None = None, *,
                       device: str | torch.device = "cpu", progress: bool = True,
                       ) -> tuple[nn.Module, dict]:
    """Trains the profile's classifier on its birds, or loads it from the cache.

    The cache key combines the training configuration with the data set's generation arguments
    (a fingerprint that needs no pass over the pixels).

    Returns:
        tuple: ``(model, history)`` as :func:`fidobook.models.train_classifier` returns them.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = prepare_data(profile, cache_dir, progress=progress)
    fingerprint = _key((root / "fidobook_birds.json").read_text())
    # A cache hit needs no pixels: look before decoding the training set.
    cached = load_cached_classifier(profile.classifier, cache_dir / "models", fingerprint, device=device)
    if cached is not None:
        return cached
    train = load_tensors(root, "train", with_segmentation=False, with_part_masks=False)
    test = load_tensors(root, "test", with_segmentation=False, with_part_masks=False)
    return train_classifier(profile.classifier, (train["images"], train["labels"]),
                            (test["images"], test["labels"]), cache_dir=cache_dir / "models",
                            device=device, progress=progress, fingerprint=fingerprint)
