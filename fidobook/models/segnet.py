"""A small segmentation network for the birds' object masks, and its cached training.

:class:`SegNet` is a U-Net-shaped encoder–decoder (Ronneberger et al., 2015) sized for CPU
training: conv-BN-ReLU blocks, ``levels`` stride-2 downsamplings that double the width, and a
decoder that upsamples bilinearly, concatenates the encoder's feature map of the same resolution
(a skip connection: the decoder gets back the detail the downsampling lost) and mixes with one
conv-BN-ReLU block. Like every fidobook model it takes images in [0, 1] and normalises inside.

:func:`train_segmenter` trains it with binary cross-entropy (plus, optionally, a soft Dice term)
with Adam on in-memory images and masks, and caches the checkpoint the way
:func:`fidobook.models.train_classifier` does: keyed by a SHA-256 of the configuration and a
fingerprint of the data, written atomically, verified by a digest of its tensors on load (a
damaged file is retrained, never used). The pieces are the classifier's
(:func:`~fidobook.models.train.data_fingerprint`, the verified checkpoints of :mod:`fidobook._io`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_float, check_positive_int
from .._io import load_cached, load_verified, restore_model, save_verified
from .._maps import as_masks as _as_masks
from .._maps import iou as _iou
from .._state import restored_modes
from .cnn import Normalize
from .cnn import _conv_bn_relu as _block
from .train import (_cached_fit, _check_image_size, _check_image_tensor, _config_from_dict,
                    _data_key, _model_device, _to_float, _unpack_data, data_fingerprint)

__all__ = ["SegNet", "SegConfig", "train_segmenter", "segmenter_cache_key", "save_segmenter",
           "load_segmenter", "load_cached_segmenter", "segmenter_path", "predict_masks", "mask_iou",
           "as_masks"]

# Bump when the checkpoint layout or the training procedure changes: old cache entries then miss.
_FORMAT = 1
# The metadata a checkpoint's digest covers.
_META = ("format", "kind", "key", "config", "history")


class SegNet(nn.Module):
    """Small encoder–decoder for binary (object vs background) segmentation.

    Layout for ``width=w`` and ``levels=L`` (``L = 3`` shown; sizes for a 64 px image)::

        Normalize → conv (w/2)                          64 px  ─────────────┐ skip 0
                  → conv /2 (w), conv (w)               32 px  ──────────┐  │ skip 1
                  → conv /2 (2w), conv (2w)             16 px  ───────┐  │  │ skip 2
                  → conv /2 (4w), conv (4w)              8 px         │  │  │
                  → up ×2, cat skip 2, conv (2w)        16 px  ◄──────┘  │  │
                  → up ×2, cat skip 1, conv (w)         32 px  ◄─────────┘  │
                  → up ×2, cat skip 0, conv (w/2)       64 px  ◄────────────┘
                  → conv 1×1 (1)                        logits

    Every conv is 3×3 → batch norm → ReLU; "up" is bilinear to the skip's size, so any image
    size works. The full-resolution stage is kept narrow (w/2 channels): it costs as much per
    channel as the rest together, and it is what puts the object's edge on the right pixel.

    Args:
        width (int, optional): channels at half resolution; they double at each level. Default: 16.
        levels (int, optional): stride-2 downsamplings. Default: 3.

    Shapes: input ``Tensor[N, 3, H, W]`` in [0, 1]; output logits ``Tensor[N, 1, H, W]``
    (``sigmoid`` gives the object probability).

    Examples::

        >>> net = SegNet(width=8)
        >>> net(torch.rand(2, 3, 48, 40)).shape
        torch.Size([2, 1, 48, 40])
    """

    def __init__(self, width: int = 16, levels: int = 3):
        super().__init__()
        check_positive_int(width, "width", minimum=2)
        check_positive_int(levels, "levels")
        self.width, self.levels = width, levels
        #: Input channels: the public entry points check images against it.
        self.in_channels = 3
        self.normalize = Normalize()
        half = width // 2
        self.stem = _block(3, half)
        chans = [half] + [width * 2 ** i for i in range(levels)]  # channels at each resolution
        self.down = nn.ModuleList(
            nn.Sequential(_block(chans[i], chans[i + 1], stride=2), _block(chans[i + 1], chans[i + 1]))
            for i in range(levels))
        # Decoder level i mixes the upsampled deeper map (chans[i+1]) with skip i (chans[i]).
        self.up = nn.ModuleList(_block(chans[i + 1] + chans[i], chans[i]) for i in range(levels))
        self.head = nn.Conv2d(half, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.stem(self.normalize(x))]  # [(N, w/2, H, W)]
        for down in self.down:
            skips.append(down(skips[-1]))  # (N, chans[i+1], H/2^(i+1), W/2^(i+1))
        y = skips.pop()  # the deepest map
        for i in reversed(range(self.levels)):
            skip = skips[i]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.up[i](torch.cat([y, skip], dim=1))  # (N, chans[i], ...)
        return self.head(y)  # (N, 1, H, W)

    def extra_repr(self) -> str:
        return f"width={self.width}, levels={self.levels}"


@dataclass(frozen=True)
class SegConfig:
    """Everything that determines a trained :class:`SegNet` (and its cache key).

    The defaults are those of the ``cpu`` profile (64 px birds, 10 000 training images).

    Attributes:
        width (int): SegNet width. Default: 16.
        levels (int): SegNet downsamplings. Default: 3.
        epochs (int): passes over the training set. Default: 3.
        batch_size (int): images per step. Default: 64.
        lr (float): Adam learning rate (cosine-annealed to 0 over the steps). Default: 3e-3.
        weight_decay (float): Adam's L2 weight decay. Default: 0.
        dice (float): weight of the soft Dice loss added to the BCE (0: BCE only). Default: 0.5.
        hflip (bool): random horizontal flips of image and mask together. Default: True.
        image_size (int or None): expected H = W of the training images (checked); None: any.
        channels_last (bool): channels-last memory format (faster convolutions on CPU). Default: True.
        seed (int): seeds initialisation, shuffling and flips. Default: 0.
    """

    width: int = 16
    levels: int = 3
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    dice: float = 0.5
    hflip: bool = True
    image_size: int | None = None
    channels_last: bool = True
    seed: int = 0

    def __post_init__(self):
        check_positive_int(self.width, "width", minimum=2)
        for name in ("levels", "epochs", "batch_size"):
            check_positive_int(getattr(self, name), name)
        if self.image_size is not None:
            check_positive_int(self.image_size, "image_size")
        check_positive_int(self.seed, "seed", minimum=0)
        check_positive_float(self.lr, "lr")
        check_positive_float(self.weight_decay, "weight_decay", allow_zero=True)
        check_positive_float(self.dice, "dice", allow_zero=True)
        for name in ("hflip", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """Plain-Python form (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "SegConfig":
        return _config_from_dict(cls, d)

    def build(self) -> SegNet:
        """The untrained network (initialised from the global RNG)."""
        return SegNet(width=self.width, levels=self.levels)


# ----------------------------------------------------------------------------------------------
# Masks and IoU


def as_masks(masks, name: str = "masks") -> Tensor:
    """Object masks in any of the book's forms → ``BoolTensor[N, H, W]``: the package's one rule.

    The same conversion as every other module (:func:`fidobook._maps.as_masks`):

    - ``bool``: as is;
    - integer: values 0/1 or 0/255, ``in ⇔ value ≠ 0`` (one rule for both); any other value —
      part labels, grey levels of a soft or resized mask — is an error naming the values;
    - float: values in [0, 1], ``in ⇔ value >= 0.5`` (exactly 0.5 is in).

    Args:
        masks (Tensor[N, H, W] or Tensor[N, 1, H, W]): masks.
        name (str, optional): the argument's name in error messages. Default: "masks".

    Returns:
        BoolTensor[N, H, W].
    """
    return _as_masks(masks, name)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Intersection over union of two sets of masks, per image: the package's one IoU.

    Args:
        pred (Tensor[N, H, W]): masks (any form :func:`as_masks` accepts).
        target (Tensor[N, H, W]): masks of the same shape.

    Returns:
        Tensor[N]: float64, ``|P ∩ T| / |P ∪ T|``; 0 when exactly one is empty, **NaN when both
        are empty** (undefined, as everywhere in the package, :func:`fidobook._maps.iou`:
        average with ``torch.nanmean`` and count what was left out).

    Example::

        >>> a = torch.tensor([[[True, True]], [[False, False]]])
        >>> mask_iou(a, torch.tensor([[[True, False]], [[False, False]]]))
        tensor([0.5000,    nan], dtype=torch.float64)
    """
    p, t = as_masks(pred, "pred"), as_masks(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"target: expected shape {tuple(p.shape)} (as pred), got {tuple(t.shape)}")
    return _iou(p, t.to(p.device))


# ----------------------------------------------------------------------------------------------
# Prediction


@torch.no_grad()
def _probs(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    out = []
    for a in range(0, images.shape[0], batch_size):
        x = _to_float(images[a:a + batch_size]).to(device)
        out.append(torch.sigmoid(model(x).float())[:, 0].cpu())
    return torch.cat(out)  # (N, H, W)


def predict_masks(model: nn.Module, images: Tensor, *, batch_size: int = 256,
                  device: str | torch.device | None = None) -> Tensor:
    """Object probabilities of a segmenter in eval mode, in batches (modes restored afterwards).

    Args:
        model (nn.Module): images ``Tensor[B, 3, H, W]`` in [0, 1] → logits ``Tensor[B, 1, H, W]``.
        images (Tensor[N, 3, H, W]): uint8 (0–255) or float in [0, 1].
        batch_size (int, optional): images per forward. Default: 256.
        device (str or torch.device, optional): where to run; default: the model's device.

    Returns:
        Tensor[N, H, W]: float32 probabilities on the CPU.
    """
    _check_image_tensor(images, "images")
    check_positive_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else _model_device(model)
    with restored_modes(model):
        model.eval()
        return _probs(model, images, batch_size, device)


# ----------------------------------------------------------------------------------------------
# Data and cache


def _as_data(data, name: str) -> tuple[Tensor, Tensor]:
    """``(images uint8/float Tensor[N, 3, H, W], BoolTensor[N, H, W])`` from a pair or a mapping."""
    images, masks = _unpack_data(data, name, (("images",), ("segmentations", "masks")),
                                 "(images, masks)")
    _check_image_tensor(images, f"{name} images")
    masks = as_masks(masks, f"{name} masks")
    if masks.shape != (images.shape[0],) + tuple(images.shape[-2:]):
        raise ValueError(f"{name} masks: expected shape {(images.shape[0],) + tuple(images.shape[-2:])} "
                         f"(one per image), got {tuple(masks.shape)}")
    return images, masks


def _fingerprint(images: Tensor, masks: Tensor) -> str:
    # Masks as uint8, hashed like images (subsampled when large), not as int64 labels.
    return data_fingerprint(images) + data_fingerprint(masks.to(torch.uint8))


def segmenter_cache_key(config: SegConfig, train, test=None, *, fingerprint: str | None = None) -> str:
    """The checkpoint-cache key: SHA-256 of the configuration and the data fingerprints.

    Args:
        config (SegConfig): the training configuration.
        train: ``(images, masks)``; ignored when ``fingerprint`` is given.
        test: ``(images, masks)`` or None (its IoU is in the stored history, so it is part of the
            key); ignored when ``fingerprint`` is given.
        fingerprint (str, optional): a caller-made identifier of the data used instead of hashing.

    Returns:
        str: 64 hex characters.
    """
    if not isinstance(config, SegConfig):
        raise TypeError(f"config: expected a SegConfig, got {type(config).__name__}")
    return _data_key({"kind": "segnet", "format": _FORMAT, "config": config.to_dict()},
                     lambda data, name: _fingerprint(*_as_data(data, name)), train, test, fingerprint)


def segmenter_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the segmenter checkpoint with cache key ``key`` lives in ``cache_dir``."""
    return Path(cache_dir) / f"segnet-{key[:24]}.pt"


def save_segmenter(path: str | os.PathLike, model: SegNet, config: SegConfig, history: Mapping, *,
                   key: str = "") -> None:
    """Writes a checkpoint atomically: state dict, config, history, a tensor digest, the cache key."""
    save_verified(path, model, {
        "format": _FORMAT, "kind": "segnet", "key": key, "config": config.to_dict(),
        "history": {k: [int(x) for x in v] if k == "epoch" else [float(x) for x in v]
                    for k, v in history.items()},
    })


def load_segmenter(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                   key: str | None = None) -> tuple[SegNet, SegConfig, dict]:
    """Loads and verifies a checkpoint written by :func:`save_segmenter`.

    Returns:
        tuple: ``(model in eval mode on device, SegConfig, history dict)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, damaged, of another kind or format, or for another key.
    """
    obj = load_verified(path, _META, format=_FORMAT, kind="segnet", key=key)
    config = SegConfig.from_dict(obj["config"])
    model = restore_model(config.build, obj["state_dict"], device, config.channels_last)
    return model, config, dict(obj["history"])


def load_cached_segmenter(config: SegConfig, cache_dir: str | os.PathLike, fingerprint: str, *,
                          device: str | torch.device = "cpu") -> tuple[SegNet, dict] | None:
    """The cached ``(model, history)`` for ``config`` and a data ``fingerprint``, or None (no data needed)."""
    key = segmenter_cache_key(config, None, fingerprint=fingerprint)
    return load_cached(load_segmenter, segmenter_path(cache_dir, key), key, torch.device(device),
                       "segmenter checkpoint")


# ----------------------------------------------------------------------------------------------
# Training


def _loss(logits: Tensor, target: Tensor, dice: float) -> Tensor:
    """BCE on the logits plus ``dice`` × soft Dice loss ``1 − 2|P·T| / (|P| + |T|)`` per image.

    BCE alone is dominated by the background (the birds cover ~14 % of the image); Dice scores
    the object's overlap directly, whatever its size.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if dice > 0:
        p = torch.sigmoid(logits).flatten(1)  # (B, H·W)
        t = target.flatten(1)
        soft = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)  # +1: empty masks score 0
        loss = loss + dice * soft.mean()
    return loss


def _fit(config: SegConfig, images: Tensor, masks: Tensor, test: tuple[Tensor, Tensor] | None,
         device: torch.device, progress: bool) -> tuple[SegNet, dict]:
    """The training loop proper (no caching). Call inside a forked, seeded RNG."""
    from tqdm.auto import tqdm

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = config.build().to(device).to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(config.seed)
    images, masks = images.to(device), masks.to(device)
    n = images.shape[0]
    batch_size = min(config.batch_size, n)
    # Drop the last partial batch: a batch of one breaks BN statistics.
    steps = max(1, n // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps)
    history = {"epoch": [], "train_loss": [], "test_iou": [], "seconds": []}
    bar = tqdm(total=config.epochs * steps, disable=not progress, unit="step", desc="train segnet")
    try:
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=generator)
            loss_sum, seen = 0.0, 0
            for step in range(steps):
                idx = perm[step * batch_size:(step + 1) * batch_size].to(device)
                x = _to_float(images[idx])  # (B, 3, H, W)
                y = masks[idx, None].float()  # (B, 1, H, W)
                if config.hflip:
                    # Image and mask flipped together.
                    flip = (torch.rand(len(idx), generator=generator) < 0.5).to(device)[:, None, None, None]
                    x, y = torch.where(flip, x.flip(-1), x), torch.where(flip, y.flip(-1), y)
                loss = _loss(model(x.contiguous(memory_format=memory_format)), y, config.dice)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach().double() * len(idx)  # on the device: no sync per step
                seen += len(idx)
                bar.update(1)
            test_iou = float("nan")
            if test is not None:
                model.eval()
                probs = _probs(model, test[0], 256, device)
                # The float mask rule (>= 0.5) and the one IoU; an image whose prediction and
                # truth are both empty has no IoU and is left out of the mean.
                test_iou = float(mask_iou(probs >= 0.5, test[1]).nanmean())
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(loss_sum) / seen)
            history["test_iou"].append(test_iou)
            history["seconds"].append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", iou=f"{test_iou:.3f}")
    finally:
        bar.close()
    return model.eval(), history


def train_segmenter(config: SegConfig, train, test=None, *,
                    cache_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu", progress: bool = False,
                    fingerprint: str | None = None) -> tuple[SegNet, dict]:
    """Trains the :class:`SegNet` ``config`` describes on object masks, or loads it from the cache.

    Loss: BCE on the logits plus ``config.dice`` × soft Dice; Adam with a cosine schedule;
    random horizontal flips. Every random draw comes from ``config.seed`` (the caller's RNG is
    forked and restored).

    Args:
        config (SegConfig): the configuration.
        train: ``(images Tensor[N, 3, H, W], masks Tensor[N, H, W])`` or a mapping with ``images``
            and ``segmentations`` (as :func:`fidobook.data.load_tensors` returns); images uint8 or
            float in [0, 1]; masks bool, uint8 (0/1 or 0/255) or float (≥ 0.5 = object), with or
            without a channel of 1.
        test: the same for a test set, scored (mean IoU at 0.5) after every epoch; or None.
        cache_dir (path, optional): folder of the checkpoint cache; None disables caching.
        device (str or torch.device, optional): where to train. Default: "cpu".
        progress (bool, optional): show a tqdm progress bar. Default: False.
        fingerprint (str, optional): identifies the data in the cache key instead of hashing.

    Returns:
        tuple: ``(model, history)``: the model in eval mode on ``device``; ``history`` maps
        ``"epoch"``, ``"train_loss"``, ``"test_iou"`` (NaN without a test set) and ``"seconds"`` to
        one value per epoch. A cache hit returns the stored history.
    """
    if not isinstance(config, SegConfig):
        raise TypeError(f"config: expected a SegConfig, got {type(config).__name__}")
    images, masks = _as_data(train, "train")
    test = _as_data(test, "test") if test is not None else None
    _check_image_size(config.image_size, images, test)
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {progress!r}")
    device = torch.device(device)
    # config.seed seeds initialisation; shuffling and flips use their own generator.
    return _cached_fit(
        config, cache_dir, device,
        key=lambda: segmenter_cache_key(config, (images, masks), test, fingerprint=fingerprint),
        path_of=lambda key: segmenter_path(cache_dir, key),
        load=load_segmenter, save=save_segmenter, what="segmenter checkpoint",
        fit=lambda: _fit(config, images, masks, test, device, progress))
