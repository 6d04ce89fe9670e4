"""Chapter 7, other attribution methods on the same ground truth: saliency, SmoothGrad, integrated
gradients, occlusion, Grad-CAM (:mod:`fidobook.attribution`, all Captum) and FIDO (CD at t = 0.1
with S = ``spec.fido_s_max``, SCD at t = 1 with S = 1), with their wall time.

The images are chapter 4's (:func:`fidobook.experiments.cd_vs_scd.images_for` with the spec
:func:`chapter4_spec` builds from this one) and FIDO's maps are chapter 4's cached fits
(:func:`fidobook.experiments.cd_vs_scd.fits`): when chapter 4 ran first with the same profile,
they are loaded, not fitted. Every method explains the true class. Each baseline's maps are
computed in one :meth:`~fidobook.attribution.AttributionMap.attribute` call over all images
(``context.profile.max_batch`` rows per forward pass), after one untimed call on one image (the
first pass through a code path pays one-off set-up costs), and timed; FIDO's time is that of its
fits when they ran. Every map, FIDO's joint map included, is min–max normalised per image
(:func:`fidobook.metrics.normalize_maps`), then scored by :func:`fidobook.metrics.score_maps`
against the bird's segmentation (skipped without segmentations), the part ground truth
(``parts_note``) and the box, and by deletion and insertion curves along the map; a random map
is the floor. Intervals are percentile-bootstrap intervals over the images; the paired
comparisons with FIDO SCD at S = 1 use :func:`fidobook.stats.paired_comparison` (margin 0).

The result holds

- scalars: sizes and settings (``n_images``, ``image_size``, ``sigma``, ``window``, ``stride``,
  ``ig_steps``, ``smooth_samples``, ``cam_side``, ``mask_size``, ``steps``), the classifier's
  ``accuracy_chosen`` (%), ``ig_delta`` (median relative completeness error of integrated
  gradients), ``best_<metric>`` and ``best_<metric>_value`` (the best method other than
  random), ``fido_scd_<metric>`` and ``random_<metric>``, ``tv_grain``, the paired counts
  (``paired_better``, ``paired_worse``, ``paired_no_difference``, ``paired_total``), the times
  (``seconds_<method>``, ``seconds_fido_cd``, ``seconds_fido_scd``, ``fido_over_occlusion``,
  ``fido_fit_seconds``), ``parts_note`` and ``objects_note``;
- tables: ``scores`` (one row per method and image: every score), ``summary`` (method, metric,
  mean, low, high, n), ``paired`` (method, metric, Δ mean, low, high, verdict, n; positive Δ
  favours the method over FIDO SCD), ``cost`` (method, forward passes, backward passes, passes
  per map, seconds per map), ``methods`` (method, key: the table order and the glue keys);
- arrays: ``gallery_images`` (G, 3, H, W), ``gallery_maps`` (G, M, H, W) in ``methods`` order,
  ``gallery_objects`` (G, H, W) when the data has segmentations, ``gallery_index`` (G,) test
  indices, ``ig_completeness`` (N,) per image.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..attribution import (AttributionMap, GradCAMMap, IntegratedGradientsMap, OcclusionMap, SaliencyMap,
                           SmoothGradMap, relevance_maps)
from ..metrics import curve_auc, deletion_curve, insertion_curve, normalize_maps, score_maps
from ..stats import bootstrap_ci, paired_comparison
from . import cd_vs_scd
from ._base import Result, cached, check_spec, new_result
from .specs import CDvsSCDSpec
from .specs import MethodsSpec as Spec

__all__ = ["NAME", "USES", "METRICS", "PAIRED", "REFERENCE", "KEYS", "run", "chapter4_spec",
           "baselines", "fido_settings"]

NAME = "methods"
USES = ("data", "classifier")
#: Scalars derived from wall times (measured, so they differ between runs), besides ``seconds_*``.
TIMINGS = ("fido_over_occlusion",)

#: Score column -> (label, higher is better): chapter 4's judged scores, the curves and TV named
#: without FIDO's mask orders (every method here gives one map).
METRICS = {**{k: v for k, v in cd_vs_scd.METRICS.items() if v[1] is not None},
           "deletion": ("deletion AUC", False), "insertion": ("insertion AUC", True),
           "tv": ("normalised TV", False)}
#: The scores of the paired comparisons with FIDO.
PAIRED = ("rank_object", "rank_parts", "mass_parts", "box_iou", "deletion", "insertion")
#: The method every other one is compared with.
REFERENCE = "FIDO SCD, S = 1"
#: Method -> short key of the glue names (``seconds_<key>``); FIDO CD's label carries its S.
KEYS = {"saliency": "saliency", "SmoothGrad": "smoothgrad", "integrated gradients": "integrated_gradients",
        "occlusion": "occlusion", "Grad-CAM": "gradcam", REFERENCE: "fido_scd", "random": "random"}
#: Images in the gallery.
GALLERY = 4


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) the comparison on ``context`` (see the module docstring)."""
    check_spec(spec, Spec, NAME)
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


