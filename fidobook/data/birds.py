"""Synthetic fine-grained birds: a 2-D cousin of FunnyBirds, written in CUB-200-2011's format.

Every bird has the same grey body (an ellipse) and head (a circle) and one variant of each of five
part types (FunnyBirds' variant counts):

======  ==========================================================  ========
part    variants                                                    count
======  ==========================================================  ========
beak    short, long, hooked, thick (all yellow)                     4
eye     dot, white, red                                             3
foot    short, long legs x L-shaped toe, webbed paddle              4
tail    fan, stick, forked x red, green, blue                       9
wing    folded, raised x red, green, blue                           6
======  ==========================================================  ========

which gives 4 * 3 * 4 * 9 * 6 = 2,592 possible birds. A *class* is one combination of variants
(:func:`class_parts`); classes are drawn so that many pairs differ in a single part, which is what
makes the task fine-grained and gives later chapters a ground truth for "which pixels tell two
classes apart".

Every variant is drawn so that it is distinguishable at 64 px: legs and toes are at least 2 px
thick at the smallest bird scale, variants of the feet differ in leg length (3 vs 7 px) or in the
foot's silhouette, eyes differ in size and ring colour, beaks in length, hook and thickness. (On a
prototype whose toes were under 1 px wide, 84-91 % of a classifier's errors were foot confusions.)
:func:`variant_gallery` draws all of them side by side.

:func:`render_bird` draws one image and its part-label mask; :func:`generate` writes a whole data
set (images, labels, split, boxes, part keypoints, segmentations, part masks) in CUB-200-2011's
on-disk layout, byte-identical for the same arguments, which :class:`fidobook.data.CUB` reads.
"""
from __future__ import annotations

import colorsys
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .. import _checks, _io

__all__ = [
    "PART_NAMES", "PART_TYPES", "N_VARIANTS", "VARIANT_NAMES", "COLOURS", "FORMAT_VERSION",
    "RenderedBird", "render_bird", "class_parts", "class_name", "part_differences",
    "class_distances", "read_class_parts", "variant_gallery", "generate",
]

#: Part-label mask values: ``PART_NAMES[i]`` is the name of label ``i``; also the part ids of
#: ``parts/parts.txt`` (1-based, background excluded).
PART_NAMES: tuple[str, ...] = ("background", "body", "head", "beak", "eye", "foot", "tail", "wing")
#: The part types that vary between classes, in the order of a class's variant tuple.
PART_TYPES: tuple[str, ...] = ("beak", "eye", "foot", "tail", "wing")
#: Number of variants of each part type (tail and wing: shape * 3 + colour).
N_VARIANTS: dict[str, int] = {"beak": 4, "eye": 3, "foot": 4, "tail": 9, "wing": 6}
_PART_ID = {name: i for i, name in enumerate(PART_NAMES)}

#: The palette of the coloured parts and of the background clutter (the clutter uses the part
#: colours on purpose: it is a distractor, as in FunnyBirds).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 215), "yellow": (240, 200, 30),
}
_TAIL_WING_COLOURS = ("red", "green", "blue")
_BODY_RGB = (150, 150, 150)
_HEAD_RGB = (160, 160, 160)
_OUTLINE_RGB = (80, 80, 80)
_BEAK_RGB = COLOURS["yellow"]
_FOOT_RGB = (205, 115, 40)
_BLACK, _WHITE, _IRIS_RED = (20, 20, 20), (245, 245, 245), (200, 30, 30)

_BEAK_SHAPES = ("short", "long", "hooked", "thick")
_EYE_TYPES = ("dot", "white", "red")
_FOOT_SHAPES = ("short", "long", "short-webbed", "long-webbed")
_TAIL_SHAPES = ("fan", "stick", "forked")
_WING_SHAPES = ("folded", "raised")
#: Human-readable name of every variant, ``VARIANT_NAMES[part][variant]``.
VARIANT_NAMES: dict[str, tuple[str, ...]] = {
    "beak": _BEAK_SHAPES,
    "eye": _EYE_TYPES,
    "foot": _FOOT_SHAPES,
    "tail": tuple(f"{s}-{c}" for s in _TAIL_SHAPES for c in _TAIL_WING_COLOURS),
    "wing": tuple(f"{s}-{c}" for s in _WING_SHAPES for c in _TAIL_WING_COLOURS),
}

#: Version of the on-disk layout written by :func:`generate` (stored in ``fidobook_birds.json``).
FORMAT_VERSION = 1
_META = "fidobook_birds.json"

# --------------------------------------------------------------------------------------------
# Geometry, in "bird units": the body is an ellipse with semi-axes 1.0 x 0.62 centred at the
# origin, the bird faces +x, y points down (image convention). A part variant is a list of
# polygons (n, 2) with a colour; ellipses are polygons too so that one affine map moves everything.


