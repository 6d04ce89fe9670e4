"""The baselines FIDO is compared with, under FIDO's one signature: saliency, SmoothGrad,
integrated gradients, occlusion (all Captum) and Grad-CAM (Captum's ``LayerGradCam`` through
:func:`fidobook.cam.grad_cam`).

Each method is a class built from a classifier and its own settings (steps, window, samples ...)
with the signature of :meth:`fidobook.FIDO.attribute`::

    ig = IntegratedGradientsMap(model, steps=32)
    maps = ig.attribute(images, labels, max_batch=256)   # Tensor[N, 1, H, W] in [0, 1]

- ``inputs`` (Tensor[N, C, H, W]): images in [0, 1] for ``model``, checked by
  :func:`fidobook._checks.check_model_inputs` (channels, dtype, range; a graph is detached).
- ``target``: an int, a sequence of N ints, a ``LongTensor[N]``, or ``None`` (the model's
  prediction on each image).
- ``max_batch`` (int or None): the most model inputs (rows) in one forward pass, Captum's
  ``internal_batch_size`` idea. Rows are images × samples (SmoothGrad), × integration steps
  (integrated gradients) or × windows (occlusion). It bounds memory only: the maps do not depend
  on it (up to float rounding of sums taken in another order). None: as few passes as possible.

**From attributions to relevance maps.** Saliency, SmoothGrad, integrated gradients and occlusion
give one signed value per pixel and colour channel (:meth:`AttributionMap.raw`). A relevance map
needs one non-negative value per pixel: ``r_p = Σ_ch |a_ch,p|`` (a pixel whose change moves the
score in either direction matters). Grad-CAM's map is one non-negative value per pixel already.
Every map is then scaled by the package's one normalisation,
:func:`fidobook.metrics.normalize_maps` (per-image min–max; a constant map becomes zeros), so that
thresholded scores treat all methods, FIDO included, alike.

Every method runs the model in eval mode with frozen parameters and restores both
(:func:`fidobook.fido.frozen_model`); a map that is not finite raises ``FloatingPointError``
naming the images. :data:`ATTRIBUTIONS` maps a name to its class; :func:`get_attribution` builds
one by name.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import _checks
from .fido import frozen_model
from .infill import INFILLS, RANDOM_INFILLS
from .metrics import normalize_maps

__all__ = ["AttributionMap", "SaliencyMap", "SmoothGradMap", "IntegratedGradientsMap", "OcclusionMap",
           "GradCAMMap", "ATTRIBUTIONS", "get_attribution", "relevance_maps"]


def relevance_maps(attributions: Tensor) -> Tensor:
    """Signed attributions → relevance maps in [0, 1]: ``|a|`` summed over the channels, then
    :func:`fidobook.metrics.normalize_maps`.

    Args:
        attributions (Tensor[N, C, H, W]): e.g. :meth:`AttributionMap.raw`.

    Returns:
        Tensor[N, 1, H, W]
    """
    _checks.check_float(attributions, "attributions")
    if attributions.ndim != 4:
        raise ValueError(f"attributions: expected shape (N, C, H, W), got {tuple(attributions.shape)}")
    _checks.check_finite(attributions, "attributions")
    return normalize_maps(attributions.detach().abs().sum(1))[:, None]  # (N, 1, H, W)


def _check_max_batch(max_batch) -> int | None:
    if max_batch is None:
        return None
    return _checks.check_positive_int(max_batch, "max_batch")


def _check_baseline(baseline) -> str:
    deterministic = sorted(k for k in INFILLS if k not in RANDOM_INFILLS)
    if baseline in RANDOM_INFILLS:
        raise ValueError(f"baseline: expected a deterministic infill {deterministic} (a random one "
                         f"would make the map depend on the draw), got {baseline!r}")
    return _checks.check_choice(baseline, "baseline", deterministic)


def _leaf(x: Tensor) -> Tensor:
    """A copy of ``x`` that requires grad (Captum's gradient methods differentiate w.r.t. it)."""
    return x.detach().clone().requires_grad_(True)


class AttributionMap:
    """What every baseline shares: checks, targets, chunking, the relevance map.

    A subclass sets :attr:`name` (its key in :data:`ATTRIBUTIONS`) and :attr:`label`, and
    implements ``_raw(inputs, targets, max_batch) -> Tensor[N, C', H, W]`` (inputs checked,
    targets resolved, the model frozen) and :meth:`passes`.

    Args:
        model (nn.Module): a classifier, images in [0, 1] → logits ``Tensor[N, K]``, on the
            images' device.
    """

    #: Key in :data:`ATTRIBUTIONS`.
    name: ClassVar[str] = ""
    #: Name for tables and figures.
    label: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    # -- the public signature --------------------------------------------------------------

    def attribute(self, inputs: Tensor, target=None, *, max_batch: int | None = None) -> Tensor:
        """One relevance map per image.

        Args:
            inputs (Tensor[N, C, H, W]): images in [0, 1], checked against the model.
            target (int, sequence, LongTensor[N] or None, optional): the class to explain per
                image; None: the model's prediction. Default: None.
            max_batch (int, optional): the most model inputs in one forward pass; the maps do
                not depend on it. Default: None (as few passes as possible).

        Returns:
            Tensor[N, 1, H, W]: in [0, 1], on the inputs' device, detached.

        Raises:
            TypeError/ValueError: bad inputs, target or max_batch (the message names it).
            FloatingPointError: a map is not finite (the model's output or gradient is NaN or
                inf); the message names the images.
        """
        return relevance_maps(self.raw(inputs, target, max_batch=max_batch))

    def raw(self, inputs: Tensor, target=None, *, max_batch: int | None = None) -> Tensor:
        """The method's own attributions, before the relevance map (signed, per channel).

        Args: as :meth:`attribute`.

        Returns:
            Tensor[N, C, H, W] (Grad-CAM: Tensor[N, 1, H, W], already in [0, 1]): detached.
        """
        inputs = _checks.check_model_inputs(inputs, self.model, "inputs")
        max_batch = _check_max_batch(max_batch)
        with frozen_model(self.model):
            targets = self._targets(inputs, target, max_batch)
            raw = self._raw(inputs, targets, max_batch).detach()
        bad = ~torch.isfinite(raw).flatten(1).all(1)
        if bool(bad.any()):
            images = torch.nonzero(bad.cpu()).flatten().tolist()
            raise FloatingPointError(f"{self.label}: the attributions of images {images} are not "
                                     f"finite (NaN or inf in the model's output or gradient)")
        return raw

    def passes(self, height: int, width: int) -> tuple[int, int]:
        """Forward and backward passes per map for an image of ``height × width`` (the cost
        measure of the chapter's table; the prediction for ``target=None`` not counted)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The method's settings as plain values (for tables and records)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({type(self.model).__name__}{', ' if args else ''}{args})"

    # -- workers ---------------------------------------------------------------------------

    def _targets(self, inputs: Tensor, target, max_batch: int | None) -> Tensor:
        """``LongTensor[N]`` on the inputs' device: ``target`` checked, or the argmax."""
        n = inputs.shape[0]
        chunk = max_batch or n
        if target is None:
            with torch.no_grad():
                return torch.cat([
                    _checks.check_logits_output(self.model(inputs[a:a + chunk]), len(inputs[a:a + chunk]))
                    .argmax(1) for a in range(0, n, chunk)])
        num_classes = getattr(self.model, "num_classes", None)
        if not isinstance(num_classes, int):
            with torch.no_grad():
                num_classes = _checks.check_logits_output(self.model(inputs[:1]), 1).shape[1]
        return _checks.check_targets(target, n, num_classes, device=inputs.device)

    def _raw(self, inputs: Tensor, targets: Tensor, max_batch: int | None) -> Tensor:
        raise NotImplementedError


class SaliencyMap(AttributionMap):
    """Saliency (Simonyan et al., 2014): ``|∂z_c/∂x|``, Captum's ``Saliency`` (``abs=True``).

    Rows per forward pass: images.
    """

    name = "saliency"
    label = "saliency"

    def _raw(self, inputs, targets, max_batch):
        from captum.attr import Saliency

        explainer, n = Saliency(self.model), inputs.shape[0]
        chunk = max_batch or n
        return torch.cat([explainer.attribute(_leaf(inputs[a:a + chunk]), target=targets[a:a + chunk],
                                              abs=True).detach()
                          for a in range(0, n, chunk)])  # (N, C, H, W)

    def passes(self, height, width):
        return 1, 1


class SmoothGradMap(AttributionMap):
    """SmoothGrad (Smilkov et al., 2017): the mean saliency ``|∂z_c/∂x|`` of ``samples`` noisy
    copies ``x + ε``, ``ε ~ N(0, sigma² I)`` on the [0, 1] pixel scale (as Captum's
    ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"``, ``abs=True``).

    The noise is drawn here, not by Captum (which draws from torch's global generator, in an
    order that depends on its batching): image ``i`` of a call draws its noise from its own
    generator, seeded from ``seed`` and ``i``, so its map depends on its image, ``seed`` and
    ``i`` only, not on the other images nor on ``max_batch``. Rows per forward pass: images ×
    samples, chunked along the samples.

    Args:
        model (nn.Module): the classifier.
        samples (int): noisy copies M per image. Default: 16.
        sigma (float): noise standard deviation. Default: 0.15.
        seed (int): seed of the noise. Default: 0.
    """

    name = "smoothgrad"
    label = "SmoothGrad"

    def __init__(self, model, samples: int = 16, sigma: float = 0.15, seed: int = 0):
        super().__init__(model)
        self.samples = _checks.check_positive_int(samples, "samples")
        self.sigma = _checks.check_positive_float(sigma, "sigma")
        self.seed = _checks.check_positive_int(seed, "seed", minimum=0)

    def settings(self):
        return {"samples": self.samples, "sigma": self.sigma, "seed": self.seed}

    def _raw(self, inputs, targets, max_batch):
        from captum.attr import Saliency

        n, s = inputs.shape[0], self.samples
        explainer = Saliency(self.model)
        # One seed per image from the call's seed (image i's noise does not depend on the chunks).
        seeds = torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(self.seed)).tolist()
        rows = max_batch or n * s
        per_chunk = max(1, rows // s)  # whole images per pass when S fits, else one image in parts
        total = torch.zeros_like(inputs)  # (N, C, H, W)
        for a in range(0, n, per_chunk):
            x, t = inputs[a:a + per_chunk], targets[a:a + per_chunk]
            g = len(x)
            noise = torch.stack([  # (g, S, C, H, W)
                torch.randn((s, *x.shape[1:]), device=inputs.device, dtype=inputs.dtype,
                            generator=torch.Generator(device=inputs.device).manual_seed(sd))
                for sd in seeds[a:a + g]])
            noisy = (x[:, None] + self.sigma * noise).flatten(0, 1)  # (g·S, C, H, W), image-major
            tt = t.repeat_interleave(s)  # (g·S,)
            for b in range(0, g * s, rows):
                grads = explainer.attribute(_leaf(noisy[b:b + rows]), target=tt[b:b + rows], abs=True)
                img = torch.arange(b, min(b + rows, g * s), device=inputs.device) // s + a
                total.index_add_(0, img, grads.detach())
        return total / s  # (N, C, H, W)

    def passes(self, height, width):
        return self.samples, self.samples


class IntegratedGradientsMap(AttributionMap):
    """Integrated gradients (Sundararajan et al., 2017), Captum's ``IntegratedGradients``:
    ``(x − x') ∫₀¹ ∂z_c/∂x (x' + α(x − x')) dα`` by a ``steps``-point Gauss–Legendre rule, from
    a baseline ``x'`` (an infill of :data:`fidobook.infill.INFILLS`; default the blurred image,
    the infill FIDO and the deletion curves use). Completeness: the attributions of an image sum
    to ``z_c(x) − z_c(x')`` up to the rule's error (:meth:`completeness`).

    Rows per forward pass: images × steps (Captum's ``internal_batch_size`` splits the steps).

    Args:
        model (nn.Module): the classifier.
        steps (int): integration points, at least 2. Default: 32.
        baseline (str): a deterministic infill. Default: ``"blur"``.
        method (str): Captum's rule (``gausslegendre``, ``riemann_trapezoid`` ...). Default:
            ``"gausslegendre"``.
    """

    name = "integrated_gradients"
    label = "integrated gradients"

    def __init__(self, model, steps: int = 32, baseline: str = "blur", method: str = "gausslegendre"):
        super().__init__(model)
        self.steps = _checks.check_positive_int(steps, "steps", minimum=2)  # Captum's rules need 2
        self.baseline = _check_baseline(baseline)
        self.method = _checks.check_choice(method, "method", ["gausslegendre", "riemann_left",
                                                              "riemann_right", "riemann_middle",
                                                              "riemann_trapezoid"])

    def settings(self):
        return {"steps": self.steps, "baseline": self.baseline, "method": self.method}

    def _raw(self, inputs, targets, max_batch):
        from captum.attr import IntegratedGradients

        n = inputs.shape[0]
        explainer = IntegratedGradients(self.model)
        chunk = min(n, max_batch or n)  # images per call; Captum chunks the steps to fit max_batch
        out = []
        for a in range(0, n, chunk):
            x = inputs[a:a + chunk]
            out.append(explainer.attribute(
                x, baselines=INFILLS[self.baseline](x), target=targets[a:a + chunk], n_steps=self.steps,
                method=self.method, internal_batch_size=max_batch).detach())
        return torch.cat(out)  # (N, C, H, W)

    def completeness(self, inputs: Tensor, target=None, *, max_batch: int | None = None,
                     attributions: Tensor | None = None) -> Tensor:
        """The relative completeness error per image,
        ``|Σ a − (z_c(x) − z_c(x'))| / |z_c(x) − z_c(x')|`` (the gap floored at 1e-6).

        Args:
            inputs, target, max_batch: as :meth:`attribute`.
            attributions (Tensor[N, C, H, W], optional): :meth:`raw` of these inputs and targets,
                if already at hand (saves the integration). Default: computed here.

        Returns:
            Tensor[N]: float64, on the CPU.
        """
        inputs = _checks.check_model_inputs(inputs, self.model, "inputs")
        if attributions is None:
            attributions = self.raw(inputs, target, max_batch=max_batch)
        elif not isinstance(attributions, Tensor) or attributions.shape != inputs.shape:
            raise ValueError(f"attributions: expected a Tensor of the inputs' shape {tuple(inputs.shape)}, "
                             f"got {getattr(attributions, 'shape', type(attributions).__name__)}")
        max_batch = _check_max_batch(max_batch)
        with frozen_model(self.model), torch.no_grad():
            targets = self._targets(inputs, target, max_batch)
            chunk = max_batch or len(inputs)
            gaps = []
            for a in range(0, len(inputs), chunk):
                x, t = inputs[a:a + chunk], targets[a:a + chunk, None]
                gaps.append((self.model(x) - self.model(INFILLS[self.baseline](x))).gather(1, t)[:, 0])
        gap = torch.cat(gaps).double().cpu()
        total = attributions.detach().double().sum((1, 2, 3)).cpu()
        return (total - gap).abs() / gap.abs().clamp_min(1e-6)

    def passes(self, height, width):
        return self.steps, self.steps


class OcclusionMap(AttributionMap):
    """Occlusion (Zeiler & Fergus, 2014), Captum's ``Occlusion``: a ``window × window`` patch
    (all channels) is replaced by the baseline at stride ``stride``; each pixel gets the mean drop
    of the target logit over the windows that cover it.

    Rows per forward pass: images × windows (Captum's ``perturbations_per_eval``).

    Args:
        model (nn.Module): the classifier.
        window (int, optional): side of the window, px. Default: an eighth of the image's shorter
            side (at least 2), so the cost does not grow with the image size.
        stride (int, optional): px between windows. Default: half the window (at least 1).
        baseline (str): a deterministic infill. Default: ``"blur"``.
    """

    name = "occlusion"
    label = "occlusion"

    def __init__(self, model, window: int | None = None, stride: int | None = None,
                 baseline: str = "blur"):
        super().__init__(model)
        self.window = None if window is None else _checks.check_positive_int(window, "window")
        self.stride = None if stride is None else _checks.check_positive_int(stride, "stride")
        self.baseline = _check_baseline(baseline)

    def settings(self):
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        """``(window, stride)`` in px for an image of ``height × width``."""
        window = self.window if self.window is not None else max(2, min(height, width) // 8)
        if window > min(height, width):
            raise ValueError(f"window: expected at most the image side {min(height, width)}, got {window}")
        stride = self.stride if self.stride is not None else max(1, window // 2)
        if stride > window:  # Captum's rule: windows may overlap, never leave gaps
            raise ValueError(f"stride: expected at most the window {window}, got {stride}")
        return window, stride

    def _raw(self, inputs, targets, max_batch):
        from captum.attr import Occlusion

        n, c, h, w = inputs.shape
        window, stride = self.geometry(h, w)
        explainer = Occlusion(self.model)
        chunk = min(n, max_batch or n)
        per_eval = max(1, max_batch // chunk) if max_batch else self._windows(h, w)
        out = []
        for a in range(0, n, chunk):
            x = inputs[a:a + chunk]
            out.append(explainer.attribute(
                x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                baselines=INFILLS[self.baseline](x), target=targets[a:a + chunk],
                perturbations_per_eval=per_eval).detach())
        return torch.cat(out)  # (N, C, H, W)

    def _windows(self, height: int, width: int) -> int:
        window, stride = self.geometry(height, width)
        # Captum's count: ceil((side - window) / stride) + 1 positions per axis.
        return (math.ceil((height - window) / stride) + 1) * (math.ceil((width - window) / stride) + 1)

    def passes(self, height, width):
        return self._windows(height, width) + 1, 0


class GradCAMMap(AttributionMap):
    """Grad-CAM (Selvaraju et al., 2017) through :func:`fidobook.cam.grad_cam` (Captum's
    ``LayerGradCam``): ``ReLU(Σ_k α_k A_k)`` at ``layer``, upsampled bilinearly to the image.

    Rows per forward pass: images.

    Args:
        model (nn.Module): the classifier.
        layer (nn.Module, optional): a submodule of ``model``. Default: ``model.cam_layer``.
    """

    name = "gradcam"
    label = "Grad-CAM"

    def __init__(self, model, layer: nn.Module | None = None):
        super().__init__(model)
        self.layer = layer

    def _raw(self, inputs, targets, max_batch):
        from .cam import grad_cam

        return grad_cam(self.model, inputs, targets, layer=self.layer, batch_size=max_batch)[:, None]

    def layer_size(self, inputs: Tensor) -> tuple[int, int]:
        """``(h, w)`` of the layer's output for ``inputs`` (the grain of the map), from one
        forward pass of the first image; the hook is removed also on error."""
        inputs = _checks.check_model_inputs(inputs, self.model, "inputs")
        layer = self.layer if self.layer is not None else getattr(self.model, "cam_layer", None)
        if not isinstance(layer, nn.Module):
            raise ValueError(f"layer: expected a module of the model; {type(self.model).__name__} has "
                             f"no cam_layer attribute, so pass layer=... explicitly")
        shapes = []
        handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
        try:
            with frozen_model(self.model), torch.no_grad():
                self.model(inputs[:1])
        finally:
            handle.remove()
        return shapes[-1][-2], shapes[-1][-1]

    def passes(self, height, width):
        return 1, 1


#: Name → class of the baselines, in the chapter's order.
ATTRIBUTIONS: dict[str, type[AttributionMap]] = {
    cls.name: cls for cls in (SaliencyMap, SmoothGradMap, IntegratedGradientsMap, OcclusionMap,
                              GradCAMMap)}


def get_attribution(name: str, model: nn.Module, **settings) -> AttributionMap:
    """The baseline ``name`` of :data:`ATTRIBUTIONS` for ``model`` with its ``settings``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        TypeError: a setting the class does not take.
    """
    _checks.check_choice(name, "name", list(ATTRIBUTIONS))
    return ATTRIBUTIONS[name](model, **settings)
