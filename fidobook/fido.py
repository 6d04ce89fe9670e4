"""FIDO: smallest sufficient (SSR) and smallest destroying (SDR) masks, learnt by gradient descent.

Chang et al. (ICLR 2019) explain a classifier's decision on an image ``x`` for class ``c`` by two
Bernoulli dropout masks over the pixels, relaxed with a concrete sampler so that their logits can
be learnt:

- **SSR** keeps the fewest pixels that still support ``c``: maximise the log-odds of ``c`` on
  ``keep ⊙ x + (1 − keep) ⊙ infill`` while an L1 penalty pushes the keep-rate down;
- **SDR** drops the fewest pixels that destroy ``c``: minimise the log-odds with an L1 penalty
  on the drop-rate.

Per image ``i`` and step, with ``S`` mask samples of each kind, the loss is (as in fido-pytorch,
which fits both masks jointly)::

    L_i = mean_s lo(x̃_sdr) − mean_s lo(x̃_ssr)
          + w_k · (λ_L1 · (Σ keep_ssr + Σ drop_sdr) / 2 + λ_TV · (TV(keep_ssr) + TV(drop_sdr)) / 2)

where ``lo = z_c − logsumexp_{j≠c} z_j`` is the log-odds of the target from the model's plain
logits, the regularisers act on the expected masks ``σ(θ)`` at mask resolution, and ``w_k`` ramps
linearly from 0 to 1 over ``warmup`` steps. The loss of the batch is the **sum** over images and
AdamW acts element-wise, so each image's masks are optimised independently of the others: with
the noise drawn from one generator per image, fitting N images together gives the masks of N
separate fits, at the cost of one forward pass per step.

Non-finite numbers stop a fit with a :class:`FloatingPointError` (not a ``ValueError``: the
arguments were fine, the arithmetic was not). The model's output is checked through what the fit
uses of it, the target's log-odds and probability per row: NaN or +inf anywhere in a row of
logits makes them NaN (a −inf logit of another class is harmless and allowed). The clean images
are checked before the first step. Then, per step and image, the masked inputs' log-odds and
probabilities (hence the loss) and the mask logits θ after the update are flagged on the device;
the flags are read after every step on a CPU and after every :data:`FINITE_CHECK_EVERY` steps
(and the last) elsewhere, so a GPU fit waits for no host synchronisation per step. The message
names what went non-finite (the model's output or θ), the first step at which it did and the
images. Flagging costs a few small tensor operations per step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _checks
from ._state import restored_modes
from .infill import INFILLS, RANDOM_INFILLS
from .samplers import SAMPLERS, MaskSampler, get_sampler, open_uniform

__all__ = ["FIDOConfig", "FIDOResult", "FIDO", "log_odds", "total_variation", "frozen_model"]

#: On devices other than the CPU, the finiteness flags of a fit are read (one host
#: synchronisation) after every this many steps and after the last; on a CPU after every step.
FINITE_CHECK_EVERY = 10


@dataclass(frozen=True)
class FIDOConfig:
    """Settings of a FIDO fit; the defaults are those of the reference code (cvjena/fido-pytorch).

    Attributes:
        iterations: optimisation steps.
        samples: mask samples per image, per mask kind, per step (``S``).
        lr: AdamW learning rate (the logits live on a logit scale, hence the large value).
        eps: AdamW's epsilon; 0.1 damps steps of pixels with tiny gradients.
        weight_decay: AdamW weight decay on the logits.
        l1: weight of the sparsity penalty (sum over mask pixels, averaged over SSR and SDR).
        tv: weight of the total-variation penalty.
        warmup: steps over which both penalties ramp linearly from 0 to full weight.
        mask_size: ``None`` learns a mask per image pixel; an int ``m`` or ``(h, w)`` learns a
            low-resolution mask that is upsampled bilinearly to the image.
        sampler: ``"cd"`` (concrete dropout) or ``"scd"`` (simplified concrete dropout).
        temperature: sampler temperature; ``None`` takes the sampler's default (CD 0.1, SCD 1.0).
        infill: name of the infill (see :data:`fidobook.infill.INFILLS`).
    """

    iterations: int = 100
    samples: int = 8
    lr: float = 10.0
    eps: float = 0.1
    weight_decay: float = 0.0
    l1: float = 1e-3
    tv: float = 1e-2
    warmup: int = 5
    mask_size: int | tuple[int, int] | None = None
    sampler: str = "scd"
    temperature: float | None = None
    infill: str = "blur"

    def __post_init__(self) -> None:
        _checks.check_positive_int(self.iterations, "iterations")
        _checks.check_positive_int(self.samples, "samples")
        _checks.check_positive_float(self.lr, "lr")
        _checks.check_positive_float(self.eps, "eps")
        _checks.check_positive_float(self.weight_decay, "weight_decay", allow_zero=True)
        _checks.check_positive_float(self.l1, "l1", allow_zero=True)
        _checks.check_positive_float(self.tv, "tv", allow_zero=True)
        _checks.check_positive_int(self.warmup, "warmup", minimum=0)
        _checks.check_choice(self.sampler, "sampler", list(SAMPLERS))
        _checks.check_choice(self.infill, "infill", list(INFILLS))
        if self.temperature is not None:
            _checks.check_positive_float(self.temperature, "temperature")
        if self.mask_size is not None:
            sizes = (self.mask_size,) if isinstance(self.mask_size, int) else self.mask_size
            if (
                not isinstance(sizes, (tuple, list))
                or len(sizes) not in (1, 2)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)
            ):
                raise ValueError(f"mask_size: expected None, an int >= 1 or a pair (h, w), got {self.mask_size!r}")

    def snapshot_steps(self, snapshots) -> tuple[int, ...]:
        """``snapshots`` checked against :attr:`iterations`: sorted, de-duplicated 1-based steps."""
        return _check_snapshots(snapshots, self.iterations)

    def make_sampler(self) -> MaskSampler:
        return get_sampler(self.sampler, self.temperature)


@dataclass
class FIDOResult:
    """What a fit returns. Maps are at image resolution; ``logits`` at mask resolution.

    Attributes:
        ssr (Tensor[N, H, W]): SSR keep probability (high = needed to keep the decision).
        sdr (Tensor[N, H, W]): SDR drop probability (high = removing it destroys the decision).
        joint (Tensor[N, H, W]): ``sqrt(ssr · sdr)``: high where a pixel is both sufficient and
            necessary.
        logits (Tensor[2, N, h, w]): the learnt keep logits θ, SSR first.
        targets (Tensor[N]): the explained classes.
        history (dict[str, Tensor[iterations, N]]): per step and image: ``loss``, ``ssr_prob`` and
            ``sdr_prob`` (target probability averaged over the mask samples), ``l1`` and ``tv``
            (unweighted penalties).
        config (FIDOConfig): the settings of the fit.
        model_evaluations (int): images passed through the model (a cost in forward passes).
        seconds (float): wall time of the fit.
        snapshots (dict[int, Tensor[2, N, h, w]]): the logits θ after the given (1-based)
            iterations, as requested with ``fit(..., snapshots=...)``; empty by default.
    """

    ssr: Tensor
    sdr: Tensor
    joint: Tensor
    logits: Tensor
    targets: Tensor
    history: dict[str, Tensor]
    config: FIDOConfig
    model_evaluations: int = 0
    seconds: float = 0.0
    snapshots: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    def from_logits(cls, logits: Tensor, size: tuple[int, int], *, targets: Tensor,
                    history: dict[str, Tensor], config: FIDOConfig, model_evaluations: int = 0,
                    seconds: float = 0.0, snapshots: dict[int, Tensor] | None = None) -> "FIDOResult":
        """A result from learnt logits, its maps computed exactly as :meth:`FIDO.fit` computes them.

        Args:
            logits (Tensor[2, N, h, w]): keep logits θ, SSR first.
            size (tuple): (H, W) of the images.
            targets, history, config, model_evaluations, seconds, snapshots: as the attributes.
        """
        ssr, sdr, joint = _maps(logits, tuple(size))
        return cls(ssr=ssr, sdr=sdr, joint=joint, logits=logits, targets=targets, history=history,
                   config=config, model_evaluations=int(model_evaluations), seconds=float(seconds),
                   snapshots=dict(snapshots or {}))

    @classmethod
    def concat(cls, results: "list[FIDOResult]") -> "FIDOResult":
        """The results of consecutive chunks of images as one result (same config and snapshots).

        Tensors are concatenated along the images (history along its image axis),
        ``model_evaluations`` and ``seconds`` are summed.
        """
        results = list(results)
        if not results:
            raise ValueError("results: expected at least one FIDOResult, got none")
        first = results[0]
        for r in results[1:]:
            if r.config != first.config or set(r.snapshots) != set(first.snapshots):
                raise ValueError("results: expected chunks of one fit (the same config and snapshots)")
        return cls(
            ssr=torch.cat([r.ssr for r in results]), sdr=torch.cat([r.sdr for r in results]),
            joint=torch.cat([r.joint for r in results]),
            logits=torch.cat([r.logits for r in results], dim=1),
            targets=torch.cat([r.targets for r in results]),
            history={k: torch.cat([r.history[k] for r in results], dim=1) for k in first.history},
            config=first.config,
            model_evaluations=sum(r.model_evaluations for r in results),
            seconds=sum(r.seconds for r in results),
            snapshots={k: torch.cat([r.snapshots[k] for r in results], dim=1) for k in first.snapshots})

    def maps_at(self, iteration: int) -> dict[str, Tensor]:
        """The SSR, SDR and joint maps after ``iteration`` steps, at image resolution.

        Computed from the logits recorded at that iteration exactly as the final maps are from
        the final logits (sigmoid, bilinear upsampling), so ``maps_at(config.iterations)`` equals
        ``ssr``, ``sdr`` and ``joint``.

        Args:
            iteration (int): a key of :attr:`snapshots`, or ``config.iterations`` (the end).

        Returns:
            dict: ``{"ssr", "sdr", "joint"}``, each ``Tensor[N, H, W]``.
        """
        if isinstance(iteration, bool) or not isinstance(iteration, int):
            raise TypeError(f"iteration: expected an int, got {iteration!r}")
        if iteration in self.snapshots:
            theta = self.snapshots[iteration]
        elif iteration == self.config.iterations:
            theta = self.logits
        else:
            raise ValueError(f"iteration: expected one of the recorded iterations "
                             f"{sorted(set(self.snapshots) | {self.config.iterations})}, got {iteration}")
        ssr, sdr, joint = _maps(theta, tuple(self.ssr.shape[-2:]))
        return {"ssr": ssr, "sdr": sdr, "joint": joint}

    def to(self, device) -> "FIDOResult":
        def move(v):
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: move(x) for k, x in v.items()}
            return v

        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


def log_odds(logits: Tensor, targets: Tensor) -> Tensor:
    """Log-odds ``log p_c − log(1 − p_c)`` of the target class, computed stably from logits.

    ``log(1 − p_c) = logsumexp_{j≠c} z_j − logsumexp_j z_j``, so the log-odds is
    ``z_c − logsumexp_{j≠c} z_j``: no softmax is formed, nothing saturates.

    Args:
        logits (Tensor[R, K]): plain logits.
        targets (Tensor[R]): class indices.

    Returns:
        Tensor[R]: log-odds of each row's target.
    """
    z_c = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return z_c - torch.logsumexp(others, dim=1)


def total_variation(maps: Tensor) -> Tensor:
    """Anisotropic total variation ``Σ |∂_y m| + Σ |∂_x m|`` of each map.

    Args:
        maps (Tensor[..., h, w]): maps.

    Returns:
        Tensor[...]: one value per map.
    """
    dy = (maps[..., 1:, :] - maps[..., :-1, :]).abs().sum(dim=(-2, -1))
    dx = (maps[..., :, 1:] - maps[..., :, :-1]).abs().sum(dim=(-2, -1))
    return dy + dx


@contextlib.contextmanager
def frozen_model(model: nn.Module):
    """Puts ``model`` in eval mode with parameters frozen; restores both on exit, also on error.

    A fit differentiates with respect to the masks only: parameter gradients would cost time, and
    dropout or batch statistics would make one image's masks depend on the others in the batch.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with restored_modes(model):
        try:
            model.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _mask_hw(config: FIDOConfig, height: int, width: int) -> tuple[int, int]:
    if config.mask_size is None:
        return height, width
    if isinstance(config.mask_size, int):
        return config.mask_size, config.mask_size
    if len(config.mask_size) == 1:
        return config.mask_size[0], config.mask_size[0]
    return tuple(config.mask_size)  # type: ignore[return-value]