def _ellipse(cx, cy, rx, ry, n=40, angle=0.0):
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _bar(p0, p1, width):
    """A rectangle of ``width`` around the segment p0 -> p1 (a leg or a toe)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12) * width / 2
    return np.stack([p0 + nrm, p1 + nrm, p1 - nrm, p0 - nrm])


def _shift(points, dx, dy):
    return np.asarray(points, float) + np.array([dx, dy])


_BODY = [(_ellipse(0.0, 0.0, 1.0, 0.62, n=48), _BODY_RGB)]
_HEAD_C, _HEAD_R = (0.95, -0.62), 0.45
_HEAD = [(_ellipse(*_HEAD_C, _HEAD_R, _HEAD_R, n=40), _HEAD_RGB)]

# Beaks start inside the head (the head is drawn over their base).
_BEAK_BASE = (1.22, -0.60)
_BEAKS = [
    [(_shift([(0, -0.17), (0.58, 0.0), (0, 0.17)], *_BEAK_BASE), _BEAK_RGB)],  # short
    [(_shift([(0, -0.13), (1.12, 0.02), (0, 0.13)], *_BEAK_BASE), _BEAK_RGB)],  # long, thin
    [(_shift([(0, -0.22), (0.38, -0.22), (0.62, -0.12), (0.74, 0.08), (0.66, 0.36), (0.54, 0.14),
              (0.3, 0.1), (0, 0.18)], *_BEAK_BASE), _BEAK_RGB)],  # hooked downwards
    [(_shift([(0, -0.33), (0.76, 0.0), (0, 0.33)], *_BEAK_BASE), _BEAK_RGB)],  # thick cone
]

_EYE_C = (1.08, -0.72)
_EYES = [
    [(_ellipse(*_EYE_C, 0.13, 0.13, n=24), _BLACK)],  # small black dot
    [(_ellipse(*_EYE_C, 0.22, 0.22, n=28), _WHITE),
     (_ellipse(_EYE_C[0] + 0.03, _EYE_C[1], 0.1, 0.1, n=20), _BLACK)],  # large, white ring
    [(_ellipse(*_EYE_C, 0.22, 0.22, n=28), _IRIS_RED),
     (_ellipse(_EYE_C[0] + 0.03, _EYE_C[1], 0.1, 0.1, n=20), _BLACK)],  # large, red ring
]

# Feet: two legs from inside the body, 0.22 units thick (>= 2 px at the smallest 64-px bird).
# 2 x 2 design: leg length (short / long) x foot (L-shaped toe / webbed paddle), so two variants
# differ either in a 4-px leg length or in the foot's silhouette.
_LEG_W = 0.22
_HIPS = (-0.4, 0.36)


def _foot(leg_len, webbed):
    prims = []
    for hx in _HIPS:
        ankle = (hx, 0.55 + leg_len)
        prims.append((_bar((hx, 0.45), (ankle[0], ankle[1] + _LEG_W / 2), _LEG_W), _FOOT_RGB))
        if webbed:  # a paddle fanning out forwards: 0.6 high at the front, 3x an L's toe
            prims.append((_shift([(-0.12, -0.1), (0.42, -0.28), (0.46, 0.34), (-0.12, 0.12)],
                                 *ankle), _FOOT_RGB))
        else:  # one thin forward toe: an "L"
            prims.append((_bar((ankle[0] - _LEG_W / 2, ankle[1]), (ankle[0] + 0.4, ankle[1]),
                               _LEG_W), _FOOT_RGB))
    return prims


_FEET = [_foot(0.32, False), _foot(0.72, False), _foot(0.32, True), _foot(0.72, True)]

# Tails start inside the body's rear (the body is drawn over their base).
_TAIL_SHAPE_POLYS = [
    [(-0.72, -0.2), (-1.78, -0.72), (-1.9, -0.12), (-1.78, 0.42), (-0.72, 0.12)],  # fan
    _bar((-0.7, -0.12), (-2.0, -0.72), 0.26),  # stick, pointing up and back
    [(-0.72, -0.2), (-1.92, -0.7), (-1.78, -0.42), (-1.28, -0.08), (-1.78, 0.22), (-1.92, 0.46),
     (-0.72, 0.1)],  # forked (swallow), a 0.5-deep notch
]
_WING_SHAPE_POLYS = [
    _ellipse(-0.12, -0.06, 0.64, 0.3, n=36, angle=math.radians(-10)),  # folded on the body
    [(0.35, -0.22), (0.05, 0.12), (-0.55, -0.06), (-0.9, -1.18), (-0.22, -0.72)],  # raised
]


def _coloured(polys, n_colours=3):
    return [[(np.asarray(p, float), COLOURS[c])] for p in polys for c in _TAIL_WING_COLOURS[:n_colours]]


_TAILS = _coloured(_TAIL_SHAPE_POLYS)
_WINGS = _coloured(_WING_SHAPE_POLYS)
_VARIANT_PRIMS = {"beak": _BEAKS, "eye": _EYES, "foot": _FEET, "tail": _TAILS, "wing": _WINGS}
# Back to front: legs and tail behind the body, beak behind the head, wing and eye on top.
_DRAW_ORDER = ("foot", "tail", "beak", "body", "head", "wing", "eye")
_OUTLINED = ("body", "head")  # a thin dark outline, so a grey bird stands out on a grey background

# The union of every variant: the pose (scale, position) is computed from it, so the pose never
# depends on the class or on removed parts (a class cannot be read off the bird's size, and
# re-rendering with the same generator but other parts gives the same pose: an intervention).
_ALL_POINTS = np.concatenate(
    [p for prims in (_BODY, _HEAD) for p, _ in prims]
    + [p for variants in _VARIANT_PRIMS.values() for prims in variants for p, _ in prims])
_CENTRE = (_ALL_POINTS.min(0) + _ALL_POINTS.max(0)) / 2
_DIAMETER = float(np.max(np.linalg.norm(_ALL_POINTS[:, None] - _ALL_POINTS[None], axis=-1)))


# --------------------------------------------------------------------------------------------
# Classes


def _check_parts(parts, name="parts") -> dict[str, int]:
    if not isinstance(parts, Mapping):
        raise TypeError(f"{name}: expected a mapping part type -> variant, got {type(parts).__name__}")
    if set(parts) != set(PART_TYPES):
        raise ValueError(f"{name}: expected exactly the keys {list(PART_TYPES)}, got {sorted(parts)}")
    out = {}
    for p in PART_TYPES:
        v = parts[p]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < N_VARIANTS[p]:
            raise ValueError(f"{name}[{p!r}]: expected an int in [0, {N_VARIANTS[p] - 1}], got {v!r}")
        out[p] = int(v)
    return out


def class_parts(n_classes: int = 50, seed: int = 0) -> list[dict[str, int]]:
    """The part variants of each class: unique combinations, many of them one part apart.

    A few random "prototype" birds (one per ten classes) are drawn first; every further class is
    a copy of a random existing class with one random part type changed to another variant, kept
    if it is new. So each non-prototype class differs from at least one other class in exactly one
    part. The list is shuffled at the end so that a class id says nothing about its history.

    Args:
        n_classes (int): number of classes, 1 to 2,592.
        seed (int): seed of the draw.

    Returns:
        list[dict[str, int]]: ``n_classes`` dicts ``{"beak": b, "eye": e, "foot": f, "tail": t,
        "wing": w}``; tail and wing variants are ``shape * 3 + colour`` (see ``VARIANT_NAMES``).
    """
    total = math.prod(N_VARIANTS.values())
    _checks.check_positive_int(n_classes, "n_classes")
    if n_classes > total:
        raise ValueError(f"n_classes: expected at most {total} (all part combinations), got {n_classes}")
    _check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    sizes = [N_VARIANTS[p] for p in PART_TYPES]

    def random_bird():
        return tuple(int(rng.integers(n)) for n in sizes)

    chosen: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    n_proto = max(1, math.ceil(n_classes / 10))
    failures = 0
    while len(chosen) < n_classes:
        if len(chosen) < n_proto or failures > 200:
            # Near saturation the neighbours of existing classes run out: fall back to a new
            # random prototype rather than looping for long.
            cand, failures = random_bird(), 0
        else:
            parent = chosen[int(rng.integers(len(chosen)))]
            k = int(rng.integers(len(sizes)))
            new = int(rng.integers(sizes[k] - 1))
            new += new >= parent[k]  # any variant but the parent's
            cand = parent[:k] + (new,) + parent[k + 1:]
        if cand in seen:
            failures += 1
            continue
        seen.add(cand)
        chosen.append(cand)
    order = rng.permutation(n_classes)
    return [dict(zip(PART_TYPES, chosen[i])) for i in order]


def class_name(parts: Mapping[str, int]) -> str:
    """A readable, file-system safe name, e.g. ``beak2_eye0_foot3_tail4_wing1`` (variant indices)."""
    parts = _check_parts(parts)
    return "_".join(f"{p}{parts[p]}" for p in PART_TYPES)


def part_differences(a: Mapping[str, int], b: Mapping[str, int]) -> list[str]:
    """The part types in which two classes differ, e.g. ``["foot"]``."""
    a, b = _check_parts(a, "a"), _check_parts(b, "b")
    return [p for p in PART_TYPES if a[p] != b[p]]


def class_distances(classes: Sequence[Mapping[str, int]]) -> np.ndarray:
    """Number of differing part types between every pair of classes.

    Args:
        classes (list[dict]): K class part dicts (:func:`class_parts`, :func:`read_class_parts`).

    Returns:
        ndarray[K, K] (int64): entry (i, j) is the number of part types in which i and j differ
        (0 on the diagonal, 1 for "fine-grained" pairs).
    """
    table = np.array([[_check_parts(c, f"classes[{i}]")[p] for p in PART_TYPES]
                      for i, c in enumerate(classes)], dtype=np.int64).reshape(-1, len(PART_TYPES))
    return (table[:, None, :] != table[None, :, :]).sum(-1)  # [K, K, 5] -> [K, K]


def read_class_parts(root: str | os.PathLike) -> list[dict[str, int]]:
    """The class table of a generated data set (``classes_parts.json``), in class-id order."""
    path = Path(root) / "classes_parts.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a data set written by fidobook.data.generate?)")
    rows = json.loads(path.read_text())
    return [_check_parts(r["parts"], f"{path} class {r.get('class_id')}") for r in rows]


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass
class RenderedBird:
    """One rendered bird.

    Attributes:
        image (ndarray[H, W, 3], uint8): the RGB image.
        part_mask (ndarray[H, W], uint8): part label of each pixel (``PART_NAMES``; 0 background).
        parts (dict[str, int]): the class's part variants.
        removed (tuple[str, ...]): part types left out of this image.
    """

    image: np.ndarray
    part_mask: np.ndarray
    parts: dict
    removed: tuple

    @property
    def segmentation(self) -> np.ndarray:
        """ndarray[H, W] (bool): the object mask (body, head and every drawn part)."""
        return self.part_mask > 0

    def box(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) in pixels: the tightest box around the segmentation (pixel edges)."""
        return _box(self.part_mask)

    def keypoints(self) -> np.ndarray:
        """ndarray[7, 3] (float64): (x, y, visible) of body, head, beak, eye, foot, tail, wing.

        The centroid of the part's mask (in pixel-edge coordinates: pixel (i, j) covers
        [j, j+1) x [i, i+1)); if the centroid falls off the part (two feet, a forked tail) it is
        moved to the centre of the part's nearest pixel. A part with no pixel is (0, 0, 0).
        """
        return _keypoints(self.part_mask)


