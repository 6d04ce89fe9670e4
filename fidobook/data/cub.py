"""A reader of CUB-200-2011's on-disk format: the real data set, or the synthetic birds.

The format (Wah et al., 2011; ids are 1-based)::

    images.txt                <image_id> <relative path under images/>
    image_class_labels.txt    <image_id> <class_id>
    train_test_split.txt      <image_id> <1 train / 0 test>
    bounding_boxes.txt        <image_id> <x> <y> <width> <height>
    classes.txt               <class_id> <NNN.name>
    parts/parts.txt           <part_id> <name, may contain spaces>
    parts/part_locs.txt       <image_id> <part_id> <x> <y> <visible>
    images/<path>             the images (real CUB: JPEGs of varying size)
    segmentations/<path>.png  optional, L: the object mask (real CUB: a separate download whose
                              values average several annotators)
    part_masks/<path>.png     optional, fidobook's own: a part label per pixel

Every text file is checked when the data set is opened: a malformed line raises ``ValueError``
naming the file and the line number, a missing file ``FileNotFoundError`` naming it, an image id
unknown to ``images.txt`` (or missing, or repeated) an error naming the file (and the line).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .. import _checks

__all__ = ["CUB", "load_tensors"]

_SPLITS = ("train", "test", "all")


# --------------------------------------------------------------------------------------------
# Parsing: one small converter per field type, one table reader for every file.


def _int(s: str) -> int:
    return int(s)


def _flag(s: str) -> int:
    v = int(s)
    if v not in (0, 1):
        raise ValueError(s)
    return v


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(s)
    return v


def _nonneg(s: str) -> float:
    v = _float(s)
    if v < 0:
        raise ValueError(s)
    return v


def _text(s: str) -> str:
    return s


def _read_table(path: Path, fields: str, types: tuple[Callable, ...], rest: bool = False):
    """Parses a whitespace-separated table.

    Args:
        path: the file.
        fields: the expected line, for messages, e.g. ``"<image_id> <path>"``.
        types: one converter per field; a converter raises ``ValueError`` on a bad field.
        rest: the last field takes the rest of the line (names with spaces).

    Returns:
        list of (line number, [values]); blank lines are skipped.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected CUB-200-2011's layout)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            s = line.strip()
            if not s:
                continue
            items = s.split(None, len(types) - 1) if rest else s.split()
            try:
                if len(items) != len(types):
                    raise ValueError(s)
                values = [t(v) for t, v in zip(types, items)]
            except ValueError:
                raise ValueError(f"{path} line {n}: expected '{fields}', got {s!r}") from None
            rows.append((n, values))
    return rows


def _unique_ids(path: Path, rows, what: str) -> dict[int, tuple[int, list]]:
    """{id: (line, values)} for a table keyed by its first field; repeated ids are errors."""
    out = {}
    for n, values in rows:
        key = values[0]
        if key in out:
            raise ValueError(f"{path} line {n}: {what} {key} repeated (first on line {out[key][0]})")
        out[key] = (n, values)
    return out


def _per_image(path: Path, rows, image_ids: dict, images_path: Path) -> dict[int, list]:
    """{image_id: values} for a one-line-per-image table, checked against images.txt."""
    table = _unique_ids(path, rows, "image id")
    for key, (n, _) in table.items():
        if key not in image_ids:
            raise ValueError(f"{path} line {n}: image id {key} is not in {images_path}")
    missing = [k for k in image_ids if k not in table]
    if missing:
        raise ValueError(f"{path}: no line for {len(missing)} image id(s) of {images_path}, "
                         f"e.g. {missing[:5]}")
    return {k: v[1:] for k, (_, v) in table.items()}


def _find_root(root) -> Path:
    if isinstance(root, bool) or not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a path, got {type(root).__name__}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a CUB-200-2011 folder, got {root} (no such folder)")
    # The official archive unpacks into CUB_200_2011/; accept its parent too.
    if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
        root = root / "CUB_200_2011"
    return root


def _check_size(size):
    if size is not None:
        _checks.check_positive_int(size, "size")
    return size


# --------------------------------------------------------------------------------------------