def chapter4_spec(spec: Spec) -> CDvsSCDSpec:
    """The chapter 4 spec whose images and fits this spec reuses (its sizes for the curves and
    the bootstrap are chapter 7's own and do not touch the fits)."""
    check_spec(spec, Spec, NAME)
    return CDvsSCDSpec(n_images=spec.n_images, iterations=spec.fido_iterations,
                       snapshots=spec.fido_snapshots, samples=tuple(sorted({1, spec.fido_s_max})),
                       mask_size=spec.mask_size, chunk=spec.fido_chunk, steps=spec.steps,
                       resamples=spec.resamples, seed=spec.seed)


def fido_settings(spec: Spec) -> dict[str, tuple[str, int]]:
    """Label -> (chapter 4 setting, S) of the two FIDO fits: CD, t = 0.1 with chapter 4's
    largest S (its reference) and SCD, t = 1 with one sample."""
    return {f"FIDO CD, S = {spec.fido_s_max}": ("CD, t = 0.1", spec.fido_s_max),
            REFERENCE: ("SCD, t = 1", 1)}


def baselines(spec: Spec, model) -> dict[str, AttributionMap]:
    """Label -> the five Captum baselines for ``model`` with ``spec``'s settings (occlusion: the
    window an eighth of the image side, stride half of it; baselines: the blurred image)."""
    return {"saliency": SaliencyMap(model),
            "SmoothGrad": SmoothGradMap(model, samples=spec.smooth_samples, sigma=spec.sigma,
                                        seed=spec.seed),
            "integrated gradients": IntegratedGradientsMap(model, steps=spec.ig_steps),
            "occlusion": OcclusionMap(model),
            "Grad-CAM": GradCAMMap(model)}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(method: AttributionMap, images, targets, max_batch):
    """The method's attributions (:meth:`~fidobook.attribution.AttributionMap.raw`), its maps
    (N, H, W) on the CPU (``attribute``: the relevance maps of the attributions) and the wall
    time per map, after an untimed one-image call."""
    method.attribute(images[:1], targets[:1], max_batch=max_batch)
    _sync(images.device)
    t0 = time.perf_counter()
    raw = method.raw(images, targets, max_batch=max_batch)
    maps = relevance_maps(raw)[:, 0]
    _sync(images.device)
    return raw, maps.cpu(), (time.perf_counter() - t0) / len(images)


def _scores(model, ev, maps, steps: int, max_batch) -> dict:
    """Per-image scores (dict of Tensor[N], float64) of maps (N, H, W) in [0, 1]."""
    on_object = score_maps(maps, objects=ev.objects, boxes=ev.boxes)
    # The part ground truth is one mask per image: score_maps scores it as it scores an object.
    on_parts = score_maps(maps, objects=ev.parts)
    s = {k: on_object[k] for k in ("rank_object", "mass_object") if k in on_object}
    s.update({f"{k}_parts": on_parts[f"{k}_object"] for k in ("rank", "mass", "pointing")})
    s.update({k: on_object[k] for k in ("box_iou", "tv")})
    images, targets = ev.images, ev.labels.to(ev.images.device)
    heat = maps.to(images.device)
    kw = {"steps": steps, "infill": "blur", "max_batch": max_batch}
    s["deletion"] = curve_auc(deletion_curve(model, images, heat, targets, **kw)).double().cpu()
    s["insertion"] = curve_auc(insertion_curve(model, images, heat, targets, **kw)).double().cpu()
    return s


