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

A data set is input from strangers. Every text file is checked when the data set is opened:

- it must be UTF-8 (a leading byte-order mark is allowed); another encoding raises ``ValueError``
  naming the file, the line and the column of the first bad byte;
- a malformed line (wrong number of fields, an id that is not a plain decimal integer below
  2**63, a flag other than 0/1, a number that is not finite) raises ``ValueError`` naming the file
  and the line number; an image id unknown to ``images.txt`` (or missing, or repeated), an
  unknown class or part id, or a repeated id is an error naming the file (and the line);
- a missing file raises ``FileNotFoundError`` naming it;
- paths are confined: a text file must not be a link out of the data set's folder, and every
  path built from ``images.txt`` (the image, its segmentation, its part mask) must stay inside its
  folder (``images/``, ``segmentations/``, ``part_masks/``): an absolute path, a ``..``
  component or a link that resolves outside raises ``ValueError`` naming ``images.txt`` and the
  line, before any image is read. The folders themselves may be links (a data set on another
  disk); the entries may not leave them.

Images, segmentations and part masks are decoded in full when an item is read, with PIL's
``LOAD_TRUNCATED_IMAGES`` switched off whatever its global value: a truncated or undecodable file
raises :class:`fidobook._io.DamagedFile` (a ``ValueError``) naming the file and the
``images.txt`` line that lists it, never a bare PIL ``OSError``. Every image becomes RGB (real CUB
has a few grey-scale JPEGs); segmentations become grey levels (``L``: real CUB's average several
annotators, so they hold levels between 0 and 255, kept as they are).

**One image policy** (:data:`IMAGE_POLICY`, applied by :func:`fit_to_size`). With ``size=None``
everything is returned as stored (the generated birds are stored at their size). With
``size=S``, an image of width W and height H is

1. resized so that its shorter side is S (the longer one ``round(long * S / short)``, at least S):
   images and segmentations bilinear, part masks nearest;
