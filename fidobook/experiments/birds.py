"""Chapter 3, the data set and the classifier: ground truth, accuracy, errors by part, attention.

The report of the data set and of the classifier every later chapter explains. On the generated
birds it holds the generation arguments, the class structure (variants, class table, pairs one
part apart), the training images' missing parts, the classifier's accuracy and its errors read
part by part through the class table (:func:`fidobook.parts.error_parts`), and where the last
CBAM block's spatial attention puts its mass. On a CUB-format folder the birds-only parts (no
generation arguments, variants, class table or part masks) are absent and the report holds what
the folder has: class and image counts, keypoint visibility, whether segmentations exist, the
per-class accuracy of the reader's classifier, and the CBAM attention only if the classifier has
CBAM blocks. ``result["source"]`` says which; ``result.tables`` lists what is there.

Scalars (always): ``source``, ``num_classes``, ``n_train``, ``n_test``, ``image_size``,
``segmentations`` (bool), ``parts_note``, ``bird_share``, ``bird_share_from``, ``arch``,
``n_params``, ``trained`` (bool: the profile's classifier rather than the reader's weights),
``accuracy``, ``n_correct``, ``n_errors``, ``chance``, ``has_cbam``; on the birds also the
generation arguments, the class-structure counts and the errors by part (``n_single``,
``top_part`` ...); with CBAM ``att_size``, ``att_bird``, ``att_bird_correct``,
``att_bird_errors``, ``att_area``.

Tables: ``keypoints`` (P rows), ``areas`` (P + 1 labels), ``architecture``, ``history`` (one row
per epoch; empty for the reader's weights), ``per_image`` (N test images), ``per_class`` (K),
``confusions`` (the most frequent wrong pairs), ``examples``; birds: ``generation``, ``variants``,
``classes``, ``pairs_by_distance``, ``one_part_pairs``, ``missing_parts``, ``missing_counts``,
``train_examples``, ``neighbours``, ``errors``, ``errors_by_part``, ``errors_by_distance``,
``error_examples``; with CBAM ``attention``.

Arrays: ``confusion`` (Tensor[K, K], rows sum to 1 where the class has test images), ``order``
(LongTensor[K], the class order of the figures), ``example_images`` (uint8 Tensor[E, 3, H, W])
with ``example_part_masks`` (uint8 [E, H, W]), ``example_boxes`` ([E, 4] x, y, w, h),
``example_keypoints`` ([E, P, 3]) and ``example_segmentations`` (bool [E, H, W], when the data
has them); birds: ``distances`` (LongTensor[K, K]), ``gallery`` (uint8 [5 H, 9 W, 3]),
``neighbour_images`` (uint8 [M, H, W, 3]), ``train_images`` and ``error_images`` (uint8
[*, 3, H, W]); with CBAM ``example_attention`` (Tensor[E, 1, h, w], the raw last map).
"""
from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ._base import Result, cached, check_spec, new_result
from .specs import BirdsSpec as Spec

__all__ = ["NAME", "USES", "Spec", "architecture", "forward_report", "run"]

NAME = "birds"
USES = ("data", "classifier")

#: Wrong (true, predicted) pairs kept in the ``confusions`` table, most frequent first.
_TOP_CONFUSIONS = 20
_DEFAULT_BATCH = 256
#: Images per chunk of the per-pixel shares (bounds the memory of (N, H, W) intermediates).
_CHUNK = 256


def run(spec: Spec, context, *, progress: bool = True, cache: bool = True) -> Result:
    """The data set and classifier report on ``context`` (see the module docstring).

    Args:
        spec (BirdsSpec): how many examples the galleries keep, and the render seed.
        context (Context): data and classifier.
        progress (bool): progress bars. Default: True.
        cache (bool): read and write the result cache. Default: True.

    Returns:
        Result
    """
    check_spec(spec, Spec, NAME)
    return cached(NAME, spec, context, _compute, uses=USES, progress=progress, cache=cache)


# ----------------------------------------------------------------------------------------------
# Public helpers (the chapter's former cells)