def _compute(spec: Spec, context, progress: bool) -> Result:
    from ..models import evaluate

    c4 = chapter4_spec(spec)
    ev = cd_vs_scd.images_for(c4, context)
    n, _, height, width = ev.images.shape
    model = context.classifier()
    max_batch = context.profile.max_batch
    targets = ev.labels.to(ev.images.device)

    # -- the Captum baselines --------------------------------------------------------------------
    maps, seconds, passes = {}, {}, {}
    methods = baselines(spec, model)
    for label, method in tqdm(methods.items(), desc="attribution methods", disable=not progress):
        raw, maps[label], seconds[label] = _timed(method, ev.images, targets, max_batch)
        passes[label] = method.passes(height, width)
        if label == "integrated gradients":  # completeness from these attributions, not a rerun
            completeness = method.completeness(ev.images, targets, max_batch=max_batch, attributions=raw)
        del raw
    window, stride = methods["occlusion"].geometry(height, width)
    cam_side = methods["Grad-CAM"].layer_size(ev.images)[-1]

    # -- FIDO: chapter 4's fits (loaded from the cache when chapter 4 ran first) ----------------
    settings = fido_settings(spec)
    fits = cd_vs_scd.fits(c4, context, settings=list(settings.values()), evaluation=ev,
                          progress=progress)
    for label, key in settings.items():
        r = fits[key]
        maps[label] = normalize_maps(r.joint.cpu())
        seconds[label] = r.seconds / n  # the compute time of the fit when it ran
        per_map = r.model_evaluations // n
        passes[label] = (per_map, per_map)
    maps["random"] = torch.rand((n, height, width), generator=torch.Generator().manual_seed(spec.seed + 1))
    seconds["random"], passes["random"] = 0.0, (0, 0)
    order = list(maps)

    # -- scores ---------------------------------------------------------------------------------
    per_image = {label: _scores(model, ev, maps[label], spec.steps, max_batch)
                 for label in tqdm(order, desc="scores", disable=not progress)}
    metrics = [m for m in METRICS if m in per_image[REFERENCE]]
    index = ev.index.tolist()
    scores = {"method": [m for m in order for _ in range(n)], "image": index * len(order)}
    scores.update({m: [v for label in order for v in per_image[label][m].tolist()] for m in metrics})

    def generator():  # the same resampling for every interval (equal N): paired by construction
        return torch.Generator().manual_seed(spec.seed)

    summary, means = [], {}
    for label in order:
        for metric in metrics:
            values = per_image[label][metric]
            mean, low, high = bootstrap_ci(values, resamples=spec.resamples, generator=generator())
            means[label, metric] = mean
            summary.append({"method": label, "metric": metric, "mean": mean, "low": low, "high": high,
                            "n": int((~torch.isnan(values)).sum())})
    paired = []
    for label in order:
        if label == REFERENCE:
            continue
        for metric in (m for m in PAIRED if m in metrics):
            c = paired_comparison(per_image[label][metric], per_image[REFERENCE][metric],
                                  higher_is_better=METRICS[metric][1], margin=0.0,
                                  resamples=spec.resamples, generator=generator())
            paired.append({"method": label, "metric": metric, "Δ mean": c.mean, "low": c.low,
                           "high": c.high, "verdict": c.word, "n": c.n})

    # -- scalars for the prose --------------------------------------------------------------------
    scalars = {
        "n_images": n, "image_size": height, "mask_size": spec.mask_size, "steps": spec.steps,
        "accuracy_chosen": 100 * evaluate(model, ev.images, ev.labels, device=context.device).accuracy,
        "sigma": spec.sigma, "window": window, "stride": stride, "ig_steps": spec.ig_steps,
        "smooth_samples": spec.smooth_samples, "cam_side": cam_side,
        "ig_delta": float(completeness.median()),
        "parts_note": ev.parts_note,
        "objects_note": ("the data set's object segmentations" if ev.objects is not None else
                         "none: the data set has no segmentations, so the relevance rank and mass "
                         "on the bird are not scored"),
    }
    others = [label for label in order if label != "random"]
    for metric in METRICS:
        if metric not in metrics:
            scalars[f"best_{metric}"], scalars[f"best_{metric}_value"] = "not scored", None
            continue
        pick = max if METRICS[metric][1] else min
        best = pick(others, key=lambda label: means[label, metric])
        scalars[f"best_{metric}"], scalars[f"best_{metric}_value"] = best, means[best, metric]
    for label in (REFERENCE, "random"):
        for metric in ("rank_object", "rank_parts", "box_iou", "deletion", "insertion"):
            scalars[f"{KEYS[label]}_{metric}"] = means.get((label, metric))
    grain = sorted(others, key=lambda label: means[label, "tv"])
    scalars["tv_grain"] = ", ".join(f"{label} {means[label, 'tv']:.3f}" for label in grain)
    words = [row["verdict"] for row in paired if row["method"] != "random"]
    scalars.update({"paired_better": words.count("better"), "paired_worse": words.count("worse"),
                    "paired_no_difference": words.count("not measurably different"),
                    "paired_total": len(words)})
    fido_cd, fido_scd = settings
    scalars.update({f"seconds_{KEYS[label]}": seconds[label] for label in methods})
    scalars.update({"seconds_fido_cd": seconds[fido_cd], "seconds_fido_scd": seconds[fido_scd],
                    "fido_over_occlusion": seconds[fido_scd] / max(seconds["occlusion"], 1e-12),
                    "fido_fit_seconds": sum(r.seconds for r in fits.values())})

    def described(f: int, b: int) -> str:
        if f == 0:
            return "none"
        return f"{f} forward" + (f" + {b} backward" if b else "")

    cost = {"method": order, "forward passes": [passes[m][0] for m in order],
            "backward passes": [passes[m][1] for m in order],
            "passes per map": [described(*passes[m]) for m in order],
            "seconds per map": [seconds[m] for m in order]}

    g = min(GALLERY, n)
    arrays = {"gallery_images": ev.images[:g], "gallery_index": ev.index[:g],
              "gallery_maps": torch.stack([maps[m][:g] for m in order], 1),
              "ig_completeness": completeness}
    if ev.objects is not None:
        arrays["gallery_objects"] = ev.objects[:g]

    def table(rows):
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}

    return new_result(NAME, spec, context, scalars=scalars, arrays=arrays, tables={
        "scores": scores, "summary": table(summary), "paired": table(paired), "cost": cost,
        "methods": {"method": order, "key": [KEYS.get(m, "fido_cd") for m in order]},
    })