2. centre-cropped to S x S (``left = (w - S) // 2``, ``top = (h - S) // 2`` in the resized image).

Segmentations and part masks go through the same two steps as their image; boxes and keypoints
are moved with the pixels. Coordinates are continuous pixel coordinates (pixel ``i`` covers
``[i, i + 1)``), so a point ``(x, y)`` lands at ``(x * w / W - left, y * h / H - top)``. A box is
clipped to the crop (a box cut off entirely has width or height 0); a keypoint that the crop cuts
off (outside ``[0, S]``) becomes invisible, ``(0, 0, 0)`` as the files write invisible parts. A
square image is only resized, exactly as before this policy existed.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from .. import _checks
from .._io import DamagedFile

__all__ = ["CUB", "load_tensors", "IMAGE_POLICY", "Fit", "fit_to_size"]

_SPLITS = ("train", "test", "all")


# --------------------------------------------------------------------------------------------
# Parsing: one small converter per field type, one table reader for every file. A converter
# raises ValueError(reason) on a bad field; the reader adds the file, the line and the field.

_MAX_ID = 2**63 - 1  # ids end up in LongTensors


def _int(s: str) -> int:
    # ASCII digits only: int() would also take "+1", "1_000" and other scripts' digits.
    if not (s.isascii() and s.isdigit()):
        raise ValueError("expected a non-negative integer")
    v = int(s)
    if v > _MAX_ID:
        raise ValueError("expected an integer below 2**63")
    return v


def _flag(s: str) -> int:
    if not (s.isascii() and s.isdigit() and int(s) in (0, 1)):
        raise ValueError("expected 0 or 1")
    return int(s)


def _float(s: str) -> float:
    try:
        if not s.isascii() or "_" in s:
            raise ValueError
        v = float(s)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(v):
        raise ValueError("expected a finite number")
    return v


def _nonneg(s: str) -> float:
    v = _float(s)
    if v < 0:
        raise ValueError("expected a number >= 0")
    return v


def _text(s: str) -> str:
    return s


def _short(s: str, n: int = 80) -> str:
    """``repr`` of a line for a message, cut to about ``n`` characters."""
    return repr(s if len(s) <= n else s[:n] + "...")


def _read_text(path: Path) -> str:
    """The file decoded strictly as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        ValueError: a byte sequence that is not UTF-8, naming the file, line and column.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        head = data[:e.start].decode("utf-8")  # valid up to the bad byte
        lines = head.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        raise ValueError(f"{path} line {len(lines)}: expected UTF-8 text (the file must be UTF-8 "
                         f"encoded), got the byte 0x{data[e.start]:02x} at column {len(lines[-1]) + 1} "
                         f"({e.reason})") from None
    return text.removeprefix("\ufeff")


def _read_table(path: Path, fields: str, types: tuple[Callable, ...], rest: bool = False,
                within: str | None = None):
    """Parses a whitespace-separated table.

    Args:
        path: the file.
        fields: the expected line, for messages, e.g. ``"<image_id> <path>"``.
        types: one converter per field; a converter raises ``ValueError`` on a bad field.
        rest: the last field takes the rest of the line (names with spaces).
        within: the resolved data set folder; the file must not be a link out of it.

    Returns:
        list of (line number, [values]); blank lines are skipped.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected CUB-200-2011's layout)")
    if within is not None and not _is_inside(os.path.realpath(path), within):
        raise ValueError(f"{path}: expected a file inside the data set's folder {within}, got a "
                         f"link to {os.path.realpath(path)}")
    names = fields.split()
    rows = []
    # Universal newlines, as text-mode open() reads them.
    for n, line in enumerate(io.StringIO(_read_text(path), newline=None), start=1):
        s = line.strip()
        if not s:
            continue
        items = s.split(None, len(types) - 1) if rest else s.split()
        if len(items) != len(types):
            raise ValueError(f"{path} line {n}: expected '{fields}', got {_short(s)} "
                             f"({len(items)} field(s), expected {len(types)})")
        values = []
        for name, t, v in zip(names, types, items):
            try:
                values.append(t(v))
            except ValueError as e:
                raise ValueError(f"{path} line {n}: expected '{fields}', got {_short(s)} "
                                 f"({name} {_short(v, 30)}: {e})") from None
        rows.append((n, values))
    return rows


def _is_inside(real: str, base: str) -> bool:
    """Whether the resolved path ``real`` lies strictly inside the resolved folder ``base``."""
    real, base = os.path.normcase(real), os.path.normcase(base)
    return real != base and real.startswith(base.rstrip(os.sep) + os.sep)


# Relative POSIX paths without backslashes, colons or NULs (every CUB entry).
_PLAIN = re.compile(r"[^/\\:\0]+(?:/[^/\\:\0]+)*")


def _entry_problem(rel: str) -> str | None:
    """Why a path read from a file cannot name a file under the data set's folder, or None.

    Rejected on either system's rules, so that a data set means the same everywhere: absolute
    or drive paths, ``..`` components, NUL bytes and names that are no file name.
    """
    if _PLAIN.fullmatch(rel) and not {".", ".."} & set(rel.split("/")):
        return None  # the common case, decided without building paths
    if "\0" in rel:
        return "a NUL byte"
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.anchor or windows.anchor:
        return "an absolute path"
    if ".." in windows.parts:  # PureWindowsPath splits on both / and \\
        return "a path that climbs out with '..'"
    if posix.name in ("", ".", ".."):
        return "no file name"
    return None


class _Confined:
    """Resolves paths listed in a file against one folder and rejects those that leave it
    (directly, or through a link anywhere on the way). Directories are resolved once each, so
    checking 11,788 CUB entries costs about one ``lstat`` per file."""

    def __init__(self, base: Path):
        self.base = os.path.realpath(base)
        self._dirs: dict[str, str] = {}

    def problem(self, rel: str) -> str | None:
        """None if ``base / rel`` stays inside ``base``; else what is wrong."""
        parent, name = os.path.split(rel)
        real_dir = self._dirs.get(parent)
        if real_dir is None:
            real_dir = self._dirs[parent] = os.path.realpath(os.path.join(self.base, parent))
        real = os.path.join(real_dir, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not _is_inside(real, self.base):
            return f"a link to {real}"
        return None


def _check_entry(listing: Path, n: int, rel: str, path: Path, confined: _Confined,
                 checked: str | None = None) -> None:
    """Raises ``ValueError`` naming ``listing`` line ``n`` if ``rel`` (listed there; ``path`` is
    the file it names, ``checked`` its path under ``confined.base``) leaves its folder."""
    problem = _entry_problem(rel) or confined.problem(rel if checked is None else checked)
    if problem is not None:
        raise ValueError(f"{listing} line {n}: expected a path inside {confined.base}, got "
                         f"{_short(rel)} ({problem}{'' if checked is None else f', for {path}'})")


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
# The one image policy: shorter side to size, then a centre crop; everything moves with the pixels.

#: How the reader brings an image to ``size`` (see the module docstring); part of
#: :meth:`CUB.digest`, so results cached under another policy are not reused.
IMAGE_POLICY = ("v1: resize the shorter side to size (images and segmentations bilinear, part "
                "masks nearest; the longer side round(long * size / short)), then centre-crop "
                "size x size at ((w - size) // 2, (h - size) // 2); boxes clipped to the crop, "
                "keypoints outside [0, size] invisible")


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


class Fit(NamedTuple):
    """Where :data:`IMAGE_POLICY` puts a ``width`` x ``height`` image at ``size``: resized to
    ``resized`` = (w, h), then cropped to size x size at (``left``, ``top``).

    Build it with :func:`fit_to_size`. A point (x, y) of the original (continuous pixel
    coordinates) lands at ``(x * w / width - left, y * h / height - top)``.
    """

    width: int
    height: int
    size: int
    resized: tuple[int, int]
    left: int
    top: int

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): resized pixels per original pixel along x and y (equal up to rounding)."""
        return self.resized[0] / self.width, self.resized[1] / self.height

    @property
    def identity(self) -> bool:
        """Whether the image is already ``size`` x ``size`` (nothing is resampled)."""
        return (self.width, self.height) == (self.size, self.size)

    def image(self, image: Image.Image, resample: int = Image.BILINEAR) -> Image.Image:
        """The PIL ``image`` (of this fit's width x height) resized and cropped."""
        if image.size != (self.width, self.height):
            raise ValueError(f"image: expected {self.width}x{self.height}, got "
                             f"{image.size[0]}x{image.size[1]}")
        if self.identity:
            return image
        image = image.resize(self.resized, resample)
        if self.resized == (self.size, self.size):
            return image
        return image.crop((self.left, self.top, self.left + self.size, self.top + self.size))

    def points(self, xy: torch.Tensor) -> torch.Tensor:
        """Tensor[..., 2] of (x, y) in original pixels → the same in pixels of the result."""
        sx, sy = self.scale
        scale = torch.tensor([sx, sy], dtype=torch.float64)
        shift = torch.tensor([self.left, self.top], dtype=torch.float64)
        return (xy.double() * scale - shift).to(xy.dtype)

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Tensor[..., 4] of x, y, w, h in original pixels → the same in pixels of the result,
        clipped to the crop."""
        b = boxes.double()
        corners = torch.stack([b[..., :2], b[..., :2] + b[..., 2:]], dim=-2)  # [..., 2, 2]
        corners = self.points(corners).clamp(0, self.size)
        return torch.cat([corners[..., 0, :], corners[..., 1, :] - corners[..., 0, :]], -1).to(boxes.dtype)

    def parts(self, parts: torch.Tensor) -> torch.Tensor:
        """Tensor[..., P, 3] of x, y, visible → the same in pixels of the result; a part the crop
        cuts off (outside ``[0, size]``) or invisible before is (0, 0, 0)."""
        xy = self.points(parts[..., :2])
        inside = ((xy >= 0) & (xy <= self.size)).all(-1) & (parts[..., 2] > 0)  # [..., P]
        out = torch.cat([xy, parts[..., 2:3]], -1)
        return torch.where(inside[..., None], out, torch.zeros_like(out))


def fit_to_size(width: int, height: int, size: int) -> Fit:
    """The geometry of :data:`IMAGE_POLICY` for a ``width`` x ``height`` image at ``size``.

    Example::

        >>> fit_to_size(200, 100, 50)   # resized to 100 x 50, then 25 px cut off left and right
        Fit(width=200, height=100, size=50, resized=(100, 50), left=25, top=0)
    """
    for name, v in (("width", width), ("height", height), ("size", size)):
        _checks.check_positive_int(v, name)
    if width <= height:
        resized = (size, max(size, _round_half_up(height * size / width)))
    else:
        resized = (max(size, _round_half_up(width * size / height)), size)
    return Fit(width, height, size, resized, (resized[0] - size) // 2, (resized[1] - size) // 2)


# --------------------------------------------------------------------------------------------


class CUB(Dataset):
    """CUB-200-2011 (or the synthetic birds of :func:`fidobook.data.generate`) as a Dataset.

    An item is a dict:

    - ``image`` (Tensor[3, H, W], float32 in [0, 1])
    - ``label`` (int): the class, 0-based
    - ``box`` (Tensor[4], float32): x, y, w, h in pixels of the returned image (clipped to it
      when ``size`` crops)
    - ``parts`` (Tensor[P, 3], float32): x, y, visible of each part of ``part_names``, in pixels of
      the returned image; an invisible part (or one the crop cut off) is (0, 0, 0) as in the files
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
        size (int, optional): bring every image to ``size`` x ``size`` by :data:`IMAGE_POLICY`
            (shorter side to ``size``, centre crop), moving boxes and keypoints with the pixels.
            Default: None (as stored).
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
        ValueError: a text file that is not UTF-8, a malformed line or inconsistent ids, or a
            path that leaves the data set's folder (the message names the file and line). Reading
            an item raises ``DamagedFile`` (a ``ValueError``) for an image, segmentation or part
            mask that does not decode or does not fit its image, naming it and its
            ``images.txt`` line.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int | None = None,
                 with_segmentation: bool = True, with_part_masks: bool = True):
        _checks.check_choice(split, "split", _SPLITS)
        self.size = _check_size(size)
        self.split = split
        self.root = root = _find_root(root)
        # Every file read must lie inside the data set (no link out of it, e.g. to ~/.ssh).
        read = partial(_read_table, within=os.path.realpath(root))

        images_path = root / "images.txt"
        image_rows = read(images_path, "<image_id> <path>", (_int, _text), rest=True)
        images = _unique_ids(images_path, image_rows, "image id")
        # Paths from the file are confined to images/ before anything else is read.
        self._images_path = images_path
        image_dir = _Confined(root / "images")
        for n, (_, rel) in image_rows:
            _check_entry(images_path, n, rel, root / "images" / rel, image_dir)

        classes_path = root / "classes.txt"
        class_rows = _unique_ids(classes_path, read(
            classes_path, "<class_id> <class_name>", (_int, _text), rest=True), "class id")
        class_ids = sorted(class_rows)
        label_of = {cid: i for i, cid in enumerate(class_ids)}  # 1..K -> 0..K-1 (any ids work)
        self.classes = [_strip_number(class_rows[c][1][1]) for c in class_ids]
        self.num_classes = len(self.classes)

        labels_path = root / "image_class_labels.txt"
        label_rows = read(labels_path, "<image_id> <class_id>", (_int, _int))
        for n, (_, cid) in label_rows:
            if cid not in label_of:
                raise ValueError(f"{labels_path} line {n}: class id {cid} is not in {classes_path}")
        labels = _per_image(labels_path, label_rows, images, images_path)

        split_path = root / "train_test_split.txt"
        is_train = _per_image(split_path, read(
            split_path, "<image_id> <is_training_image 0/1>", (_int, _flag)), images, images_path)

        boxes_path = root / "bounding_boxes.txt"
        boxes = _per_image(boxes_path, read(
            boxes_path, "<image_id> <x> <y> <width> <height>", (_int, _float, _float, _nonneg, _nonneg)),
            images, images_path)

        parts_path = root / "parts" / "parts.txt"
        part_rows = _unique_ids(parts_path, read(
            parts_path, "<part_id> <part_name>", (_int, _text), rest=True), "part id")
        part_ids = sorted(part_rows)
        part_index = {pid: i for i, pid in enumerate(part_ids)}
        self.part_names = [part_rows[p][1][1] for p in part_ids]

        locs_path = root / "parts" / "part_locs.txt"
        locs = np.zeros((len(images), len(part_ids), 3), np.float32)
        seen = np.zeros((len(images), len(part_ids)), bool)
        row_of = {iid: r for r, iid in enumerate(images)}
        for n, (iid, pid, x, y, vis) in read(
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

        self._text_files = [images_path, classes_path, labels_path, split_path, boxes_path,
                            parts_path, locs_path]

        # The split, in images.txt order.
        keep = [iid for iid in images
                if split == "all" or is_train[iid][0] == (1 if split == "train" else 0)]
        self.image_ids = torch.tensor(keep, dtype=torch.long)
        self.labels = torch.tensor([label_of[labels[i][0]] for i in keep], dtype=torch.long)
        self.boxes = torch.tensor([boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        self.parts = torch.from_numpy(locs[[row_of[i] for i in keep]])  # [N, P, 3]
        self._rel = [images[i][1][1] for i in keep]
        self._line = [images[i][0] for i in keep]  # of images.txt, for messages
        self._max_part_label = max(part_ids, default=0)

        seg_dir = next((d for d in (root / "segmentations", root.parent / "segmentations")
                        if d.is_dir()), None)
        self.has_segmentation = bool(with_segmentation and seg_dir is not None)
        self.has_part_masks = bool(with_part_masks and (root / "part_masks").is_dir())
        self._seg_dir, self._mask_dir = seg_dir, root / "part_masks"

        # The masks' paths are built from images.txt too: confined to their folders likewise.
        for folder, has in ((seg_dir, self.has_segmentation), (self._mask_dir, self.has_part_masks)):
            if has:
                confined = _Confined(folder)
                for n, (_, rel) in image_rows:
                    mask_rel = str(PurePosixPath(rel).with_suffix(".png"))
                    _check_entry(images_path, n, rel, folder / mask_rel, confined, mask_rel)

        # Missing files fail now, naming the file and the images.txt line that lists it.
        for n, rel in zip(self._line, self._rel):
            for path in self._paths(rel):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such file (listed in {images_path} "
                                            f"line {n})")

    def _paths(self, rel: str) -> list[Path]:
        paths = [self.root / "images" / rel]
        if self.has_segmentation:
            paths.append(self._seg_dir / Path(rel).with_suffix(".png"))
        if self.has_part_masks:
            paths.append(self._mask_dir / Path(rel).with_suffix(".png"))
        return paths

    def __len__(self) -> int:
        return len(self._rel)

    def digest(self) -> str:
        """A SHA-256 hex digest of what this reader returns, without decoding anything.

        It covers the bytes of the seven text files, the bytes and ``images.txt`` paths of every
        file the split reads (images, and segmentations / part masks when items carry them), the
        split, ``size`` and :data:`IMAGE_POLICY`. The same files give the same digest wherever the
        folder lies (a copy, another machine); changing one byte of one of them changes it.
        Reading is about as fast as the disk (real CUB, 1.2 GB: a few seconds), far faster than
        decoding.

        Returns:
            str: 64 hex characters.
        """
        h = hashlib.sha256()
        h.update(f"fidobook-cub|{IMAGE_POLICY}|split={self.split}|size={self.size}|"
                 f"segmentation={self.has_segmentation}|part_masks={self.has_part_masks}".encode())

        def add(label: str, path: Path) -> None:
            with open(path, "rb") as f:
                file = hashlib.file_digest(f, "sha256").digest()
            h.update(f"|{label}|".encode() + file)

        for path in self._text_files:
            add(path.relative_to(self.root).as_posix(), path)
        kinds = ["image"] + ["segmentation"] * self.has_segmentation + ["part_mask"] * self.has_part_masks
        for rel in self._rel:
            for kind, path in zip(kinds, self._paths(rel)):  # _paths lists them in this order
                add(f"{kind}:{rel}", path)
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"CUB(root={str(self.root)!r}, split={self.split!r}, size={self.size}, "
                f"images={len(self)}, classes={self.num_classes}, parts={len(self.part_names)}, "
                f"segmentation={self.has_segmentation}, part_masks={self.has_part_masks})")

    def _arrays(self, index: int) -> dict:
        """The item as numpy arrays: uint8 image [H, W, 3], uint8 segmentation [H, W] and part
        mask [H, W] (when present), and box / parts scaled to the returned size."""
        paths = self._paths(self._rel[index])
        source = f"listed in {self._images_path} line {self._line[index]}"
        image = _decode(paths[0], source, _to_rgb)  # real CUB has a few grey-scale JPEGs
        W, H = image.size
        fit = None if self.size is None else fit_to_size(W, H, self.size)
        out = {}
        if fit is not None:
            image = fit.image(image, Image.BILINEAR)
        out["image"] = np.asarray(image)
        k = 1
        for key, has, convert, resample in (
                ("segmentation", self.has_segmentation, _to_l, Image.BILINEAR),
                ("part_mask", self.has_part_masks, _to_labels, Image.NEAREST)):
            if not has:
                continue
            m = _decode(paths[k], source, convert)
            if m.size != (W, H):
                raise DamagedFile(paths[k], f"expected the size of its image {paths[0]} ({W}x{H}), "
                                            f"got {m.size[0]}x{m.size[1]} ({source})")
            a = np.asarray(m)
            if key == "part_mask" and a.size and int(a.max()) > self._max_part_label:
                raise DamagedFile(paths[k], f"expected part labels in [0, {self._max_part_label}] "
                                            f"(0 or a part id of parts/parts.txt), got {int(a.max())} "
                                            f"({source})")
            if fit is not None:
                a = np.asarray(fit.image(m, resample))
            out[key] = a
            k += 1
        out["box"] = self.boxes[index].clone() if fit is None else fit.boxes(self.boxes[index])
        out["parts"] = self.parts[index].clone() if fit is None else fit.parts(self.parts[index])
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


# --------------------------------------------------------------------------------------------
# Images: decoded fully and strictly, whatever PIL's global settings say.

# What PIL raises on a damaged or hostile file (a bad PNG chunk is a SyntaxError; a decompression
# bomb, an image claiming over 2 * Image.MAX_IMAGE_PIXELS pixels, a DecompressionBombError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)

_strict_lock = threading.Lock()
_strict_depth = 0
_strict_saved = False


@contextmanager
def _strict_pil():
    """Turns off ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` while the body runs, then restores it.

    Another library (or a user) may have set that global, with which a truncated JPEG or PNG
    loads silently, its missing rows grey. fidobook never sets it; its readers switch it off
    (the depth count lets threads read at once and restores the value the last one out found).
    """
    global _strict_depth, _strict_saved
    with _strict_lock:
        if _strict_depth == 0:
            _strict_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_depth += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _strict_saved


def _to_rgb(im: Image.Image) -> Image.Image:
    return im.convert("RGB")


def _to_l(im: Image.Image) -> Image.Image:
    return im.convert("L")


def _to_labels(im: Image.Image) -> Image.Image:
    # Part masks hold labels: only L / P pass through as they are.
    return im.copy() if im.mode in ("L", "P") else im.convert("L")


def _decode(path: Path, source: str, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``convert(image)`` of the image file at ``path``, decoded in full (``convert`` must load
    the pixels, as ``convert`` and ``copy`` do).

    Raises:
        FileNotFoundError: the file is gone; DamagedFile (a ValueError): it does not decode
        (truncated, corrupt, not an image, a decompression bomb); both name ``path`` and
        ``source``, where it is listed.
    """
    try:
        with _strict_pil(), Image.open(path) as im:
            return convert(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({source})") from None
    except _DECODE_ERRORS as e:
        raise DamagedFile(path, f"expected an image that decodes, got {type(e).__name__}: {e} "
                                f"({source})") from e


def _strip_number(name: str) -> str:
    head, dot, tail = name.partition(".")
    return tail if dot and head.isdigit() and tail else name


def load_tensors(root: str | os.PathLike, split: str = "train", size: int | None = None, *,
                 with_segmentation: bool = True, with_part_masks: bool = True,
                 progress: bool = False) -> dict:
    """A whole split as stacked tensors: ``CUB(root, split, size, ...).to_tensors()``.

    ``size=None`` returns the images as stored (they must then share one size, as the generated
    birds do); ``size=S`` brings each to S x S by :data:`IMAGE_POLICY` (shorter side to S, centre
    crop), with boxes, keypoints, segmentations and part masks transformed identically.

    Returns:
        dict: ``images`` uint8 Tensor[N, 3, H, W], ``labels`` LongTensor[N], ``boxes`` Tensor[N, 4],
        ``parts`` Tensor[N, P, 3], ``image_ids`` LongTensor[N], ``segmentations`` uint8
        Tensor[N, 1, H, W] and ``part_masks`` uint8 Tensor[N, H, W] when present, ``classes``,
        ``part_names`` (see :meth:`CUB.to_tensors`).
    """
    return CUB(root, split, size, with_segmentation, with_part_masks).to_tensors(progress=progress)