def _maps(theta: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """SSR keep, SDR drop and joint maps ``Tensor[N, H, W]`` from logits ``Tensor[2, N, h, w]``."""
    with torch.no_grad():
        ssr = _upsample(torch.sigmoid(theta[0]), size)
        sdr = _upsample(torch.sigmoid(-theta[1]), size)
        return ssr, sdr, torch.sqrt(ssr * sdr)


def _check_snapshots(snapshots, iterations: int) -> tuple[int, ...]:
    """Sorted, de-duplicated 1-based iterations in ``[1, iterations]``."""
    if isinstance(snapshots, (str, bytes)) or not hasattr(snapshots, "__iter__"):
        raise TypeError(f"snapshots: expected a sequence of ints, got {type(snapshots).__name__}")
    steps = list(snapshots.tolist() if isinstance(snapshots, Tensor) else snapshots)
    for k in steps:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):  # numpy ints welcome
            raise TypeError(f"snapshots: expected a sequence of ints, got {k!r} in it")
        if not 1 <= k <= iterations:
            raise ValueError(f"snapshots: expected iterations in [1, {iterations}], got {k}")
    return tuple(sorted({int(k) for k in steps}))


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``Tensor[R, h, w]`` to ``Tensor[R, H, W]`` (identity if equal)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _finite_check_every(device: torch.device) -> int:
    """Steps between two reads of the finiteness flags: 1 on a CPU (a read waits for nothing there)."""
    return 1 if device.type == "cpu" else FINITE_CHECK_EVERY