def _box(part_mask):
    rows = np.flatnonzero(part_mask.any(axis=1))
    cols = np.flatnonzero(part_mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def _keypoints(part_mask):
    h, w = part_mask.shape
    flat = part_mask.ravel().astype(np.int64)
    n = len(PART_NAMES)
    yy, xx = np.divmod(np.arange(h * w), w)
    count = np.bincount(flat, minlength=n)
    sx = np.bincount(flat, weights=xx, minlength=n)
    sy = np.bincount(flat, weights=yy, minlength=n)
    out = np.zeros((n - 1, 3))
    for pid in range(1, n):
        if count[pid] == 0:
            continue
        cx, cy = sx[pid] / count[pid], sy[pid] / count[pid]  # pixel-index coordinates
        i, j = math.floor(cy + 0.5), math.floor(cx + 0.5)  # the pixel holding the centroid
        if part_mask[i, j] != pid:  # off the part: snap to its nearest pixel
            ys, xs = np.nonzero(part_mask == pid)
            k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            cx, cy = float(xs[k]), float(ys[k])
        out[pid - 1] = (cx + 0.5, cy + 0.5, 1.0)  # pixel index -> pixel-edge coordinates
    return out


def _majority(labels, ss):
    """Downsample a label image by ``ss`` taking each block's most frequent label (ties: higher
    label, so thin parts survive against the body and the background)."""
    if ss == 1:
        return labels
    H, W = labels.shape
    h, w = H // ss, W // ss
    n = len(PART_NAMES)
    blocks = labels.reshape(h, ss, w, ss).transpose(0, 2, 1, 3).reshape(h * w, ss * ss)
    idx = blocks.astype(np.int64) + n * np.arange(h * w)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n * h * w).reshape(h * w, n)
    return (n - 1 - counts[:, ::-1].argmax(1)).astype(np.uint8).reshape(h, w)


def _muted(rng):
    # Low saturation, mid value: a background that never looks like a part colour.
    h, s, v = rng.random(), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.8)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def _check_range(value, name, lo, hi, integer):
    kind = "int" if integer else "number"
    ok_type = (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)) if integer \
        else (lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(ok_type(v) for v in value):
        raise TypeError(f"{name}: expected a pair ({kind}, {kind}), got {value!r}")
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name}: expected {lo} <= low <= high <= {hi}, got {tuple(value)!r}")
    return (int(a), int(b)) if integer else (float(a), float(b))


