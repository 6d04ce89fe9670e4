"""Chapter 2, FIDO end to end on one bird: the masks, the regularisers, the infills, CD and SCD.

One test image is explained with the context's classifier (the generated birds' trained
classifier, or the reader's on a CUB-format folder) for its true class. The bird is chosen by a
fixed rule (:func:`choose_image`) unless ``spec.image`` names it. Every fit is FIDO on that one
image with ``spec``'s iterations, samples and mask size and noise seed ``spec.seed``, through
:func:`fidobook.study.fit_cached` (cached under ``context.cache_dir``): the reference fit (SCD at
t = 1, blur infill), the ``original`` infill (the regularisers alone), two larger L1 weights, the
other infills, CD at t = 0.1 and SCD at t = 0.1.

Ground truth. On the generated birds: the generated part-label mask (labels of
:data:`fidobook.data.PART_NAMES`), the bird's pixels are the labelled ones, and the parts that
separate its class from a one-part neighbour come from the class table. On a CUB-format folder:
discs around the visible keypoints (:func:`fidobook.parts.keypoint_discs`, labels ``p + 1`` of the
folder's ``part_names``), the bird's pixels from its segmentation (or, without segmentations, its
box), and all visible parts count as separating (which parts separate two classes is not known);
the scalars ``parts_note``, ``object_note`` and ``separating_note`` say which was used.

The result holds

- scalars: the classifier (``accuracy``, ``n_test``, ``n_classes``), the bird (``bird_index``,
  ``bird_image_id``, ``bird_label``, ``bird_class``, ``bird_variants``, ``bird_parts``,
  ``n_neighbours``, ``rule``, ``p_clean``, ``p_blur``), the reference fit (``sampler``,
  ``temperature``, ``infill``, ``n_evals``, ``fit_seconds``, ``ssr_prob_end``,
  ``sdr_prob_end``, ``ssr_mean``, ``sdr_mean``, ``logit_min``, ``logit_max``), the L1 drift
  (``drift_gap``, ``drift_end``, ``drift_100``, ``ssr_mean_l1_{3,2,1}``,
  ``ssr_half_l1_{3,2,1}``, ``ssr_prob_l1_{3,2,1}``, ``sdr_prob_l1_{3,2,1}``), the shares
  (``area_bird``, ``joint_bird``, ``top_bird``, ``area_disc``, ``joint_disc``, ``top_disc``, in
  %), the hard masks (``hard_{ssr,ssr_rand,sdr,sdr_rand}_{p,px}``), the infills
  (``infill_best``, ``infill_lowest``, ``infill_lowest_p``, ``infill_blur_alone``), the samplers
  (``cd_vs_scd``, ``t_effect``, ``max_theta_cd``, ``frozen_cd``, ``n_logits``), ``n_cells``,
  ``source`` and the three notes;
- tables: ``neighbours`` (class, part, variant), ``shares`` (per part label: area, SSR keep, SDR
  drop, joint, top 10 % of joint, joint / area, separates), ``sparsity`` (per λ1), ``hard`` (per
  hard-mask test: pixels, p(c)), ``infills`` (per infill), ``samplers`` (per sampler);
- arrays (N = 1 image of H × W, T = iterations): ``image`` (uint8 Tensor[3, H, W]),
  ``part_mask`` (LongTensor[H, W]), ``object`` (BoolTensor[H, W]: the bird's pixels),
  ``outline`` (BoolTensor[H, W]: the segmentation, absent without one), ``ssr``, ``sdr``,
  ``joint`` (Tensor[H, W]), ``history_{loss,ssr_prob,sdr_prob,l1,tv}`` (Tensor[T]),
  ``original_mean`` (Tensor[T]: mean mask value with the ``original`` infill), ``drift``
  (Tensor[3, T + 1]: :func:`l1_drift` for the three λ1), ``l1_mean`` (Tensor[3, T]),
  ``l1_joint`` (Tensor[3, H, W]), ``infill_images`` (uint8 Tensor[I, 3, H, W]) and
  ``infill_joint`` (Tensor[I, H, W]) in ``INFILLS`` order, ``sampler_joint`` (Tensor[3, H, W]),
  ``sampler_ssr_prob`` and ``sampler_sdr_prob`` (Tensor[3, T]) in :data:`SAMPLER_VARIANTS` order.
"""
from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _checks
from ..fido import FIDOConfig, FIDOResult, total_variation
from ..infill import INFILLS, RANDOM_INFILLS
from ..models.train import evaluate, predict
from ..parts import part_mass
from ..study import fit_cached
from ._base import Result, cached, check_spec, new_result
from .specs import OneBirdSpec as Spec