def _bad_images(flags: Tensor) -> list[int]:
    return torch.nonzero(flags.cpu()).flatten().tolist()


def _check_clean_logits(logits: Tensor, targets: Tensor) -> None:
    """The target's log-odds and probability from ``logits`` (Tensor[N, K]) must be finite."""
    with torch.no_grad():
        probe = log_odds(logits, targets) + logits.softmax(1).gather(1, targets[:, None]).squeeze(1)
    bad = ~torch.isfinite(probe)
    if bool(bad.any()):
        raise FloatingPointError(
            f"model: the forward pass returned logits without a finite target log-odds or "
            f"probability (NaN or +inf logits, a -inf target logit, or log-odds that overflow) on "
            f"the clean images, before step 1, for images {_bad_images(bad)}")


def _raise_nonfinite(finite: Tensor, start: int, stop: int, iterations: int) -> None:
    """Raises on the first step in ``[start, stop)`` with a false flag in ``finite``.

    ``finite`` (BoolTensor[2, T, N]): per step and image, [0] the model's output on the masked
    inputs (log-odds and probabilities of the target), [1] the mask logits θ after the step.
    """
    window = finite[:, start:stop]
    if bool(window.all()):
        return
    bad = ~window.cpu()
    step = int(torch.nonzero(bad.any(2).any(0)).min())  # first bad step in the window
    at = f"at step {start + step + 1} of {iterations}"
    if bool(bad[0, step].any()):
        raise FloatingPointError(
            f"model: the forward pass returned logits without a finite target log-odds or "
            f"probability (NaN or +inf logits, a -inf target logit, or log-odds that overflow) on "
            f"the masked inputs {at} for images {_bad_images(bad[0, step])}: the loss is not "
            f"finite there and the masks would be NaN")
    raise FloatingPointError(
        f"theta: the mask logits became non-finite {at} for images {_bad_images(bad[1, step])} "
        f"although the model's logits were finite (the model's gradient with respect to its "
        f"input is NaN or inf, or the optimiser diverged)")


