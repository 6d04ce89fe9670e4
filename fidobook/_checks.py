"""Input checks shared by every public entry point.

Each check raises ``ValueError`` / ``TypeError`` whose message names the argument and says
"expected ..., got ...", so that a bad call fails at the public boundary and not deep inside
a forward pass.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import Tensor

__all__: list[str] = []  # private module


def check_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: Tensor, name: str) -> Tensor:
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/inf entries")
    return x


def check_images(images, name: str = "images", channels: int | None = None) -> Tensor:
    """Checks a batch of images: ``Tensor[N, C, H, W]``, float, finite, values in [0, 1]."""
    check_float(images, name)
    if images.ndim != 4:
        raise ValueError(
            f"{name}: expected a 4-D tensor (N, C, H, W), got shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(images.shape)}")
    if channels is not None and c != channels:
        raise ValueError(f"{name}: expected {channels} channels, got {c} (shape {tuple(images.shape)})")
    check_finite(images, name)
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: expected values in [0, 1] (models normalise inside), got range [{lo:.4g}, {hi:.4g}]"
        )
    return images


def model_dtype(model) -> torch.dtype | None:
    """The dtype of a model's first floating-point parameter (or buffer); None if it has none."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def check_model_inputs(images, model, name: str = "images") -> Tensor:
    """Checks images meant for ``model`` and returns them ready for it.

    On top of :func:`check_images` (``Tensor[N, C, H, W]``, float, finite, in [0, 1]):

    - ``C`` must equal ``model.in_channels`` when the model declares it (fidobook's models do);
    - the dtype must equal the model's parameters' dtype (no silent cast: a float64 batch for a
      float32 model is more likely a mistake than a wish; cast with ``images.float()``);
    - images that require grad are **detached** (documented cast): every entry point
      differentiates with respect to its own variables (masks, baselines), never the caller's
      graph.
    """
    if isinstance(images, Tensor) and images.requires_grad:
        images = images.detach()  # before reading values: no autograd warning, no graph
    check_images(images, name, channels=getattr(model, "in_channels", None))
    want = model_dtype(model)
    if want is not None and images.dtype != want:
        raise TypeError(f"{name}: expected dtype {want} (the model's parameters), got {images.dtype}; "
                        f"cast the images (e.g. images.to({want})) or the model")
    return images


def check_targets(target, n: int, num_classes: int | None, name: str = "target",
                  device: torch.device | None = None) -> Tensor:
    """Normalises ``target`` (int, sequence, or LongTensor[N]) to ``LongTensor[n]``.

    ``None`` is not handled here: callers fill in the argmax first.
    """
    if isinstance(target, bool):
        raise TypeError(f"{name}: expected an int, a sequence of ints or a LongTensor, got bool")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor, got dtype {target.dtype}")
        t = target.reshape(-1).long() if target.ndim <= 1 else None
        if t is None:
            raise ValueError(f"{name}: expected a 0-D or 1-D tensor, got shape {tuple(target.shape)}")
        if t.numel() == 1 and n != 1:
            t = t.expand(n).clone()
    elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in target):
            raise TypeError(f"{name}: expected a sequence of ints, got {list(target)[:5]!r}...")
        t = torch.tensor(list(target), dtype=torch.long)
    else:
        raise TypeError(
            f"{name}: expected an int, a sequence of ints or a LongTensor, got {type(target).__name__}"
        )
    if t.numel() != n:
        raise ValueError(f"{name}: expected {n} values (one per image), got {t.numel()}")
    if num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name}: expected class indices in [0, {num_classes - 1}], got range "
            f"[{int(t.min())}, {int(t.max())}]"
        )
    return t.to(device) if device is not None else t


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return value


def check_level(level, name: str = "level") -> float:
    """The coverage of a confidence interval: a number strictly between 0 and 1."""
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise TypeError(f"{name}: expected a number in (0, 1), got {level!r}")
    if not 0 < level < 1:  # NaN fails too
        raise ValueError(f"{name}: expected a number in (0, 1), got {level!r}")
    return float(level)


#: Seeds of ``torch.Generator.manual_seed`` lie in ``[0, SEED_LIMIT)``.
SEED_LIMIT = 2**64


def _check_seed_value(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int seed in [0, 2**64), got {value!r}")
    value = int(value)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name}: expected an int seed in [0, 2**64), got {value}")
    return value


def check_generator(generator, name: str = "generator") -> torch.Generator:
    """A ``torch.Generator`` as is, or a new CPU generator seeded with an int in ``[0, 2**64)``."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(_check_seed_value(generator, name))
    raise TypeError(f"{name}: expected a torch.Generator or an int seed, got "
                    f"{type(generator).__name__}")


def check_seeds(seeds, n: int, name: str = "seeds") -> list[int]:
    """``n`` seeds, each an int in ``[0, 2**64)`` (what ``torch.Generator.manual_seed`` takes).

    Accepts a sequence (list, tuple, range, numpy array) of ints, an integer tensor of 0 or 1
    dimensions, or one int (or one-element tensor) used for every image. Python ints are kept exact: seeds from 2**63 up
    do not fit a LongTensor but are valid.

    Returns:
        list[int]: ``n`` seeds.
    """
    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor, got dtype {seeds.dtype}")
        if seeds.ndim > 1:
            raise ValueError(f"{name}: expected a 0-D or 1-D tensor, got shape {tuple(seeds.shape)}")
        seeds = seeds.reshape(-1).tolist()
        if len(seeds) == 1:  # as a 0-D tensor: one seed for every image
            seeds = seeds[0]
    elif hasattr(seeds, "tolist") and not isinstance(seeds, (str, bytes)):  # numpy arrays
        seeds = seeds.tolist()
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds] * n
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, range)):
        raise TypeError(f"{name}: expected a sequence of ints (one seed per image), got "
                        f"{type(seeds).__name__}")
    seeds = list(seeds)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{name}: expected a sequence of ints, got {s!r} in it")
    if len(seeds) != n:
        raise ValueError(f"{name}: expected {n} values (one per image), got {len(seeds)}")
    return [_check_seed_value(s, f"{name}[{i}]") for i, s in enumerate(seeds)]


def squeeze_channel(x: Tensor, name: str, *, non_empty: bool = False) -> Tensor:
    """``Tensor[N, H, W]`` from ``Tensor[N, H, W]`` or ``Tensor[N, 1, H, W]`` (the channel squeezed).

    ``non_empty=True`` also rejects a tensor without elements (N, H or W of 0).
    """
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or (non_empty and x.numel() == 0):
        what = "a non-empty tensor of shape" if non_empty else "shape"
        raise ValueError(f"{name}: expected {what} (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    return x


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def check_logits_output(out, n: int, name: str = "model") -> Tensor:
    """Checks that a model's forward returned ``Tensor[n, K]`` float logits."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: expected the forward pass to return a Tensor of logits (N, K), "
                        f"got {type(out).__name__}")
    if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
        raise ValueError(f"{name}: expected the forward pass to return logits of shape ({n}, K) "
                         f"with K >= 2, got {tuple(out.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"{name}: expected floating-point logits, got dtype {out.dtype}")
    return out