def architecture(model: nn.Module, image_size: int, *, device=None) -> list[dict]:
    """The model's top-level blocks with their output shapes, CBAM count and parameters.

    A ``Sequential`` of ``Sequential`` s (``SmallCNN``'s stages) is expanded one level. The
    shapes come from forward hooks on one zero image; the hooks are removed whatever happens.

    Args:
        model (nn.Module): a classifier taking ``Tensor[1, 3, S, S]``.
        image_size (int): S.
        device (optional): where to run; default the model's parameters' device.

    Returns:
        list of dict: per block ``block``, ``type``, ``output (C, H, W)`` (e.g. ``"64×12×12"``),
        ``CBAM`` (count), ``parameters``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    _checks.check_positive_int(image_size, "image_size")
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None else torch.float32
    blocks = list(_blocks(model))
    shapes: dict[str, tuple] = {}
    handles = []
    was_training = model.training
    try:
        for name, block in blocks:
            handles.append(block.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [{"block": name, "type": type(block).__name__,
             "output (C, H, W)": "×".join(map(str, shapes.get(name, ()))),
             "CBAM": sum(type(m).__name__ == "CBAM" for m in block.modules()),
             "parameters": sum(p.numel() for p in block.parameters())}
            for name, block in blocks]


def forward_report(model: nn.Module, images: Tensor, *, batch_size: int | None = None,
                   attention: bool = True, progress: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logits and the last CBAM block's spatial attention from one pass over ``images``.

    Args:
        model (nn.Module): a classifier in eval mode taking [0, 1] images; its
            ``cbam_modules`` (if any) give the attention.
        images (Tensor[N, 3, H, W]): uint8 (0–255) or float in [0, 1], any device.
        batch_size (int, optional): images per forward pass. Default: 256.
        attention (bool): capture the last CBAM map (when the model has CBAM blocks).
        progress (bool): a progress bar over the batches.

    Returns:
        tuple: ``(logits Tensor[N, K], attention Tensor[N, 1, h, w] or None)``, on the CPU; the
        attention is the raw gate in (0, 1) (None without CBAM blocks or with ``attention=False``).
    """
    from tqdm.auto import tqdm

    from ..cam import attention_maps

    _checks.check_tensor(images, "images")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    batch_size = _DEFAULT_BATCH if batch_size is None else _checks.check_positive_int(batch_size, "batch_size")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    blocks = list(getattr(model, "cbam_modules", None) or [])[-1:] if attention else []
    logits, maps = [], []
    starts = range(0, len(images), batch_size)
    hooks = attention_maps(model, blocks) if blocks else nullcontext([[]])
    with torch.no_grad(), hooks as captured:
        for a in tqdm(starts, desc="test set", disable=not progress, leave=False):
            x = images[a:a + batch_size].to(device)
            x = x.to(dtype).div_(255) if x.dtype == torch.uint8 else x.to(dtype)
            out = model(x)
            _checks.check_finite(out, "logits")
            logits.append(out.float().cpu())
            if blocks:
                maps.append(captured[0].pop().float().cpu())  # (B, 1, h, w)
    k = logits[0].shape[1] if logits else 0
    logits = torch.cat(logits) if logits else torch.zeros(0, k)
    return logits, (torch.cat(maps) if blocks and maps else None)


# ----------------------------------------------------------------------------------------------
# The computation


