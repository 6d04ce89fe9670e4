"""File I/O shared by the caches.

* :func:`atomic_torch_save` / :func:`atomic_write_text`: atomic file writes: a reader sees the old
  file or the complete new one, never a partial one; :func:`sweep_tmp` removes the temporary files
  a killed writer left behind.
* Verified records (mask batches, fit-cache chunks, hard sets, experiment results):
  :func:`save_record` writes a dict with a digest of its whole content, :func:`load_record` reads
  it back and raises :class:`DamagedFile` (naming the path and what is wrong) when the file is
  truncated, altered, of another format or missing a field.
* :func:`run_environment`: what makes two runs' floating-point results differ (device, dtype,
  threads, versions), recorded by resumable writers so a resume never mixes them.
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
import socket
import tempfile
import time
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
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, like :func:`atomic_torch_save`."""
    data = text.encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(data))


def _tmp_prefix(path: Path) -> str:
    # Host and pid in the name let sweep_tmp tell a dead writer's leftovers from a live one's.
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


def _atomic_write(path: Path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here on: closed on any error
            os.chmod(f.fileno(), 0o644)  # mkstemp makes 0600 files; a cache is fine to share read-only
            write(f)
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or cannot tell: keep its files
    return True


def sweep_tmp(folder: str | os.PathLike, *, max_age: float = 24 * 3600.0) -> list[Path]:
    """Removes the temporary files (``.*.tmp``) that killed writers left in ``folder``.

    A file written by this host is removed when its writer's process no longer exists; a file
    from another host (a shared file system) only when it is older than ``max_age`` seconds, so
    a writer still running elsewhere is never disturbed. Not recursive.

    Args:
        folder (path): the folder to clean; a missing folder is fine.
        max_age (float, optional): seconds after which any leftover is removed. Default: one day.

    Returns:
        list of Path: the files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = socket.gethostname(), time.time(), []
    for f in folder.glob(".*.tmp"):
        if not f.is_file():
            continue
        # ".{name}.{host}.{pid}.{random}.tmp" (names may contain dots: read pid and host from the end)
        parts = f.name[:-len(".tmp")].split(".")
        pid = int(parts[-2]) if len(parts) >= 4 and parts[-2].isdigit() else None
        try:
            age = now - f.stat().st_mtime
        except OSError:
            continue
        if pid is None:  # an older writer's name, without host and pid: a minute is plenty
            stale = age > 60
        else:
            stale = age > max_age or (parts[-3] == host and not _pid_alive(pid))
        if stale:
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f)
    return removed


# ----------------------------------------------------------------------------------------------
# Verified records


class DamagedFile(ValueError):
    """A file the package wrote earlier that fails verification (the path is in the message).

    Attributes:
        path (Path): the damaged file.
        reason (str): what is wrong (unreadable, digest mismatch, other format, missing field).
    """

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{str(path)!r}: {reason}")


def _feed(h, obj) -> None:
    """Adds a canonical encoding of ``obj`` (nested dicts, lists, tensors, plain values) to ``h``."""
    if isinstance(obj, Tensor):
        t = obj.detach().contiguous().cpu()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}|".encode())
        for k in sorted(obj, key=repr):
            h.update(f"{k!r}=".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:
        raise TypeError(f"record: cannot digest a value of type {type(obj).__name__}")


def record_digest(obj) -> str:
    """SHA-256 hex digest of a record: dicts (any key order), lists, tensors and plain values."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_record(record: Mapping, path: str | os.PathLike, *, format: str) -> None:
    """Writes ``{**record, "format": format, "digest": ...}`` atomically to ``path``.

    ``record`` holds CPU tensors and plain values only (it is read back with
    ``weights_only=True``); the digest covers every entry, so :func:`load_record` detects a
    flipped byte anywhere in it.
    """
    body = {**record, "format": format}
    body = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in body.items()}
    atomic_torch_save({**body, "digest": record_digest(body)}, path)


def load_record(path: str | os.PathLike, *, format: str, fields: tuple[str, ...] = ()) -> dict:
    """Reads a record written by :func:`save_record` and verifies it.

    Args:
        path (path): the file.
        format (str): the expected ``"format"`` entry.
        fields (tuple of str, optional): entries the caller needs; a missing one is damage.

    Returns:
        dict: the record, without its ``"digest"`` entry.

    Raises:
        FileNotFoundError: no such file.
        DamagedFile: unreadable, of another format, altered (digest mismatch) or incomplete.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a damaged file
        raise DamagedFile(path, f"unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a fidobook record, got {type(obj).__name__}")
    if obj.get("format") != format:
        raise DamagedFile(path, f"expected format {format!r}, got {obj.get('format')!r}")
    digest = obj.pop("digest", None)
    try:
        intact = digest is not None and record_digest(obj) == digest
    except TypeError as e:
        raise DamagedFile(path, f"unexpected content ({e})") from e
    if not intact:
        raise DamagedFile(path, "digest mismatch (the file was altered or is incomplete)")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise DamagedFile(path, f"missing fields {missing}")
    return obj


def package_digest() -> str:
    """SHA-256 (16 hex) of fidobook's version and of every ``.py`` file of the package.

    The version alone does not change when the code does; results that depend on the code
    (resumable mask folders, experiment results) record this digest instead.
    """
    from . import __version__

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(__version__.encode())
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def run_environment(device, dtype=torch.float32) -> dict:
    """What makes floating-point results of two runs differ, as plain values.

    ``{"device": "cpu" | "cuda:<name>", "dtype", "threads", "torch", "fidobook"}``, where
    ``fidobook`` is the version and a digest of the package's code (:func:`package_digest`):
    equal records mean the same arithmetic (with deterministic kernels), so resumable writers
    store it and refuse to add to results computed under another one.
    """
    from . import __version__

    device = torch.device(device)
    name = device.type
    if device.type == "cuda":
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {"device": name, "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__.split("+")[0], "fidobook": f"{__version__}+{package_digest()}"}


def environment_mismatch(recorded: Mapping, current: Mapping) -> str | None:
    """A human sentence naming the fields where two :func:`run_environment` records differ."""
    diffs = [f"{k} {recorded.get(k)!r} vs {current.get(k)!r} now"
             for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    return "; ".join(diffs) or None


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