class CUB(Dataset):
    """CUB-200-2011 (or the synthetic birds of :func:`fidobook.data.generate`) as a Dataset.

    An item is a dict:

    - ``image`` (Tensor[3, H, W], float32 in [0, 1])
    - ``label`` (int): the class, 0-based
    - ``box`` (Tensor[4], float32): x, y, w, h in pixels of the returned image
    - ``parts`` (Tensor[P, 3], float32): x, y, visible of each part of ``part_names``, in pixels of
      the returned image; an invisible part is (0, 0, 0) as in the files
    - ``segmentation`` (Tensor[1, H, W], float32 in [0, 1]): only if ``segmentations/`` exists and
      ``with_segmentation``; real CUB ships it separately, so it is often absent (the key is then
      left out, which the default collate needs; see ``has_segmentation``)
    - ``part_mask`` (LongTensor[H, W]): only if ``part_masks/`` exists (the synthetic birds) and
      ``with_part_masks``; values index ``fidobook.data.PART_NAMES``
    - ``index`` (int): position in this split; ``image_id`` (int): the id of ``images.txt``

    ``segmentations/`` is looked for in ``root`` and, as the official archives unpack, next to it.

    Args:
        root (str or Path): the folder holding ``images.txt`` (or its parent ``CUB_200_2011/``).
        split (str): ``"train"``, ``"test"`` or ``"all"``. Default: ``"train"``.
        size (int, optional): resize every image to ``size`` x ``size`` (bilinear; part masks
            nearest), scaling boxes and keypoints. Default: None (original size).
        with_segmentation (bool): load segmentations when present. Default: True.
        with_part_masks (bool): load part masks when present. Default: True.

    Attributes:
        classes (list[str]): class names without the ``NNN.`` prefix, by label.
        num_classes (int): number of classes.
        labels (LongTensor[N]): label of each image of the split.
        image_ids (LongTensor[N]): ``images.txt`` id of each image of the split.
        boxes (Tensor[N, 4]), parts (Tensor[N, P, 3]): as in the files (original pixels).
        part_names (list[str]): names of the P parts (``parts/parts.txt``).
        has_segmentation, has_part_masks (bool): whether items carry those keys.

    Raises:
        FileNotFoundError: ``root``, a text file or an image of the split is missing.
        ValueError: a malformed line (the message names the file and line) or inconsistent ids.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int | None = None,
                 with_segmentation: bool = True, with_part_masks: bool = True):
        _checks.check_choice(split, "split", _SPLITS)
        self.size = _check_size(size)
        self.split = split
        self.root = root = _find_root(root)

        images_path = root / "images.txt"
        image_rows = _read_table(images_path, "<image_id> <path>", (_int, _text), rest=True)
        images = _unique_ids(images_path, image_rows, "image id")

        classes_path = root / "classes.txt"
        class_rows = _unique_ids(classes_path, _read_table(
            classes_path, "<class_id> <class_name>", (_int, _text), rest=True), "class id")
        class_ids = sorted(class_rows)
        label_of = {cid: i for i, cid in enumerate(class_ids)}  # 1..K -> 0..K-1 (any ids work)
        self.classes = [_strip_number(class_rows[c][1][1]) for c in class_ids]
        self.num_classes = len(self.classes)

        labels_path = root / "image_class_labels.txt"
        label_rows = _read_table(labels_path, "<image_id> <class_id>", (_int, _int))
        for n, (_, cid) in label_rows:
            if cid not in label_of:
                raise ValueError(f"{labels_path} line {n}: class id {cid} is not in {classes_path}")
        labels = _per_image(labels_path, label_rows, images, images_path)

        split_path = root / "train_test_split.txt"
        is_train = _per_image(split_path, _read_table(
            split_path, "<image_id> <is_training_image 0/1>", (_int, _flag)), images, images_path)

        boxes_path = root / "bounding_boxes.txt"
        boxes = _per_image(boxes_path, _read_table(
            boxes_path, "<image_id> <x> <y> <width> <height>", (_int, _float, _float, _nonneg, _nonneg)),
            images, images_path)

        parts_path = root / "parts" / "parts.txt"
        part_rows = _unique_ids(parts_path, _read_table(
            parts_path, "<part_id> <part_name>", (_int, _text), rest=True), "part id")
        part_ids = sorted(part_rows)
        part_index = {pid: i for i, pid in enumerate(part_ids)}
        self.part_names = [part_rows[p][1][1] for p in part_ids]

        locs_path = root / "parts" / "part_locs.txt"
        locs = np.zeros((len(images), len(part_ids), 3), np.float32)
        seen = np.zeros((len(images), len(part_ids)), bool)
        row_of = {iid: r for r, iid in enumerate(images)}
        for n, (iid, pid, x, y, vis) in _read_table(
                locs_path, "<image_id> <part_id> <x> <y> <visible 0/1>", (_int, _int, _float, _float, _flag)):
            if iid not in row_of:
                raise ValueError(f"{locs_path} line {n}: image id {iid} is not in {images_path}")
            if pid not in part_index:
                raise ValueError(f"{locs_path} line {n}: part id {pid} is not in {parts_path}")
            r, p = row_of[iid], part_index[pid]
            if seen[r, p]:
                raise ValueError(f"{locs_path} line {n}: image id {iid}, part id {pid} repeated")
            seen[r, p] = True
            locs[r, p] = (x, y, vis)
        if not seen.all():
            r, p = np.argwhere(~seen)[0]
            raise ValueError(f"{locs_path}: no line for {int((~seen).sum())} (image id, part id) "
                             f"pair(s), e.g. ({list(images)[r]}, {part_ids[p]})")

        # The split, in images.txt order.
        keep = [iid for iid in images
                if split == "all" or is_train[iid][0] == (1 if split == "train" else 0)]
        self.image_ids = torch.tensor(keep, dtype=torch.long)
        self.labels = torch.tensor([label_of[labels[i][0]] for i in keep], dtype=torch.long)
        self.boxes = torch.tensor([boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        self.parts = torch.from_numpy(locs[[row_of[i] for i in keep]])  # [N, P, 3]
        self._rel = [images[i][1][1] for i in keep]

        seg_dir = next((d for d in (root / "segmentations", root.parent / "segmentations")
                        if d.is_dir()), None)
        self.has_segmentation = bool(with_segmentation and seg_dir is not None)
        self.has_part_masks = bool(with_part_masks and (root / "part_masks").is_dir())
        self._seg_dir, self._mask_dir = seg_dir, root / "part_masks"

        # Missing files fail now, naming the file and the images.txt line that lists it.
        for iid, rel in zip(keep, self._rel):
            for path in self._paths(rel):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such file (listed in {images_path} "
                                            f"line {images[iid][0]})")

    def _paths(self, rel: str) -> list[Path]:
        paths = [self.root / "images" / rel]
        if self.has_segmentation:
            paths.append(self._seg_dir / Path(rel).with_suffix(".png"))
        if self.has_part_masks:
            paths.append(self._mask_dir / Path(rel).with_suffix(".png"))
        return paths

    def __len__(self) -> int:
        return len(self._rel)

    def __repr__(self) -> str:
        return (f"CUB(root={str(self.root)!r}, split={self.split!r}, size={self.size}, "
                f"images={len(self)}, classes={self.num_classes}, parts={len(self.part_names)}, "
                f"segmentation={self.has_segmentation}, part_masks={self.has_part_masks})")

    def _arrays(self, index: int) -> dict:
        """The item as numpy arrays: uint8 image [H, W, 3], uint8 segmentation [H, W] and part
        mask [H, W] (when present), and box / parts scaled to the returned size."""
        paths = self._paths(self._rel[index])
        with Image.open(paths[0]) as im:
            image = im.convert("RGB")  # real CUB has a few grey-scale JPEGs
        W, H = image.size
        size = self.size
        out = {}
        if size is not None and (W, H) != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        out["image"] = np.asarray(image)
        k = 1
        for key, has, mode, resample in (("segmentation", self.has_segmentation, "L", Image.BILINEAR),
                                         ("part_mask", self.has_part_masks, None, Image.NEAREST)):
            if not has:
                continue
            with Image.open(paths[k]) as im:
                # Part masks hold labels: only L / P pass through as they are.
                m = im.convert("L") if mode == "L" or im.mode not in ("L", "P") else im.copy()
            if m.size != (W, H):
                raise ValueError(f"{paths[k]}: expected the size of its image {paths[0]} "
                                 f"({W}x{H}), got {m.size[0]}x{m.size[1]}")
            if size is not None and (W, H) != (size, size):
                m = m.resize((size, size), resample)
            out[key] = np.asarray(m)
            k += 1
        sx, sy = (1.0, 1.0) if size is None else (size / W, size / H)
        out["box"] = self.boxes[index] * torch.tensor([sx, sy, sx, sy])
        out["parts"] = self.parts[index] * torch.tensor([sx, sy, 1.0])
        return out

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: expected an int in [{-n}, {n - 1}], got {index}")
        index = int(index) % n
        a = self._arrays(index)
        item = {
            "image": torch.from_numpy(a["image"].copy()).permute(2, 0, 1).float().div_(255),  # [3, H, W]
            "label": int(self.labels[index]),
            "box": a["box"],
            "parts": a["parts"],
            "index": index,
            "image_id": int(self.image_ids[index]),
        }
        if "segmentation" in a:
            item["segmentation"] = torch.from_numpy(a["segmentation"].copy()).float().div_(255)[None]
        if "part_mask" in a:
            item["part_mask"] = torch.from_numpy(a["part_mask"].astype(np.int64))
        return item

    def to_tensors(self, progress: bool = False) -> dict:
        """Loads the whole split into stacked tensors (for in-memory training at small sizes).

        Images are decoded with PIL and stacked with numpy; they must all have the same size
        (pass ``size`` to the constructor for real CUB).

        Returns:
            dict with ``images`` (uint8 Tensor[N, 3, H, W]; ``.float() / 255`` gives [0, 1]),
            ``labels`` (LongTensor[N]), ``boxes`` (Tensor[N, 4]), ``parts`` (Tensor[N, P, 3]),
            ``image_ids`` (LongTensor[N]), ``segmentations`` (uint8 Tensor[N, 1, H, W], when
            present), ``part_masks`` (uint8 Tensor[N, H, W], when present), and the lists
            ``classes`` and ``part_names``.

        Raises:
            ValueError: the images differ in size and ``size`` is None.
        """
        n = len(self)
        out = {"labels": self.labels.clone(), "image_ids": self.image_ids.clone(),
               "classes": list(self.classes), "part_names": list(self.part_names)}
        images = segs = masks = None
        boxes = torch.empty(n, 4)
        parts = torch.empty(n, len(self.part_names), 3)
        indices = range(n)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc="loading", unit="img", mininterval=0.5)
        for i in indices:
            a = self._arrays(i)
            h, w = a["image"].shape[:2]
            if images is None:  # allocate once the size is known
                images = np.empty((n, h, w, 3), np.uint8)
                segs = np.empty((n, h, w), np.uint8) if "segmentation" in a else None
                masks = np.empty((n, h, w), np.uint8) if "part_mask" in a else None
            elif images.shape[1:3] != (h, w):
                raise ValueError(f"size: expected an int when the images differ in size, got None "
                                 f"({self._rel[i]} is {w}x{h}, {self._rel[0]} is "
                                 f"{images.shape[2]}x{images.shape[1]})")
            images[i] = a["image"]
            if segs is not None:
                segs[i] = a["segmentation"]
            if masks is not None:
                masks[i] = a["part_mask"]
            boxes[i], parts[i] = a["box"], a["parts"]
        if images is None:  # an empty split
            s = self.size or 0
            images = np.empty((0, s, s, 3), np.uint8)
            segs = np.empty((0, s, s), np.uint8) if self.has_segmentation else None
            masks = np.empty((0, s, s), np.uint8) if self.has_part_masks else None
        out["images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W]
        out["boxes"], out["parts"] = boxes, parts
        if segs is not None:
            out["segmentations"] = torch.from_numpy(segs)[:, None]  # [N, 1, H, W]
        if masks is not None:
            out["part_masks"] = torch.from_numpy(masks)
        return out


def _strip_number(name: str) -> str:
    head, dot, tail = name.partition(".")
    return tail if dot and head.isdigit() and tail else name


def load_tensors(root: str | os.PathLike, split: str = "train", size: int | None = None, *,
                 with_segmentation: bool = True, with_part_masks: bool = True,
                 progress: bool = False) -> dict:
    """A whole split as stacked tensors: ``CUB(root, split, size, ...).to_tensors()``.

    Returns:
        dict: ``images`` uint8 Tensor[N, 3, H, W], ``labels`` LongTensor[N], ``boxes`` Tensor[N, 4],
        ``parts`` Tensor[N, P, 3], ``image_ids`` LongTensor[N], ``segmentations`` uint8
        Tensor[N, 1, H, W] and ``part_masks`` uint8 Tensor[N, H, W] when present, ``classes``,
        ``part_names`` (see :meth:`CUB.to_tensors`).
    """
    return CUB(root, split, size, with_segmentation, with_part_masks).to_tensors(progress=progress)
