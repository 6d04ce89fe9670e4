"""Chapter 6, Over-MAP: attention on the object as a confidence score, against the baselines.

The evaluation set is the whole test split (case ``normal``) followed by the hard cases: on the
generated birds the six cases of :mod:`fidobook.data.hard` (``spec.per_case`` images each); on a
CUB-format folder, where no generated case exists, the one case the package can make from real
photographs, ``corrupted``: Gaussian noise, blur or a contrast loss (the corruptions of
:mod:`fidobook.data.hard`, applied by its ``_corrupt`` to arbitrary uint8 images, with the same
strengths) on ``spec.per_case`` test images evenly spaced over the split (:func:`fidobook.data.hard.corrupt_images`).

Every image is scored by

- the baselines: maximum softmax probability, negative entropy and, when the classifier has
  dropout, MC dropout (``spec.mc_passes`` passes, negative entropy and negative mutual
  information of the mean prediction);
- Over-MAP (:func:`fidobook.overmap.overmap_scores`) when the data has segmentations (a
  segmenter): the mass of the predicted class's Grad-CAM map and, when the classifier has CBAM
  blocks, of the CBAM attention inside the guided and the plain segmentation, plus the oracle
  (Grad-CAM on the true object);
- on a balanced subset (``spec.n_fido`` images, the same number per case), FIDO-SCD's joint
  mask inside the guided segmentation, as a third source.

and judged by rejection tables (:func:`fidobook.overmap.rejection_table`), AURC / E-AURC / AUGRC /
AUROC with percentile-bootstrap intervals, paired comparisons with the package's one verdict rule
(:func:`fidobook.overmap.compare_scores`, :func:`fidobook.overmap.compare_rejection`), the
accuracy per fifth of the overlap, and a breakdown by case. What is skipped, and why, is said in
``scalars["notes"]`` (one sentence per skipped part).

The result holds (N images, C cases, S scores):

- scalars: sizes, the accuracies, the headline numbers the chapter glues (shares in [0, 1],
  areas as computed; NaN where a part is skipped), the verdict words and the closing sentence
  (``verdict``), ``sources`` (the attention sources used), ``overmap`` / ``mc_dropout`` /
  ``fido`` (bool: whether each part ran) and ``notes``;
- tables: ``per_image`` (N rows: case, label, prediction, correctness and every score),
  ``by_case`` (C + 1 rows), ``availability`` (C rows), ``rejection`` (S × rates rows), ``areas``,
  ``vs_random``, ``relation``, ``breakdown``, ``summary``, ``examples``, and with FIDO
  ``fido_areas`` and ``fido_examples``; ``timings`` (step, seconds: wall-clock, not a result);
- arrays: ``example_images`` (C, 3, H, W) uint8, the first image of each case; with Over-MAP
  ``example_gradcam``, ``example_cbam`` (C, H, W) maps and ``example_plain``,
  ``example_guided`` (C, H, W) masks; with FIDO ``fido_images`` (C, 3, H, W),
  ``fido_gradcam``, ``fido_joint`` (C, H, W) and ``fido_guided`` (C, H, W).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import overmap as om
from ._base import Result, cached, check_spec, new_result
from .specs import OverMAPSpec as Spec

__all__ = ["NAME", "USES", "BASELINES", "OVERMAP", "ORACLE", "RANDOM", "FIDO_SCORE", "CASE_SCORES",
           "CLAIM", "run", "evaluation_data"]

NAME = "overmap"
USES = ("data", "classifier", "segmenter")

#: The baseline scores, by their names in the tables.
BASELINES = ("max softmax", "−entropy", "MC dropout −entropy", "MC dropout −MI")
#: Over-MAP's scores: table name -> key of :func:`fidobook.overmap.overmap_scores`.
OVERMAP = {"Over-MAP Grad-CAM": "gradcam/guided", "Over-MAP Grad-CAM IoU": "gradcam/guided/iou",
           "Over-MAP CBAM": "cbam/guided", "Over-MAP Grad-CAM, plain seg.": "gradcam/plain",
           "Over-MAP CBAM, plain seg.": "cbam/plain"}
#: The oracle: Grad-CAM's mass on the true object (no deployed system has it).
ORACLE = {"Grad-CAM on the true bird (oracle)": "gradcam/true"}
#: No ranking at all: every confidence tied.
RANDOM = "none (random order)"
#: The FIDO-SCD source, scored on the balanced subset only.
FIDO_SCORE = "Over-MAP FIDO-SCD"
#: The scores of the breakdown by case.
CASE_SCORES = ("max softmax", "MC dropout −MI", "Over-MAP Grad-CAM", "Over-MAP CBAM")
#: The paper's claim: rejecting 12-18 % raises the top-3 macro accuracy by 6-10 points.
CLAIM = {"rates": (0.12, 0.15, 0.18), "low": 6.0, "high": 10.0}
#: The rejection rate of the breakdown by case.
CUT = 0.15


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) the Over-MAP experiment on ``context`` (see the module docstring)."""
    check_spec(spec, Spec, NAME)
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