def _compute(spec: Spec, context, progress: bool) -> Result:
    from ..data import CUB

    test = context.split("test")
    size = context.profile.image_size
    K, names = context.num_classes, context.class_names
    labels = test["labels"].long()
    part_names = list(test["part_names"])
    # The part-mask labels: the birds' PART_NAMES, or background + the keypoint parts (discs).
    label_names = list(test.get("part_labels") or ["background"] + part_names)
    part_masks = test["part_masks"]  # (N, H, W) integer labels, kept in their small dtype
    birds = context.source == "birds"
    # The training split's labels and keypoints (as in the files; no pixel is decoded here).
    train_meta = CUB(context.root, "train", None if birds else size, with_segmentation=False,
                     with_part_masks=False)
    scalars = {"source": context.source, "num_classes": K, "n_train": len(train_meta),
               "n_test": len(labels), "image_size": size,
               "segmentations": test.get("segmentations") is not None,
               "parts_note": test["parts_note"]}
    tables, arrays = {}, {}

    # Keypoint visibility (what every CUB-format folder has): training images as in the files,
    # test images at the profile's size (a keypoint the centre crop cut off counts as invisible).
    tables["keypoints"] = {
        "part": part_names,
        "visible, train": (train_meta.parts[:, :, 2] > 0).double().mean(0).tolist(),
        "visible, test": (test["parts"][:, :, 2] > 0).double().mean(0).tolist()}

    # Area of each part label, and of the bird.
    area = _label_shares(part_masks, len(label_names))  # (N, L)
    pixels = area * size * size
    tables["areas"] = {"part label": label_names, "mean share of the image": area.mean(0).tolist(),
                       "mean pixels": pixels.mean(0).tolist(),
                       "smallest (pixels)": pixels.min(0).values.tolist()}
    objects, scalars["bird_share_from"] = _objects(context, test, part_masks)
    scalars["bird_share"] = _share(objects)

    classes = context.class_parts() if birds else None
    if classes is not None:
        _birds_data(spec, context, classes, train_meta, area, pixels, scalars, tables, arrays)
    arrays["order"] = _class_order(classes, K)

    # The classifier.
    model = context.classifier()
    _classifier(context, model, scalars, tables)
    batch = context.profile.max_batch
    logits, attention = forward_report(model, test["images"], batch_size=batch, progress=progress)
    if logits.shape[1] != K:
        raise ValueError(f"classifier: expected {K} logits (the data's classes), got {logits.shape[1]}")
    predictions = logits.argmax(1)
    correct = predictions == labels
    confidence = logits.softmax(1).amax(1)
    n_correct = int(correct.sum())
    scalars.update(accuracy=n_correct / max(len(labels), 1), n_correct=n_correct,
                   n_errors=len(labels) - n_correct, chance=1 / K)
    tables["per_image"] = {"index": list(range(len(labels))), "label": labels.tolist(),
                           "prediction": predictions.tolist(), "correct": correct.tolist(),
                           "confidence": confidence.tolist()}
    counts = torch.bincount(labels, minlength=K)
    hits = torch.bincount(labels[correct], minlength=K)
    tables["per_class"] = {"class": list(range(K)), "name": names, "test images": counts.tolist(),
                           "correct": hits.tolist(),
                           "accuracy": [h / c if c else float("nan") for h, c in
                                        zip(hits.tolist(), counts.tolist())]}
    confusion = torch.zeros(K, K, dtype=torch.float64)
    confusion.index_put_((labels, predictions), torch.ones(len(labels), dtype=torch.float64),
                         accumulate=True)
    tables["confusions"] = _top_confusions(confusion, names)
    arrays["confusion"] = (confusion / confusion.sum(1, keepdim=True).clamp(min=1)).float()

    if classes is not None:
        _errors_by_part(spec, classes, labels, predictions, test, scalars, tables, arrays)

    # Examples: the first test image of the first classes.
    firsts = [int(torch.nonzero(labels == k)[0]) for k in range(K) if counts[k] > 0][:spec.examples]
    idx = torch.tensor(firsts, dtype=torch.long)
    tables["examples"] = {"index": firsts, "label": labels[idx].tolist(),
                          "prediction": predictions[idx].tolist(), "correct": correct[idx].tolist()}
    arrays["example_images"] = test["images"][idx]
    arrays["example_part_masks"] = part_masks[idx].to(torch.uint8)
    arrays["example_boxes"] = test["boxes"][idx].float()
    arrays["example_keypoints"] = test["parts"][idx].float()
    if test.get("segmentations") is not None:
        arrays["example_segmentations"] = test["segmentations"][idx, 0] > 127

    # The last CBAM block's attention.
    scalars["has_cbam"] = attention is not None
    if attention is not None:
        _attention(attention, part_masks, objects, correct, label_names, area, idx,
                   scalars, tables, arrays)
    return new_result(NAME, spec, context, scalars=scalars, tables=tables, arrays=arrays)


