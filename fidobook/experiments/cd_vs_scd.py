"""Chapter 4, CD vs SCD: mask quality and cost of three samplers × temperatures × S × iterations.

Three settings separate the two changes of the SCD paper (Korsch et al., 2023): CD at
``t = 0.1`` (FIDO's reference), SCD at ``t = 0.1`` (only the gradient's float32 computation
differs) and SCD at ``t = 1`` (the SCD reference code's temperature). Each is fitted with every
``S`` of ``spec.samples`` on the same ``N = spec.n_images`` test images (:func:`images_for`), with
the same noise seed per image, through :func:`fidobook.study.fit_cached` (:func:`fits`; chapter 7
calls both to get the same images and the same cached fits). The masks are scored after every
recorded iteration ``T`` (``spec.snapshots`` below ``spec.iterations``, and ``spec.iterations``)
by :func:`fidobook.metrics.score_maps`, and the final SDR / SSR orders by deletion / insertion
curves; the paired comparisons of the paper's claims (a) and (b) use
:func:`fidobook.stats.paired_comparison`.

The result holds

- scalars: sizes, the images' ground truth (``parts_note``, ``objects_note``), the random-order
  baseline, the headline verdicts of claims (a) and (b), the gradient-noise numbers and the
  cost in forward passes (glue names of the chapter);
- tables: ``scores`` (one row per setting, S, T and image: every score; ``deletion`` and
  ``insertion`` only at ``T = spec.iterations``, NaN before), ``summary`` (mean and 95 %
  bootstrap interval per setting, S, T and metric), ``claim_a`` and ``claim_b`` (paired Δ mean,
  interval, verdict), ``holds`` (claim (a) per setting and S), ``noise``, ``matched``, ``cost``,
  ``gallery`` (the columns of the example maps) and ``random`` (the random order's AUCs);
- arrays: ``gallery_images`` (G, 3, H, W), ``gallery_maps`` (G, C, H, W) joint maps for the
  ``gallery`` columns, ``gallery_objects`` (G, H, W) when the data has segmentations,
  ``gallery_index`` (G,) test indices.

Without segmentations (a CUB folder without ``segmentations/``) the scores against the bird's
outline are skipped (``objects_note`` says so); on real data the part scores use every visible
keypoint disc (``parts_note``).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..fido import FIDO, FIDOConfig, FIDOResult
from ..metrics import curve_auc, deletion_curve, insertion_curve, normalized_tv, score_maps
from ..relaxation import pathwise_gradient_moments
from ..stats import bootstrap_ci, paired_comparison
from ..study import fit_cached
from ._base import Result, cached, check_spec, new_result
from .context import EvaluationSet
from .specs import CDvsSCDSpec as Spec

__all__ = ["NAME", "USES", "SETTINGS", "REFERENCE_SETTING", "METRICS", "QUALITY", "KEYS", "run",
           "images_for", "noise_seeds", "recorded_iterations", "fits"]

NAME = "cd_vs_scd"
USES = ("data", "classifier")

#: The three settings: name -> sampler and temperature (FIDOConfig fields).
SETTINGS = {"CD, t = 0.1": {"sampler": "cd", "temperature": 0.1},
            "SCD, t = 0.1": {"sampler": "scd", "temperature": 0.1},
            "SCD, t = 1": {"sampler": "scd", "temperature": 1.0}}
#: The reference of claim (a) is this setting with the largest S.
REFERENCE_SETTING = "CD, t = 0.1"
#: Score column -> (label, higher is better; None: a size, reported and not judged).
METRICS = {
    "rank_object": ("relevance rank, bird", True),
    "mass_object": ("relevance mass, bird", True),
    "rank_parts": ("relevance rank, separating parts", True),
    "mass_parts": ("relevance mass, separating parts", True),
    "pointing_parts": ("pointing game, separating parts", True),
    "box_iou": ("box IoU", True),
    "deletion": ("deletion AUC (SDR order)", False),
    "insertion": ("insertion AUC (SSR order)", True),
    "tv": ("normalised TV of the joint map", False),
    "area": ("share of pixels with joint >= 1/2", None),
}
#: The quality scores claim (a) judges (those against the bird only with segmentations).
QUALITY = ("rank_object", "rank_parts", "mass_parts", "box_iou", "deletion", "insertion")
#: The scores claim (b) compares at equal S.
CLAIM_B = ("tv", "rank_parts", "mass_parts", "area")
#: Short keys of the settings in glue names (``smallest_scd_1``).
KEYS = {"CD, t = 0.1": "cd_01", "SCD, t = 0.1": "scd_01", "SCD, t = 1": "scd_1"}


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) the CD vs SCD grid on ``context`` (see the module docstring)."""
    check_spec(spec, Spec, NAME)
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


