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

from . import _io
from .data import birds
from .data.cub import load_tensors
from .models.train import load_cached_classifier, train_classifier
from .profiles import Profile

__all__ = ["data_dir", "prepare_data", "load_split", "prepare_classifier", "default_cache_dir",
           "prepare_hard_set", "prepare_segmenter"]


#: The record format of a cached hard set (``prepare_hard_set``): bumped when its layout changes.
_HARD_RECORD = "fidobook-hard-set-1"


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


def _prepare_model(profile: Profile, config, cache_dir: str | os.PathLike | None, load_cached, train,
                   *, device, progress: bool, **splits) -> tuple[nn.Module, dict]:
    """``(model, history)`` for ``config`` on the profile's birds: from the cache, else trained.

    The cache (``cache_dir/models``) is keyed by the configuration and a fingerprint of the data
    set's generation arguments, so a hit needs no pixels: ``load_cached(config, folder,
    fingerprint, device=...)`` looks before the splits are decoded. On a miss, ``train(config,
    train_split, test_split, cache_dir=..., device=..., progress=..., fingerprint=...)`` gets the
    splits as :func:`fidobook.data.load_tensors` returns them (``splits``: its options).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = prepare_data(profile, cache_dir, progress=progress)
    fingerprint = _key((root / "fidobook_birds.json").read_text())
    _io.sweep_tmp(cache_dir / "models")  # checkpoints a killed trainer was writing
    cached = load_cached(config, cache_dir / "models", fingerprint, device=device)
    if cached is not None:
        return cached
    train_split = load_tensors(root, "train", **splits)
    test_split = load_tensors(root, "test", **splits)
    return train(config, train_split, test_split, cache_dir=cache_dir / "models", device=device,
                 progress=progress, fingerprint=fingerprint)


def prepare_classifier(profile: Profile, cache_dir: str | os.PathLike | None = None, *,
                       device: str | torch.device = "cpu", progress: bool = True,
                       ) -> tuple[nn.Module, dict]:
    """Trains the profile's classifier on its birds, or loads it from the cache.

    The cache key combines the training configuration with the data set's generation arguments
    (a fingerprint that needs no pass over the pixels).

    Returns:
        tuple: ``(model, history)`` as :func:`fidobook.models.train_classifier` returns them.
    """
    # train_classifier takes the splits' mappings: it reads their "images" and "labels".
    return _prepare_model(profile, profile.classifier, cache_dir, load_cached_classifier,
                          train_classifier, device=device, progress=progress,
                          with_segmentation=False, with_part_masks=False)


def prepare_hard_set(profile: Profile, cases=None, per_case: int | None = None,
                     cache_dir: str | os.PathLike | None = None, *, progress: bool = False) -> dict:
    """The profile's hard test cases (:func:`fidobook.data.hard.make_hard_set`), cached.

    The birds use the profile's class table, image size and data seed. The set is saved
    atomically, as a verified record (:func:`fidobook._io.save_record`: a digest of every
    entry), to ``cache_dir/hard/hard-<profile>-<key>.pt``, the key digesting the cases,
    ``per_case``, the size, the seed, the class table and the hard set's format version; a
    second call verifies and loads it. A damaged file (truncated, altered, incomplete, of
    another set) is reported in a warning naming the path and the reason, and the set is
    generated again and overwritten; the temporary files of a killed writer are removed. A
    case's images do not depend on the other cases asked for.

    Args:
        profile (Profile): the run size (its data set is generated if missing).
        cases (sequence of str, optional): a subset of :data:`fidobook.data.hard.HARD_CASES`.
            Default: all of them.
        per_case (int, optional): images per case. Default: a fifth of the profile's test set,
            8 to 500 (:func:`fidobook.data.hard.default_per_case`).
        cache_dir (path, optional): default ``$FIDOBOOK_CACHE`` or ``.cache``.
        progress (bool): progress bars while generating. Default: False.

    Returns:
        dict: see :func:`fidobook.data.hard.make_hard_set`.
    """
    import warnings

    from . import _checks
    from .data import hard

    cases = hard.HARD_CASES if cases is None else cases
    cases = hard._check_cases(cases)  # before any work: a bad call fails at once
    if per_case is None:
        per_case = hard.default_per_case(profile.n_classes, profile.test_per_class)
    _checks.check_positive_int(per_case, "per_case")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    classes = birds.read_class_parts(prepare_data(profile, cache_dir, progress=progress))
    key = _key({"format_version": hard.HARD_FORMAT_VERSION, "record": _HARD_RECORD,
                "cases": list(cases), "per_case": per_case, "size": profile.image_size,
                "seed": profile.data_seed, "classes": classes})
    folder = cache_dir / "hard"
    path = folder / f"hard-{profile.name}-{key}.pt"
    args = {"cases": list(cases), "per_case": per_case, "size": profile.image_size,
            "seed": profile.data_seed, "format_version": hard.HARD_FORMAT_VERSION}
    _io.sweep_tmp(folder)
    try:
        data = _io.load_record(path, format=_HARD_RECORD, fields=hard._SET_KEYS)
    except FileNotFoundError:
        pass
    except _io.DamagedFile as err:
        warnings.warn(f"prepare_hard_set: damaged cache file {err}; generating the set again",
                      stacklevel=2)
    else:
        if data["args"] == args:
            del data["format"]
            return data
        warnings.warn(f"prepare_hard_set: cache file {str(path)!r} holds another hard set "
                      f"({data['args']}, expected {args}); generating the set again", stacklevel=2)
    data = hard.make_hard_set(classes, cases, per_case, profile.image_size, profile.data_seed,
                              progress=progress)
    _io.save_record(data, path, format=_HARD_RECORD)
    return data


def prepare_segmenter(profile: Profile, cache_dir: str | os.PathLike | None = None, *,
                      device: str | torch.device = "cpu", progress: bool = False,
                      ) -> tuple[nn.Module, dict]:
    """Trains the profile's object segmenter on its birds' segmentations, or loads it from the cache.

    The segmenter is ``profile.segmenter`` (a :class:`fidobook.models.SegConfig`), trained on the
    training split's object masks and scored (mean IoU) on the test split after every epoch. Like
    :func:`prepare_classifier`, the cache key (under ``cache_dir/models``) combines the
    configuration with the data set's generation arguments, so a cache hit decodes no image.

    Returns:
        tuple: ``(model, history)`` as :func:`fidobook.models.train_segmenter` returns them: a
        :class:`fidobook.models.SegNet` in eval mode on ``device`` and per-epoch ``train_loss``,
        ``test_iou`` and ``seconds``.
    """
    from .models.segnet import load_cached_segmenter, train_segmenter

    return _prepare_model(profile, profile.segmenter, cache_dir, load_cached_segmenter,
                          train_segmenter, device=device, progress=progress, with_part_masks=False)