def _check_render_args(size, clutter, rotation, scale, noise, supersample):
    _checks.check_positive_int(size, "size", minimum=16)
    clutter = _check_range(clutter, "clutter", 0, 1000, integer=True)
    rotation = _checks.check_positive_float(rotation, "rotation", allow_zero=True)
    if rotation > 180:
        raise ValueError(f"rotation: expected a maximum angle in degrees in [0, 180], got {rotation}")
    scale = _check_range(scale, "scale", 0.05, 1.0, integer=False)
    if scale[0] <= 0:
        raise ValueError(f"scale: expected low > 0, got {scale!r}")
    noise = _checks.check_positive_float(noise, "noise", allow_zero=True)
    _checks.check_positive_int(supersample, "supersample")
    return clutter, rotation, scale, noise


def render_bird(parts: Mapping[str, int], rng: np.random.Generator | int, size: int = 64, *,
                remove: Sequence[str] = (), clutter: tuple[int, int] = (0, 8),
                rotation: float = 30.0, scale: tuple[float, float] = (0.8, 1.0),
                noise: float = 4.0, supersample: int = 4) -> RenderedBird:
    """Renders one bird with random pose, background, clutter and noise.

    The random draws come from ``rng`` in a fixed order that does not depend on ``parts`` or
    ``remove``: rendering twice from equally seeded generators with different parts gives the same
    pose, background and clutter, i.e. an intervention (FunnyBirds' part removal).

    The RGB image is drawn ``supersample`` times larger and box-filtered down (anti-aliasing);
    the part mask is drawn with the same polygons and downsampled by majority vote, so it stays a
    label image aligned with the pixels.

    Args:
        parts (dict[str, int]): a variant for each of ``PART_TYPES`` (see :func:`class_parts`).
        rng (numpy.random.Generator or int): the source of every random draw (an int seeds one).
        size (int): image side in pixels (>= 16).
        remove (sequence of str): part types not to draw (a subset of ``PART_TYPES``).
        clutter ((int, int)): min and max number of background shapes in the part colours; they
            are drawn before the bird (never over it) and mostly away from its body and head.
        rotation (float): maximum absolute rotation in degrees (uniform). Default: 30.
        scale ((float, float)): range of the bird's size as a fraction of the largest size that
            always fits in the image (the bird never leaves the image). Default: (0.8, 1.0).
        noise (float): maximum std of the Gaussian pixel noise, in 0-255 grey levels. Default: 4.
        supersample (int): anti-aliasing factor. Default: 4.

    Returns:
        RenderedBird: ``image`` uint8[H, W, 3], ``part_mask`` uint8[H, W] (labels of
        ``PART_NAMES``) and helpers for the box and keypoints.
    """
    parts = _check_parts(parts)
    remove = tuple(remove) if not isinstance(remove, str) else (remove,)
    bad = [r for r in remove if r not in PART_TYPES]
    if bad:
        raise ValueError(f"remove: expected part types from {list(PART_TYPES)}, got {bad}")
    clutter, rotation, scale, noise = _check_render_args(size, clutter, rotation, scale, noise, supersample)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or an int, got {type(rng).__name__}")
    return _render(parts, set(remove), rng, size, clutter, rotation, scale, noise, supersample)


def _render(parts, removed, rng, size, clutter, rotation, scale, noise, ss):
    S = size * ss
    margin = 1.0  # final pixels between the bird and the image border

    # ---- pose: flip, rotation, scale, translation (the map bird units -> final pixels)
    flip = rng.random() < 0.5
    theta = math.radians(rng.uniform(-rotation, rotation))
    s = rng.uniform(*scale) * (size - 2 * margin) / _DIAMETER  # pixels per bird unit
    A = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]) * s
    if flip:
        A = A @ np.diag([-1.0, 1.0])
    hull = (_ALL_POINTS - _CENTRE) @ A.T
    lo, hi = hull.min(0), hull.max(0)  # the rotated extent is at most the diameter: it fits
    t = np.array([rng.uniform(margin - lo[k], size - margin - hi[k]) for k in range(2)])

    def to_canvas(points):  # bird units -> supersampled pixel centres (PIL's convention)
        return [tuple(p) for p in (((points - _CENTRE) @ A.T + t) * ss - 0.5).tolist()]

    # ---- background: a muted colour, or a linear gradient between two (draws always made)
    c0, c1 = _muted(rng), _muted(rng)
    gradient = rng.random() < 0.5
    phi = rng.uniform(0, 2 * math.pi)
    if not gradient:
        c1 = c0
    u = np.linspace(-1.0, 1.0, size)
    proj = math.cos(phi) * u[None, :] + math.sin(phi) * u[:, None]  # [H, W] in [-1.41, 1.41]
    w = np.clip((proj + 1.42) / 2.84, 0, 1)[..., None]
    bg = (c0 * (1 - w) + c1 * w).round().astype(np.uint8)  # [H, W, 3]
    # NEAREST is enough: after the box-filter downsampling each block is the original pixel again.
    img = Image.fromarray(bg).resize((S, S), Image.NEAREST)
    lab = Image.new("L", (S, S), 0)
    draw, ldraw = ImageDraw.Draw(img), ImageDraw.Draw(lab)

    # ---- clutter: shapes in the part colours, centres away from the body and head
    inv = np.linalg.inv(A)
    palette = list(COLOURS.values())
    n_clutter = int(rng.integers(clutter[0], clutter[1] + 1))
    for _ in range(n_clutter):
        kind = int(rng.integers(3))
        colour = palette[int(rng.integers(len(palette)))]
        r = rng.uniform(0.04, 0.11) * size
        aspect = rng.uniform(0.5, 1.0)
        angle = rng.uniform(0, math.pi)
        cands = rng.uniform(0, size, (8, 2))  # a fixed number of draws, whatever is accepted
        q = (cands - t) @ inv.T + _CENTRE  # candidate centres in bird units
        m = 0.5 * r / s  # let a shape overlap the body by up to half its radius
        inside = ((q[:, 0] / (1.0 + m)) ** 2 + (q[:, 1] / (0.62 + m)) ** 2 <= 1) | (
            np.hypot(q[:, 0] - _HEAD_C[0], q[:, 1] - _HEAD_C[1]) <= _HEAD_R + m)
        ok = np.flatnonzero(~inside)
        if ok.size == 0:
            continue
        cx, cy = cands[ok[0]]
        if kind == 0:
            poly = _ellipse(cx, cy, r, r * aspect, n=24, angle=angle)
        elif kind == 1:
            poly = _ellipse(cx, cy, r, r * aspect, n=4, angle=angle)  # a rotated rectangle-ish
        else:
            poly = _ellipse(cx, cy, r, r, n=3, angle=angle)  # a triangle
        draw.polygon([tuple(p) for p in (poly * ss - 0.5).tolist()], fill=colour)

    # ---- the bird, back to front, into the image and the label canvas alike
    outline_w = max(1, round(0.7 * ss))
    for name in _DRAW_ORDER:
        if name in removed:
            continue
        if name == "body":
            prims = _BODY
        elif name == "head":
            prims = _HEAD
        else:
            prims = _VARIANT_PRIMS[name][parts[name]]
        pid = _PART_ID[name]
        for points, colour in prims:
            xy = to_canvas(points)
            if name in _OUTLINED:
                draw.polygon(xy, fill=colour, outline=_OUTLINE_RGB, width=outline_w)
                ldraw.polygon(xy, fill=pid, outline=pid, width=outline_w)
            else:
                draw.polygon(xy, fill=colour)
                ldraw.polygon(xy, fill=pid)

    # ---- downsample (box filter = area average) and add mild noise
    if ss > 1:
        img = img.reduce(ss)
    sigma = rng.uniform(0.0, noise)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 1.0, (size, size, 3)).astype(np.float32) * sigma
    image = np.clip(arr.round(), 0, 255).astype(np.uint8)
    part_mask = _majority(np.asarray(lab), ss)
    return RenderedBird(image=image, part_mask=part_mask, parts=dict(parts),
                        removed=tuple(p for p in PART_TYPES if p in removed))