def _label_shares(part_masks: Tensor, num_labels: int) -> Tensor:
    """Tensor[N, L] (float64): the area share of each part label, in chunks of images."""
    from ..parts import part_mass

    out = [part_mass(torch.ones(m.shape), m.long(), num_labels)
           for m in part_masks.split(_CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, num_labels, dtype=torch.float64)


def _share(mask: Tensor) -> float:
    """The share of True pixels of a BoolTensor (without a float copy of it)."""
    return int(mask.sum()) / max(mask.numel(), 1)


def _objects(context, test, part_masks) -> tuple[Tensor, str]:
    """BoolTensor[N, H, W], the bird's pixels, and what they come from."""
    if context.source == "birds":
        return part_masks > 0, "the part masks"
    seg = test.get("segmentations")
    if seg is not None:
        return seg[:, 0] > 127, "the segmentations"
    h, w = part_masks.shape[-2:]
    boxes = test["boxes"].float()  # (N, 4) x, y, w, h
    ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5  # pixel centres
    xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
    x0, y0 = boxes[:, 0, None, None], boxes[:, 1, None, None]
    x1, y1 = x0 + boxes[:, 2, None, None], y0 + boxes[:, 3, None, None]
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1), "the bounding boxes"


def _class_order(classes, k: int) -> Tensor:
    """The class order of the heatmaps: by beak, then eye, ... (birds); by id otherwise."""
    if classes is None:
        return torch.arange(k)
    from ..parts import class_table

    return torch.from_numpy(np.lexsort(class_table(classes).numpy().T[::-1]).copy()).long()