# ----------------------------------------------------------------------------------------------
# The evaluation set


def evaluation_data(spec: Spec, context) -> dict:
    """The images the chapter scores: the test split (case 0, ``normal``), then the hard cases.

    Args:
        spec (OverMAPSpec): ``per_case`` and ``seed`` are used.
        context (Context): data and models.

    Returns:
        dict: ``images`` (uint8 Tensor[N, 3, H, W], CPU), ``labels`` (LongTensor[N], −1: no known
        class), ``case`` (LongTensor[N], into ``case_names``), ``case_names`` (list of str),
        ``objects`` (BoolTensor[N, H, W] or None without segmentations), ``index`` (LongTensor[N]:
        position in the test split, or in the hard set), ``note`` (str: what was scored).
    """
    test = context.split("test")
    total = len(test["labels"])
    normal = (torch.arange(total) if spec.n_normal is None or spec.n_normal >= total else
              torch.linspace(0, total - 1, spec.n_normal).round().long())
    images, labels = [test["images"][normal]], [test["labels"][normal]]
    n_test = len(normal)
    case = [torch.zeros(n_test, dtype=torch.long)]
    index = [normal]
    seg = test.get("segmentations")
    objects = None if seg is None else [seg[normal, 0] > 127]
    hard = context.hard_set(per_case=spec.per_case)
    if hard is not None:
        names = ["normal"] + list(hard["case_names"])
        images.append(hard["images"])
        labels.append(hard["labels"])
        case.append(hard["case"] + 1)
        index.append(torch.arange(len(hard["labels"])))
        if objects is not None:
            objects.append(hard["segmentations"][:, 0] > 127)
        note = (f"{n_test} test images of the {total} and {spec.per_case} generated images of "
                f"each of the {len(names) - 1} hard cases")
    else:
        names = ["normal", "corrupted"]
        chosen = torch.linspace(0, total - 1, min(spec.per_case, total)).round().long()
        from ..data.hard import corrupt_images

        corrupted, _ = corrupt_images(test["images"][chosen], spec.seed)
        images.append(corrupted)
        labels.append(test["labels"][chosen])
        case.append(torch.ones(len(chosen), dtype=torch.long))
        index.append(chosen)
        if objects is not None:
            objects.append(seg[chosen, 0] > 127)  # noise, blur and contrast move no pixel
        note = (f"{n_test} of the data set's own {total} test images, and {len(chosen)} test "
                f"images corrupted (noise, blur or contrast loss, as the generated 'corrupted' "
                f"case, applied by fidobook.data.hard's corruption); the other hard cases are "
                f"generated birds and do not exist for real photographs")
    return {"images": torch.cat(images), "labels": torch.cat(labels).long(),
            "case": torch.cat(case), "case_names": names,
            "objects": None if objects is None else torch.cat(objects),
            "index": torch.cat(index), "note": note}


# ----------------------------------------------------------------------------------------------
# Small statistics of the chapter


def _midranks(x: Tensor) -> Tensor:
    """Ranks 1..N, ties sharing their mean rank (pandas' ``rank()``)."""
    ordered, order = torch.sort(x, stable=True)
    _, block, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based position of each block's last value
    ranks = torch.empty(x.numel(), dtype=torch.float64)
    ranks[order] = (last - (counts.double() - 1) / 2)[block]
    return ranks


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation: Pearson's on the mid-ranks; NaN for a constant input."""
    ra, rb = _midranks(a.double()), _midranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else float("nan")