def variant_gallery(size: int = 64, seed: int = 0, scale: float = 0.8) -> np.ndarray:
    """Every variant of every part type, drawn at ``size`` px with the same pose.

    Row r shows the variants of ``PART_TYPES[r]`` on an otherwise fixed bird (no rotation, no
    clutter, no noise, the smallest default scale), so one can check by eye that all variants
    can be told apart at the resolution used.

    Returns:
        ndarray[5 * size, 9 * size, 3] (uint8): the grid (unused cells are white).
    """
    _checks.check_positive_int(size, "size", minimum=16)
    base = {"beak": 0, "eye": 0, "foot": 0, "tail": 0, "wing": 0}
    n_cols = max(N_VARIANTS.values())
    grid = np.full((len(PART_TYPES) * size, n_cols * size, 3), 255, np.uint8)
    for r, p in enumerate(PART_TYPES):
        for v in range(N_VARIANTS[p]):
            bird = render_bird({**base, p: v}, np.random.default_rng(seed), size, clutter=(0, 0),
                               rotation=0.0, scale=(scale, scale), noise=0.0)
            grid[r * size:(r + 1) * size, v * size:(v + 1) * size] = bird.image
    return grid


# --------------------------------------------------------------------------------------------
# The data set on disk

#: The manifest :func:`generate` writes inside every set: the size and SHA-256 of every file.
_MANIFEST = "fidobook_manifest.json"
_MANIFEST_FORMAT = "fidobook-birds-manifest-1"
_IMAGE_DIRS = ("images", "segmentations", "part_masks")
_IMAGE_MODES = {"images": "RGB", "segmentations": "L", "part_masks": "L"}
_TEXT_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
               "classes.txt", "parts/parts.txt", "parts/part_locs.txt", "classes_parts.json")


def _entry(data: bytes) -> list:
    """A manifest entry: ``[size in bytes, SHA-256 hex digest]``."""
    return [len(data), hashlib.sha256(data).hexdigest()]


def _write_file(path: Path, data: bytes) -> list:
    """Writes ``data`` to ``path`` and returns its manifest entry.

    Not atomic on purpose: a file left half-written by a killed run is found by the manifest
    (its size or digest differs) and written again.
    """
    path.write_bytes(data)
    return _entry(data)


def _save_png(array, path) -> list:
    # Fixed compression and no metadata: the same array always gives the same bytes.
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return _write_file(path, buffer.getvalue())