# ----------------------------------------------------------------------------------------------
# The images and the fits (shared with chapter 7)


def _need(spec, names: tuple[str, ...], where: str) -> None:
    missing = [n for n in names if not hasattr(spec, n)]
    if missing:
        raise TypeError(f"spec: {where} expected a spec with fields {list(names)} (e.g. a "
                        f"CDvsSCDSpec), got {type(spec).__name__} without {missing}")


def images_for(spec, context):
    """The chapter's images: ``spec.n_images`` of the test split, a permutation seeded with
    ``spec.seed``, sorted (``context.evaluation_set(n, rule="random", seed=spec.seed)``).

    Args:
        spec: a :class:`CDvsSCDSpec`, or any object with ``n_images`` and ``seed``.
        context (Context): data and models.

    Returns:
        EvaluationSet: images (N, 3, H, W) on ``context.device`` and their ground truth.
    """
    _need(spec, ("n_images", "seed"), "images_for")
    return context.evaluation_set(spec.n_images, rule="random", seed=spec.seed)


def noise_seeds(spec, context, evaluation) -> list[int]:
    """One noise seed per image: its test index plus ``spec.seed`` times the split's size, so
    two settings draw the same uniforms for an image and seeds differ between chapter seeds."""
    _need(spec, ("seed",), "noise_seeds")
    total = len(context.split("test")["labels"])
    return (evaluation.index + spec.seed * total).tolist()


def recorded_iterations(spec) -> tuple[int, ...]:
    """The iterations T at which masks are scored: the snapshots below ``spec.iterations``,
    then ``spec.iterations``."""
    _need(spec, ("snapshots", "iterations"), "recorded_iterations")
    return tuple(s for s in spec.snapshots if s < spec.iterations) + (spec.iterations,)


def _fido_config(spec, name: str, samples: int) -> FIDOConfig:
    """The FIDOConfig of one fit (the memory bound ``max_batch`` is an argument of the fit)."""
    return FIDOConfig(iterations=spec.iterations, samples=samples, mask_size=spec.mask_size,
                      **SETTINGS[name])