def _birds_data(spec, context, classes, train_meta, area, pixels, scalars, tables, arrays):
    """Generation arguments, variants, class structure, missing parts (the birds only)."""
    from ..data import (
        N_VARIANTS,
        PART_TYPES,
        VARIANT_NAMES,
        class_distances,
        part_differences,
        render_bird,
        variant_gallery,
    )
    from ..parts import PART_LABELS

    size = context.profile.image_size
    args = json.loads((context.root / "fidobook_birds.json").read_text())["args"]
    tables["generation"] = {"argument": list(args), "value": [str(v) for v in args.values()]}
    scalars.update(rotation=float(args["rotation"]), scale_lo=float(args["scale"][0]),
                   scale_hi=float(args["scale"][1]), clutter_lo=int(args["clutter"][0]),
                   clutter_hi=int(args["clutter"][1]), noise=float(args["noise"]),
                   part_dropout=float(args["part_dropout"]))
    for p in ("eye", "beak", "foot"):
        scalars[f"{p}_px"] = float(pixels[:, PART_LABELS[p]].mean())

    # Variants and classes.
    tables["variants"] = {"part type": list(PART_TYPES),
                          "variants": [N_VARIANTS[p] for p in PART_TYPES],
                          "names": [", ".join(VARIANT_NAMES[p]) for p in PART_TYPES]}
    scalars.update(n_birds=int(np.prod([N_VARIANTS[p] for p in PART_TYPES])),
                   var_min=min(N_VARIANTS.values()), var_max=max(N_VARIANTS.values()))
    arrays["gallery"] = torch.from_numpy(np.ascontiguousarray(variant_gallery(size=size, seed=spec.seed)))
    k = len(classes)
    tables["classes"] = {"class": list(range(k)),
                         **{p: [VARIANT_NAMES[p][c[p]] for c in classes] for p in PART_TYPES}}
    distances = class_distances(classes)  # (K, K)
    arrays["distances"] = torch.from_numpy(distances).long()
    iu = np.triu_indices(k, k=1)
    pair_distance = distances[iu]
    one_part = [part_differences(classes[a], classes[b])[0]
                for a, b in zip(*iu) if distances[a, b] == 1]
    has_neighbour = (distances == 1).any(1)
    n_pairs, n_one = len(pair_distance), len(one_part)
    scalars.update(n_proto=-(-k // 10), n_pairs=n_pairs, n_one=n_one,
                   share_one=n_one / max(n_pairs, 1), n_with_neighbour=int(has_neighbour.sum()))
    tables["pairs_by_distance"] = {
        "differing part types": list(range(1, len(PART_TYPES) + 1)),
        "class pairs": [int((pair_distance == d).sum()) for d in range(1, len(PART_TYPES) + 1)]}
    tables["one_part_pairs"] = {"part type": list(PART_TYPES),
                                "pairs": [one_part.count(p) for p in PART_TYPES]}

    # A class and its neighbours, rendered with one seed: the same scene, one part swapped.
    with_neighbour = np.flatnonzero(has_neighbour)
    shown, titles = [], []
    if len(with_neighbour):
        a = int(with_neighbour[0])
        neighbours = [int(b) for b in np.flatnonzero(distances[a] == 1)][:5]
        shown = [a] + neighbours
        titles = [f"class {a}"] + [f"class {b}: {part_differences(classes[a], classes[b])[0]}"
                                   for b in neighbours]
    tables["neighbours"] = {"class": shown, "title": titles}
    arrays["neighbour_images"] = torch.from_numpy(np.stack(
        [render_bird(classes[c], spec.seed, size).image for c in shown])
        if shown else np.zeros((0, size, size, 3), np.uint8))

    # Parts left out of the training images.
    part_index = [train_meta.part_names.index(p) for p in PART_TYPES]
    visible = train_meta.parts[:, part_index, 2] > 0  # (N_train, 5): part drawn?
    n_removed = (~visible).sum(1)
    scalars["share_missing"] = float((n_removed > 0).double().mean())
    tables["missing_parts"] = {"part type": list(PART_TYPES),
                               "training images without it": (~visible).sum(0).tolist(),
                               "share": (~visible).double().mean(0).tolist()}
    values, counts = torch.unique(n_removed, return_counts=True)
    tables["missing_counts"] = {"missing parts": values.tolist(), "training images": counts.tolist()}
    n = len(train_meta)
    show = list(range(0, n, max(1, n // spec.train_examples)))[:spec.train_examples]
    tables["train_examples"] = {
        "index": show, "label": [int(train_meta.labels[i]) for i in show],
        "missing": [" ".join(p for p, v in zip(PART_TYPES, visible[i].tolist()) if not v) for i in show]}
    arrays["train_images"] = torch.stack(
        [(train_meta[i]["image"] * 255).round().to(torch.uint8) for i in show])


def _classifier(context, model, scalars, tables):
    """What the classifier is: architecture, parameters, training configuration and history."""
    description = context.describe()
    trained = context.weights is None
    scalars.update(arch=description["arch"], n_params=sum(p.numel() for p in model.parameters()),
                   trained=trained, weights=description["weights"])
    tables["architecture"] = _columns(architecture(model, context.profile.image_size))
    config = context.profile.classifier
    tables["config"] = ({"setting": list(config.to_dict()),
                         "value": [str(v) for v in config.to_dict().values()]} if trained
                        else {"setting": ["weights", "arch", "cbam"],
                              "value": [description["weights"], description["arch"],
                                        str(bool(getattr(context, "cbam", False)))]})
    history = _history(context) if trained else None
    keys = ("epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds")
    tables["history"] = {k: [float(v) for v in (history or {}).get(k, [])] for k in keys}
    if history:
        scalars.update(epochs=len(history["epoch"]), train_acc=float(history["train_acc"][-1]),
                       train_loss=float(history["train_loss"][-1]),
                       history_test_acc=float(history["test_acc"][-1]),
                       train_seconds=float(sum(history["seconds"])))


def _history(context) -> dict | None:
    """The training history of the context's own classifier; None for the reader's weights."""
    return context.classifier_history()


def _top_confusions(confusion: Tensor, names) -> dict:
    """The most frequent wrong (true, predicted) pairs, most frequent first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    nonzero = torch.nonzero(off)  # (M, 2)
    counts = off[nonzero[:, 0], nonzero[:, 1]]
    order = sorted(range(len(counts)), key=lambda i: (-float(counts[i]), *nonzero[i].tolist()))
    order = order[:_TOP_CONFUSIONS]
    true = [int(nonzero[i, 0]) for i in order]
    pred = [int(nonzero[i, 1]) for i in order]
    return {"true": true, "predicted": pred, "true name": [names[t] for t in true],
            "predicted name": [names[p] for p in pred], "test images": [int(counts[i]) for i in order]}


def _errors_by_part(spec, classes, labels, predictions, test, scalars, tables, arrays):
    """In which part types the errors' true and predicted classes differ (the birds only)."""
    from ..data import PART_TYPES, part_differences
    from ..parts import error_parts

    errors = error_parts(labels, predictions, classes)
    single = errors.distance == 1
    n_errors, n_single = len(errors.index), int(single.sum())
    tables["errors"] = {"index": errors.index.tolist(), "true": labels[errors.index].tolist(),
                        "predicted": predictions[errors.index].tolist(),
                        "distance": errors.distance.tolist(),
                        "parts": [" ".join(p for p, d in zip(PART_TYPES, row) if d)
                                  for row in errors.differs.tolist()]}
    only = errors.differs[single].sum(0)  # (5,)
    pairs = tables["one_part_pairs"]["pairs"]
    n_one = max(scalars["n_one"], 1)
    tables["errors_by_part"] = {
        "part type": list(PART_TYPES),
        "errors differing in it": errors.differs.sum(0).tolist(),
        "errors differing only in it": only.tolist(),
        "share of one-part errors": (only.double() / max(n_single, 1)).tolist(),
        "share of one-part class pairs": [p / n_one for p in pairs]}
    tables["errors_by_distance"] = {
        "differing part types": list(range(1, len(PART_TYPES) + 1)),
        "test errors": [int((errors.distance == d).sum()) for d in range(1, len(PART_TYPES) + 1)]}
    foot = PART_TYPES.index("foot")
    scalars.update(
        n_single=n_single, share_single=n_single / max(n_errors, 1),
        top_part=PART_TYPES[int(only.argmax())] if n_single else "none",
        top_part_errors=int(only.max()) if n_single else 0,
        foot_single_errors=int(only[foot]),
        foot_single_share=float(only[foot]) / max(n_single, 1),
        foot_pair_share=pairs[foot] / n_one)
    shown = errors.index[single][:spec.error_examples].tolist()
    tables["error_examples"] = {
        "index": shown, "true": labels[shown].tolist(), "predicted": predictions[shown].tolist(),
        "part": [part_differences(classes[int(labels[i])], classes[int(predictions[i])])[0]
                 for i in shown]}
    arrays["error_images"] = test["images"][torch.tensor(shown, dtype=torch.long)]


def _attention(attention, part_masks, objects, correct, label_names, area, idx,
               scalars, tables, arrays):
    """Where the last CBAM map puts its mass: per part label and on the bird."""
    from ..parts import part_mass

    share, on_bird = [], []
    for a in range(0, len(attention), _CHUNK):  # chunks: (N, H, W) maps of real CUB are large
        up = F.interpolate(attention[a:a + _CHUNK], size=tuple(part_masks.shape[-2:]),
                           mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
        share.append(part_mass(up, part_masks[a:a + _CHUNK].long(), len(label_names)))  # (B, L)
        on = (up * objects[a:a + _CHUNK]).flatten(1).sum(1).double()  # (B,)
        on_bird.append(on / up.flatten(1).sum(1).double())
    share, on_bird = torch.cat(share), torch.cat(on_bird)  # (N, L), (N,)

    def mean(x):
        return x.mean(0).tolist() if len(x) else [float("nan")] * x.shape[-1]

    tables["attention"] = {"part label": label_names, "area": area.mean(0).tolist(),
                           "attention, all": mean(share), "attention, correct": mean(share[correct]),
                           "attention, errors": mean(share[~correct])}

    def bird(x):
        return float(x.mean()) if len(x) else float("nan")

    scalars.update(att_size=f"{attention.shape[-2]}×{attention.shape[-1]}",
                   att_bird=bird(on_bird), att_bird_correct=bird(on_bird[correct]),
                   att_bird_errors=bird(on_bird[~correct]), att_area=_share(objects))
    arrays["example_attention"] = attention[idx]


def _blocks(module: nn.Module):
    """Top-level blocks; a Sequential of Sequentials (SmallCNN's stages) is expanded."""
    for name, child in module.named_children():
        kids = list(child.children())
        if isinstance(child, nn.Sequential) and kids and all(isinstance(k, nn.Sequential) for k in kids):
            for sub, grandchild in child.named_children():
                yield f"{name}.{sub}", grandchild
        else:
            yield name, child


def _columns(rows: list[dict]) -> dict:
    """A list of equal-keyed dicts as columns."""
    if not rows:
        return {}
    return {k: [r[k] for r in rows] for k in rows[0]}