def generate(root: str | os.PathLike, n_classes: int = 50, train_per_class: int = 200,
             test_per_class: int = 20, size: int = 64, seed: int = 0, part_dropout: float = 0.5,
             clutter: tuple[int, int] = (0, 8), *, rotation: float = 30.0,
             scale: tuple[float, float] = (0.8, 1.0), noise: float = 4.0, supersample: int = 4,
             progress: bool = True, workers: int = 1) -> Path:
    """Writes the synthetic bird data set in CUB-200-2011's on-disk format.

    Layout under ``root`` (ids are 1-based, coordinates in pixels, pixel (i, j) covering
    [j, j+1) x [i, i+1))::

        images/<NNN.name>/<image_id>.png         RGB, size x size
        segmentations/<NNN.name>/<image_id>.png  L, 0 / 255 (body, head and all drawn parts)
        part_masks/<NNN.name>/<image_id>.png     L, part labels 0..7 (PART_NAMES)
        images.txt                <image_id> <relative path>
        image_class_labels.txt    <image_id> <class_id>
        train_test_split.txt      <image_id> <1 train / 0 test>
        bounding_boxes.txt        <image_id> <x> <y> <w> <h>
        classes.txt               <class_id> <NNN.name>
        parts/parts.txt           <part_id> <name>        (part_id = part-mask label)
        parts/part_locs.txt       <image_id> <part_id> <x> <y> <visible>
        classes_parts.json        the variants of each class (read_class_parts)
        fidobook_birds.json       format version and the generation arguments
        fidobook_manifest.json    size and SHA-256 of every file but fidobook_birds.json

    Images are ordered by class, each class's training images first. Each image draws from its
    own generator seeded by ``(seed, image index)``, so the output is byte-identical for the same
    arguments (with the same numpy and Pillow versions) and does not depend on generation order.
    Training images lose, with probability ``part_dropout``, k ~ U{1..5} random part types
    (FunnyBirds draws k from {0..5}); test images have all parts. A keypoint is the centroid of
    the part's pixels (moved onto the part if it falls off it); removed parts are (0, 0, 0).

    The set is written to ``<root>.tmp-<host>-<pid>`` and renamed when complete; such folders
    left by a killed run (and the older ``<root>.tmp-<pid>``) are removed by the next call once
    their process is gone. If ``root`` already holds a set generated with the same arguments, it
    is verified against its manifest (every file's size and SHA-256: about 1 % of the time it
    took to generate them, 1-2 s for the 33,000 files of the ``cpu`` profile) and reused. A
    damaged or missing image, segmentation or part mask is reported in a warning naming the file
    and rendered again from its own seed; a damaged text file means generating the whole set
    again (also reported). A set written before manifests existed is verified once by content (every
    PNG decoded, every text file checked against the arguments or for its lines; about a tenth
    of the generation time) and then gets its manifest.

    Args:
        root (str or Path): output folder (missing, empty, or a previous output of this function).
        n_classes (int): number of classes (:func:`class_parts`). Default: 50.
        train_per_class (int): training images per class. Default: 200.
        test_per_class (int): test images per class. Default: 20.
        size (int): image side in pixels. Default: 64.
        seed (int): seed of the classes and of every image. Default: 0.
        part_dropout (float): probability that a training image loses some parts. Default: 0.5.
        clutter ((int, int)): min and max number of background distractor shapes. Default: (0, 8).
        rotation, scale, noise, supersample: passed to :func:`render_bird`.
        progress (bool): show a tqdm progress bar. Default: True.
        workers (int): processes that render (the output does not depend on it). Default: 1.

    Returns:
        Path: ``root``.

    Raises:
        ValueError: ``root`` holds a data set made with other arguments, or other files.

    Warns:
        UserWarning: a damaged file of an existing set, naming it and the repair.
    """
    _checks.check_positive_int(n_classes, "n_classes")
    _checks.check_positive_int(train_per_class, "train_per_class", minimum=0)
    _checks.check_positive_int(test_per_class, "test_per_class", minimum=0)
    if train_per_class + test_per_class == 0:
        raise ValueError("train_per_class, test_per_class: expected at least one image per class, "
                         "got 0 and 0")
    _check_seed(seed)
    part_dropout = _checks.check_positive_float(part_dropout, "part_dropout", allow_zero=True)
    if part_dropout > 1:
        raise ValueError(f"part_dropout: expected a probability in [0, 1], got {part_dropout}")
    clutter, rotation, scale, noise = _check_render_args(size, clutter, rotation, scale, noise, supersample)
    _checks.check_positive_int(workers, "workers")
    classes = class_parts(n_classes, seed)  # also checks n_classes <= 2,592

    args = dict(n_classes=n_classes, train_per_class=train_per_class, test_per_class=test_per_class,
                size=size, seed=int(seed), part_dropout=part_dropout, clutter=list(clutter),
                rotation=rotation, scale=list(scale), noise=noise, supersample=supersample)
    meta = {"format": "fidobook-birds", "format_version": FORMAT_VERSION, "args": args}

    root = Path(root)
    _sweep_stale(root)
    existing = _matches_existing(root, meta)
    if existing is True and _verify_or_repair(root, classes, meta):
        return root
    host, pid = socket.gethostname(), os.getpid()
    tmp = root.with_name(f"{root.name}.tmp-{host}-{pid}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_dataset(tmp, classes, meta, progress, workers)
        if existing is not False:  # our set, damaged beyond repair: replace it
            old = root.with_name(f"{root.name}.old-{host}-{pid}")
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            return root
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty folder
        except OSError:
            # Someone else finished first: fine if theirs is the same data set.
            if _matches_existing(root, meta) is not True:
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _sweep_stale(root: Path, max_age: float = 24 * 3600.0) -> list[Path]:
    """Removes the folders killed runs of :func:`generate` left next to ``root``.

    ``<root>.tmp-<host>-<pid>`` (a set being written), ``<root>.old-<host>-<pid>`` (a damaged set
    being replaced) and the older ``<root>.tmp-<pid>``: removed when the writer ran on this host
    (or did not record its host) and its process no longer exists, or when written elsewhere
    and older than ``max_age`` seconds. A live writer's folder is left alone.
    """
    if not root.parent.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(root.name)}\.(?:tmp|old)-(?:(?P<host>.+)-)?(?P<pid>\d+)")
    host, removed = socket.gethostname(), []
    name = glob.escape(root.name)
    for folder in list(root.parent.glob(f"{name}.tmp-*")) + list(root.parent.glob(f"{name}.old-*")):
        match = pattern.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        pid, writer = int(match["pid"]), match["host"]
        if writer in (None, host):
            stale = pid != os.getpid() and not _io._pid_alive(pid)
        else:
            try:
                stale = time.time() - folder.stat().st_mtime > max_age
            except OSError:
                continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _matches_existing(root: Path, meta: dict) -> bool | None:
    """Whether ``root`` holds this very data set.

    True: it does (its files still to be verified); False: ``root`` is missing or empty; None:
    a set of ours (it has a manifest) whose ``fidobook_birds.json`` is damaged, to be replaced.
    Anything else raises ``ValueError``: a file, a folder of other files, another data set.
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"root: expected a folder, got the file {root}")
    meta_path = root / _META
    if not meta_path.is_file():
        if (root / _MANIFEST).is_file():
            warnings.warn(f"generate: damaged data set: {str(meta_path)!r} is missing; "
                          f"generating the set again", stacklevel=3)
            return None
        if any(root.iterdir()):
            raise ValueError(f"root: expected a missing or empty folder or a data set written by "
                             f"generate(), got {root}, a non-empty folder without {_META}")
        return False
    try:
        old = json.loads(meta_path.read_bytes().decode("utf-8"))
        if not isinstance(old, dict):
            raise ValueError(f"expected a JSON object, got {type(old).__name__}")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if (root / _MANIFEST).is_file():
            warnings.warn(f"generate: damaged data set: {str(meta_path)!r} is unreadable ({err}); "
                          f"generating the set again", stacklevel=3)
            return None
        raise ValueError(f"root: {str(meta_path)!r} is not a fidobook data set description "
                         f"({err}); delete {root} or choose another folder") from err
    if old == meta:
        return True
    old_args = old.get("args", {})
    old_args = old_args if isinstance(old_args, dict) else {}
    diff = {k: (old_args.get(k), v) for k, v in meta["args"].items() if old_args.get(k) != v}
    if old.get("format_version") != meta["format_version"]:
        diff["format_version"] = (old.get("format_version"), meta["format_version"])
    raise ValueError(f"root: {root} holds a data set generated with other arguments "
                     f"(existing, requested): {diff}; delete it or choose another folder")


# --------------------------------------------------------------------------------------------
# Verification of a set on reuse


def _class_names(classes) -> list[str]:
    return [f"{c + 1:03d}.{class_name(p)}" for c, p in enumerate(classes)]


def _image_rel(names: list[str], args: dict, index: int) -> str:
    """``<NNN.name>/<image_id>.png`` of image ``index`` (0-based)."""
    c = index // (args["train_per_class"] + args["test_per_class"])
    return f"{names[c]}/{index + 1:06d}.png"


def _expected_files(names: list[str], args: dict) -> list[str]:
    n_images = args["n_classes"] * (args["train_per_class"] + args["test_per_class"])
    rels = [_image_rel(names, args, i) for i in range(n_images)]
    return [f"{d}/{r}" for d in _IMAGE_DIRS for r in rels] + list(_TEXT_FILES)


def _read_manifest(root: Path, expected: list[str]) -> tuple[dict | None, str | None]:
    """``(files, None)`` from an intact manifest, else ``(None, why)``; ``why`` is None when the
    set simply has no manifest (generated before manifests existed)."""
    path = root / _MANIFEST
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        files = manifest["files"]
        ok = (manifest.get("format") == _MANIFEST_FORMAT and isinstance(files, dict)
              and manifest.get("digest") == _files_digest(files))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if not ok:
        return None, "digest mismatch (the manifest was altered or is incomplete)"
    if sorted(files) != sorted(expected):
        return None, "it lists other files than this data set has"
    return files, None


def _files_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _write_manifest(root: Path, files: dict) -> None:
    manifest = {"format": _MANIFEST_FORMAT, "algorithm": "sha256", "digest": _files_digest(files),
                "files": dict(sorted(files.items()))}
    _io.atomic_write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n",
                          root / _MANIFEST)


def _check_against(root: Path, files: dict, rels) -> dict[str, str]:
    """``{rel: what is wrong}`` for the files among ``rels`` whose bytes differ from the manifest."""
    bad, base = {}, os.fspath(root)
    for rel in rels:  # os.path and open, not pathlib: a third of the time for 33,000 files
        size, digest = files[rel]
        try:
            with open(os.path.join(base, rel), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            bad[rel] = "missing"
            continue
        except OSError as err:
            bad[rel] = f"unreadable ({err})"
            continue
        if len(data) != size:
            bad[rel] = f"{len(data)} bytes, expected {size} (truncated or overwritten)"
        elif hashlib.sha256(data).hexdigest() != digest:
            bad[rel] = "SHA-256 mismatch (altered)"
    return bad


def _decodes(path: Path, size: int, mode: str) -> str | None:
    """Why ``path`` is not a ``size`` x ``size`` PNG of ``mode`` that decodes in full; None if it is."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG" or image.size != (size, size) or image.mode != mode:
                return (f"expected a {size} x {size} {mode} PNG, got a {image.size[0]} x "
                        f"{image.size[1]} {image.mode} {image.format}")
    except FileNotFoundError:
        return "missing"
    except Exception as err:  # noqa: BLE001 - any failure to decode is damage
        return f"does not decode ({type(err).__name__}: {err})"
    return None