def _fifths(x: Tensor) -> Tensor:
    """The fifth (0..4) of each value by rank, ties by position (``pd.qcut`` of the ``"first"``
    ranks into 5 bins)."""
    n = x.numel()
    rank = torch.empty(n, dtype=torch.float64)
    rank[torch.argsort(x, stable=True)] = torch.arange(1, n + 1, dtype=torch.float64)
    inner = torch.quantile(torch.arange(1, n + 1, dtype=torch.float64),
                           torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    return torch.searchsorted(inner, rank)  # bins (e_j, e_j+1], the first closed


def _against_claim(points: float) -> str:
    if points >= CLAIM["high"]:
        return "more than the paper's 6–10 points"
    if points >= CLAIM["low"]:
        return "within the paper's 6–10 points"
    return "less than the paper's 6–10 points"


#: :func:`fidobook.stats.verdict`'s words as a comparison with a random order.
_VS_RANDOM = {"better": "better than", "worse": "worse than",
              "not measurably different": "not measurably different from",
              "inconclusive": "not distinguishable (inconclusive) from"}


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else float("nan")


# ----------------------------------------------------------------------------------------------
# The experiment


def _compute(spec: Spec, context, progress: bool) -> Result:
    from ..fido import FIDOConfig
    from ..models.cnn import dropout_layers
    from ..models.train import predict
    from ..study import fit_cached

    timings: dict[str, float] = {}
    notes: list[str] = []
    bar = tqdm(total=8, desc=NAME, disable=not progress, leave=False)

    def step(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        bar.update(1)

    # -- data, models, predictions ----------------------------------------------------------
    t0 = time.perf_counter()
    data = evaluation_data(spec, context)
    images, labels, case = data["images"], data["labels"], data["case"]
    cases, objects = data["case_names"], data["objects"]
    n, n_cases = len(labels), len(cases)
    model = context.classifier()
    segmenter = context.segmenter()
    k = context.num_classes
    if k < 3:
        raise ValueError(f"data: Over-MAP's tables report top-3 accuracies, which need at least 3 "
                         f"classes, got {k}")
    batch = context.profile.max_batch or 256
    sources = tuple(s for s in om.SOURCES if s in om.attention_sources(model))
    if "cbam" not in sources:
        notes.append(f"The classifier ({context.describe()['arch']}) has no CBAM blocks, so there "
                     f"is no CBAM attention: the CBAM scores are skipped.")
    logits = predict(model, images, batch_size=batch, device=context.device).float()  # (N, K)
    pred = logits.argmax(1)
    correct = om.topk_correct(logits, labels, 1)
    correct3 = om.topk_correct(logits, labels, 3)
    step("data, models and predictions", t0)

    scalars = {"n_images": n, "n_normal": int((case == 0).sum()), "per_case": spec.per_case,
               "n_cases": n_cases - 1, "num_classes": k, "source": context.source,
               "evaluation_note": data["note"], "sources": ", ".join(sources),
               "n_boot": spec.n_boot, "mc_passes": spec.mc_passes}
    hard = case > 0
    scalars.update({
        "acc_normal": _mean(correct[~hard]), "acc_hard": _mean(correct[hard]),
        "acc_all": _mean(correct), "top3_all": _mean(correct3),
        "error_share_hard": float((~correct[hard]).sum()) / max(1, int((~correct).sum())),
    })
    by_case = {"case": cases + ["all"], "images": [], "top-1": [], "top-3": []}
    for c in range(n_cases):
        in_case = case == c
        by_case["images"].append(int(in_case.sum()))
        by_case["top-1"].append(_mean(correct[in_case]))
        by_case["top-3"].append(_mean(correct3[in_case]))
    by_case["images"].append(n)
    by_case["top-1"].append(scalars["acc_all"])
    by_case["top-3"].append(scalars["top3_all"])
    firsts = torch.tensor([int(torch.nonzero(case == c)[0, 0]) for c in range(n_cases)])
    arrays = {"example_images": images[firsts]}
    examples = {"case": cases, "index": firsts.tolist(), "label": labels[firsts].tolist(),
                "prediction": pred[firsts].tolist(), "correct": correct[firsts].tolist()}

    # -- Over-MAP ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    scores: dict[str, Tensor] = {}
    oracle: dict[str, Tensor] = {}
    overmap = segmenter is not None
    availability = {"case": cases}
    if overmap:
        kinds = ("guided", "plain") + (("true",) if objects is not None else ())
        kw = {"segmenter": segmenter, "objects": objects, "sources": sources,
              "segmentations": kinds, "batch_size": batch}
        s = om.overmap_scores(model, images, pred, **kw)
        over = {name: s[key] for name, key in OVERMAP.items() if key in s}
        oracle = {name: s[key] for name, key in ORACLE.items() if key in s}
        for name, key in (("not available, plain", "available/plain"),
                          ("not available, guided", "available/guided")):
            availability[name] = [1 - _mean(s[key][case == c]) for c in range(n_cases)]
        seg_iou = s.get("segmentation_iou")
        availability["segmentation IoU"] = [
            float(torch.nanmean(seg_iou[case == c])) if seg_iou is not None else float("nan")
            for c in range(n_cases)]
        worst = int(np.argmax(availability["not available, guided"]))
        scalars.update({"na_guided": 1 - _mean(s["available/guided"]),
                        "na_plain": 1 - _mean(s["available/plain"]),
                        "na_worst_case": cases[worst],
                        "na_worst": availability["not available, guided"][worst],
                        "seg_iou_normal": availability["segmentation IoU"][0]})
        maps, segs = om.overmap_maps(model, images[firsts], pred[firsts], **{
            **kw, "objects": None, "segmentations": ("guided", "plain")})
        arrays.update({f"example_{src}": m for src, m in maps.items()})
        arrays.update({"example_plain": segs["plain"].masks, "example_guided": segs["guided"].masks})
        examples["Grad-CAM overlap"] = over["Over-MAP Grad-CAM"][firsts].tolist()
        if "cbam" in sources:
            examples["CBAM overlap"] = over["Over-MAP CBAM, plain seg."][firsts].tolist()
    else:
        over = {}
        notes.append("The data set has no segmentations (no segmentations/ folder), so there is "
                     "no segmenter and Over-MAP cannot be computed: its scores, the oracle and "
                     "FIDO's overlap are skipped; the baselines are still reported.")
        for key in ("na_guided", "na_plain", "na_worst", "seg_iou_normal"):
            scalars[key] = float("nan")
        scalars["na_worst_case"] = "n/a"
    step("Grad-CAM, CBAM, segmentations", t0)

    # -- the baselines ----------------------------------------------------------------------
    t0 = time.perf_counter()
    scores["max softmax"] = om.max_softmax(logits)
    scores["−entropy"] = om.negative_entropy(logits)
    mc_dropout = any(getattr(m, "p", 0.0) > 0 for m in dropout_layers(model))
    if mc_dropout:
        probs = om.mc_dropout_probs(model, images, spec.mc_passes,
                                    generator=torch.Generator().manual_seed(spec.seed),
                                    batch_size=spec.mc_batch, device=context.device)  # (T, N, K)
        mc = om.mc_dropout_scores(probs)
        scores["MC dropout −entropy"] = mc["negative_entropy"]
        scores["MC dropout −MI"] = mc["negative_mutual_information"]
        scalars["mc_agree"] = _mean(probs.mean(0).argmax(1) == pred)
    else:
        scalars["mc_agree"] = float("nan")
        notes.append("The classifier has no dropout layer, so MC dropout cannot sample: its "
                     "scores are skipped.")
    scores.update(over)
    all_scores = {**scores, **oracle}
    step("MC dropout", t0)

    per_image = {"case": [cases[c] for c in case.tolist()], "index": data["index"].tolist(),
                 "label": labels.tolist(), "prediction": pred.tolist(),
                 "correct": correct.tolist(), "correct top-3": correct3.tolist()}
    per_image.update({name: v.double().tolist() for name, v in all_scores.items()})
    if overmap:
        per_image["available, guided"] = s["available/guided"].tolist()
        per_image["available, plain"] = s["available/plain"].tolist()

    # -- rejection tables -------------------------------------------------------------------
    t0 = time.perf_counter()
    rejection = []
    for name, conf in all_scores.items():
        for row in om.rejection_table(conf, logits, labels, om.REJECTION_RATES, generator=spec.seed):
            rejection.append({"score": name, **row})
    base = rejection[0]  # rate 0: the same for every score
    for row in rejection:
        row["gain"] = 100 * (row["top3_macro"] - base["top3_macro"])
    gain = {name: sum(r["gain"] for r in rejection if r["score"] == name and
                      any(abs(r["rate"] - q) < 1e-9 for q in CLAIM["rates"])) / len(CLAIM["rates"])
            for name in all_scores}
    scalars["top3_macro_base"] = base["top3_macro"]
    scalars["top1_micro_base"] = base["top1_micro"]
    step("rejection tables", t0)

    # -- areas, intervals, comparison with a random order ------------------------------------
    t0 = time.perf_counter()
    random = torch.zeros(n)
    areas, vs_random = [], []
    for name, conf in {**all_scores, RANDOM: random}.items():
        row = {"score": name}
        for j, stat in enumerate(("aurc", "e_aurc", "augrc", "auroc")):
            gen = torch.Generator().manual_seed(spec.seed + j)  # the same resamples for every score
            est, low, high = om.bootstrap(stat, conf, correct, n_boot=spec.n_boot, generator=gen)
            label = {"aurc": "AURC", "e_aurc": "E-AURC", "augrc": "AUGRC", "auroc": "AUROC"}[stat]
            row.update({label: est, f"{label} low": low, f"{label} high": high})
        areas.append(row)
        if name != RANDOM:
            c = om.compare_scores("e_aurc", conf, random, correct, n_boot=spec.n_boot,
                                  generator=spec.seed)
            vs_random.append({"score": name, "Δ E-AURC (random − score)": c.mean, "low": c.low,
                              "high": c.high, "verdict": c.word})
    by_name = {r["score"]: r for r in areas}
    words = {r["score"]: _VS_RANDOM[r["verdict"]] for r in vs_random}
    best = min(scores, key=lambda name: by_name[name]["E-AURC"])

    def area(name: str, column: str) -> float:
        return by_name[name][column] if name in by_name else float("nan")

    scalars.update({
        "gradcam_vs_random": words.get("Over-MAP Grad-CAM", "n/a"),
        "cbam_vs_random": words.get("Over-MAP CBAM", "n/a"),
        "msp_vs_random": words["max softmax"],
        "eaurc_random": area(RANDOM, "E-AURC"), "aurc_random": area(RANDOM, "AURC"),
        "best_eaurc_score": best, "best_eaurc": area(best, "E-AURC"),
        "eaurc_msp": area("max softmax", "E-AURC"),
        "eaurc_gradcam": area("Over-MAP Grad-CAM", "E-AURC"),
        "eaurc_cbam": area("Over-MAP CBAM", "E-AURC"),
        "eaurc_oracle": area(next(iter(ORACLE)), "E-AURC"),
        "auroc_gradcam": area("Over-MAP Grad-CAM", "AUROC"),
        "auroc_msp": area("max softmax", "AUROC"),
    })
    step("bootstrap", t0)

    # -- does confidence rise with overlap? ---------------------------------------------------
    t0 = time.perf_counter()
    relation = []
    msp = scores["max softmax"]
    for name in ("Over-MAP Grad-CAM", "Over-MAP CBAM", *ORACLE):
        if name not in all_scores:
            continue
        fifth = _fifths(all_scores[name])
        for f in range(5):
            inside = fifth == f
            relation.append({"overlap": name, "fifth": f + 1,
                             "mean overlap": _mean(all_scores[name][inside]),
                             "accuracy": _mean(correct[inside]),
                             "mean max softmax": _mean(msp[inside])})
    for key, name in (("gradcam", "Over-MAP Grad-CAM"), ("cbam", "Over-MAP CBAM")):
        rows = [r for r in relation if r["overlap"] == name]
        scalars[f"rho_{key}"] = _spearman(all_scores[name], msp) if rows else float("nan")
        scalars[f"acc_low_{key}"] = rows[0]["accuracy"] if rows else float("nan")
        scalars[f"acc_high_{key}"] = rows[-1]["accuracy"] if rows else float("nan")
    low, high = scalars["acc_low_gradcam"], scalars["acc_high_gradcam"]
    scalars["acc_trend"] = ("n/a" if math.isnan(low) or math.isnan(high) else
                            "rises" if high > low else "falls" if high < low else "stays level")

    # -- by case ------------------------------------------------------------------------------
    breakdown = {"case": cases, "images": by_case["images"][:-1], "top-1": by_case["top-1"][:-1],
                 "not available": availability.get("not available, guided", [float("nan")] * n_cases)}
    rejected_count = math.floor(CUT * n + 0.5)
    for name in (c for c in CASE_SCORES if c in scores):
        order = om.accept_order(scores[name], generator=spec.seed)  # ties at random
        rejected = torch.zeros(n, dtype=torch.bool)
        rejected[order[n - rejected_count:]] = True
        breakdown[f"rejected at 15 %: {name}"] = [_mean(rejected[case == c]) for c in range(n_cases)]
        breakdown[f"AUROC in case: {name}"] = [om.auroc(scores[name][case == c], correct[case == c])
                                               for c in range(n_cases)]
    for key, (where, name) in {"novel_rejected_msp": ("novel", "max softmax"),
                               "novel_rejected_gradcam": ("novel", "Over-MAP Grad-CAM"),
                               "normal_rejected_msp": ("normal", "max softmax"),
                               "normal_rejected_gradcam": ("normal", "Over-MAP Grad-CAM")}.items():
        column = breakdown.get(f"rejected at 15 %: {name}")
        scalars[key] = column[cases.index(where)] if column and where in cases else float("nan")
    step("relation and cases", t0)

    # -- FIDO-SCD as a third source, on a balanced subset --------------------------------------
    t0 = time.perf_counter()
    tables = {}
    per = max(1, spec.n_fido // n_cases)
    subset = torch.cat([torch.nonzero(case == c).flatten()[:per] for c in range(n_cases)])
    if overmap:
        scalars.update({"n_fido": len(subset), "fido_per_case": per,
                        "fido_samples": spec.fido_samples, "fido_iterations": spec.fido_iterations,
                        "fido_errors": int((~correct[subset]).sum())})
        config = FIDOConfig(iterations=spec.fido_iterations, samples=spec.fido_samples,
                            mask_size=spec.mask_size, sampler="scd")
        dtype = next(model.parameters()).dtype
        x_sub = images[subset].to(context.device).to(dtype).div_(255)
        fido = fit_cached(model, x_sub, pred[subset], config,
                          seeds=[spec.seed + int(i) for i in subset], cache_dir=context.cache_dir,
                          chunk=per, progress=progress, max_batch=context.profile.max_batch)
        sub = om.overmap_scores(model, x_sub, pred[subset], segmenter=segmenter, sources=("gradcam",),
                                segmentations=("guided",), extra_maps={"fido": fido.joint},
                                batch_size=batch)
        sub_scores = {name: conf[subset] for name, conf in all_scores.items()}
        sub_scores[FIDO_SCORE] = sub["fido/guided"]
        sub_correct = correct[subset]
        fido_areas = []
        for name, conf in sub_scores.items():
            est, low, high = om.bootstrap("augrc", conf, sub_correct, n_boot=spec.n_boot,
                                          generator=torch.Generator().manual_seed(spec.seed))
            fido_areas.append({"score": name, "AURC": om.aurc(conf, sub_correct),
                               "E-AURC": om.e_aurc(conf, sub_correct), "AUGRC": est,
                               "AUGRC low": low, "AUGRC high": high,
                               "AUROC": om.auroc(conf, sub_correct)})
        tables["fido_areas"] = _columns(fido_areas)
        fido_by = {r["score"]: r for r in fido_areas}
        scalars.update({"fido_evaluations": fido.model_evaluations,
                        "fido_cost": fido.model_evaluations / len(subset),
                        "eaurc_fido": fido_by[FIDO_SCORE]["E-AURC"],
                        "eaurc_gradcam_sub": fido_by["Over-MAP Grad-CAM"]["E-AURC"],
                        "eaurc_msp_sub": fido_by["max softmax"]["E-AURC"]})
        picks = torch.tensor([int(torch.nonzero(case[subset] == c)[0, 0]) for c in range(n_cases)])
        maps, segs = om.overmap_maps(model, x_sub[picks], pred[subset][picks], segmenter=segmenter,
                                     sources=("gradcam",), segmentations=("guided",),
                                     extra_maps={"fido": fido.joint[picks]}, batch_size=batch)
        arrays.update({"fido_images": images[subset][picks], "fido_gradcam": maps["gradcam"],
                       "fido_joint": maps["fido"], "fido_guided": segs["guided"].masks})
        tables["fido_examples"] = {
            "case": cases, "index": subset[picks].tolist(),
            "Grad-CAM overlap": sub_scores["Over-MAP Grad-CAM"][picks].tolist(),
            "FIDO overlap": sub_scores[FIDO_SCORE][picks].tolist()}
    else:
        for key in ("n_fido", "fido_per_case", "fido_samples", "fido_iterations", "fido_errors",
                    "fido_evaluations", "fido_cost", "eaurc_fido", "eaurc_gradcam_sub",
                    "eaurc_msp_sub"):
            scalars[key] = float("nan")
    step("FIDO (fitted or loaded)", t0)

    # -- what we measured ------------------------------------------------------------------
    t0 = time.perf_counter()
    summary = {"score": list(all_scores), "gain at 12–18 % (points)": list(gain.values()),
               "E-AURC": [by_name[s]["E-AURC"] for s in all_scores],
               "AUGRC": [by_name[s]["AUGRC"] for s in all_scores]}
    baseline_best = max((s for s in BASELINES if s in scores), key=lambda s: gain[s])

    def sentence(name: str) -> str:
        return f"{name} gains {gain[name]:.1f} points ({_against_claim(gain[name])})"

    if over:
        overmap_best = max(over, key=lambda s: gain[s])
        c = om.compare_rejection(scores[overmap_best], scores[baseline_best], logits, labels,
                                 CLAIM["rates"], metric="top3_macro", n_boot=spec.n_boot,
                                 generator=spec.seed)
        verdict = (f"At 12–18 % rejected, {sentence(overmap_best)}; the best baseline, "
                   f"{sentence(baseline_best)}. Compared with the best baseline, the best "
                   f"Over-MAP score's gain is {c.word}: {100 * c.mean:+.1f} points (95 % interval "
                   f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}], paired bootstrap over the "
                   f"images), from a top-3 macro accuracy of {100 * base['top3_macro']:.1f} % "
                   f"without rejection.")
        scalars.update({"overmap_best": overmap_best, "gain_difference": c.mean,
                        "gain_difference_low": c.low, "gain_difference_high": c.high,
                        "gain_word": c.word})
    else:
        verdict = (f"Over-MAP could not be computed on this data set (no segmentations). At 12–18 % "
                   f"rejected, the best baseline, {sentence(baseline_best)}, from a top-3 macro "
                   f"accuracy of {100 * base['top3_macro']:.1f} % without rejection.")
        scalars.update({"overmap_best": "n/a", "gain_difference": float("nan"),
                        "gain_difference_low": float("nan"), "gain_difference_high": float("nan"),
                        "gain_word": "n/a"})
    scalars["baseline_best"] = baseline_best
    scalars["verdict"] = verdict
    for key, name in {"gain_gradcam": "Over-MAP Grad-CAM", "gain_cbam": "Over-MAP CBAM",
                      "gain_msp": "max softmax", "gain_mc_mi": "MC dropout −MI",
                      "gain_plain": "Over-MAP Grad-CAM, plain seg.",
                      "gain_oracle": next(iter(ORACLE))}.items():
        scalars[key] = gain.get(name, float("nan"))
    step("summary", t0)
    bar.close()

    scalars.update({"overmap": overmap, "mc_dropout": mc_dropout, "fido": overmap,
                    "notes": " ".join(notes)})
    tables.update({
        "per_image": per_image, "by_case": by_case, "examples": examples,
        "availability": availability, "rejection": _columns(rejection),
        "areas": _columns(areas), "vs_random": _columns(vs_random),
        "relation": _columns(relation), "breakdown": breakdown, "summary": summary,
        "timings": {"step": list(timings), "seconds": list(timings.values())},
    })
    return new_result(NAME, spec, context, scalars=scalars, tables=tables, arrays=arrays)


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows (dicts with the same keys) as columns."""
    if not rows:
        return {}
    return {key: [r[key] for r in rows] for key in rows[0]}
