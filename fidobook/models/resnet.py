"""torchvision ResNets with normalisation inside, optional CBAM, and weights from a local file.

Nothing is downloaded: the network is built with ``weights=None`` and, if asked, loaded from a file
on disk with ``torch.load(..., weights_only=True)``. Parameter names are torchvision's (``conv1``,
``layer1.0.conv1``, ..., ``fc``), so a state dict saved from ``torchvision.models.resnet18()`` loads
into ``resnet("resnet18", 1000)`` unchanged.

CBAM sits where Woo et al. put it: on the residual branch of every block, after the block's last
batch norm and before the addition, so the identity path is never gated. (Gating the main path
after each stage multiplies the signal by up to 1/4 per gate at initialisation; on the small CNN
that cost 20 points of accuracy.) The CBAM parameters appear as ``layer1.0.bn2.cbam.*``
(``bn3`` in bottleneck blocks), next to torchvision's unchanged keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple, Sequence

import torch
import torchvision
from torch import Tensor, nn

from .._checks import check_choice, check_positive_float, check_positive_int
from .cbam import CBAM
from .cnn import Normalize

__all__ = ["RESNETS", "ResNet", "resnet", "load_weights", "LoadReport", "read_state_dict",
           "load_state", "describe_state_dict"]

#: Names accepted by :func:`resnet`.
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_STEMS = ("imagenet", "small")


class _BatchNormCBAM(nn.BatchNorm2d):
    """A residual block's last batch norm followed by CBAM (keeps the batch norm's parameter names).

    Shapes: input and output ``Tensor[N, C, h, w]``.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.cbam = CBAM(bn.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.cbam(super().forward(x))


class ResNet(nn.Module):
    """A torchvision ResNet with normalisation inside and optional CBAM after each residual stage.

    Build it with :func:`resnet`.

    Attributes:
        cam_layer (nn.Module): ``layer4``, torchvision's usual Grad-CAM layer.
        cbam_modules (list of CBAM): one per residual block, first to last (8 in ResNet-18), or
            empty; ``cbam_modules[-1]`` is the last block's, at the resolution of ``layer4``.
        num_features (int): channels of ``layer4``'s output (512 for ResNet-18/34, 2048 above).

    Shapes: input ``Tensor[N, 3, H, W]`` in [0, 1]; output logits ``Tensor[N, K]``.
    """

    def __init__(self, backbone: torchvision.models.ResNet, cbam: bool, dropout: float):
        super().__init__()
        self.normalize = Normalize()
        #: Input channels: the public entry points check images against it.
        self.in_channels = 3
        # Re-use torchvision's modules under their own names, so their state dicts load unchanged.
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(backbone, name))
        self.num_features = backbone.fc.in_features
        if cbam:
            for i in range(1, 5):
                for block in getattr(self, f"layer{i}"):
                    # The residual branch ends in bn2 (BasicBlock) or bn3 (Bottleneck).
                    name = "bn3" if hasattr(block, "bn3") else "bn2"
                    setattr(block, name, _BatchNormCBAM(getattr(block, name)))
        self.avgpool = backbone.avgpool
        self.dropout = nn.Dropout(dropout)
        self.fc = backbone.fc
        self.num_classes = backbone.fc.out_features

    @property
    def cam_layer(self) -> nn.Module:
        return self.layer4

    @property
    def cbam_modules(self) -> list[CBAM]:
        return [m for m in self.modules() if isinstance(m, CBAM)]

    def features(self, x: Tensor) -> Tensor:
        """Args: x (Tensor[N, 3, H, W]) in [0, 1]. Returns: Tensor[N, num_features, h, w]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        f = self.avgpool(self.features(x)).flatten(1)  # (N, num_features)
        return self.fc(self.dropout(f))  # (N, K)


def resnet(name: str = "resnet18", num_classes: int = 1000, *, cbam: bool = False,
           weights_path: str | os.PathLike | None = None, dropout: float = 0.0,
           stem: str = "imagenet", strict: bool = True) -> ResNet:
    """A torchvision ResNet (untrained, or with weights from a local file).

    Args:
        name (str, optional): one of :data:`RESNETS`. Default: ``"resnet18"``.
        num_classes (int, optional): K, outputs of the linear head. Default: 1000.
        cbam (bool, optional): CBAM on the residual branch of every block. Default: False.
        weights_path (path, optional): a file holding a state dict (or a dict with a
            ``"state_dict"`` entry, such as a fidobook training checkpoint); loaded with
            ``weights_only=True``. Default: None (random initialisation).
        dropout (float, optional): dropout before the head; > 0 enables MC dropout. Default: 0.
        stem (str, optional): ``"imagenet"`` (7×7/2 conv + max-pool, torchvision's) or ``"small"``
            (3×3/1 conv, no max-pool: keeps 4× more resolution for 32–96 px images; its ``conv1``
            no longer fits ImageNet weights). Default: ``"imagenet"``.
        strict (bool, optional): passed to :func:`load_weights`. Default: True.

    Returns:
        ResNet: in training mode, on the CPU.

    Raises:
        FileNotFoundError: ``weights_path`` does not exist.
        ValueError: unknown ``name``/``stem``, or the file's keys or shapes do not fit the model
            (the message names the file and the keys).
    """
    check_choice(name, "name", RESNETS)
    check_choice(stem, "stem", _STEMS)
    check_positive_int(num_classes, "num_classes", minimum=2)
    check_positive_float(dropout, "dropout", allow_zero=True)
    if dropout >= 1:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")
    backbone = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if stem == "small":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        backbone.maxpool = nn.Identity()
    model = ResNet(backbone, cbam=cbam, dropout=dropout)
    if weights_path is not None:
        load_weights(model, weights_path, strict=strict)
    return model


class LoadReport(NamedTuple):
    """What :func:`load_weights` did: keys of the model left as they were, and keys of the file skipped."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def _first(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


def read_state_dict(path: str | os.PathLike, *, name: str = "weights_path") -> dict[str, Tensor]:
    """A state dict from a local file, loaded with ``torch.load(..., weights_only=True)``.

    Args:
        path (path): a ``.pt``/``.pth`` file holding a state dict, or a dict with a ``"state_dict"``
            entry (fidobook checkpoints). A ``"module."`` prefix (DataParallel/DDP) is stripped.
        name (str, optional): the argument's name in messages. Default: ``"weights_path"``.

    Returns:
        dict[str, Tensor]: on the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a ``torch.save`` file holding tensors only, or holds no state
            dict (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: expected an existing file, got {path!r} (not found)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable file"
        raise ValueError(f"{name} {path!r}: expected a file saved with torch.save holding "
                         f"tensors only, could not load it: {type(e).__name__}: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, Mapping) else (
            "an empty dict" if not obj else "a dict whose entries are not all str -> Tensor")
        raise ValueError(f"{name} {path!r}: expected a state dict (str -> Tensor), got {what}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# torchvision's ResNets: blocks per stage, and whether the blocks are bottlenecks.
_LAYOUTS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
            "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
            "resnet152": ((3, 8, 36, 3), True)}


def describe_state_dict(state: Mapping[str, Tensor]) -> dict:
    """What a ResNet state dict looks like, for messages: ``{"arch": name or None,
    "cbam": bool, "num_classes": int or None}`` (``arch`` from the blocks per stage and the block
    type, ``num_classes`` from ``fc.weight``)."""
    blocks = []
    for i in range(1, 5):
        ids = {k.split(".")[1] for k in state if k.startswith(f"layer{i}.") and k.count(".") >= 2}
        blocks.append(len(ids))
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    arch = next((a for a, (layout, b) in _LAYOUTS.items()
                 if layout == tuple(blocks) and b == bottleneck), None)
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.ndim == 2 else None
    return {"arch": arch, "cbam": any(".cbam." in k for k in state), "num_classes": num_classes}


def load_state(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "state dict",
               strict: bool = True, name: str = "weights_path") -> LoadReport:
    """Loads ``state`` (e.g. from :func:`read_state_dict`) into ``model``, with errors naming
    ``source`` (the file) and the keys.

    Args:
        model (nn.Module): the model to fill in place.
        state (dict[str, Tensor]): the state dict.
        source (str, optional): where it came from, for messages. Default: "state dict".
        strict (bool, optional): if True, any missing, unexpected or mis-shaped key is an error; if
            False, matching keys are loaded and the others reported. Default: True.
        name (str, optional): the argument's name in messages. Default: ``"weights_path"``.

    Returns:
        LoadReport: missing, unexpected and shape-mismatched keys (all empty when strict).

    Raises:
        ValueError: (strict) keys or shapes differ; for a ResNet the message also says which
            architecture and CBAM setting the state dict looks like when they differ.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        parts = [f"{name} {source!r}: state dict does not fit {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_first(unexpected)}")
        if mismatched:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in mismatched[:8]]
            parts.append(f"shape mismatch for {len(mismatched)} keys [{'; '.join(shapes)}]")
        hint = ""
        if isinstance(model, ResNet):
            file, ours = describe_state_dict(state), describe_state_dict(own)
            if file["arch"] != ours["arch"] or file["cbam"] != ours["cbam"]:
                looks = file["arch"] or "no torchvision ResNet"
                hint = (f" (the file looks like {looks} {'with' if file['cbam'] else 'without'} "
                        f"CBAM, the model is {ours['arch']} {'with' if ours['cbam'] else 'without'} CBAM)")
        raise ValueError("; ".join(parts) + hint + " (strict=False loads the matching keys only)")
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(usable, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected, mismatched=mismatched)


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                 name: str = "weights_path") -> LoadReport:
    """Loads a state dict from a local file into ``model``, with errors that name file and keys.

    :func:`read_state_dict` then :func:`load_state`.

    Args:
        model (nn.Module): the model to fill in place.
        path (path): a ``.pt``/``.pth`` file holding a state dict, or a dict with a ``"state_dict"``
            entry (fidobook checkpoints). A ``"module."`` prefix (DataParallel/DDP) is stripped.
        strict (bool, optional): if True, any missing, unexpected or mis-shaped key is an error; if
            False, matching keys are loaded and the others reported. Default: True.
        name (str, optional): the argument's name in messages. Default: ``"weights_path"``.

    Returns:
        LoadReport: missing, unexpected and shape-mismatched keys (all empty when strict).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable state dict, or (strict) keys or shapes differ.
    """
    state = read_state_dict(path, name=name)
    return load_state(model, state, source=os.fspath(path), strict=strict, name=name)
