"""Training a classifier on in-memory tensors, with an on-disk checkpoint cache.

``train_classifier(config, (images, labels), test)`` trains the model that ``config`` describes
and, given a ``cache_dir``, stores the result under a key made of the configuration and a
fingerprint of the data; the next call with the same configuration and data loads it instead of
retraining. Checkpoints are written atomically (temporary file in the same folder, ``fsync``,
``os.replace``), hold only tensors and plain Python values (loaded with ``weights_only=True``), and
carry a digest of their tensors, so an interrupted or damaged file is detected and retrained, never
loaded.

Every random draw (initialisation, shuffling, augmentation, dropout) comes from ``config.seed``;
the global RNG state is forked and restored, so training does not disturb the caller's RNG. The
number of threads is left to the caller (``torch.set_num_threads``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (check_choice, check_positive_float, check_positive_int, check_tensor)
from .._io import load_cached, load_verified, restore_model, save_verified, sweep_tmp
from .._state import restored_modes
from .cnn import SmallCNN
from .resnet import _STEMS, RESNETS, resnet

__all__ = ["TrainConfig", "ARCHS", "build_model", "train_classifier", "predict", "evaluate",
           "Evaluation", "data_fingerprint", "cache_key", "save_checkpoint", "load_checkpoint",
           "augment"]

#: Architectures :class:`TrainConfig` accepts.
ARCHS = ("small_cnn",) + RESNETS
_OPTIMIZERS = ("adamw", "sgd")
_SCHEDULES = ("onecycle", "cosine")
# Bump when the checkpoint layout or the training procedure changes: old cache entries then miss.
_FORMAT = 1
# The metadata a checkpoint's digest covers.
_META = ("format", "key", "config", "num_classes", "history")
# Elements of the image tensor hashed at most; beyond this an even subsample is hashed.
_FINGERPRINT_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained classifier (and its cache key).

    The defaults are the ``small_cnn`` tuned on the 64 px ``cpu`` birds (50 classes, 200 training
    images each): 98 % test accuracy after 20 epochs.

    Attributes:
        arch (str): ``"small_cnn"`` or a ResNet name (``"resnet18"``, ...). Default: ``"small_cnn"``.
        width (int): first-stage width of ``small_cnn``. Default: 32.
        depths (tuple of int): conv layers per stage of ``small_cnn``. Default: (1, 2, 2).
        cbam_stages (tuple of int): stages of ``small_cnn`` followed by CBAM. Default: (1, 2, 3).
        cbam_residual (bool): ``small_cnn``'s CBAM in residual form (see :class:`SmallCNN`).
            Default: True.
        cbam (bool): CBAM attention blocks. Default: True.
        dropout (float): dropout before the head (MC dropout needs > 0). Default: 0.2.
        stem (str): ResNet stem, ``"imagenet"`` or ``"small"`` (see :func:`resnet`). Default: "imagenet".
        num_classes (int or None): K; None takes ``max(label) + 1``. Default: None.
        epochs (int): passes over the training set. Default: 20.
        batch_size (int): images per step. Default: 64.
        lr (float): peak learning rate. Default: 1e-2.
        weight_decay (float): decoupled (AdamW) or L2 (SGD) weight decay. Default: 5e-4.
        optimizer (str): ``"adamw"`` or ``"sgd"`` (Nesterov momentum). Default: "adamw".
        momentum (float): SGD momentum. Default: 0.9.
        schedule (str): ``"onecycle"`` or ``"cosine"`` (linear warm-up then cosine to 0).
            Default: "onecycle".
        warmup (float): fraction of the steps spent warming up. Default: 0.2.
        label_smoothing (float): cross-entropy label smoothing; it also flattens the softmax that
            confidence baselines read. Default: 0.
        hflip (bool): random horizontal flips. Default: True.
        crop_scale (float): smallest area fraction of the random-resized crop; 1 disables it (a
            crop can cut off the feet or the beak that tell two birds apart). Default: 1.
        translate (float): extra random shift, as a fraction of half the image size. Default: 0.
        image_size (int or None): expected H = W of the training images (checked); None: any.
        channels_last (bool): channels-last memory format (faster convolutions on CPU). Default: True.
        seed (int): seeds initialisation, shuffling, augmentation and dropout. Default: 0.
    """

    arch: str = "small_cnn"
    width: int = 32
    depths: tuple[int, ...] = (1, 2, 2)
    cbam_stages: tuple[int, ...] = (1, 2, 3)
    cbam_residual: bool = True
    cbam: bool = True
    dropout: float = 0.2
    stem: str = "imagenet"
    num_classes: int | None = None
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "onecycle"
    warmup: float = 0.2
    label_smoothing: float = 0.0
    hflip: bool = True
    crop_scale: float = 1.0
    translate: float = 0.0
    image_size: int | None = None
    channels_last: bool = True
    seed: int = 0

    def __post_init__(self):
        check_choice(self.arch, "arch", ARCHS)
        check_choice(self.optimizer, "optimizer", _OPTIMIZERS)
        check_choice(self.schedule, "schedule", _SCHEDULES)
        check_choice(self.stem, "stem", _STEMS)
        # Lists come back from JSON / checkpoints; a tuple keeps the config hashable.
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "cbam_stages", tuple(self.cbam_stages))
        if not all(isinstance(i, int) and 1 <= i <= 3 for i in self.cbam_stages):
            raise ValueError(f"cbam_stages: expected stage numbers in {{1, 2, 3}}, got {self.cbam_stages}")
        for i, d in enumerate(self.depths):
            check_positive_int(d, f"depths[{i}]")
        for name in ("width", "epochs", "batch_size"):
            check_positive_int(getattr(self, name), name)
        if self.num_classes is not None:
            check_positive_int(self.num_classes, "num_classes", minimum=2)
        if self.image_size is not None:
            check_positive_int(self.image_size, "image_size")
        check_positive_int(self.seed, "seed", minimum=0)
        check_positive_float(self.lr, "lr")
        for name in ("weight_decay", "momentum", "warmup", "label_smoothing", "translate", "dropout"):
            check_positive_float(getattr(self, name), name, allow_zero=True)
        for name in ("warmup", "label_smoothing", "dropout"):
            if getattr(self, name) >= 1:
                raise ValueError(f"{name}: expected a value in [0, 1), got {getattr(self, name)}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale: expected an area fraction in (0, 1], got {self.crop_scale}")
        for name in ("cbam", "cbam_residual", "hflip", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """Plain-Python form (JSON- and ``weights_only``-safe)."""
        d = dataclasses.asdict(self)
        d["depths"] = list(d["depths"])
        d["cbam_stages"] = list(d["cbam_stages"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        return _config_from_dict(cls, d)


def _config_from_dict(cls, d: Mapping):
    """``cls(**d)`` for a configuration dataclass; unknown fields are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"config: expected fields among {sorted(names)}, got unknown {unknown}")
    return cls(**d)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The untrained model ``config`` describes (initialised from the global RNG).

    Args:
        config (TrainConfig): architecture fields are read (arch, width, depths, cbam, dropout, stem).
        num_classes (int): K.

    Returns:
        nn.Module: ``SmallCNN`` or ``ResNet``; input ``Tensor[N, 3, H, W]`` in [0, 1], output
        ``Tensor[N, K]``.
    """
    if config.arch == "small_cnn":
        return SmallCNN(num_classes, width=config.width, dropout=config.dropout, cbam=config.cbam,
                        depths=config.depths,
                        cbam_stages=config.cbam_stages, cbam_residual=config.cbam_residual)
    return resnet(config.arch, num_classes, cbam=config.cbam, dropout=config.dropout,
                  stem=config.stem)


# ----------------------------------------------------------------------------------------------
# Data: checks, conversion, fingerprint


def _unpack_data(data, name: str, keys: tuple[tuple[str, ...], tuple[str, ...]], pair: str) -> tuple:
    """The two parts of a data argument: a pair, or a mapping with (an alias of) each part's key.

    ``keys`` lists the mapping keys each part is looked up under, in order, the first being the
    documented one; ``pair`` names the parts in the error message, e.g. ``"(images, labels)"``.
    """
    if isinstance(data, Mapping):
        parts = tuple(next((data[k] for k in aliases if k in data), None) for aliases in keys)
        if any(p is None for p in parts):
            raise ValueError(f"{name}: expected a mapping with '{keys[0][0]}' and '{keys[1][0]}', "
                             f"got keys {sorted(data)}")
        return parts
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tuple(data)
    raise TypeError(f"{name}: expected {pair} or a mapping with '{keys[0][0]}' and '{keys[1][0]}', "
                    f"got {type(data).__name__}")


def _as_data(data, name: str) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` from a pair or a mapping; checks shapes, dtypes and ranges."""
    images, labels = _unpack_data(data, name, (("images", "image"), ("labels", "label")),
                                  "(images, labels)")
    _check_image_tensor(images, f"{name} images")
    check_tensor(labels, f"{name} labels")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{name} labels: expected Tensor[{images.shape[0]}] (one per image), got "
                         f"shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} labels: expected an integer tensor, got dtype {labels.dtype}")
    if int(labels.min()) < 0:
        raise ValueError(f"{name} labels: expected class indices >= 0, got {int(labels.min())}")
    return images, labels.long()


def _check_image_tensor(images, name: str) -> Tensor:
    """Checks ``Tensor[N, 3, H, W]``, uint8 or float in [0, 1], non-empty."""
    check_tensor(images, name)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty Tensor[N, 3, H, W], got shape "
                         f"{tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{name}: expected uint8 or float, got dtype {images.dtype}")
    if images.is_floating_point():
        lo, hi = float(images.min()), float(images.max())
        if not (0.0 <= lo and hi <= 1.0):  # also rejects NaN
            raise ValueError(f"{name}: expected float values in [0, 1], got range "
                             f"[{lo:.4g}, {hi:.4g}]")
    return images


def _to_float(images: Tensor) -> Tensor:
    """``Tensor[N, 3, H, W]`` uint8 (0–255) or float (0–1) → float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def data_fingerprint(images: Tensor, labels: Tensor | None = None) -> str:
    """A SHA-256 hex digest identifying a data set (shape, dtype, labels and pixels).

    Up to 2**25 pixel values are hashed exactly; larger tensors are hashed on an even subsample,
    which still changes with any change of generation parameters.

    Args:
        images (Tensor[N, C, H, W]): any dtype.
        labels (Tensor[N], optional): class labels.

    Returns:
        str: 64 hex characters.
    """
    check_tensor(images, "images")
    h = hashlib.sha256()
    h.update(f"{tuple(images.shape)}|{images.dtype}".encode())
    flat = images.detach().reshape(-1)
    if flat.numel() > _FINGERPRINT_ELEMENTS:
        # Integer arithmetic: float32 linspace rounds indices past the end for N > 2**24.
        k = _FINGERPRINT_ELEMENTS
        idx = torch.arange(k, device=flat.device) * flat.numel() // k
        flat = flat[idx]
    # Bytes of the raw values, whatever the dtype (bfloat16 has no numpy equivalent).
    h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    if labels is not None:
        check_tensor(labels, "labels")
        h.update(f"|{tuple(labels.shape)}|".encode())
        h.update(labels.detach().long().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(config: TrainConfig, train, test=None, *, fingerprint: str | None = None) -> str:
    """The checkpoint-cache key: SHA-256 of the configuration and the data fingerprints.

    Args:
        config (TrainConfig): the training configuration.
        train: ``(images, labels)``; ignored when ``fingerprint`` is given.
        test: ``(images, labels)`` or None; its fingerprint is part of the key because the stored
            history holds test accuracies. Ignored when ``fingerprint`` is given.
        fingerprint (str, optional): a caller-made identifier of the data (e.g. the generator's
            parameters), used instead of hashing the tensors.

    Returns:
        str: 64 hex characters.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    return _data_key({"format": _FORMAT, "config": config.to_dict()},
                     lambda data, name: data_fingerprint(*_as_data(data, name)), train, test, fingerprint)


def _data_key(fields: Mapping, fingerprint_of: Callable[[object, str], str], train, test,
              fingerprint: str | None) -> str:
    """SHA-256 of the JSON of ``fields`` plus ``"data"``: ``fingerprint`` if given, else
    ``fingerprint_of(train, "train")`` (and ``"|" + fingerprint_of(test, "test")`` with a test set)."""
    if fingerprint is None:
        fingerprint = fingerprint_of(train, "train")
        if test is not None:
            fingerprint += "|" + fingerprint_of(test, "test")
    elif not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint: expected a str, got {type(fingerprint).__name__}")
    payload = json.dumps({**fields, "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Augmentation


def augment(images: Tensor, config: TrainConfig, generator: torch.Generator) -> Tensor:
    """Random flip, random-resized crop and shift of a batch, as one affine resampling.

    Each image gets a zoom ``s = sqrt(a)``, ``a ~ U[crop_scale, 1]``, a shift that keeps the crop
    inside the image (plus ``translate``, filled by reflection) and, with probability 1/2, a
    horizontal flip. Random numbers come from ``generator`` (a CPU generator).

    Args:
        images (Tensor[N, C, H, W]): float batch.
        config (TrainConfig): reads ``hflip``, ``crop_scale``, ``translate``.
        generator (torch.Generator): CPU generator.

    Returns:
        Tensor[N, C, H, W]: the augmented batch, same dtype and device.
    """
    n = images.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5 if config.hflip else torch.zeros(n, dtype=torch.bool)
    if config.crop_scale >= 1 and config.translate == 0:
        # Flip only: an index flip is exact and cheaper than resampling.
        if not bool(flip.any()):
            return images
        flip = flip.to(images.device).view(n, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)
    area = config.crop_scale + (1 - config.crop_scale) * torch.rand(n, generator=generator)
    s = area.sqrt()  # (N,) side of the crop relative to the image
    reach = (1 - s) + config.translate  # (N,) furthest shift, in normalised [-1, 1] coordinates
    shift = (2 * torch.rand(n, 2, generator=generator) - 1) * reach[:, None]  # (N, 2)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -s, s)  # a negative x-scale mirrors the image
    theta[:, 1, 1] = s
    theta[:, :, 2] = shift
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


# ----------------------------------------------------------------------------------------------
# Prediction


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`."""

    accuracy: float
    predictions: Tensor  # LongTensor[N]
    logits: Tensor  # Tensor[N, K]


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def _logits(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = _to_float(images[start:start + batch_size]).to(device)
        out.append(model(x).float().cpu())
    return torch.cat(out)  # (N, K)


def predict(model: nn.Module, images: Tensor, *, batch_size: int = 256,
            device: str | torch.device | None = None) -> Tensor:
    """Logits of ``model`` in eval mode, in batches, without gradients.

    The model's training/eval modes are restored afterwards.

    Args:
        model (nn.Module): a classifier taking ``Tensor[B, 3, H, W]`` in [0, 1].
        images (Tensor[N, 3, H, W]): uint8 (0–255) or float in [0, 1].
        batch_size (int, optional): images per forward. Default: 256.
        device (str or torch.device, optional): where to run; default: the model's device.

    Returns:
        Tensor[N, K]: float32 logits on the CPU.
    """
    _check_image_tensor(images, "images")
    check_positive_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else _model_device(model)
    with restored_modes(model):
        model.eval()
        return _logits(model, images, batch_size, device)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256,
             device: str | torch.device | None = None) -> Evaluation:
    """Top-1 accuracy of ``model`` on a labelled set.

    Args:
        model (nn.Module): a classifier taking ``Tensor[B, 3, H, W]`` in [0, 1].
        images (Tensor[N, 3, H, W]): uint8 (0–255) or float in [0, 1].
        labels (Tensor[N]): class indices.
        batch_size (int, optional): images per forward. Default: 256.
        device (str or torch.device, optional): where to run; default: the model's device.

    Returns:
        Evaluation: ``(accuracy, predictions LongTensor[N], logits Tensor[N, K])``.
    """
    images, labels = _as_data((images, labels), "evaluate")
    logits = predict(model, images, batch_size=batch_size, device=device)
    predictions = logits.argmax(dim=1)
    accuracy = float((predictions == labels.cpu()).float().mean())
    return Evaluation(accuracy, predictions, logits)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: TrainConfig,
                    history: Mapping, *, key: str = "") -> None:
    """Writes a checkpoint atomically: state dict, config, history, a tensor digest, the cache key.

    Args:
        path (path): destination file.
        model (nn.Module): the trained model (saved from the CPU, contiguous).
        config (TrainConfig): its configuration.
        history (mapping): per-epoch lists of plain Python numbers.
        key (str, optional): cache key recorded for verification on load.
    """
    save_verified(path, model, {
        "format": _FORMAT,
        "key": key,
        "config": config.to_dict(),
        "num_classes": int(getattr(model, "num_classes")),
        "history": {k: [float(x) for x in v] if k != "epoch" else [int(x) for x in v]
                    for k, v in history.items()},
    })


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    key: str | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    """Loads a checkpoint written by :func:`save_checkpoint` and verifies it.

    Args:
        path (path): the checkpoint file.
        device (str or torch.device, optional): where to put the model. Default: "cpu".
        key (str, optional): if given, the recorded cache key must equal it.

    Returns:
        tuple: ``(model in eval mode, TrainConfig, history dict)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, damaged, of another format, or for another key.
    """
    obj = load_verified(path, _META, format=_FORMAT, key=key)
    config = TrainConfig.from_dict(obj["config"])
    model = restore_model(lambda: build_model(config, obj["num_classes"]), obj["state_dict"], device,
                          config.channels_last)
    return model, config, dict(obj["history"])


# ----------------------------------------------------------------------------------------------
# Training


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN/bias parameters: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, total_steps=total_steps, pct_start=max(config.warmup, 1e-3),
            anneal_strategy="cos", cycle_momentum=config.optimizer == "sgd")
    warm = int(config.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _fit(config: TrainConfig, images: Tensor, labels: Tensor, test: tuple[Tensor, Tensor] | None,
         num_classes: int, device: torch.device, progress: bool) -> tuple[nn.Module, dict]:
    """The training loop proper (no caching). Call inside a forked, seeded RNG."""
    from tqdm.auto import tqdm

    model = build_model(config, num_classes).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(config.seed)
    # On a GPU the whole uint8 set goes to the device once (the gpu profile's 30 k images at
    # 224 px are 4.5 GB), so batches are gathered there instead of copied every step.
    images, labels = images.to(device), labels.to(device)
    if test is not None:
        test = (test[0].to(device), test[1].to(device))
    n = images.shape[0]
    batch_size = min(config.batch_size, n)
    # Drop the last partial batch: a batch of one breaks BN statistics, and equal steps keep the
    # schedule simple.
    steps = max(1, n // batch_size)
    opt = _optimizer(model, config)
    sched = _scheduler(opt, config, config.epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history = {"epoch": [], "train_loss": [], "train_acc": [], "test_acc": [], "lr": [], "seconds": []}
    bar = tqdm(total=config.epochs * steps, disable=not progress, unit="step",
               desc=f"train {config.arch}")
    try:
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=generator)
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps):
                idx = perm[step * batch_size:(step + 1) * batch_size].to(device)
                x = _to_float(images[idx])  # (B, 3, H, W)
                y = labels[idx]  # (B,)
                x = augment(x, config, generator).contiguous(memory_format=memory_format)
                logits = model(x)  # (B, K)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                # Accumulated on the device: a float() here would sync a GPU every step.
                loss_sum += loss.detach().double() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)
                bar.update(1)
            test_acc = float("nan")
            if test is not None:
                model.eval()
                pred = _logits(model, test[0], 256, device).argmax(1)
                test_acc = float((pred == test[1].cpu()).float().mean())
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(loss_sum) / seen)
            history["train_acc"].append(int(correct) / seen)
            history["test_acc"].append(test_acc)
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            history["seconds"].append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", acc=f"{history['train_acc'][-1]:.3f}",
                            test=f"{test_acc:.3f}")
    finally:
        bar.close()
    model.eval()
    return model, history


def _check_image_size(image_size: int | None, images: Tensor, test: tuple[Tensor, Tensor] | None):
    """Training (and test) images must be ``image_size`` px square (``config.image_size``; None: any)."""
    if image_size is None:
        return
    for name, x in (("train", images),) + ((("test", test[0]),) if test else ()):
        if tuple(x.shape[-2:]) != (image_size, image_size):
            raise ValueError(f"{name} images: expected {image_size}x{image_size} px "
                             f"(config.image_size), got {tuple(x.shape[-2:])}")


def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG work on ``device`` draws from (for ``torch.random.fork_rng``)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def checkpoint_path(cache_dir: str | os.PathLike, config: TrainConfig, key: str) -> Path:
    """Where the checkpoint of ``config`` with cache key ``key`` lives in ``cache_dir``."""
    return Path(cache_dir) / f"{config.arch}-{key[:24]}.pt"


def load_cached_classifier(config: TrainConfig, cache_dir: str | os.PathLike, fingerprint: str, *,
                           device: str | torch.device = "cpu") -> tuple[nn.Module, dict] | None:
    """The cached ``(model, history)`` for ``config`` and a data ``fingerprint``, or None.

    Needs no data: with a fingerprint, the cache key depends on the configuration alone, so a
    caller can skip loading the training set when the checkpoint is there.
    """
    key = cache_key(config, None, fingerprint=fingerprint)
    return load_cached(load_checkpoint, checkpoint_path(cache_dir, config, key), key,
                       torch.device(device))


def train_classifier(config: TrainConfig, train, test=None, *,
                     cache_dir: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", progress: bool = True,
                     fingerprint: str | None = None) -> tuple[nn.Module, dict]:
    """Trains the classifier ``config`` describes, or loads it from the cache.

    Args:
        config (TrainConfig): the configuration.
        train: ``(images Tensor[N, 3, H, W], labels LongTensor[N])`` (or a mapping with 'images'
            and 'labels'); images uint8 (0–255) or float in [0, 1].
        test: the same for a test set, evaluated after every epoch; or None.
        cache_dir (path, optional): folder of the checkpoint cache; None disables caching.
        device (str or torch.device, optional): where to train. Default: "cpu".
        progress (bool, optional): show a tqdm progress bar. Default: True.
        fingerprint (str, optional): identifies the data in the cache key instead of hashing the
            tensors (see :func:`cache_key`).

    Returns:
        tuple: ``(model, history)``: the model in eval mode on ``device``; ``history`` maps
        ``"epoch"``, ``"train_loss"``, ``"train_acc"``, ``"test_acc"`` (NaN without a test set),
        ``"lr"`` and ``"seconds"`` (per epoch) to lists with one value per epoch. A cache hit
        returns the stored history unchanged.

    Examples::

        >>> cfg = TrainConfig(epochs=20, width=32)
        >>> model, history = train_classifier(cfg, (x_train, y_train), (x_test, y_test),
        ...                                   cache_dir=".cache/models")
        >>> history["test_acc"][-1]
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    images, labels = _as_data(train, "train")
    test = _as_data(test, "test") if test is not None else None
    _check_image_size(config.image_size, images, test)
    max_label = int(labels.max()) if test is None else max(int(labels.max()), int(test[1].max()))
    num_classes = config.num_classes if config.num_classes is not None else max(max_label + 1, 2)
    if max_label >= num_classes:
        raise ValueError(f"labels: expected class indices in [0, {num_classes - 1}] "
                         f"(config.num_classes), got up to {max_label}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {progress!r}")
    device = torch.device(device)
    # config.seed seeds initialisation and dropout; shuffling and augmentation use their own
    # generator.
    return _cached_fit(
        config, cache_dir, device,
        key=lambda: cache_key(config, (images, labels), test, fingerprint=fingerprint),
        path_of=lambda key: checkpoint_path(cache_dir, config, key),
        load=load_checkpoint, save=save_checkpoint,
        fit=lambda: _fit(config, images, labels, test, num_classes, device, progress))


def _cached_fit(config, cache_dir: str | os.PathLike | None, device: torch.device, *,
                key: Callable[[], str], path_of: Callable[[str], Path], load: Callable,
                save: Callable, fit: Callable[[], tuple[nn.Module, dict]],
                what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """``fit()`` run under ``config.seed``, or its result from the checkpoint cache.

    With a ``cache_dir``, the checkpoint ``path_of(key())`` is loaded with ``load(path, device=,
    key=)`` if it is there and intact (a damaged one warns, naming ``what``, and is retrained);
    a fresh result is stored with ``save(path, model, config, history, key=)``. ``fit`` runs in
    a forked global (and CUDA) RNG seeded with ``config.seed``: the caller's RNG is restored.
    """
    path = None
    if cache_dir is not None:
        key_ = key()
        path = path_of(key_)
        sweep_tmp(path.parent)  # checkpoints a killed trainer was writing
        cached = load_cached(load, path, key_, device, what, stacklevel=4)  # the trainer's caller
        if cached is not None:
            return cached
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(config.seed)
        model, history = fit()
    if path is not None:
        save(path, model, config, history, key=key_)
    return model, history