class FIDO:
    """Fits SSR and SDR masks for a batch of images (Chang et al., 2019; Korsch et al., 2023).

    Args:
        model: any ``nn.Module`` mapping images ``Tensor[N, C, H, W]`` in [0, 1] to logits
            ``Tensor[N, K]``. It is used in eval mode with frozen parameters during a fit and left
            exactly as it was.
        config: a :class:`FIDOConfig`; keyword ``overrides`` replace its fields.

    Example:
        >>> fido = FIDO(model, FIDOConfig(iterations=30, samples=4, mask_size=28))
        >>> result = fido.fit(images, targets, generator=torch.Generator().manual_seed(0))
        >>> result.ssr.shape  # (N, H, W)
    """

    def __init__(self, model: nn.Module, config: FIDOConfig | None = None, **overrides) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        config = config or FIDOConfig()
        if not isinstance(config, FIDOConfig):
            raise TypeError(f"config: expected a FIDOConfig, got {type(config).__name__}")
        if overrides:
            unknown = set(overrides) - {f.name for f in dataclasses.fields(FIDOConfig)}
            if unknown:
                raise TypeError(f"unexpected FIDOConfig fields: {sorted(unknown)}")
            config = dataclasses.replace(config, **overrides)
        self.model = model
        self.config = config
        self.sampler = config.make_sampler()

    def fit(
        self,
        images: Tensor,
        targets=None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        seeds=None,
        snapshots=(),
        *,
        max_batch: int | None = None,
    ) -> FIDOResult:
        """Learns SSR and SDR masks for every image at once.

        Args:
            images (Tensor[N, C, H, W]): float images in [0, 1], on the model's device, with the
                channels the model declares (``model.in_channels``, if it has one) and the dtype
                of its parameters. Images that require grad are detached (the fit differentiates
                with respect to the masks only and leaves the caller's graph alone).
            targets: the class to explain: an int, a sequence of N ints or ``LongTensor[N]``;
                ``None`` explains the model's prediction.
            generator: draws one seed per image when ``seeds`` is not given: a
                ``torch.Generator`` (on any device), an int (the seed of a new CPU generator) or
                ``None`` (torch's global generator).
            progress: show a progress bar over the iterations.
            seeds: one int in ``[0, 2**64)`` per image (a single int is used for every image);
                image ``i``'s noise comes from a generator seeded with ``seeds[i]``, so its masks
                do not depend on the other images in the batch.
            snapshots: 1-based iterations (each in ``[1, iterations]``) after which the logits
                θ are also recorded (detached copies, ``result.snapshots[k]``); one fit then
                gives the masks at several iteration counts (:meth:`FIDOResult.maps_at`).
            max_batch: the most model inputs in one forward pass (rows = 2 · images ·
                samples; Captum's ``internal_batch_size`` idea); ``None`` puts all rows of a step
                in one pass. A memory bound: results do not depend on it (tested), so it is part
                of no configuration or cache key.

        Returns:
            FIDOResult: maps ``(N, H, W)``, logits, history.

        Raises:
            TypeError/ValueError: a bad argument (the message names it), e.g. images with the
                wrong channels or dtype, a ``mask_size`` larger than the images, seeds outside
                ``[0, 2**64)``.
            FloatingPointError: the model's output (on the clean or on the masked images: the
                target's log-odds or probability, hence the loss) or the mask logits θ are not
                finite; the message names which, the first step at which they were and the
                images (see the module docstring).
        """
        cfg = self.config
        snapshots = cfg.snapshot_steps(snapshots)
        if max_batch is not None:
            _checks.check_positive_int(max_batch, "max_batch")
        # Channels (models that declare in_channels: fidobook's do), dtype against the model's
        # parameters, values; images that require grad come back detached.
        images = _checks.check_model_inputs(images, self.model)
        n, c, height, width = images.shape
        device, dtype = images.device, images.dtype
        h, w = _mask_hw(cfg, height, width)
        if h > height or w > width:
            raise ValueError(f"mask_size: expected at most the image size ({height}, {width}), got "
                             f"{cfg.mask_size!r}, i.e. a ({h}, {w}) mask")
        if generator is not None:
            generator = _checks.check_generator(generator)
        if seeds is not None:
            seeds = _checks.check_seeds(seeds, n)
        t0 = time.perf_counter()

        with frozen_model(self.model) as model, torch.no_grad():
            clean = _checks.check_logits_output(model(images), n)
        num_classes = clean.shape[1]
        targets = clean.argmax(1) if targets is None else _checks.check_targets(targets, n, num_classes, device=device)
        _check_clean_logits(clean, targets)
        generators = self._generators(seeds, n, generator, device)

        s = cfg.samples
        rows = 2 * n * s
        chunk = max_batch or rows
        # Row r of a step is (kind, image, sample) in C order; kind 0 = SSR, 1 = SDR.
        row_image = torch.arange(n, device=device).repeat_interleave(s).repeat(2)
        row_target = targets[row_image]
        # SSR maximises the log-odds, SDR minimises it; both average over their S samples.
        row_weight = torch.cat([torch.full((n * s,), -1.0 / s), torch.full((n * s,), 1.0 / s)]).to(device, dtype)

        random_infill = cfg.infill in RANDOM_INFILLS
        fill_fn = INFILLS[cfg.infill]
        fill = None if random_infill else fill_fn(images)
        delta = None if random_infill else images - fill  # fixed over the fit: computed once

        theta = torch.zeros((2, n, h, w), device=device, dtype=dtype, requires_grad=True)
        # The fused kernel is one pass over θ (the for-each path costs ~0.1 ms a step on a CPU,
        # which shows when the model is small); both are element-wise, so images stay independent.
        fused = device.type in ("cpu", "cuda")
        opt = torch.optim.AdamW([theta], lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused)
        hist = {k: torch.zeros((cfg.iterations, n), device=device, dtype=dtype)
                for k in ("loss", "ssr_prob", "sdr_prob", "l1", "tv")}
        recorded: dict[int, Tensor] = {}
        # Finiteness per step and image, kept on the device and read every `every` steps:
        # [0] the model's output on the masked inputs (log-odds, probabilities), [1] θ after the step.
        finite = torch.ones((2, cfg.iterations, n), dtype=torch.bool, device=device)
        every, checked = _finite_check_every(device), 0

        with frozen_model(self.model) as model:
            for step in tqdm(range(cfg.iterations), disable=not progress, desc="FIDO", leave=False):
                opt.zero_grad(set_to_none=True)
                # Per-image draws in a fixed order (uniforms, then infill noise) keep each image's
                # random stream independent of the batch it is fitted in.
                u = torch.stack([open_uniform((2, s, h, w), generator=g, dtype=dtype, device=device)
                                 for g in generators], dim=1)  # (2, N, S, h, w)
                if random_infill:
                    fills = torch.stack([fill_fn(images[i : i + 1].expand(2 * s, c, height, width), g)
                                         for i, g in enumerate(generators)], dim=0)  # (N, 2S, C, H, W)
                    fills = fills.view(n, 2, s, c, height, width).transpose(0, 1).reshape(rows, c, height, width)

                keep = self.sampler.relax(theta[:, :, None], u)  # (2, N, S, h, w)
                # Cut the graph at the masks so rows can be pushed through the model in chunks
                # whose gradients accumulate into one leaf, without keeping several graphs alive.
                keep_leaf = keep.detach().reshape(rows, h, w).requires_grad_(True)
                lo_all = torch.empty(rows, device=device, dtype=dtype)
                prob_all = torch.empty(rows, device=device, dtype=dtype)
                for a in range(0, rows, chunk):
                    b = min(a + chunk, rows)
                    m = _upsample(keep_leaf[a:b], (height, width))[:, None]  # (R, 1, H, W)
                    if random_infill:
                        f = fills[a:b]
                        masked = torch.addcmul(f, m, images[row_image[a:b]] - f)
                    else:  # keep * image + (1 - keep) * fill = fill + keep * (image - fill)
                        idx = row_image[a:b]
                        masked = torch.addcmul(fill[idx], m, delta[idx])
                    logits = model(masked)
                    lo = log_odds(logits, row_target[a:b])
                    (lo * row_weight[a:b]).sum().backward()
                    with torch.no_grad():
                        lo_all[a:b] = lo
                        prob_all[a:b] = logits.softmax(1).gather(1, row_target[a:b, None]).squeeze(1)
                keep.backward(keep_leaf.grad.view_as(keep))

                # Regularisers on the expected masks at mask resolution.
                ramp = min(1.0, step / cfg.warmup) if cfg.warmup > 0 else 1.0
                keep_ssr = torch.sigmoid(theta[0])
                drop_sdr = torch.sigmoid(-theta[1])
                l1 = (keep_ssr.sum(dim=(-2, -1)) + drop_sdr.sum(dim=(-2, -1))) / 2
                tv = (total_variation(keep_ssr) + total_variation(drop_sdr)) / 2
                reg = ramp * (cfg.l1 * l1 + cfg.tv * tv)  # (N,)
                reg.sum().backward()
                opt.step()
                if step + 1 in snapshots:
                    recorded[step + 1] = theta.detach().clone()

                with torch.no_grad():
                    objective = (lo_all * row_weight).view(2, n, s).sum(dim=(0, 2))
                    hist["loss"][step] = objective + reg.detach()
                    hist["ssr_prob"][step] = prob_all[: n * s].view(n, s).mean(1)
                    hist["sdr_prob"][step] = prob_all[n * s :].view(n, s).mean(1)
                    hist["l1"][step] = l1.detach()
                    hist["tv"][step] = tv.detach()
                    # NaN and inf survive sums: one value per image is finite iff all its terms are.
                    output = objective + hist["ssr_prob"][step] + hist["sdr_prob"][step]  # (N,)
                    finite[:, step] = torch.isfinite(torch.stack([output, theta.sum(dim=(0, 2, 3))]))
                if step + 1 - checked == every or step + 1 == cfg.iterations:
                    _raise_nonfinite(finite, checked, step + 1, cfg.iterations)
                    checked = step + 1

        return FIDOResult.from_logits(
            theta.detach(), (height, width), targets=targets, history=hist, config=cfg,
            model_evaluations=cfg.iterations * rows, seconds=time.perf_counter() - t0,
            snapshots=recorded)

    def attribute(self, inputs: Tensor, target=None, *, kind: str = "joint",
                  generator: torch.Generator | None = None, progress: bool = False, seeds=None,
                  max_batch: int | None = None) -> Tensor:
        """Captum-style attribution: fits the masks and returns one map per image.

        Args:
            inputs (Tensor[N, C, H, W]): images in [0, 1] (checked as ``images`` in :meth:`fit`).
            target: int, sequence, ``LongTensor[N]`` or ``None`` (the prediction).
            kind: ``"joint"``, ``"ssr"`` or ``"sdr"``.
            max_batch: a memory bound, as in :meth:`fit`.

        Returns:
            Tensor[N, 1, H, W]: the attribution map, in [0, 1].

        Raises:
            TypeError/ValueError/FloatingPointError: as :meth:`fit`.
        """
        _checks.check_choice(kind, "kind", ["joint", "ssr", "sdr"])
        inputs = _checks.check_model_inputs(inputs, self.model, "inputs")
        result = self.fit(inputs, target, generator=generator, progress=progress, seeds=seeds,
                          max_batch=max_batch)
        return getattr(result, kind)[:, None]

    @staticmethod
    def _generators(seeds: list[int] | None, n: int, generator, device) -> list[torch.Generator]:
        """One generator per image on ``device``; ``seeds`` already checked, or drawn from ``generator``."""
        if seeds is None:
            where = generator.device if generator is not None else None  # a CUDA generator draws there
            seeds = torch.randint(0, 2**62, (n,), generator=generator, device=where).tolist()
        return [torch.Generator(device=device).manual_seed(sd) for sd in seeds]
