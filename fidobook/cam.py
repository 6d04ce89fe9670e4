"""Where a classifier looks: Grad-CAM (through Captum) and the spatial attention of its CBAM blocks.

Both return one map per image, ``Tensor[N, H, W]`` at the image's resolution with values in
[0, 1] (higher = more attention), so they can be compared with FIDO's masks, with ground-truth
segmentations (Over-MAP) and with each other.

- :func:`grad_cam` is Captum's :class:`~captum.attr.LayerGradCam` (Selvaraju et al., 2017) on a
  chosen layer: the layer's activations ``A_k`` weighted by the spatial mean of the target logit's
  gradient, ``ReLU(Σ_k mean_ij(∂z_c/∂A_k,ij) · A_k)``. It is not re-implemented here, so the book
  compares FIDO with the implementation everyone else uses. The map is then upsampled bilinearly to
  the image and min-max normalised per image.
- :func:`cbam_attention` reads the spatial gates ``M_s`` of the model's CBAM blocks (Woo et al.,
  2018) during one forward pass; :func:`attention_maps` is the context manager that hooks them and
  removes every hook on exit, also when the forward pass raises.

Both run the model in eval mode with its parameters frozen and leave every module's mode and
every parameter's ``requires_grad`` as they were (:func:`fidobook.fido.frozen_model`).

Both check the images against the model (:func:`fidobook._checks.check_model_inputs`): the
channels it declares (``in_channels``), the dtype of its parameters (no silent cast), values in
[0, 1]; images that require grad are detached. A map that is not finite (the model's output or
gradient is NaN or inf) raises :class:`FloatingPointError` naming the images, as a FIDO fit does,
instead of being normalised into a plausible picture.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .fido import frozen_model
from .metrics import normalize_maps
from .models.cbam import CBAM

__all__ = ["grad_cam", "cbam_attention", "attention_maps", "CAM_REDUCTIONS"]

#: How :func:`cbam_attention` combines the maps of several CBAM blocks.
CAM_REDUCTIONS = ("mean", "max", "last", "first")


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling ``Tensor[N, 1, h, w]`` → ``Tensor[N, H, W]`` (as Captum's interpolate)."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps[:, 0]


def _check_finite_maps(maps: Tensor, start: int, what: str) -> None:
    """Raises if a batch of raw maps ``Tensor[B, ...]`` (images ``start, start + 1, …``) is not finite."""
    bad = ~torch.isfinite(maps.flatten(1)).all(1)
    if bool(bad.any()):
        images = (torch.nonzero(bad.cpu()).flatten() + start).tolist()
        raise FloatingPointError(f"{what} is not finite (NaN or inf) for images {images}")


def _check_batch_size(batch_size, n: int) -> int:
    if batch_size is None:
        return n
    return _checks.check_positive_int(batch_size, "batch_size")


def _is_submodule(model: nn.Module, layer: nn.Module) -> bool:
    return any(m is layer for m in model.modules())


@torch.no_grad()
def _predictions(model: nn.Module, images: Tensor, batch_size: int) -> tuple[Tensor, int]:
    """Argmax classes ``LongTensor[N]`` and the number of classes K (model already frozen)."""
    preds, k = [], None
    for a in range(0, images.shape[0], batch_size):
        x = images[a:a + batch_size]
        logits = _checks.check_logits_output(model(x), x.shape[0])
        preds.append(logits.argmax(1))
        k = logits.shape[1]
    return torch.cat(preds), k


def grad_cam(model: nn.Module, images: Tensor, target=None, *, layer: nn.Module | None = None,
             batch_size: int | None = None) -> Tensor:
    """Grad-CAM maps of ``model`` for ``target``, via Captum's ``LayerGradCam``.

    Captum's map ``ReLU(Σ_k α_k A_k)`` (``α_k`` the spatial mean of the target logit's gradient
    with respect to channel ``k`` of ``layer``'s output ``A``) is upsampled bilinearly to the image
    (``align_corners=False``) and min-max normalised per image; a map that is zero everywhere (the
    layer has no positive evidence for the class) stays zero.

    Args:
        model (nn.Module): a classifier, images in [0, 1] → logits ``Tensor[N, K]``, on the images'
            device.
        images (Tensor[N, C, H, W]): float images in [0, 1], with the channels the model declares
            (``in_channels``) and its parameters' dtype; images that require grad are detached.
        target (int, sequence of int, LongTensor[N] or None, optional): the class to explain per
            image; ``None`` explains the model's prediction. Default: None.
        layer (nn.Module, optional): a submodule of ``model`` whose output is ``Tensor[N, C', h, w]``.
            Default: ``model.cam_layer`` (the last convolutional block of fidobook's classifiers).
        batch_size (int, optional): images per forward/backward pass; None: all at once. The maps
            do not depend on it (eval mode: no batch statistics). Default: None.

    Returns:
        Tensor[N, H, W]: maps in [0, 1] on the images' device, detached.

    Raises:
        TypeError/ValueError: bad images, target, layer or batch size (the message names it).
        FloatingPointError: the Grad-CAM map of an image is not finite (the model's output or
            its gradient at ``layer`` is NaN or inf); the message names the images.

    Examples::

        >>> maps = grad_cam(model, images)             # (N, H, W), the predicted classes
        >>> maps = grad_cam(model, images, labels, layer=model.stages[1])
    """
    from captum.attr import LayerAttribution, LayerGradCam

    images = _checks.check_model_inputs(images, model)
    n, _, height, width = images.shape
    batch_size = _check_batch_size(batch_size, n)
    if layer is None:
        layer = getattr(model, "cam_layer", None)
        if layer is None:
            raise ValueError(f"layer: expected a module of the model; {type(model).__name__} has no "
                             f"cam_layer attribute, so pass layer=... explicitly")
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer: expected an nn.Module, got {type(layer).__name__}")
    if not _is_submodule(model, layer):
        raise ValueError(f"layer: expected a submodule of the model, got a {type(layer).__name__} "
                         f"that is not part of {type(model).__name__}")

    maps = []
    with frozen_model(model):
        # Targets are checked against the model's K before any backward pass is spent; K comes
        # from ``model.num_classes`` (fidobook's classifiers) or from one forward pass.
        num_classes = getattr(model, "num_classes", None)
        if target is None or not isinstance(num_classes, int):
            predictions, num_classes = _predictions(model, images, batch_size)
        if target is None:
            targets = predictions
        else:
            targets = _checks.check_targets(target, n, num_classes, device=images.device)
        explainer = LayerGradCam(model, layer)
        for a in range(0, n, batch_size):
            x, t = images[a:a + batch_size], targets[a:a + batch_size]
            # Captum enables gradients itself and makes the layer output require them, so this
            # works with frozen parameters and inside a caller's torch.no_grad().
            raw = explainer.attribute(x, target=t, relu_attributions=True)  # (B, 1, h, w)
            if raw.ndim != 4 or raw.shape[1] != 1:
                raise ValueError(f"layer: expected an output Tensor[N, C, h, w], Grad-CAM gave "
                                 f"shape {tuple(raw.shape)}")
            _check_finite_maps(raw, a, f"grad_cam: the Grad-CAM map of {type(model).__name__} at "
                                       f"layer {type(layer).__name__} (its output or the target "
                                       f"logit's gradient)")
            up = LayerAttribution.interpolate(raw.detach(), (height, width),
                                              interpolate_mode="bilinear")  # (B, 1, H, W)
            maps.append(up[:, 0])
    return normalize_maps(torch.cat(maps).to(images.dtype))


@contextlib.contextmanager
def attention_maps(model: nn.Module, modules: Sequence[CBAM] | None = None
                   ) -> Iterator[list[list[Tensor]]]:
    """Records the spatial attention of CBAM blocks during the forward passes inside the block.

    A forward hook on each block's spatial gate (whose output *is* the map ``M_s``) appends the
    detached map to a list. Every hook is removed on exit, also when the body raises; exceptions
    are never swallowed.

    Args:
        model (nn.Module): the model (used for the default ``modules``).
        modules (sequence of CBAM, optional): the blocks to read. Default: ``model.cbam_modules``.

    Yields:
        list of list of Tensor: ``captured[i]`` holds, for block ``i``, one ``Tensor[B, 1, h_i, w_i]``
        per forward pass in order (values in (0, 1)).

    Raises:
        ValueError: no CBAM block to read.

    Examples::

        >>> with attention_maps(model) as captured:
        ...     model(images)
        >>> captured[-1][0].shape   # last block, first pass
        torch.Size([N, 1, 8, 8])
    """
    if modules is None:
        modules = list(getattr(model, "cbam_modules", None) or [])
    modules = list(modules)
    if not modules:
        raise ValueError(f"model: expected CBAM blocks (model.cbam_modules or modules=...), "
                         f"got none in {type(model).__name__}")
    for i, m in enumerate(modules):
        if not isinstance(m, CBAM):
            raise TypeError(f"modules[{i}]: expected a CBAM block, got {type(m).__name__}")
    captured: list[list[Tensor]] = [[] for _ in modules]
    handles = []
    try:
        for store, m in zip(captured, modules):
            # Default argument binds this block's list (a closure would see the loop's last one).
            handles.append(m.spatial.register_forward_hook(
                lambda _mod, _inp, out, store=store: store.append(out.detach())))
        yield captured
    finally:
        for h in handles:
            h.remove()


def cbam_attention(model: nn.Module, images: Tensor, *, reduce: str = "mean",
                   batch_size: int | None = None) -> Tensor:
    """The spatial attention of the model's CBAM blocks, upsampled to the image, in [0, 1].

    Each block's map ``M_s`` (``Tensor[N, 1, h_i, w_i]``, from one eval-mode forward pass) is
    upsampled bilinearly to the image; the maps are combined by ``reduce`` and the result is
    min-max normalised per image (a constant map becomes zeros). The gate saturates rarely, so the
    normalisation matters: the raw gates of a block sit in a narrow band around their mean.

    Args:
        model (nn.Module): a classifier with ``cbam_modules`` (fidobook's ``SmallCNN`` and CBAM
            ResNets), on the images' device.
        images (Tensor[N, C, H, W]): float images in [0, 1], with the channels the model declares
            (``in_channels``) and its parameters' dtype; images that require grad are detached.
        reduce (str, optional): ``"mean"`` of the upsampled maps of all blocks, their ``"max"``,
            or only the ``"last"`` (deepest) or ``"first"`` block's. Default: ``"mean"``.
        batch_size (int, optional): images per forward pass; None: all at once. Default: None.

    Returns:
        Tensor[N, H, W]: maps in [0, 1] on the images' device.

    Raises:
        ValueError: the model has no CBAM block, or a bad argument (the message names it).
        FloatingPointError: a block's attention map is not finite (the message names the
            images).
    """
    images = _checks.check_model_inputs(images, model)
    _checks.check_choice(reduce, "reduce", CAM_REDUCTIONS)
    n, _, height, width = images.shape
    batch_size = _check_batch_size(batch_size, n)
    modules = list(getattr(model, "cbam_modules", None) or [])
    if reduce == "last":
        modules = modules[-1:]
    elif reduce == "first":
        modules = modules[:1]
    out = []
    with frozen_model(model), torch.no_grad(), attention_maps(model, modules) as captured:
        for a in range(0, n, batch_size):
            model(images[a:a + batch_size])
            # pop(): only this batch's maps are kept alive.
            ups = torch.stack([_upsample(store.pop(), (height, width)) for store in captured])  # (M, B, H, W)
            _check_finite_maps(ups.transpose(0, 1), a, f"cbam_attention: the spatial attention of "
                                                       f"{type(model).__name__}'s CBAM blocks")
            out.append(ups.amax(0) if reduce == "max" else ups.mean(0))
    return normalize_maps(torch.cat(out).to(images.dtype))