def fits(spec, context, *, settings=None, evaluation=None,
         progress: bool = False) -> dict[tuple[str, int], FIDOResult]:
    """The chapter's FIDO fits, from the cache of :func:`fidobook.study.fit_cached` or fitted.

    Every fit explains the true classes of :func:`images_for`'s images with the noise seeds of
    :func:`noise_seeds`, ``spec.iterations`` steps, the snapshots of
    :func:`recorded_iterations`, ``spec.mask_size``, ``spec.chunk`` images per cached chunk and
    ``context.profile.max_batch`` rows per forward pass (a memory bound).

    Args:
        spec: a :class:`CDvsSCDSpec` (or an object with ``n_images``, ``seed``, ``iterations``,
            ``snapshots``, ``mask_size``, ``chunk`` and, without ``settings``, ``samples``).
        context (Context): data and models.
        settings (iterable of (str, int), optional): the ``(setting, S)`` pairs to fit, settings
            among :data:`SETTINGS`. Default: every setting with every S of ``spec.samples``.
        evaluation (EvaluationSet, optional): :func:`images_for`'s result, if already at hand.
        progress (bool, optional): a progress bar over the fits. Default: False.

    Returns:
        dict: ``(setting, S) -> FIDOResult`` (maps (N, H, W) on ``context.device``).
    """
    _need(spec, ("n_images", "seed", "iterations", "snapshots", "mask_size", "chunk"), "fits")
    if settings is None:
        _need(spec, ("samples",), "fits")
        settings = [(name, S) for name in SETTINGS for S in spec.samples]
    settings = list(settings)
    for pair in settings:
        if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in SETTINGS
                and isinstance(pair[1], int) and not isinstance(pair[1], bool) and pair[1] >= 1):
            raise ValueError(f"settings: expected (setting, S) pairs with a setting among "
                             f"{list(SETTINGS)} and an int S >= 1, got {pair!r}")
    if evaluation is None:
        evaluation = images_for(spec, context)
    elif not isinstance(evaluation, EvaluationSet):
        raise TypeError(f"evaluation: expected the EvaluationSet of images_for, got "
                        f"{type(evaluation).__name__}")
    model = context.classifier()
    seeds = noise_seeds(spec, context, evaluation)
    snapshots = recorded_iterations(spec)[:-1]
    max_batch = context.profile.max_batch
    # A one-step fit first: the first pass through a model pays one-off set-up costs (kernel
    # selection, memory pools) that would otherwise be charged to the first fit's seconds.
    FIDO(model, FIDOConfig(iterations=1, samples=1, mask_size=spec.mask_size)).fit(
        evaluation.images[:1], evaluation.labels[:1].to(evaluation.images.device), seeds=[0])
    out = {}
    for name, S in tqdm(settings, desc="CD vs SCD fits", disable=not progress):
        out[name, S] = fit_cached(model, evaluation.images, evaluation.labels,
                                  _fido_config(spec, name, S), seeds=seeds,
                                  cache_dir=context.cache_dir, snapshots=snapshots,
                                  chunk=spec.chunk, max_batch=max_batch, progress=progress)
    return out


# ----------------------------------------------------------------------------------------------
# The experiment


def _listing(items) -> str:
    """``"a, b and c"``; ``"none"`` for no item."""
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _scores(maps: dict, evaluation) -> dict:
    """Per-image scores (dict of Tensor[N], float64) of one fit's maps after some iterations."""
    maps = {k: v.cpu() for k, v in maps.items()}
    joint = maps["joint"]  # (N, H, W): FIDO's explanation, scored against the ground truth
    with_object = score_maps(joint, objects=evaluation.objects, boxes=evaluation.boxes)
    # The part ground truth is one mask per image (the separating parts, or every visible keypoint
    # disc on real data): score_maps scores it exactly as it scores an object mask.
    on_parts = score_maps(joint, objects=evaluation.parts)
    s = {k: with_object[k] for k in ("mass_object", "rank_object", "pointing_object", "iou_object")
         if k in with_object}
    s.update({f"{k}_parts": on_parts[f"{k}_object"] for k in ("mass", "rank", "pointing")})
    s.update({k: with_object[k] for k in ("box_iou", "outside", "tv")})
    s["area"] = (joint >= 0.5).double().mean(dim=(1, 2))  # share of pixels >= 1/2
    s["tv_ssr"] = normalized_tv(maps["ssr"]).double()
    s["tv_sdr"] = normalized_tv(maps["sdr"]).double()
    return s


def _faithfulness(model, evaluation, order_sdr, order_ssr, steps: int, max_batch):
    """Deletion AUC along the SDR order and insertion AUC along the SSR order, Tensor[N] each."""
    images = evaluation.images
    kw = {"steps": steps, "infill": "blur", "max_batch": max_batch}
    targets = evaluation.labels.to(images.device)
    deletion = deletion_curve(model, images, order_sdr.to(images.device), targets, **kw)
    insertion = insertion_curve(model, images, order_ssr.to(images.device), targets, **kw)
    return curve_auc(deletion).double().cpu(), curve_auc(insertion).double().cpu()