__all__ = [
    "HARD_TESTS",
    "L1_WEIGHTS",
    "NAME",
    "SAMPLER_VARIANTS",
    "USES",
    "Spec",
    "choose_image",
    "l1_drift",
    "run",
]

NAME = "one_bird"
USES = ("data", "classifier")

#: The L1 weights of the sparsity sweep: the reference 1e-3, then 10 and 100 times more.
L1_WEIGHTS = (1e-3, 1e-2, 1e-1)
#: The sampler variants on the same bird: name -> FIDOConfig overrides ({} = the reference fit).
SAMPLER_VARIANTS = {"CD, t = 0.1": {"sampler": "cd"},
                    "SCD, t = 0.1": {"sampler": "scd", "temperature": 0.1},
                    "SCD, t = 1": {}}
_L1_TAGS = dict(zip(L1_WEIGHTS, ("3", "2", "1")))  # the scalars' suffixes: ssr_mean_l1_3, ...
#: Hard-mask tests, in table order.
HARD_TESTS = ("keep SSR (k > ½)", "keep random", "blur SDR (d > ½)", "blur random")


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) chapter 2's fits and measurements on one bird.

    Args:
        spec (OneBirdSpec): iterations, samples, mask size, the image (None: the rule) and seed.
        context (Context): the data and the classifier.
        progress (bool): progress bars. Default: True.
        cache (bool): read and write the result cache. Default: True.

    Returns:
        Result: see the module docstring.

    Raises:
        ValueError: ``spec.image`` outside the test split, or ``spec.mask_size`` larger than the
            images.
    """
    check_spec(spec, Spec, NAME)
    if spec.image is not None and (isinstance(spec.image, bool) or not isinstance(spec.image, int)):
        raise TypeError(f"OneBirdSpec.image: expected None or an int, got {spec.image!r}")
    if spec.mask_size > context.profile.image_size:
        raise ValueError(f"OneBirdSpec.mask_size: expected at most the image size "
                         f"{context.profile.image_size}, got {spec.mask_size}")
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


def l1_drift(l1: float, iterations: int, *, lr: float = 10.0, eps: float = 0.1,
             warmup: int = 5) -> Tensor:
    """The keep rate of one mask cell moved by FIDO's L1 term alone: AdamW on a single logit.

    A cell the classifier ignores gets only the regulariser's gradient; its logit ``θ`` (start
    0) then follows AdamW (``lr``, ``eps``, no weight decay) on the loss
    ``w_k · l1 / 2 · σ(θ)`` with the warm-up ramp ``w_k = min(1, k / warmup)``, exactly as in
    :class:`fidobook.FIDO`. With the ``original`` infill every cell is such a cell, and the mean
    mask value of a fit equals this trace.

    Args:
        l1 (float): the L1 weight λ1 >= 0.
        iterations (int): entries returned (steps + 1 gives the value after the last step).
        lr, eps (float): AdamW's learning rate and epsilon. Defaults: FIDO's, 10 and 0.1.
        warmup (int): FIDO's warm-up steps. Default: 5.

    Returns:
        Tensor[iterations]: float64, entry k the keep rate σ(θ) before step k (entry 0 is ½).
    """
    l1 = _checks.check_positive_float(l1, "l1", allow_zero=True)
    _checks.check_positive_int(iterations, "iterations")
    _checks.check_positive_float(lr, "lr")
    _checks.check_positive_float(eps, "eps")
    _checks.check_positive_int(warmup, "warmup", minimum=0)
    theta = torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([theta], lr=lr, eps=eps, weight_decay=0.0)
    trace = []
    with torch.enable_grad():
        for k in range(iterations):
            trace.append(float(torch.sigmoid(theta.detach())))  # before the step, as FIDO
            opt.zero_grad()
            ramp = min(1.0, k / warmup) if warmup > 0 else 1.0
            (ramp * l1 / 2 * torch.sigmoid(theta)).sum().backward()
            opt.step()
    return torch.tensor(trace, dtype=torch.float64)


def choose_image(labels: Tensor, predictions: Tensor, separating: Tensor | None = None) -> int:
    """The chapter's rule for the explained image.

    With ``separating`` (the part types that alone separate each class from another, as
    :func:`fidobook.parts.discriminative_parts` returns them): among the correctly classified
    images whose class has such a part, those whose class has the fewest of them, and of these
    the first; if none is correct, the first image whose class has one. Without it (data with no
    class table): the first correctly classified image, else image 0.

    Args:
        labels (LongTensor[N]): true classes.
        predictions (LongTensor[N]): the classifier's.
        separating (BoolTensor[K, P], optional): per class.

    Returns:
        int: the position of the image.
    """
    labels, predictions = labels.cpu(), predictions.cpu()
    if labels.shape != predictions.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels, predictions: expected two equal non-empty 1-D tensors, got "
                         f"{tuple(labels.shape)} and {tuple(predictions.shape)}")
    correct = predictions == labels
    if separating is None:
        hits = torch.nonzero(correct).flatten()
        return int(hits[0]) if len(hits) else 0
    separating = separating.cpu()
    has_neighbour = separating[labels].any(1)
    candidates = torch.nonzero(correct & has_neighbour).flatten()
    if len(candidates) == 0:
        candidates = torch.nonzero(has_neighbour).flatten()
    if len(candidates) == 0:
        return 0
    n_separating = separating[labels[candidates]].sum(1)
    return int(candidates[torch.nonzero(n_separating == n_separating.min())[0, 0]])


# ----------------------------------------------------------------------------------------------


def _bird(spec: Spec, context, test: dict, predictions: Tensor) -> dict:
    """The explained image and its ground truth (see the module docstring)."""
    from ..data import PART_NAMES, PART_TYPES, VARIANT_NAMES, part_differences
    from ..parts import PART_LABELS, discriminative_parts

    labels = test["labels"]
    n = len(labels)
    classes = context.class_parts()  # None on real data
    separating = None if classes is None else discriminative_parts(classes)  # (K, 5)
    if spec.image is None:
        i = choose_image(labels, predictions, separating)
        if classes is None:
            rule = ("the first test image the classifier gets right (no class table: which parts "
                    "separate two classes is not known here)")
        else:
            rule = ("the first correctly classified test bird whose class has the fewest parts "
                    "that alone separate it from a neighbour")
    else:
        if not 0 <= spec.image < n:
            raise ValueError(f"OneBirdSpec.image: expected an index in [0, {n - 1}] of the test "
                             f"split, got {spec.image}")
        i, rule = spec.image, f"test image {spec.image}, as asked (spec.image)"
    c = int(labels[i])
    part_mask = test["part_masks"][i].long()  # (H, W)
    seg = test.get("segmentations")
    outline = None if seg is None else seg[i, 0] > 127  # (H, W)
    out = {"index": i, "label": c, "rule": rule, "part_mask": part_mask, "outline": outline,
           "image_id": int(test["image_ids"][i]), "class_name": str(test["classes"][c])}
    if classes is not None:
        names = tuple(PART_NAMES)
        parts = [p for p, on in zip(PART_TYPES, separating[c].tolist()) if on]
        out["neighbours"] = []  # (class, the one part it differs in, its variant there)
        for k in range(len(classes)):
            differs = part_differences(classes[c], classes[k])
            if k != c and len(differs) == 1:
                p = differs[0]
                out["neighbours"].append((k, p, VARIANT_NAMES[p][classes[k][p]]))
        out["variants"] = ", ".join(f"{p} {VARIANT_NAMES[p][classes[c][p]]}" for p in PART_TYPES)
        out["separating"] = parts
        out["separating_labels"] = [PART_LABELS[p] for p in parts]
        out["object"] = part_mask > 0
        out["parts_note"] = "the generated part-label mask"
        out["object_note"] = "the bird's labelled pixels (the generated part-label mask)"
        out["separating_note"] = "the parts that alone separate its class from a one-part neighbour"
    else:
        names = ("background", *test["part_names"])
        present = sorted(set(torch.unique(part_mask).tolist()) - {0})
        out["neighbours"], out["variants"] = [], None
        out["separating"] = [names[j] for j in present]
        out["separating_labels"] = present
        if outline is not None:
            out["object"] = outline
            out["object_note"] = "the bird's segmentation"
        else:
            x, y, w, h = test["boxes"][i].tolist()
            rows = torch.arange(part_mask.shape[0])[:, None] + 0.5
            cols = torch.arange(part_mask.shape[1])[None, :] + 0.5
            out["object"] = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
            out["object_note"] = ("the bird's bounding box (the data set has no segmentations, so "
                                  "the scores that need the bird's outline use its box)")
        out["parts_note"] = test.get("parts_note") or "discs around the visible keypoints"
        out["separating_note"] = ("all its visible parts (which parts separate two classes is not "
                                  "known for this data set)")
    out["names"] = names
    return out


def _as_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] as uint8 for display (values outside are clipped)."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _compute(spec: Spec, context, progress: bool) -> Result:
    device, batch = context.device, context.profile.max_batch or 256
    model = context.classifier()
    test = context.split("test")
    evaluation = evaluate(model, test["images"], test["labels"], device=device, batch_size=batch)
    bird = _bird(spec, context, test, evaluation.predictions)
    i, c = bird["index"], bird["label"]
    x = test["images"][i : i + 1].to(device).float().div(255)  # (1, 3, H, W)
    part_mask = bird["part_mask"][None]  # (1, H, W)
    n_labels = len(bird["names"])
    obj = bird["object"].to(device)  # (H, W)
    sep = bird["separating_labels"]

    def probability(images: Tensor) -> Tensor:
        """p(c) for each image (N, 3, H, W), on the CPU."""
        return predict(model, images, batch_size=batch, device=device).softmax(1)[:, c]

    def on_bird(heat: Tensor) -> float:
        """Share of a map's mass (H, W) on the bird's pixels."""
        heat = heat.double()
        return float(heat[obj].sum() / heat.sum())

    def on_parts(heat: Tensor) -> Tensor:
        """Share of a map's mass on each part label, (L,) float64."""
        return part_mass(heat.cpu()[None], part_mask, n_labels)[0]

    # the reference fit, the other L1 weights, the infills but blur, the other samplers
    fits = 1 + (len(L1_WEIGHTS) - 1) + (len(INFILLS) - 1) + (len(SAMPLER_VARIANTS) - 1)
    bar = tqdm(total=fits, desc=f"{NAME}: FIDO fits", disable=not progress, leave=False)

    def fit(**overrides) -> FIDOResult:
        config = FIDOConfig(iterations=spec.iterations, samples=spec.samples,
                            mask_size=spec.mask_size, **overrides)
        result = fit_cached(model, x, [c], config, seeds=[spec.seed], cache_dir=context.cache_dir,
                            max_batch=context.profile.max_batch)
        bar.update()
        return result

    scalars = {"source": context.source, "accuracy": evaluation.accuracy,
               "n_test": len(test["labels"]), "n_classes": len(test["classes"]),
               "bird_index": i, "bird_image_id": bird["image_id"],
               "bird_label": c, "bird_class": bird["class_name"], "bird_variants": bird["variants"],
               "bird_parts": " and the ".join(bird["separating"]), "rule": bird["rule"],
               "n_neighbours": len(bird["neighbours"]), "parts_note": bird["parts_note"],
               "object_note": bird["object_note"], "separating_note": bird["separating_note"],
               "p_clean": float(probability(x)[0]), "n_cells": spec.mask_size ** 2,
               "n_logits": 2 * spec.mask_size ** 2}
    tables = {"neighbours": {"class": [k for k, _, _ in bird["neighbours"]],
                             "part": [p for _, p, _ in bird["neighbours"]],
                             "variant": [v for _, _, v in bird["neighbours"]]}}
    arrays = {"image": _as_uint8(x[0]), "part_mask": bird["part_mask"], "object": bird["object"]}
    if bird["outline"] is not None:
        arrays["outline"] = bird["outline"]

    # The reference fit: SCD at t = 1, blur infill.
    main = fit()
    n_cells = spec.mask_size ** 2
    hist = {k: v[:, 0].cpu() for k, v in main.history.items()}
    k_map, d_map = torch.sigmoid(main.logits[0, 0]), torch.sigmoid(-main.logits[1, 0])
    scalars.update(sampler=main.config.sampler, infill=main.config.infill,
                   temperature=main.config.make_sampler().temperature,
                   n_evals=main.model_evaluations, fit_seconds=main.seconds,
                   ssr_prob_end=float(hist["ssr_prob"][-1]),
                   sdr_prob_end=float(hist["sdr_prob"][-1]),
                   ssr_mean=float(k_map.mean()), sdr_mean=float(d_map.mean()),
                   logit_min=float(main.logits.min()), logit_max=float(main.logits.max()))
    arrays.update(ssr=main.ssr[0], sdr=main.sdr[0], joint=main.joint[0],
                  **{f"history_{k}": v for k, v in hist.items()})

    # The L1 term alone: the `original` infill against AdamW on one logit; larger weights.
    original = fit(infill="original")
    drift = torch.stack([l1_drift(l1, spec.iterations + 1) for l1 in L1_WEIGHTS])  # (3, T + 1)
    measured = (original.history["l1"][:, 0].cpu() / n_cells).double()  # (T,): mean mask value
    scalars.update(drift_gap=float((measured - drift[0, :-1]).abs().max()),
                   drift_end=float(drift[0, -1]), drift_100=float(l1_drift(1e-3, 101)[-1]))
    l1_fits = {L1_WEIGHTS[0]: main, **{l1: fit(l1=l1) for l1 in L1_WEIGHTS[1:]}}
    rows = {k: [] for k in ("λ1", "L1 alone: keep", "mean SSR keep", "mean SDR drop",
                            "SSR cells > ½", "SDR cells > ½", "p(c), SSR", "p(c), SDR",
                            "joint on bird")}
    for j, (l1, r) in enumerate(l1_fits.items()):
        k_m, d_m = torch.sigmoid(r.logits[0, 0]), torch.sigmoid(-r.logits[1, 0])
        values = (l1, float(drift[j, -1]), float(k_m.mean()), float(d_m.mean()),
                  float((k_m > 0.5).float().mean()), float((d_m > 0.5).float().mean()),
                  float(r.history["ssr_prob"][-1, 0]), float(r.history["sdr_prob"][-1, 0]),
                  on_bird(r.joint[0]))
        for key, v in zip(rows, values):
            rows[key].append(v)
        tag = _L1_TAGS[l1]
        scalars.update({f"ssr_mean_l1_{tag}": values[2], f"ssr_half_l1_{tag}": 100 * values[4],
                        f"ssr_prob_l1_{tag}": values[6], f"sdr_prob_l1_{tag}": values[7]})
    tables["sparsity"] = rows
    arrays.update(original_mean=measured, drift=drift,
                  l1_mean=torch.stack([r.history["l1"][:, 0].cpu() / n_cells
                                       for r in l1_fits.values()]),
                  l1_joint=torch.stack([r.joint[0] for r in l1_fits.values()]))

    # Where the masks lie: the share of each map's mass on each part label.
    joint = main.joint[0]
    top = (joint >= torch.quantile(joint.flatten().float(), 0.9)).float()  # the top decile
    columns = {"area": torch.ones_like(joint), "SSR keep": main.ssr[0], "SDR drop": main.sdr[0],
               "joint": joint, "top 10 % of joint": top}
    shares = {"part": list(bird["names"])}
    for name, heat in columns.items():
        shares[name] = on_parts(heat).tolist()
    shares["joint / area"] = [j / a if a > 0 else None
                              for j, a in zip(shares["joint"], shares["area"])]
    shares["separates"] = ["yes" if lab in sep else "" for lab in range(n_labels)]
    tables["shares"] = shares
    for key, heat in (("area", columns["area"]), ("joint", joint), ("top", top)):
        scalars[f"{key}_bird"] = 100 * on_bird(heat)
        scalars[f"{key}_disc"] = 100 * float(on_parts(heat)[sep].sum())

    # The masks applied hard, against random pixel sets of the same size.
    fill = INFILLS["blur"](x)
    keep_hard = (main.ssr > 0.5).float()[:, None]  # (1, 1, H, W)
    drop_hard = (main.sdr > 0.5).float()[:, None]
    rng = torch.Generator().manual_seed(spec.seed + 1)

    def random_like(mask: Tensor) -> Tensor:
        flat = torch.zeros(mask.numel(), device=mask.device)
        chosen = torch.randperm(mask.numel(), generator=rng)[: int(mask.sum())]
        flat[chosen.to(mask.device)] = 1.0
        return flat.view_as(mask)

    tests = [(keep_hard, fill + keep_hard * (x - fill)),
             (keep_hard, fill + random_like(keep_hard) * (x - fill)),
             (drop_hard, x + drop_hard * (fill - x)),
             (drop_hard, x + random_like(drop_hard) * (fill - x))]
    p_hard = probability(torch.cat([t for _, t in tests])).tolist()
    tables["hard"] = {"test": list(HARD_TESTS), "pixels": [float(m.mean()) for m, _ in tests],
                      "p(c)": p_hard}
    scalars["p_blur"] = float(probability(fill)[0])
    for j, tag in enumerate(("ssr", "ssr_rand", "sdr", "sdr_rand")):
        scalars[f"hard_{tag}_p"] = p_hard[j]
        scalars[f"hard_{tag}_px"] = 100 * float(tests[j][0].mean())

    # The infills: each one alone, and the joint map fitted with it.
    infill_fits, infill_images = {}, {}
    for name in INFILLS:
        gen = torch.Generator(device=device).manual_seed(spec.seed + 2)
        infill_images[name] = INFILLS[name](x, gen if name in RANDOM_INFILLS else None)
        reuse = {"blur": main, "original": original}
        infill_fits[name] = reuse[name] if name in reuse else fit(infill=name)
    rows = {k: [] for k in ("infill", "p(c), infill alone", "p(c), SSR", "p(c), SDR",
                            "joint on bird", "joint on separating parts")}
    alone = probability(torch.cat(list(infill_images.values()))).tolist()
    for (name, r), p in zip(infill_fits.items(), alone):
        values = (name, p, float(r.history["ssr_prob"][-1, 0]), float(r.history["sdr_prob"][-1, 0]),
                  on_bird(r.joint[0]), float(on_parts(r.joint[0])[sep].sum()))
        for key, v in zip(rows, values):
            rows[key].append(v)
    tables["infills"] = rows
    best = max(range(len(rows["infill"])), key=lambda j: rows["joint on bird"][j])
    lowest = min(range(len(rows["infill"])), key=lambda j: rows["p(c), infill alone"][j])
    scalars.update(infill_best=rows["infill"][best], infill_lowest=rows["infill"][lowest],
                   infill_lowest_p=rows["p(c), infill alone"][lowest],
                   infill_blur_alone=rows["p(c), infill alone"][rows["infill"].index("blur")])
    arrays.update(infill_images=_as_uint8(torch.cat(list(infill_images.values()))),
                  infill_joint=torch.stack([r.joint[0] for r in infill_fits.values()]))

    # CD and SCD on the same bird: the sampler at equal temperature, then the temperature.
    variants = {name: (fit(**o) if o else main) for name, o in SAMPLER_VARIANTS.items()}
    rows = {k: [] for k in ("sampler", "p(c), SSR", "p(c), SDR", "mean SSR keep", "mean SDR drop",
                            "TV of joint", "joint on bird", "max |θ|", "logits θ < −17")}
    for name, r in variants.items():
        k_m, d_m = torch.sigmoid(r.logits[0, 0]), torch.sigmoid(-r.logits[1, 0])
        values = (name, float(r.history["ssr_prob"][-1, 0]), float(r.history["sdr_prob"][-1, 0]),
                  float(k_m.mean()), float(d_m.mean()),
                  float(total_variation(torch.sqrt(k_m * d_m))),
                  on_bird(r.joint[0]), float(r.logits.abs().max()), int((r.logits < -17).sum()))
        for key, v in zip(rows, values):
            rows[key].append(v)
    tables["samplers"] = rows

    def diff(a: str, b: str) -> float:
        return float((variants[a].joint - variants[b].joint).abs().max())

    scalars.update(cd_vs_scd=diff("CD, t = 0.1", "SCD, t = 0.1"),
                   t_effect=diff("SCD, t = 1", "SCD, t = 0.1"),
                   max_theta_cd=rows["max |θ|"][0], frozen_cd=rows["logits θ < −17"][0])
    arrays.update(sampler_joint=torch.stack([r.joint[0] for r in variants.values()]),
                  sampler_ssr_prob=torch.stack([r.history["ssr_prob"][:, 0]
                                                for r in variants.values()]),
                  sampler_sdr_prob=torch.stack([r.history["sdr_prob"][:, 0]
                                                for r in variants.values()]))
    bar.close()
    return new_result(NAME, spec, context, scalars=scalars, tables=tables, arrays=arrays)
