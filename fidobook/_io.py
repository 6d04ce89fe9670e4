"""File I/O shared by the caches.

* :func:`atomic_torch_save`: atomic file writes: a reader sees the old file or the complete new
  one, never a partial one.
* Verified model checkpoints (the classifier's :func:`fidobook.models.save_checkpoint` and the
  segmenter's :func:`fidobook.models.save_segmenter` are built on these):
  :func:`save_verified` writes ``{**meta, "state_dict": ..., "digest": ...}`` atomically,
  :func:`load_verified` reads such a file back and checks its kind, format, cache key and digest,
  :func:`restore_model` puts a verified state dict into a freshly built model, and
  :func:`load_cached` turns a missing or damaged cache entry into ``None`` (with a warning for a
  damaged one), so that the caller retrains.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__: list[str] = []  # private module


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    On any error (an interrupt included) the temporary file is removed and the error re-raised,
    so an interrupted run never leaves a file that loads as valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here on: closed on any error
            os.chmod(f.fileno(), 0o644)  # mkstemp makes 0600 files; a cache is fine to share read-only
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Persist the rename itself (best effort: not every platform can open a directory).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ----------------------------------------------------------------------------------------------
# Verified model checkpoints


def state_digest(state: Mapping[str, Tensor], meta: Mapping) -> str:
    """SHA-256 over the metadata and the names, dtypes, shapes and bytes of a state dict.

    ``torch.load`` fails on a truncated file but not on every flipped byte inside tensor data or
    the pickled history; this digest catches those.
    """
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_verified(path: str | os.PathLike, model: nn.Module, meta: Mapping) -> None:
    """Writes ``{**meta, "state_dict", "digest"}`` atomically (the state dict from the CPU, contiguous).

    ``meta`` must hold plain Python values only (it is loaded with ``weights_only=True`` and
    hashed as JSON); :func:`load_verified` checks the file against it.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = dict(meta)
    atomic_torch_save({**meta, "state_dict": state, "digest": state_digest(state, meta)}, Path(path))


def load_verified(path: str | os.PathLike, fields: tuple[str, ...], *, format, kind: str | None = None,
                  key: str | None = None) -> dict:
    """Reads a checkpoint written by :func:`save_verified` and verifies it.

    Args:
        path (path): the checkpoint file.
        fields (tuple of str): the metadata keys the digest covers (``"format"``, ``"key"``, ...).
        format: the expected ``"format"`` entry.
        kind (str, optional): the expected ``"kind"`` entry; None: the file has none to check.
        key (str, optional): if given, the recorded cache key must equal it.

    Returns:
        dict: the stored object, its ``"state_dict"`` intact.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, damaged, of another kind or format, or for another key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected an existing checkpoint file, got {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a damaged file
        raise ValueError(f"checkpoint {str(path)!r}: unreadable ({type(e).__name__}: {e})") from e
    if (not isinstance(obj, dict) or obj.get("format") != format
            or (kind is not None and obj.get("kind") != kind)):
        if isinstance(obj, dict):
            got = f"format {obj.get('format')!r}"
            if kind is not None:
                got = f"kind {obj.get('kind')!r}, {got}"
        else:
            got = type(obj).__name__
        what = f"fidobook {kind} checkpoint" if kind is not None else "fidobook checkpoint"
        raise ValueError(f"checkpoint {str(path)!r}: expected a {what} of format {format}, got {got}")
    if key is not None and obj.get("key") != key:
        raise ValueError(f"checkpoint {str(path)!r}: expected cache key {key[:16]}..., got "
                         f"{str(obj.get('key'))[:16]}...")
    try:
        state = obj["state_dict"]
        meta = {k: obj[k] for k in fields}
        intact = state_digest(state, meta) == obj.get("digest")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r}: incomplete ({type(e).__name__}: {e})") from e
    if not intact:
        raise ValueError(f"checkpoint {str(path)!r}: digest mismatch (damaged file)")
    return obj


def restore_model(build: Callable[[], nn.Module], state: Mapping[str, Tensor],
                  device: str | torch.device, channels_last: bool) -> nn.Module:
    """``build()``'s model with ``state`` loaded (strictly), on ``device``, in eval mode.

    The caller's RNG is left as it was: the random initialisation is overwritten anyway.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        model = build()
    model.load_state_dict(state, strict=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def load_cached(load: Callable, path: Path, key: str, device, what: str = "checkpoint", *,
                stacklevel: int = 3):
    """``(model, history)`` from ``load(path, device=device, key=key)``, or None to retrain.

    None when the file is missing, or damaged: then with a warning naming ``what``, attributed
    (``stacklevel``) by default to whoever called the public function that called this one.
    """
    if not path.exists():
        return None
    try:
        model, _, history = load(path, device=device, key=key)
        return model, history
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        warnings.warn(f"cache: ignoring damaged {what} ({e}); retraining", stacklevel=stacklevel)
        return None