def _compute(spec: Spec, context, progress: bool) -> Result:
    from ..models import evaluate

    ev = images_for(spec, context)
    n, _, height, width = ev.images.shape
    model = context.classifier()
    max_batch = context.profile.max_batch
    samples = tuple(spec.samples)
    s_min, s_max, end = min(samples), max(samples), spec.iterations
    reference = (REFERENCE_SETTING, s_max)  # FIDO with the largest mini-batch
    recorded = recorded_iterations(spec)

    results = fits(spec, context, evaluation=ev, progress=progress)

    # -- per-image scores: (setting, S, T) -> dict of Tensor[N] ---------------------------------
    per_image = {}
    for (name, S), r in tqdm(results.items(), desc="CD vs SCD scores", disable=not progress):
        for T in recorded:
            per_image[name, S, T] = _scores(r.maps_at(T), ev)
        per_image[name, S, end]["deletion"], per_image[name, S, end]["insertion"] = _faithfulness(
            model, ev, r.sdr, r.ssr, spec.steps, max_batch)
    random_maps = torch.rand((n, height, width), generator=torch.Generator().manual_seed(spec.seed + 1))
    random_deletion, random_insertion = _faithfulness(model, ev, random_maps, random_maps,
                                                      spec.steps, max_batch)
    columns = list(per_image[reference + (end,)])  # every score; deletion/insertion last
    scores = {"setting": [], "S": [], "T": [], "forward passes": [], "image": []}
    scores.update({c: [] for c in columns})
    index = ev.index.tolist()
    for (name, S, T), s in per_image.items():
        scores["setting"] += [name] * n
        scores["S"] += [S] * n
        scores["T"] += [T] * n
        scores["forward passes"] += [2 * S * T] * n
        scores["image"] += index
        for c in columns:
            scores[c] += s[c].tolist() if c in s else [float("nan")] * n

    def generator():  # the same resampling for every interval (equal N): paired by construction
        return torch.Generator().manual_seed(spec.seed)

    # -- means and intervals per setting, S, T and metric ----------------------------------------
    summary = []
    for (name, S, T), s in per_image.items():
        for metric in METRICS:
            if metric in s:
                mean, low, high = bootstrap_ci(s[metric], resamples=spec.resamples,
                                               generator=generator())
                summary.append({"setting": name, "S": S, "T": T, "forward passes": 2 * S * T,
                                "metric": metric, "mean": mean, "low": low, "high": high,
                                "n": int((~torch.isnan(s[metric])).sum())})

    def compare(metric, a, b, higher_is_better, margin):
        return paired_comparison(per_image[a + (end,)][metric], per_image[b + (end,)][metric],
                                 higher_is_better=higher_is_better, margin=margin,
                                 resamples=spec.resamples, generator=generator())

    # -- claim (a): every setting and S against the reference, with the declared margin ----------
    quality = [m for m in QUALITY if m in columns]
    claim_a = []
    for name in SETTINGS:
        for S in samples:
            if (name, S) == reference:
                continue
            for metric in quality:
                c = compare(metric, (name, S), reference, METRICS[metric][1], spec.margin)
                claim_a.append({"setting": name, "S": S, "metric": metric, "Δ mean": c.mean,
                                "low": c.low, "high": c.high, "verdict": c.word, "n": c.n})
    holds = {}
    for row in claim_a:
        ok = row["verdict"] in ("better", "not worse")
        holds[row["setting"], row["S"]] = holds.get((row["setting"], row["S"]), True) and ok
    scalars = {"claim_a_s1": _listing(name for name in SETTINGS if holds.get((name, s_min), False))}
    for name in SETTINGS:
        passing = [S for S in samples if holds.get((name, S), False)]
        scalars[f"smallest_{KEYS[name]}"] = f"S = {min(passing)}" if passing else "no S"
    for row in claim_a:
        if row["setting"] == "SCD, t = 1" and row["S"] == s_min:
            m = row["metric"]
            scalars.update({f"a_{m}_mean": row["Δ mean"], f"a_{m}_low": row["low"],
                            f"a_{m}_high": row["high"], f"a_{m}_verdict": row["verdict"]})

    # -- claim (b): the samplers at equal S, without a margin --------------------------------------
    claim_b = []
    for S in samples:
        for name in ("SCD, t = 0.1", "SCD, t = 1"):
            for metric in (m for m in CLAIM_B if m in columns):
                better = METRICS[metric][1]
                c = compare(metric, (name, S), (REFERENCE_SETTING, S), better is not False, 0.0)
                claim_b.append({"S": S, "setting": name, "metric": metric, "Δ mean": c.mean,
                                "low": c.low, "high": c.high,
                                "verdict": "(size)" if better is None else c.word, "n": c.n})
    for name, key in (("SCD, t = 1", "scd1"), ("SCD, t = 0.1", "scd01")):
        for metric in ("tv", "rank_parts", "mass_parts"):
            for word in ("better", "worse"):
                scalars[f"b_{key}_{metric}_{word}"] = sum(
                    r["setting"] == name and r["metric"] == metric and r["verdict"] == word
                    for r in claim_b)
        ratios = sorted(float(per_image[name, S, end]["tv"].nanmean()
                              / per_image[REFERENCE_SETTING, S, end]["tv"].nanmean()) for S in samples)
        mid = len(ratios) // 2  # the median of the ratios of the mean TVs over S
        scalars[f"tv_ratio_{key}"] = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2

    # -- the gradient's noise ---------------------------------------------------------------------
    temperature = {name: s["temperature"] for name, s in SETTINGS.items()}
    cv0 = {t: pathwise_gradient_moments(0.0, t).cv for t in sorted(set(temperature.values()))}
    noise = []
    for name, t in temperature.items():
        median_theta = float(results[name, s_max].logits.abs().flatten().median())
        noise.append({"setting": name, "t": t, "CV at θ = 0": cv0[t],
                      "median |θ| at the end": median_theta,
                      "CV at the median |θ|": pathwise_gradient_moments(median_theta, t).cv})
    # At equal gradient noise, are the temperatures equally good? Each t = 0.1 point against the
    # t = 1 point of the nearest noise level (paired, on the relevance rank on the bird or, without
    # segmentations, on the parts).
    matched_metric = "rank_object" if "rank_object" in columns else "rank_parts"
    matched = []
    for name in ("CD, t = 0.1", "SCD, t = 0.1"):
        for S in samples:
            x = cv0[0.1] / math.sqrt(S)
            S1 = min(samples, key=lambda s: abs(math.log(cv0[1.0] / math.sqrt(s)) - math.log(x)))
            c = compare(matched_metric, ("SCD, t = 1", S1), (name, S), True, 0.0)
            matched.append({"t = 0.1 setting": name, "S": S, "noise": x, "t = 1 at S": S1,
                            "noise at t = 1": cv0[1.0] / math.sqrt(S1), "Δ (t = 1 better)": c.mean,
                            "low": c.low, "high": c.high, "verdict": c.word})
    nearest = [min((r for r in matched if r["t = 0.1 setting"] == name),
                   key=lambda r: abs(math.log(r["noise"]) - math.log(r["noise at t = 1"])))
               for name in ("CD, t = 0.1", "SCD, t = 0.1")]
    scalars.update({
        "matched_metric": ("the relevance rank on the bird" if matched_metric == "rank_object" else
                           "the relevance rank on the parts (no segmentations for the bird)"),
        "matched_verdict": _listing(f"SCD, t = 1 at S = {r['t = 1 at S']} against "
                                    f"{r['t = 0.1 setting']} at S = {r['S']}: {r['verdict']}"
                                    for r in nearest),
        "cv0_01": cv0[0.1], "cv0_1": cv0[1.0],
        "equivalent_s": (cv0[0.1] / cv0[1.0]) ** 2,  # S at t = 0.1 as quiet as one sample at t = 1
        "noise_ratio": cv0[0.1] / math.sqrt(s_max) / cv0[1.0],
    })

    # -- cost ------------------------------------------------------------------------------------
    cost = [{"setting": name, "S": S, "forward passes per mask": r.model_evaluations / n,
             "seconds per mask": r.seconds / n} for (name, S), r in results.items()]
    by = {(row["setting"], row["S"]): row for row in cost}
    low_cost = ("SCD, t = 1", s_min)
    scalars.update({
        "passes_ref": by[reference]["forward passes per mask"],
        "passes_s1": by[low_cost]["forward passes per mask"],
        "seconds_ref": by[reference]["seconds per mask"],
        "seconds_s1": by[low_cost]["seconds per mask"],
        "speedup": by[reference]["seconds per mask"] / by[low_cost]["seconds per mask"],
        "passes_ratio": s_max / s_min,
        "fit_seconds": sum(r.seconds for r in results.values()),
    })

    # -- the images and their ground truth ---------------------------------------------------------
    has_parts = ev.parts.flatten(1).any(1)
    box_area = ((ev.boxes[:, 2] - ev.boxes[:, 0]) * (ev.boxes[:, 3] - ev.boxes[:, 1])) / (height * width)
    scalars.update({
        "n_images": n, "iterations": end, "s_min": s_min, "s_max": s_max,
        "n_samples": len(samples), "n_settings": len(SETTINGS) * len(samples),
        "margin": spec.margin, "curve_steps": spec.steps,
        "accuracy_chosen": evaluate(model, ev.images, ev.labels, device=context.device).accuracy,
        "n_with_parts": int(has_parts.sum()),
        "area_parts": float(ev.parts[has_parts].float().mean()) if has_parts.any() else float("nan"),
        "area_object": None if ev.objects is None else float(ev.objects.float().mean()),
        "area_box": float(box_area.mean()),
        "parts_note": ev.parts_note,
        "objects_note": ("the data set's object segmentations" if ev.objects is not None else
                         "none: the data set has no segmentations, so the scores against the "
                         "bird's outline (relevance mass and rank on the bird, its pointing game "
                         "and IoU) are skipped"),
        "random_deletion": float(random_deletion.mean()),
        "random_insertion": float(random_insertion.mean()),
        "quality": ", ".join(quality),
    })

    # -- the example maps --------------------------------------------------------------------------
    g = min(3, n)
    shown = list(dict.fromkeys((name, S) for name in SETTINGS for S in (s_min, s_max)))
    arrays = {"gallery_images": ev.images[:g],
              "gallery_maps": torch.stack([results[c].joint[:g].cpu() for c in shown], 1),
              "gallery_index": ev.index[:g]}
    if ev.objects is not None:
        arrays["gallery_objects"] = ev.objects[:g]

    def table(rows):
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}

    return new_result(NAME, spec, context, scalars=scalars, arrays=arrays, tables={
        "scores": scores, "summary": table(summary), "claim_a": table(claim_a),
        "holds": {"setting": [k[0] for k in holds], "S": [k[1] for k in holds],
                  "holds": list(holds.values())},
        "claim_b": table(claim_b), "noise": table(noise), "matched": table(matched),
        "cost": table(cost),
        "gallery": {"setting": [c[0] for c in shown], "S": [c[1] for c in shown]},
        "random": {"image": index, "deletion": random_deletion.tolist(),
                   "insertion": random_insertion.tolist()},
    })
