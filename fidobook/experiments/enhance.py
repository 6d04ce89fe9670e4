"""Chapter 5, mask-guided classification: do FIDO masks help the classifier without fine-tuning?

The SCD paper's claim (c) (Korsch et al., 2023), measured with fido-pytorch's ``enhance``
(:func:`fidobook.enhance.enhance`): keep the region of FIDO's joint map, blur the rest, crop to
the region's box and classify again with the same classifier. Every image of the test sets
(:func:`evaluation_sets`) is classified in the seven :data:`CONDITIONS`: the uncropped image,
the full procedure with CD and with SCD masks, the SCD procedure taken apart (crop only, blur
only), a random box of the SCD box's size, and the ground-truth box grown like a mask box. The
masks explain the **predicted** class (no labels at test time): one CD fit (t = 0.1) and one SCD
fit (t = 1), equal iterations and samples, through :func:`fidobook.study.fit_cached`.

The test sets: ``normal`` (``spec.n_test`` test images, evenly spaced over the split) and, on
the generated birds, ``small`` (``spec.n_small`` birds of the hard case ``small``, each cropped
from its twice-size render). On a CUB-format folder there are no generated small birds
(``context.hard_set`` is None): only the normal test images are scored, with the data set's own
bounding boxes, and every ``small`` scalar is None (``sets_note`` says so).

Every condition is compared with the uncropped image on the same images
(:func:`fidobook.enhance.paired_accuracy`: fixed, broken, paired bootstrap interval, exact
McNemar), and the interval's word comes from :func:`fidobook.stats.verdict` with margin 0,
worded by :data:`WORDS` ("raised", "lowered", "did not measurably change").

The result holds

- scalars, named as the chapter glues them, in the prose's units (percent, points): sizes
  (``n_normal``, ``n_small``, ``iterations``, ``samples``, ``size``, ``mask_size``,
  ``threshold``, ``t_cd``, ``t_scd``, ``lr``, ``l1``, ``tv``, ``ref_<length>``), the birds'
  render constants (``scale_normal_lo`` ..., None on real data), ``bird_size_<set>``,
  ``acc_<set>_<k>`` for condition ``k`` of :data:`CONDITIONS`, ``diff/low/high/fixed/broken/
  p/verdict_<set>_<k>`` (k >= 1, against the uncropped image), ``loc_*`` (SCD crop vs random box)
  and ``sampler_*`` (SCD vs CD masks), the by-size numbers (``smallest_*``, ``largest_*``,
  ``iou_scd_all``, ``iou_random_all``, ``box_side_all``), the sweep's (``best_tau_<set>``,
  ``best_acc_<set>``, ``region_ref_<set>``, ``side_ref_<set>``), the cost
  (``fit_evaluations``, ``fit_seconds``) and the notes (``source``, ``sets``, ``sets_note``,
  ``boxes_note``);
- tables: ``settings`` (the lengths at 224 px and here), ``accuracy`` (set × condition, %),
  ``paired`` (set × condition against the uncropped image), ``comparisons`` (localisation and
  sampler), ``per_image`` (one row per image: bird size, SCD box side, IoUs, size group and
  correctness in every condition), ``by_size`` (size groups, fractions), ``sweep`` (set × masks ×
  threshold), ``gallery`` and ``cases`` (the rows of the example arrays);
- arrays: ``gallery_images`` (uint8 G × 3 × H × W), ``gallery_boxes`` (G × 4, ground-truth boxes
  grown like mask boxes) and ``gallery_crops`` (uint8), and for the fixed / broken / neither /
  both examples ``cases_images``, ``cases_maps`` (C × H × W SCD joint maps), ``cases_enhanced``,
  ``cases_truth`` (uint8 crops), ``cases_scd_boxes``, ``cases_gt_boxes`` (C × 4). Both come from
  the small birds, or from the normal images where there are none.

Boxes are ``xyxy`` pixel edges of the images; bird size is the side of a square with the area of
the bird's box, as a share of the image side.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from ..enhance import (blend_with_blur, crop_boxes, default_settings, enhance, expand_boxes,
                       mask_boxes, paired_accuracy, random_boxes_like, region_masks)
from ..fido import FIDOConfig
from ..stats import verdict
from ..study import fit_cached
from ._base import Result, cached, check_spec, new_result
from .specs import EnhanceSpec as Spec

__all__ = ["NAME", "USES", "SAMPLERS", "CONDITIONS", "SETS", "THRESHOLDS", "WORDS",
           "LOCALISATION_WORDS", "SAMPLER_WORDS", "TestSet", "run", "evaluation_sets", "views",
           "size_groups", "median"]

NAME = "enhance"
USES = ("data", "classifier")

#: The two mask kinds at their reference temperatures (fido-pytorch's pairing).
SAMPLERS = {"CD": {"sampler": "cd", "temperature": 0.1}, "SCD": {"sampler": "scd", "temperature": 1.0}}
#: The seven ways each image is classified; ``k`` in the scalars' names indexes this tuple.
CONDITIONS = ("uncropped", "CD: blur + crop", "SCD: blur + crop", "SCD: crop only",
              "SCD: blur only", "random box", "ground-truth box")
#: The test sets, in the order of the fits and of the pooled tables.
SETS = ("normal", "small")
#: The thresholds of the sensitivity sweep (the spec's threshold is added if missing).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: :func:`fidobook.stats.verdict`'s words (margin 0) for a condition against the uncropped image.
WORDS = {"better": "raised", "worse": "lowered", "not measurably different": "did not measurably change",
         "inconclusive": "did not measurably change"}
#: ... for the SCD crop against a random box of its size.
LOCALISATION_WORDS = {"better": "beat", "worse": "fell behind",
                      "not measurably different": "was not measurably different from",
                      "inconclusive": "was not measurably different from"}
#: ... for SCD masks against CD masks.
SAMPLER_WORDS = {"better": "more accurate than", "worse": "less accurate than",
                 "not measurably different": "not measurably more or less accurate than",
                 "inconclusive": "not measurably more or less accurate than"}
#: Images in the galleries.
GALLERY = 6


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """Runs (or loads) mask-guided classification on ``context`` (see the module docstring)."""
    check_spec(spec, Spec, NAME)
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


# ----------------------------------------------------------------------------------------------
# The test sets and the seven views


@dataclasses.dataclass
class TestSet:
    """One test set of the chapter.

    Attributes:
        name (str): ``"normal"`` or ``"small"``.
        images (Tensor[N, 3, H, W]): float in [0, 1], on the context's device.
        source (Tensor[N, 3, H', W'] or None): a higher-resolution copy the crops take their
            pixels from (the small birds' twice-size renders), on the device.
        labels (LongTensor[N]): classes (CPU).
        boxes (Tensor[N, 4]): the bird's ``xyxy`` box in pixels of ``images`` (CPU).
        index (LongTensor[N]): positions in the test split (normal) or in the hard set (small).
    """

    __test__ = False  # not a pytest class, whatever its name

    name: str
    images: Tensor
    source: Tensor | None
    labels: Tensor
    boxes: Tensor
    index: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def bird_size(self) -> Tensor:
        """Tensor[N]: the side of a square with the box's area, as a share of the image side."""
        w, h = (self.boxes[:, 2:] - self.boxes[:, :2]).unbind(1)
        return (w * h).sqrt() / self.images.shape[-1]


def evaluation_sets(spec: Spec, context) -> dict[str, TestSet]:
    """The chapter's test sets: ``normal`` (``spec.n_test`` test images, evenly spaced over the
    split, which is ordered by class) and, on the generated birds, ``small`` (``spec.n_small``
    birds of the hard case ``small``, with their twice-size renders). A CUB-format folder has no
    ``small`` set."""
    from torchvision.ops import box_convert

    check_spec(spec, Spec, NAME)
    ev = context.evaluation_set(spec.n_test, rule="spaced")
    sets = {"normal": TestSet("normal", ev.images, None, ev.labels, ev.boxes, ev.index)}
    hard = context.hard_set(("small",), per_case=spec.n_small)
    if hard is not None:
        order = torch.argsort(hard["hires_index"])  # hires row k belongs to image hires_index[k]
        sets["small"] = TestSet(
            "small", hard["images"].to(context.device).float().div_(255),
            hard["hires"][order].to(context.device).float().div_(255), hard["labels"].cpu(),
            box_convert(hard["boxes"].float(), "xywh", "xyxy"), torch.arange(len(hard["labels"])))
    return sets


def views(s: TestSet, joint: dict[str, Tensor], gt_boxes: Tensor, random_boxes: Tensor,
          threshold: float):
    """Every condition's input images for one set, one at a time (memory).

    Args:
        s (TestSet): the images (and the higher-resolution copy crops take pixels from).
        joint (dict): ``"CD"`` and ``"SCD"`` -> joint maps Tensor[N, H, W] on the images' device.
        gt_boxes, random_boxes (Tensor[N, 4]): the ground-truth boxes grown like mask boxes, and
            the random boxes, on the device.
        threshold (float): the mask threshold.

    Yields:
        (str, Tensor[N, 3, H, W]): the condition (:data:`CONDITIONS` order) and its images.
    """
    x, src = s.images, s.source
    h = x.shape[-2]
    kw = {"threshold": threshold, "source": src}
    yield "uncropped", x
    yield "CD: blur + crop", enhance(x, joint["CD"], **kw)
    yield "SCD: blur + crop", enhance(x, joint["SCD"], **kw)
    yield "SCD: crop only", enhance(x, joint["SCD"], blur=False, **kw)
    yield "SCD: blur only", blend_with_blur(x, joint["SCD"])
    yield "random box", crop_boxes(x, random_boxes, h, source=src).clamp(0, 1)
    yield "ground-truth box", crop_boxes(x, gt_boxes, h, source=src).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Small helpers


def median(x: Tensor) -> float:
    """The median of ``x`` with the usual definition (the mean of the two middle values for an
    even count, as ``pandas`` and ``numpy``; ``Tensor.median`` takes the lower one)."""
    return float(torch.quantile(torch.as_tensor(x, dtype=torch.float64).flatten(), 0.5))


def size_groups(sizes: Tensor, n_groups: int = 4) -> Tensor:
    """Equal-count groups by size: ``pandas.qcut(sizes.rank(method="first"), n_groups)``.

    Images are ranked by size (ties in order of appearance), and the ranks cut at their
    ``1/n, 2/n ...`` quantiles (linear interpolation) into right-closed groups, the first
    including its lower edge.

    Args:
        sizes (Tensor[N]): one value per image.
        n_groups (int): groups; at most N. Default: 4.

    Returns:
        LongTensor[N]: the group of each image, 0 = smallest.
    """
    sizes = torch.as_tensor(sizes, dtype=torch.float64).flatten()
    n = sizes.numel()
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= max(n, 1):
        raise ValueError(f"n_groups: expected an int in [1, {max(n, 1)}], got {n_groups!r}")
    rank = torch.empty(n, dtype=torch.float64)
    rank[torch.sort(sizes, stable=True).indices] = torch.arange(1, n + 1, dtype=torch.float64)
    edges = torch.quantile(rank, torch.linspace(0, 1, n_groups + 1, dtype=torch.float64))
    return torch.searchsorted(edges[1:-1].contiguous(), rank, side="left")


def _fido_config(spec: Spec, sampler: str, max_batch):
    """The FIDOConfig of one fit and the extra ``fit_cached`` arguments (``max_batch`` goes
    where this version of the package takes it; see ``cd_vs_scd._fido_config``)."""
    fields = {"iterations": spec.iterations, "samples": spec.samples, "mask_size": spec.mask_size,
              **SAMPLERS[sampler]}
    if "max_batch" in FIDOConfig.__dataclass_fields__:
        return FIDOConfig(**fields, max_batch=max_batch), {}
    return FIDOConfig(**fields), {"max_batch": max_batch}


def _uint8(x: Tensor) -> Tensor:
    """[0, 1] images as uint8 (for the result's example arrays)."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _pct(x: Tensor) -> float:
    return 100 * float(x.double().mean())


def _columns(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


# ----------------------------------------------------------------------------------------------
# The experiment


def _compute(spec: Spec, context, progress: bool) -> Result:
    from ..models import predict

    sets = evaluation_sets(spec, context)
    model = context.classifier()
    device = context.device
    batch = context.profile.max_batch or 256
    size = sets["normal"].images.shape[-1]
    settings = default_settings(size)
    reference = default_settings(224)

    def classify(images: Tensor) -> Tensor:  # LongTensor[N] on the CPU
        return predict(model, images, batch_size=batch, device=device).argmax(1)

    # -- the masks: one CD and one SCD fit over both sets, explaining the predicted classes -------
    images = torch.cat([s.images for s in sets.values()])
    targets = classify(images)
    seeds = [spec.seed * 100_000 + i for i in range(len(images))]
    fits = {}
    for name in tqdm(SAMPLERS, desc="enhance fits", disable=not progress):
        config, extra = _fido_config(spec, name, context.profile.max_batch)
        fits[name] = fit_cached(model, images, targets, config, seeds=seeds,
                                cache_dir=context.cache_dir, chunk=spec.chunk, progress=progress,
                                **extra)
    joint, start = {}, 0
    for s in sets.values():
        joint[s.name] = {k: r.joint[start:start + len(s)] for k, r in fits.items()}  # (N, H, W)
        start += len(s)

    # -- the seven conditions ------------------------------------------------------------------
    rng = torch.Generator().manual_seed(spec.seed + 1)  # the random boxes (CPU: device-independent)
    correct, boxes = {}, {}
    for s in tqdm(sets.values(), desc="enhance conditions", disable=not progress):
        scd = mask_boxes(joint[s.name]["SCD"], spec.threshold)
        boxes[s.name] = {
            "SCD": scd.cpu(),
            "random": random_boxes_like(scd.cpu(), size, size, rng),
            "truth": expand_boxes(s.boxes, size, size, pad=settings["pad"],
                                  min_size=settings["min_size"]),
        }
        b = {k: v.to(device) for k, v in boxes[s.name].items()}
        for condition, view in views(s, joint[s.name], b["truth"], b["random"], spec.threshold):
            correct[s.name, condition] = classify(view) == s.labels
    names = list(sets)

    # -- accuracy and paired comparisons with the uncropped image --------------------------------
    scalars: dict = {}
    accuracy, paired = [], []
    for name in SETS:
        for k, c in enumerate(CONDITIONS):
            acc = _pct(correct[name, c]) if name in sets else None
            scalars[f"acc_{name}_{k}"] = acc
            if name in sets:
                accuracy.append({"set": name, "condition": c, "k": k, "accuracy, %": acc})
    for name in SETS:
        for k, c in enumerate(CONDITIONS[1:], start=1):
            keys = [f"{m}_{name}_{k}" for m in ("diff", "low", "high", "fixed", "broken", "p", "verdict")]
            if name not in sets:
                scalars.update(dict.fromkeys(keys, None))
                continue
            r = paired_accuracy(correct[name, "uncropped"], correct[name, c],
                                n_boot=spec.resamples, generator=spec.seed)
            word = WORDS[verdict(r.low, r.high, 0.0)]
            scalars.update(zip(keys, (100 * r.difference, 100 * r.low, 100 * r.high, r.fixed,
                                      r.broken, r.p_value, word)))
            paired.append({"set": name, "condition": c, "before %": 100 * r.before,
                           "after %": 100 * r.after, "difference (points)": 100 * r.difference,
                           "95 % CI low": 100 * r.low, "95 % CI high": 100 * r.high,
                           "fixed": r.fixed, "broke": r.broken, "McNemar p": r.p_value,
                           "verdict": word})

    # -- localisation (SCD crop vs a random box) and sampler (SCD vs CD) ---------------------------
    comparisons = []
    for key, (a, b), words, what in (
            ("loc", ("random box", "SCD: crop only"), LOCALISATION_WORDS, "SCD crop only − random box"),
            ("sampler", ("CD: blur + crop", "SCD: blur + crop"), SAMPLER_WORDS, "SCD − CD, blur + crop")):
        for name in SETS:
            if name not in sets:
                scalars[f"{key}_verdict_{name}"] = scalars[f"{key}_diff_{name}"] = None
                continue
            r = paired_accuracy(correct[name, a], correct[name, b], n_boot=spec.resamples,
                                generator=spec.seed)
            word = verdict(r.low, r.high, 0.0)
            scalars[f"{key}_verdict_{name}"] = words[word]
            scalars[f"{key}_diff_{name}"] = 100 * r.difference
            comparisons.append({"set": name, "comparison": what, "difference (points)": 100 * r.difference,
                                "95 % CI low": 100 * r.low, "95 % CI high": 100 * r.high,
                                "fixed": r.fixed, "broke": r.broken, "McNemar p": r.p_value,
                                "verdict": word, "words": words[word]})

    # -- where it helps: per image, then groups of equal size by bird size -----------------------
    per_image = {"set": [], "image": [], "label": [], "predicted": [], "bird size": [],
                 "SCD box side": [], "IoU SCD box": [], "IoU random box": []}
    per_image.update({c: [] for c in CONDITIONS})
    start = 0
    for s in sets.values():
        b = boxes[s.name]
        per_image["set"] += [s.name] * len(s)
        per_image["image"] += s.index.tolist()
        per_image["label"] += s.labels.tolist()
        per_image["predicted"] += targets[start:start + len(s)].tolist()
        start += len(s)
        per_image["bird size"] += s.bird_size.tolist()
        per_image["SCD box side"] += ((b["SCD"][:, 2] - b["SCD"][:, 0]) / size).tolist()
        per_image["IoU SCD box"] += box_iou(b["SCD"], s.boxes).diagonal().tolist()
        per_image["IoU random box"] += box_iou(b["random"], s.boxes).diagonal().tolist()
        for c in CONDITIONS:
            per_image[c] += correct[s.name, c].tolist()
    bird = torch.tensor(per_image["bird size"], dtype=torch.float64)
    n_groups = min(4, len(set(per_image["bird size"])))
    group = size_groups(bird, n_groups)
    per_image["size group"] = [f"Q{int(g) + 1}" for g in group]
    col = {k: torch.tensor(v, dtype=torch.float64) for k, v in per_image.items()
           if k not in ("set", "size group")}
    is_small = torch.tensor([v == "small" for v in per_image["set"]])
    by_size = []
    for q in range(n_groups):
        m = group == q
        by_size.append({
            "size group": f"Q{q + 1}", "images": int(m.sum()), "small_birds": int(is_small[m].sum()),
            "bird_size": median(bird[m]), "box_side": median(col["SCD box side"][m]),
            "iou_scd": float(col["IoU SCD box"][m].mean()),
            "iou_random": float(col["IoU random box"][m].mean()),
            "uncropped": float(col["uncropped"][m].mean()),
            "scd": float(col["SCD: blur + crop"][m].mean()),
            "truth": float(col["ground-truth box"][m].mean())})
        by_size[-1]["gain"] = by_size[-1]["scd"] - by_size[-1]["uncropped"]
    for tag, row in (("smallest", by_size[0]), ("largest", by_size[-1])):
        scalars[f"{tag}_size"] = 100 * row["bird_size"]
        scalars[f"{tag}_gain"] = 100 * row["gain"]
        scalars[f"{tag}_iou"] = row["iou_scd"]
        scalars[f"{tag}_iou_random"] = row["iou_random"]
        scalars[f"{tag}_truth_gain"] = 100 * (row["truth"] - row["uncropped"])
    scalars["iou_scd_all"] = float(col["IoU SCD box"].mean())
    scalars["iou_random_all"] = float(col["IoU random box"].mean())
    scalars["box_side_all"] = 100 * median(col["SCD box side"])
    scalars["n_groups"] = n_groups

    # -- the threshold sweep: blend once, crop per threshold ---------------------------------------
    taus = sorted(set(THRESHOLDS) | {float(spec.threshold)})
    sweep = []
    for s in tqdm(sets.values(), desc="enhance sweep", disable=not progress):
        for sampler in SAMPLERS:
            j = joint[s.name][sampler]
            blended = blend_with_blur(s.images if s.source is None else s.source, j)
            for tau in taus:
                box = mask_boxes(j, tau)
                view = (crop_boxes(blended, box, size) if s.source is None
                        else crop_boxes(s.images, box, size, source=blended)).clamp(0, 1)
                ok = classify(view) == s.labels
                sweep.append({"set": s.name, "masks": sampler, "threshold": tau,
                              "accuracy, %": _pct(ok),
                              "box side, % of image": 100 * median((box[:, 2] - box[:, 0]).cpu() / size),
                              "region, % of image": _pct(region_masks(j, tau).cpu())})
    for name in SETS:
        rows = [r for r in sweep if r["set"] == name and r["masks"] == "SCD"]
        best = max(rows, key=lambda r: r["accuracy, %"]) if rows else None  # the first of equals
        ref = next((r for r in rows if r["threshold"] == spec.threshold), None)
        scalars[f"best_tau_{name}"] = None if best is None else best["threshold"]
        scalars[f"best_acc_{name}"] = None if best is None else best["accuracy, %"]
        scalars[f"region_ref_{name}"] = None if ref is None else ref["region, % of image"]
        scalars[f"side_ref_{name}"] = None if ref is None else ref["box side, % of image"]

    # -- the example images ----------------------------------------------------------------------
    shown = sets.get("small", sets["normal"])
    g = list(range(min(GALLERY, len(shown))))
    gt = boxes[shown.name]["truth"]
    src = None if shown.source is None else shown.source[g]
    arrays = {"gallery_images": _uint8(shown.images[g]), "gallery_boxes": gt[g],
              "gallery_crops": _uint8(crop_boxes(shown.images[g], gt[g].to(device), size, source=src))}
    before, after = correct[shown.name, "uncropped"], correct[shown.name, "SCD: blur + crop"]
    picked, kinds = [], []
    for kind, m in (("fixed", ~before & after), ("broken", before & ~after),
                    ("neither", ~before & ~after), ("both", before & after)):
        found = torch.nonzero(m).flatten()[:2].tolist()
        picked += found
        kinds += [kind] * len(found)
    picked, kinds = picked[:GALLERY], kinds[:GALLERY]
    src = None if shown.source is None else shown.source[picked]
    scd_maps = joint[shown.name]["SCD"][picked]
    arrays.update({
        "cases_images": _uint8(shown.images[picked]), "cases_maps": scd_maps.float().cpu(),
        "cases_enhanced": _uint8(enhance(shown.images[picked], scd_maps, threshold=spec.threshold,
                                         source=src)),
        "cases_truth": _uint8(crop_boxes(shown.images[picked], gt[picked].to(device), size, source=src)),
        "cases_scd_boxes": boxes[shown.name]["SCD"][picked], "cases_gt_boxes": gt[picked]})

    # -- sizes, settings and notes -----------------------------------------------------------------
    from ..data import hard

    birds = context.source == "birds"
    config = _fido_config(spec, "SCD", None)[0]
    scalars.update({
        "source": context.source, "sets": ", ".join(names),
        "n_normal": len(sets["normal"]), "n_small": len(sets["small"]) if "small" in sets else None,
        "iterations": spec.iterations, "samples": spec.samples, "mask_size": spec.mask_size,
        "size": size, "threshold": float(spec.threshold),
        "t_cd": SAMPLERS["CD"]["temperature"], "t_scd": SAMPLERS["SCD"]["temperature"],
        "lr": config.lr, "l1": config.l1, "tv": config.tv,
        **{f"ref_{k}": v for k, v in reference.items()},
        **{f"bird_size_{n}": (100 * median(sets[n].bird_size) if n in sets else None) for n in SETS},
        "scale_normal_lo": 100 * hard.RENDER["scale"][0] if birds else None,
        "scale_normal_hi": 100 * hard.RENDER["scale"][1] if birds else None,
        "scale_small_lo": 100 * hard.SMALL_SCALE[0] if birds else None,
        "scale_small_hi": 100 * hard.SMALL_SCALE[1] if birds else None,
        "clutter_lo": hard.HEAVY_CLUTTER[0] if birds else None,
        "clutter_hi": hard.HEAVY_CLUTTER[1] if birds else None,
        "fit_evaluations": sum(r.model_evaluations for r in fits.values()),
        "fit_seconds": sum(r.seconds for r in fits.values()),
        "examples_from": shown.name,
        "sets_note": ("the normal test images and the small birds of the hard test cases" if "small" in sets
                      else "the normal test images only: a CUB-format folder has no generated small "
                           "birds (the hard test cases exist only for the generated birds), so every "
                           "small-bird number is n/a"),
        "boxes_note": ("the generated birds' boxes" if birds else
                       f"the data set's bounding boxes (bounding_boxes.txt), brought to {size} px "
                       f"like the images"),
    })
    for k, v in scalars.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{NAME}: scalar {k!r} is not finite ({v}); the inputs were bad")

    return new_result(NAME, spec, context, scalars=scalars, arrays=arrays, tables={
        "settings": {"length, px": list(settings), "at 224 px (fido-pytorch)": list(reference.values()),
                     f"at {size} px (here)": list(settings.values())},
        "accuracy": _columns(accuracy), "paired": _columns(paired),
        "comparisons": _columns(comparisons), "per_image": per_image, "by_size": _columns(by_size),
        "sweep": _columns(sweep),
        "gallery": {"set": [shown.name] * len(g), "image": shown.index[g].tolist(),
                    "bird size": shown.bird_size[g].tolist()},
        "cases": {"set": [shown.name] * len(picked), "image": shown.index[picked].tolist(),
                  "kind": kinds,
                  **{c: correct[shown.name, c][picked].tolist()
                     for c in ("uncropped", "SCD: blur + crop", "ground-truth box")}},
    })
