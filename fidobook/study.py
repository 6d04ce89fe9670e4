"""Cached, resumable FIDO fits: the experiments of several chapters share one set of masks.

A study fits masks for many images under many settings. :func:`fit_cached` makes that cheap to
repeat and safe to interrupt::

    result = fit_cached(model, images, labels, FIDOConfig(iterations=300, sampler="cd"),
                        seeds=range(len(images)), snapshots=(50, 100, 300), chunk=32)

The images are fitted ``chunk`` at a time; each chunk's logits (and snapshots, history and cost)
are written atomically to ``cache_dir/fido/<key>/<a>-<b>.pt``, where ``key`` digests everything
the masks depend on: the model's parameters and buffers, the images, the targets, the per-image
seeds, the configuration and the snapshot iterations. A second call with the same arguments
loads the chunks instead of fitting; a call that was interrupted finds the chunks it finished
and fits only the others. Because every image draws its noise from its own seed (see
:class:`fidobook.FIDO`), the masks do not depend on how the images are chunked.

The maps at image resolution are not stored (they would dwarf the logits): they are recomputed
from the stored logits on the images' device, the same way for a fresh and for a cached result,
so both are identical.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _checks
from ._io import atomic_torch_save
from .fido import FIDO, FIDOConfig, FIDOResult, _check_snapshots, _maps
from .models.train import data_fingerprint
from .stats import bootstrap_ci  # re-exported: it lived here first

__all__ = ["fit_cached", "model_digest", "bootstrap_ci"]

#: Bumped whenever the stored format or the meaning of a fit changes: old entries are ignored.
_FORMAT = "fidobook-fido-cache-1"


def model_digest(model: nn.Module) -> str:
    """A SHA-256 hex digest of a model: its class, and the names, shapes, dtypes and values of
    all its parameters and buffers.

    Two models with equal weights (on any device) get the same digest; changing one value of one
    parameter or buffer (a batch-norm running mean included) changes it.

    Args:
        model (nn.Module): any module.

    Returns:
        str: 64 hex characters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    # named_parameters/named_buffers, not state_dict: non-persistent buffers take part in the
    # forward too.
    tensors = list(model.named_parameters()) + [("buffer:" + n, b) for n, b in model.named_buffers()]
    for name, t in tensors:
        t = t.detach()
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_key(model: nn.Module, images: Tensor, targets: Tensor, seeds: Tensor,
               config: FIDOConfig, snapshots: tuple[int, ...]) -> str:
    settings = dataclasses.asdict(config)
    # ``temperature=None`` means the sampler's default: the same fit as naming it.
    settings["temperature"] = config.make_sampler().temperature
    payload = {
        "format": _FORMAT,
        "model": model_digest(model),
        "images": data_fingerprint(images),
        "targets": targets.tolist(),
        "seeds": seeds.tolist(),
        "config": settings,
        "snapshots": list(snapshots),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _chunk_record(result: FIDOResult, key: str) -> dict:
    """What a chunk file holds: CPU tensors and plain numbers (loadable with weights_only)."""
    return {
        "key": key,
        "logits": result.logits.cpu(),
        "targets": result.targets.cpu(),
        "history": {k: v.cpu() for k, v in result.history.items()},
        "snapshots": {int(k): v.cpu() for k, v in result.snapshots.items()},
        "model_evaluations": int(result.model_evaluations),
        "seconds": float(result.seconds),
    }


def _load_chunk(path: Path, key: str, n: int) -> dict | None:
    """The chunk stored at ``path``, or ``None`` when it is missing or unusable."""
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a file from elsewhere or damaged by hand: fit again
        warnings.warn(f"fit_cached: ignoring unreadable cache file {path} ({err})", stacklevel=3)
        return None
    if not isinstance(record, dict) or record.get("key") != key or record["logits"].shape[1] != n:
        warnings.warn(f"fit_cached: ignoring cache file {path} (it holds another fit)", stacklevel=3)
        return None
    return record


def fit_cached(
    model: nn.Module,
    images: Tensor,
    targets,
    config: FIDOConfig,
    *,
    seeds,
    cache_dir: str | os.PathLike | None = None,
    snapshots=(),
    progress: bool = False,
    chunk: int | None = None,
) -> FIDOResult:
    """FIDO masks for ``images``, fitted ``chunk`` images at a time or loaded from the cache.

    Each chunk ``[a, b)`` is fitted as ``FIDO(model, config).fit(images[a:b], targets[a:b],
    seeds=seeds[a:b], snapshots=snapshots)`` and saved atomically to
    ``cache_dir/fido/<key>/<a>-<b>.pt``. Chunks already there are loaded, the others fitted, so
    an interrupted call resumes where it stopped. The key digests the model's weights
    (:func:`model_digest`), the images, the targets, the seeds, the configuration (its
    ``temperature`` resolved to the sampler's default when ``None``) and the snapshot iterations;
    it does not include ``chunk`` (a different chunking stores different files) nor the device.

    Args:
        model (nn.Module): the classifier, images in [0, 1] → logits ``Tensor[N, K]``.
        images (Tensor[N, C, H, W]): float images in [0, 1], on the model's device.
        targets: the classes to explain: an int, a sequence of N ints or ``LongTensor[N]``.
        config (FIDOConfig): the settings of every fit.
        seeds: one int per image (a sequence or ``LongTensor[N]``; an int gives every image the
            same seed). Image ``i``'s noise depends on ``seeds[i]`` only.
        cache_dir (path, optional): root of the cache. Default: ``$FIDOBOOK_CACHE`` or
            ``.cache`` (:func:`fidobook.workflow.default_cache_dir`).
        snapshots (sequence of int, optional): iterations in ``[1, config.iterations]`` at which
            the logits are also recorded (``result.snapshots``). Default: none.
        progress (bool, optional): show a progress bar over the chunks. Default: False.
        chunk (int, optional): images per fit (and per file). Default: all in one.

    Returns:
        FIDOResult: on the images' device. ``history`` is concatenated along the images,
        ``model_evaluations`` and ``seconds`` are summed over the chunks. ``seconds`` is the
        compute time the fits took when they ran, so a cached result reports the same cost as
        a fresh one.
    """
    from .workflow import default_cache_dir  # workflow imports models and data: import late

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, FIDOConfig):
        raise TypeError(f"config: expected a FIDOConfig, got {type(config).__name__}")
    _checks.check_images(images, channels=getattr(model, "in_channels", None))
    n, _, height, width = images.shape
    if targets is None:
        raise TypeError("targets: expected an int, a sequence of ints or a LongTensor (the cache "
                        "key needs the classes: pass the predictions explicitly), got None")
    targets = _checks.check_targets(targets, n, None, name="targets")
    if seeds is None:
        raise TypeError("seeds: expected one int per image, got None")
    if isinstance(seeds, range):
        seeds = list(seeds)
    seeds = _checks.check_targets(seeds, n, None, name="seeds")
    snapshots = _check_snapshots(snapshots, config.iterations)
    chunk = n if chunk is None else _checks.check_positive_int(chunk, "chunk")
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {progress!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    key = _cache_key(model, images, targets, seeds, config, snapshots)
    folder = root / "fido" / key
    bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    records = []
    bar = tqdm(bounds, disable=not progress, desc="FIDO chunks", leave=False)
    for a, b in bar:
        path = folder / f"{a}-{b}.pt"
        record = _load_chunk(path, key, b - a)
        if record is None:
            fitted = FIDO(model, config).fit(images[a:b], targets[a:b].to(images.device),
                                             seeds=seeds[a:b].tolist(), snapshots=snapshots)
            record = _chunk_record(fitted, key)
            atomic_torch_save(record, path)
        records.append(record)
    return _assemble(records, config, snapshots, images.device, (height, width))


def _assemble(records: list[dict], config: FIDOConfig, snapshots: tuple[int, ...], device,
              size: tuple[int, int]) -> FIDOResult:
    """One FIDOResult from the chunks' records, maps recomputed from the logits on ``device``."""
    logits = torch.cat([r["logits"] for r in records], dim=1).to(device)  # (2, N, h, w)
    ssr, sdr, joint = _maps(logits, size)
    return FIDOResult(
        ssr=ssr, sdr=sdr, joint=joint, logits=logits,
        targets=torch.cat([r["targets"] for r in records]).to(device),
        history={k: torch.cat([r["history"][k] for r in records], dim=1).to(device)
                 for k in records[0]["history"]},
        config=config,
        model_evaluations=sum(r["model_evaluations"] for r in records),
        seconds=sum(r["seconds"] for r in records),
        snapshots={k: torch.cat([r["snapshots"][k] for r in records], dim=1).to(device)
                   for k in snapshots},
    )