def _check_legacy(root: Path, classes, names: list[str], args: dict, rels) -> dict[str, str]:
    """``{rel: what is wrong}`` for a set without manifest, by content: every image decodes at
    the right size and mode; the text files that follow from the arguments are equal to them,
    the two that need the renders (boxes, keypoints) have the right lines."""
    bad = {}
    texts = _static_texts(classes, names, args)
    n_images = args["n_classes"] * (args["train_per_class"] + args["test_per_class"])
    for rel in rels:
        path = root / rel
        top = rel.split("/")[0]
        if top in _IMAGE_DIRS:
            why = _decodes(path, args["size"], _IMAGE_MODES[top])
        else:
            try:
                data = path.read_bytes()
            except OSError as err:
                bad[rel] = "missing" if isinstance(err, FileNotFoundError) else f"unreadable ({err})"
                continue
            if rel in texts:
                why = None if data == texts[rel].encode() else "content differs from the arguments'"
            else:
                # "<id> <x> <y> <w> <h>" per image, "<id> <part> <x> <y> <visible>" per part
                per_image = 1 if rel == "bounding_boxes.txt" else len(PART_NAMES) - 1
                why = _check_table(data, n_images * per_image, 5, per_image)
        if why is not None:
            bad[rel] = why
    return bad


def _check_table(data: bytes, n_lines: int, n_fields: int, per_image: int) -> str | None:
    """Why ``data`` is not ``n_lines`` lines of numbers, ``per_image`` per image id from 1."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        return f"not UTF-8 ({err})"
    if len(lines) != n_lines or not data.endswith(b"\n"):
        return f"{len(lines)} lines, expected {n_lines}"
    for i, line in enumerate(lines):
        fields = line.split(" ")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = None
        if values is None or len(fields) != n_fields or values[0] != i // per_image + 1:
            return f"line {i + 1} is malformed: {line[:80]!r}"
    return None


def _report(root: Path, bad: dict[str, str], action: str) -> None:
    shown = "; ".join(f"{str(root / rel)!r}: {why}" for rel, why in list(bad.items())[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    warnings.warn(f"generate: damaged data set {str(root)!r}: {len(bad)} file(s) fail "
                  f"verification: {shown}{more}; {action}", stacklevel=4)


def _verify_or_repair(root: Path, classes, meta: dict) -> bool:
    """Verifies the set at ``root`` and repairs what it can; False: regenerate the whole set.

    With a manifest, every file's size and SHA-256 are checked. A set without one (generated
    before manifests) is checked by content once (:func:`_check_legacy`), then gets its manifest.
    A damaged or missing image, segmentation or part mask is rendered again from its own seed
    (the generator is deterministic per image) and must then match the manifest; anything else
    (a text file, a repaired image that still differs) means regenerating the set.
    """
    args = meta["args"]
    names = _class_names(classes)
    expected = _expected_files(names, args)
    _io.sweep_tmp(root)  # a manifest write interrupted
    files, why = _read_manifest(root, expected)
    if files is None and why is not None:
        warnings.warn(f"generate: damaged manifest {str(root / _MANIFEST)!r}: {why}; verifying the "
                      f"data set by decoding it", stacklevel=3)
    if files is not None:
        def check(rels):
            return _check_against(root, files, rels)
    else:
        def check(rels):
            return _check_legacy(root, classes, names, args, rels)
    bad = check(expected)
    if bad:
        images = {}
        for rel in bad:
            top, _, rest = rel.partition("/")
            index = int(PurePosixPath(rest).stem) - 1 if top in _IMAGE_DIRS else -1
            images[rel] = index
        if any(i < 0 for i in images.values()):
            _report(root, bad, "generating the set again")
            return False
        indices = sorted(set(images.values()))
        _report(root, bad, f"rendering image(s) {[i + 1 for i in indices][:20]} again")
        for name in names:
            for d in _IMAGE_DIRS:
                (root / d / name).mkdir(parents=True, exist_ok=True)
        for index in indices:
            _make_images(root, classes, names, args, index, index + 1)
        rels = [f"{d}/{_image_rel(names, args, i)}" for i in indices for d in _IMAGE_DIRS]
        still = check(rels)
        if still:
            _report(root, still, "the images rendered again differ too (another numpy or Pillow "
                                 "version?): generating the set again")
            return False
    if files is None:
        _write_manifest(root, {rel: _entry((root / rel).read_bytes()) for rel in expected})
    return True


# --------------------------------------------------------------------------------------------
# Writing


def _make_images(out: Path, classes, names, args: dict, start: int, stop: int) -> list[tuple]:
    """Renders and writes images ``start..stop-1``; returns their text-file lines, in order.

    Each row is ``(images.txt line, image_class_labels.txt line, train_test_split.txt line,
    bounding_boxes.txt line, part_locs.txt lines, {path: manifest entry} of the three PNGs)``.
    Module-level (picklable) so that worker processes can run it on disjoint ranges.
    """
    per_class = args["train_per_class"] + args["test_per_class"]
    rows = []
    for index in range(start, stop):
        c, j = divmod(index, per_class)
        image_id = index + 1
        is_train = j < args["train_per_class"]
        # Two independent streams per image: which parts to drop, and the rendering. Both are
        # keyed by (seed, index) only, so any subset of images can be made in any order.
        drop_rng = np.random.default_rng(np.random.SeedSequence(args["seed"], spawn_key=(2, index)))
        render_rng = np.random.default_rng(np.random.SeedSequence(args["seed"], spawn_key=(1, index)))
        removed = ()
        if is_train and drop_rng.random() < args["part_dropout"]:
            k = int(drop_rng.integers(1, len(PART_TYPES) + 1))
            removed = tuple(PART_TYPES[i] for i in sorted(drop_rng.choice(len(PART_TYPES), k, replace=False)))
        bird = _render(classes[c], set(removed), render_rng, args["size"], tuple(args["clutter"]),
                       args["rotation"], tuple(args["scale"]), args["noise"], args["supersample"])
        rel = f"{names[c]}/{image_id:06d}.png"
        entries = {
            f"images/{rel}": _save_png(bird.image, out / "images" / rel),
            f"segmentations/{rel}": _save_png((bird.part_mask > 0).astype(np.uint8) * 255,
                                              out / "segmentations" / rel),
            f"part_masks/{rel}": _save_png(bird.part_mask, out / "part_masks" / rel),
        }
        x, y, w, h = bird.box()
        locs = "".join(f"{image_id} {pid} {kx:.1f} {ky:.1f} {int(vis)}\n"
                       for pid, (kx, ky, vis) in enumerate(bird.keypoints(), start=1))
        rows.append((f"{image_id} {rel}\n", f"{image_id} {c + 1}\n", f"{image_id} {int(is_train)}\n",
                     f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n", locs, entries))
    return rows


def _static_texts(classes, names: list[str], args: dict) -> dict[str, str]:
    """The text files that follow from the arguments alone (no rendering), by relative path."""
    per_class = args["train_per_class"] + args["test_per_class"]
    ids = range(1, args["n_classes"] * per_class + 1)
    table = [{"class_id": c + 1, "name": names[c], "parts": classes[c],
              "variants": {p: VARIANT_NAMES[p][classes[c][p]] for p in PART_TYPES}}
             for c in range(args["n_classes"])]
    return {
        "images.txt": "".join(f"{i} {_image_rel(names, args, i - 1)}\n" for i in ids),
        "image_class_labels.txt": "".join(f"{i} {(i - 1) // per_class + 1}\n" for i in ids),
        "train_test_split.txt": "".join(
            f"{i} {int((i - 1) % per_class < args['train_per_class'])}\n" for i in ids),
        "classes.txt": "".join(f"{c + 1} {n}\n" for c, n in enumerate(names)),
        "parts/parts.txt": "".join(f"{i} {n}\n" for i, n in enumerate(PART_NAMES) if i > 0),
        "classes_parts.json": json.dumps(table, indent=1) + "\n",
    }


def _write_dataset(out: Path, classes, meta, progress, workers):
    a = meta["args"]
    n_classes = a["n_classes"]
    names = _class_names(classes)
    for sub in _IMAGE_DIRS:
        for name in names:
            (out / sub / name).mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(parents=True, exist_ok=True)

    n_images = n_classes * (a["train_per_class"] + a["test_per_class"])
    chunk = 256
    ranges = [(i, min(i + chunk, n_images)) for i in range(0, n_images, chunk)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_images, desc="birds", unit="img", mininterval=0.5)
    rows = []
    try:
        if workers == 1:
            for lo, hi in ranges:
                rows += _make_images(out, classes, names, a, lo, hi)
                if bar is not None:
                    bar.update(hi - lo)
        else:
            from concurrent.futures import ProcessPoolExecutor
            import multiprocessing

            # "spawn": safe whatever threads the parent runs (torch); the output does not depend
            # on the number of workers since every image has its own generator.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_make_images, out, classes, names, a, lo, hi) for lo, hi in ranges]
                for (lo, hi), fut in zip(ranges, futures):
                    rows += fut.result()
                    if bar is not None:
                        bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()

    files = {rel: entry for r in rows for rel, entry in r[5].items()}
    texts = {**_static_texts(classes, names, a),
             "bounding_boxes.txt": "".join(r[3] for r in rows),
             "parts/part_locs.txt": "".join(r[4] for r in rows)}
    for rel, text in texts.items():
        files[rel] = _write_file(out / rel, text.encode("utf-8"))
    _write_manifest(out, files)
    # Written last: its presence marks a complete data set.
    (out / _META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
