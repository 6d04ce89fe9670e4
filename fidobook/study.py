"""Cached, resumable FIDO fits: the experiments of several chapters share one set of masks.

A study fits masks for many images under many settings. :func:`fit_cached` makes that cheap to
repeat and safe to interrupt::

    result = fit_cached(model, images, labels, FIDOConfig(iterations=300, sampler="cd"),
                        seeds=range(len(images)), snapshots=(50, 100, 300), chunk=32)

The images are fitted ``chunk`` at a time; each chunk's logits (and snapshots, history and cost)
are written atomically, with a digest of the whole record, to ``cache_dir/fido/<key>/<a>-<b>.pt``,
where ``key`` digests everything
the masks depend on: the model's parameters and buffers, the images, the targets, the per-image
seeds, the configuration and the snapshot iterations. A second call with the same arguments
loads the chunks instead of fitting; a call that was interrupted finds the chunks it finished
and fits only the others. Because every image draws its noise from its own seed (see
:class:`fidobook.FIDO`), the masks do not depend on how the images are chunked (up to the float
rounding of the model's batched arithmetic, which can depend on the batch size).

Every chunk is verified when it is read back: a file that is truncated, altered (digest mismatch),
incomplete, of another format or of another fit is reported in a warning naming the path and the
reason, and that chunk alone is fitted again and overwritten. Each chunk also records the
environment it was computed in (:func:`fidobook._io.run_environment`: device, dtype, threads,
torch and fidobook versions); a call that would add freshly fitted chunks to chunks computed in
another environment refuses with a ``ValueError`` instead of mixing arithmetic, while a complete
hit from one environment is simply loaded.

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

from . import _checks, _io
from .fido import FIDO, FIDOConfig, FIDOResult
from .models.train import data_fingerprint
from .stats import bootstrap_ci  # re-exported: it lived here first

__all__ = ["fit_cached", "model_digest", "bootstrap_ci"]

#: Bumped whenever the stored format or the meaning of a fit changes: old entries are ignored.
_FORMAT = "fidobook-fido-cache-2"  # 2: verified records (digest) with the run environment

#: What every chunk record holds (a verified record missing one of them is damaged).
_FIELDS = ("key", "logits", "targets", "history", "snapshots", "model_evaluations", "seconds",
           "environment")


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


#: The modules whose code decides what a fit computes: a change to any of them is a new key, so
#: a cached fit never outlives the code that made it (other package files do not count).
_FIT_CODE = ("fido.py", "samplers.py", "infill.py", "_maps.py", "_rng.py")


def fit_code_digest() -> str:
    """SHA-256 (16 hex) of the source of :data:`_FIT_CODE` (those that exist)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _FIT_CODE:
        path = root / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cache_key(model: nn.Module, images: Tensor, targets: Tensor, seeds: list[int],
               config: FIDOConfig, snapshots: tuple[int, ...]) -> str:
    settings = dataclasses.asdict(config)
    # ``temperature=None`` means the sampler's default: the same fit as naming it.
    settings["temperature"] = config.make_sampler().temperature
    payload = {
        "format": _FORMAT,
        "code": fit_code_digest(),
        "model": model_digest(model),
        "images": data_fingerprint(images),
        "targets": targets.tolist(),
        "seeds": list(seeds),
        "config": settings,
        "snapshots": list(snapshots),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _chunk_record(result: FIDOResult, key: str, environment: dict) -> dict:
    """What a chunk file holds: CPU tensors and plain values (loadable with weights_only)."""
    return {
        "key": key,
        "logits": result.logits.cpu(),
        "targets": result.targets.cpu(),
        "history": {k: v.cpu() for k, v in result.history.items()},
        "snapshots": {int(k): v.cpu() for k, v in result.snapshots.items()},
        "model_evaluations": int(result.model_evaluations),
        "seconds": float(result.seconds),
        "environment": dict(environment),
    }


def _other_fit(record: dict, key: str, targets: Tensor, snapshots: tuple[int, ...],
               iterations: int) -> str | None:
    """Why an intact record does not hold chunk ``targets`` of fit ``key``; None if it does."""
    n = len(targets)
    if record["key"] != key:
        return f"it holds another fit (key {str(record['key'])[:20]!r}, expected {key!r})"
    logits, history, shots = record["logits"], record["history"], record["snapshots"]
    if not (isinstance(logits, Tensor) and logits.ndim == 4 and tuple(logits.shape[:2]) == (2, n)):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        return f"expected logits of shape (2, {n}, h, w), got {got}"
    if not (isinstance(record["targets"], Tensor) and torch.equal(record["targets"], targets)):
        return "its targets differ from the requested ones"
    shape = (iterations, n)
    if not (isinstance(history, dict) and history
            and all(isinstance(v, Tensor) and tuple(v.shape) == shape for v in history.values())):
        return f"expected a history of Tensor[{iterations}, {n}] entries"
    if not (isinstance(shots, dict) and set(shots) == set(snapshots)
            and all(isinstance(v, Tensor) and v.shape == logits.shape for v in shots.values())):
        return f"expected snapshots at iterations {list(snapshots)}, got {sorted(shots, key=repr)}"
    if not isinstance(record["environment"], dict):
        return "its environment is not a record"
    return None


def _load_chunk(path: Path, key: str, targets: Tensor, snapshots: tuple[int, ...],
                iterations: int) -> dict | None:
    """The verified chunk stored at ``path``, or ``None`` (with a warning) to fit it again."""
    try:
        record = _io.load_record(path, format=_FORMAT, fields=_FIELDS)
    except FileNotFoundError:
        return None
    except _io.DamagedFile as err:
        warnings.warn(f"fit_cached: damaged cache chunk {err}; fitting this chunk again",
                      stacklevel=3)
        return None
    reason = _other_fit(record, key, targets, snapshots, iterations)
    if reason is not None:
        warnings.warn(f"fit_cached: cache chunk {str(path)!r}: {reason}; fitting this chunk again",
                      stacklevel=3)
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
    max_batch: int | None = None,
) -> FIDOResult:
    """FIDO masks for ``images``, fitted ``chunk`` images at a time or loaded from the cache.

    Each chunk ``[a, b)`` is fitted as ``FIDO(model, config).fit(images[a:b], targets[a:b],
    seeds=seeds[a:b], snapshots=snapshots)`` and saved atomically to
    ``cache_dir/fido/<key>/<a>-<b>.pt`` as a verified record (:func:`fidobook._io.save_record`).
    Chunks already there are verified and loaded, the others fitted, so an interrupted call
    resumes where it stopped. A damaged chunk (truncated, altered, incomplete, of another format
    or fit) is reported in a warning naming the path and the reason, then fitted again and
    overwritten; the temporary files of a killed writer are removed first. The key digests the
    code that computes a fit (:func:`fit_code_digest`), the model's weights
    (:func:`model_digest`), the images, the targets, the seeds, the
    configuration (its ``temperature`` resolved to the sampler's default when ``None``) and the
    snapshot iterations; it does not include ``chunk`` (a different chunking stores different
    files) nor the device (each chunk records its environment instead, see Raises).

    Args:
        model (nn.Module): the classifier, images in [0, 1] → logits ``Tensor[N, K]``.
        images (Tensor[N, C, H, W]): float images in [0, 1], on the model's device.
        targets: the classes to explain: an int, a sequence of N ints or ``LongTensor[N]``.
        config (FIDOConfig): the settings of every fit.
        seeds: one int in ``[0, 2**64)`` per image (a sequence or an integer tensor; an int
            gives every image the same seed). Image ``i``'s noise depends on ``seeds[i]`` only.
        cache_dir (path, optional): root of the cache. Default: ``$FIDOBOOK_CACHE`` or
            ``.cache`` (:func:`fidobook.workflow.default_cache_dir`).
        snapshots (sequence of int, optional): iterations in ``[1, config.iterations]`` at which
            the logits are also recorded (``result.snapshots``). Default: none.
        progress (bool, optional): show a progress bar over the chunks. Default: False.
        chunk (int, optional): images per fit (and per file). Default: all in one.
        max_batch (int, optional): memory bound of each fit (:meth:`fidobook.FIDO.fit`); not
            part of the key, since results do not depend on it. Default: None.

    Raises:
        ValueError: chunks have to be fitted while chunks already stored were computed in another
            environment (device, dtype, thread count, torch or fidobook version, see
            :func:`fidobook._io.run_environment`); the message names the folder and the
            differences. Nothing is fitted or written then: run in the recorded environment, or
            delete the folder to fit every chunk again.

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
    images = _checks.check_model_inputs(images, model)
    n, _, height, width = images.shape
    if targets is None:
        raise TypeError("targets: expected an int, a sequence of ints or a LongTensor (the cache "
                        "key needs the classes: pass the predictions explicitly), got None")
    targets = _checks.check_targets(targets, n, None, name="targets")
    if seeds is None:
        raise TypeError("seeds: expected one int per image, got None")
    seeds = _checks.check_seeds(seeds, n)  # Python ints: seeds up to 2**64 stay exact
    snapshots = config.snapshot_steps(snapshots)
    if max_batch is not None:
        _checks.check_positive_int(max_batch, "max_batch")
    chunk = n if chunk is None else _checks.check_positive_int(chunk, "chunk")
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {progress!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    key = _cache_key(model, images, targets, seeds, config, snapshots)
    folder = root / "fido" / key
    _io.sweep_tmp(folder)
    bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    paths = [folder / f"{a}-{b}.pt" for a, b in bounds]
    records = []
    for path, (a, b) in zip(paths, bounds):  # a loop, not a comprehension: warnings' stacklevel
        records.append(_load_chunk(path, key, targets[a:b], snapshots, config.iterations))
    environment = _io.run_environment(images.device, images.dtype)
    _check_environments(folder, records, environment)

    bar = tqdm(bounds, disable=not progress, desc="FIDO chunks", leave=False)
    for i, (a, b) in enumerate(bar):
        if records[i] is None:
            fitted = FIDO(model, config).fit(images[a:b], targets[a:b].to(images.device),
                                             seeds=seeds[a:b], snapshots=snapshots,
                                             max_batch=max_batch)
            records[i] = _chunk_record(fitted, key, environment)
            _io.save_record(records[i], paths[i], format=_FORMAT)
    return _assemble(records, config, snapshots, images.device, (height, width))


def _check_environments(folder: Path, records: list[dict | None], environment: dict) -> None:
    """Refuses to mix chunks computed in different environments (see :func:`fit_cached`)."""
    stored = [r["environment"] for r in records if r is not None]
    if not stored:
        return
    first = stored[0]
    fields = sorted({k for e in stored for k in set(e) | set(first) if e.get(k) != first.get(k)})
    if fields:
        diffs = "; ".join(f"{k} {sorted({repr(e.get(k)) for e in stored})}" for k in fields)
        raise ValueError(f"fit_cached: the chunks in {str(folder)!r} were computed in different "
                         f"environments ({diffs}); delete the folder to fit them again in one")
    if all(r is not None for r in records):
        return  # a complete hit from one environment: nothing is computed now
    diff = _io.environment_mismatch(first, environment)
    if diff:
        missing = sum(r is None for r in records)
        raise ValueError(
            f"fit_cached: {missing} of {len(records)} chunks to fit in {str(folder)!r}, whose "
            f"stored chunks were computed in another environment ({diff}); refusing to mix "
            f"arithmetic: rerun in the recorded environment, or delete the folder to fit every "
            f"chunk again")


def _assemble(records: list[dict], config: FIDOConfig, snapshots: tuple[int, ...], device,
              size: tuple[int, int]) -> FIDOResult:
    """One FIDOResult from the chunks' records, maps recomputed from the logits on ``device``."""
    logits = torch.cat([r["logits"] for r in records], dim=1).to(device)  # (2, N, h, w)
    return FIDOResult.from_logits(
        logits, size,
        targets=torch.cat([r["targets"] for r in records]).to(device),
        history={k: torch.cat([r["history"][k] for r in records], dim=1).to(device)
                 for k in records[0]["history"]},
        config=config,
        model_evaluations=sum(r["model_evaluations"] for r in records),
        seconds=sum(r["seconds"] for r in records),
        snapshots={k: torch.cat([r["snapshots"][k] for r in records], dim=1).to(device)
                   for k in snapshots},
    )

