"""A tiny data set shaped like the real CUB-200-2011 as distributed, and a ResNet state-dict file.

Not like the generated birds: the folder has what the two official archives unpack to and
nothing of fidobook's own::

    <root>/CUB_200_2011/images.txt, image_class_labels.txt, train_test_split.txt,
                        bounding_boxes.txt, classes.txt ("001.Black_footed_Albatross", ...),
                        parts/parts.txt (CUB's 15 part names), parts/part_locs.txt (some parts
                        invisible: "0.0 0.0 0"), images/001.Black_footed_Albatross/*.jpg
                        (JPEGs of varied, non-square sizes, 70-140 px a side; one grey-scale)
    <root>/segmentations/001.Black_footed_Albatross/*.png   (optional, a separate download in
                        real life; grey levels averaged over four "annotators")

and no ``part_masks/``, no ``fidobook_birds.json``. Each image is noise with an ellipse (the
"bird") in its class's colour; box, keypoints and segmentation are the ellipse's, so a classifier
can learn the classes and a segmenter the birds. Used by ``tests/test_context.py`` and the chapter
tests::

    from cub_shaped import make_cub_shaped, make_resnet_weights
    data_dir = make_cub_shaped(tmp_path)                   # .../CUB_200_2011
    weights = make_resnet_weights(tmp_path / "r18.pt", 3)  # a torchvision-keyed state dict

Both take well under a second.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["CUB_PARTS", "CLASS_NAMES", "make_cub_shaped", "make_resnet_weights"]

#: CUB-200-2011's parts, in the order of its parts/parts.txt (ids 1..15).
CUB_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
             "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat"]
#: CUB-200-2011's first class names (classes.txt adds the "NNN." prefix).
CLASS_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
               "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet",
               "Brewer_Blackbird", "Red_winged_Blackbird"]
# Where each part sits on the ellipse, as (angle in turns, fraction of the semi-axes).
_PART_PLACES = [(0.25 + p / len(CUB_PARTS), 0.45 + 0.4 * ((p * 7) % 5) / 4)
                for p in range(len(CUB_PARTS))]


def _class_colour(c: int, n: int) -> np.ndarray:
    """A saturated colour per class, hues evenly spaced."""
    h = c / n
    rgb = [max(0.0, min(1.0, abs((h * 6 + k) % 6 - 3) - 1)) for k in (0, 4, 2)]  # hue -> RGB
    return np.array([40 + 200 * v for v in rgb], np.float64)


def make_cub_shaped(root: str | os.PathLike, *, n_classes: int = 3, per_class: int = 4,
                    test_per_class: int = 2, with_segmentations: bool = True, seed: int = 0) -> Path:
    """Writes a CUB-200-2011-shaped data set under ``root``; returns its ``CUB_200_2011`` folder.

    Args:
        root (path): a folder (created) that must not hold a ``CUB_200_2011`` yet.
        n_classes (int): classes. Default: 3.
        per_class (int): training images per class. Default: 4.
        test_per_class (int): test images per class, on top. Default: 2.
        with_segmentations (bool): write ``<root>/segmentations/`` next to ``CUB_200_2011``, as
            the separate archive unpacks. Default: True.
        seed (int): everything random (sizes, positions, noise, visibility, split). Default: 0.

    Returns:
        Path: ``<root>/CUB_200_2011`` (what ``data_dir`` takes). Image ids run class by class
        (as in CUB), training and test images mixed within a class; image id 2 is a grey-scale
        JPEG, the others RGB. Every image has at least one invisible and at least three visible
        parts.
    """
    root = Path(root)
    cub = root / "CUB_200_2011"
    if cub.exists():
        raise FileExistsError(f"root: expected a folder without CUB_200_2011, got {root} (it has one)")
    rng = np.random.default_rng(seed)
    names = [f"{c + 1:03d}.{CLASS_NAMES[c] if c < len(CLASS_NAMES) else f'Class_{c + 1}'}"
             for c in range(n_classes)]
    images, labels, split, boxes, locs = [], [], [], [], []
    iid = 0
    for c, folder in enumerate(names):
        colour = _class_colour(c, n_classes)
        n = per_class + test_per_class
        is_test = np.zeros(n, bool)
        is_test[rng.choice(n, test_per_class, replace=False)] = True
        for k in range(n):
            iid += 1
            W, H = (int(v) for v in rng.integers(70, 141, 2))
            if W == H:
                W += 1 if W < 140 else -1
            a, b = W * rng.uniform(0.18, 0.3), H * rng.uniform(0.18, 0.3)  # semi-axes
            cx, cy = rng.uniform(a + 2, W - a - 2), rng.uniform(b + 2, H - b - 2)
            yy, xx = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
            bird = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
            pixels = rng.normal(128, 40, (H, W, 3))
            pixels[bird] = colour + rng.normal(0, 12, (int(bird.sum()), 3))
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            if iid == 2:
                image = image.convert("L")  # real CUB has a few grey-scale JPEGs
            rel = f"{folder}/{folder[4:]}_{k + 1:04d}_{1000 + iid}.jpg"
            (cub / "images" / folder).mkdir(parents=True, exist_ok=True)
            image.save(cub / "images" / rel, quality=90)
            images.append(f"{iid} {rel}\n")
            labels.append(f"{iid} {c + 1}\n")
            split.append(f"{iid} {0 if is_test[k] else 1}\n")
            boxes.append(f"{iid} {cx - a:.1f} {cy - b:.1f} {2 * a:.1f} {2 * b:.1f}\n")
            hidden = int(rng.integers(len(CUB_PARTS)))  # at least one part invisible
            visible = rng.random(len(CUB_PARTS)) < 0.75
            visible[hidden] = False
            while visible.sum() < 3:  # and at least three visible
                hidden_too = [p for p in range(len(CUB_PARTS)) if p != hidden and not visible[p]]
                visible[rng.choice(hidden_too)] = True
            for p, (turn, r) in enumerate(_PART_PLACES):
                if visible[p]:
                    x = cx + r * a * math.cos(2 * math.pi * turn)
                    y = cy + r * b * math.sin(2 * math.pi * turn)
                    locs.append(f"{iid} {p + 1} {x:.1f} {y:.1f} 1\n")
                else:
                    locs.append(f"{iid} {p + 1} 0.0 0.0 0\n")
            if with_segmentations:
                votes = np.zeros((H, W))
                for _ in range(4):  # four annotators, each a little off
                    da, db = rng.uniform(-2, 2, 2)
                    votes += ((xx - cx) / (a + da)) ** 2 + ((yy - cy) / (b + db)) ** 2 <= 1
                seg = root / "segmentations" / rel
                seg.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(votes / 4 * 255).astype(np.uint8)).save(seg.with_suffix(".png"))
    files = {
        "images.txt": images, "image_class_labels.txt": labels, "train_test_split.txt": split,
        "bounding_boxes.txt": boxes, "classes.txt": [f"{c + 1} {name}\n" for c, name in enumerate(names)],
        "parts/parts.txt": [f"{p + 1} {name}\n" for p, name in enumerate(CUB_PARTS)],
        "parts/part_locs.txt": locs,
    }
    for rel, lines in files.items():
        (cub / rel).parent.mkdir(parents=True, exist_ok=True)
        (cub / rel).write_text("".join(lines), encoding="utf-8")
    return cub


def make_resnet_weights(path: str | os.PathLike, num_classes: int, arch: str = "resnet18",
                        cbam: bool = False, *, seed: int = 0) -> Path:
    """Writes the state dict of ``fidobook.models.resnet(arch, num_classes, cbam=cbam)``
    (torchvision's keys, plus ``*.cbam.*`` with CBAM), initialised from ``seed``; returns ``path``.

    The batch-norm running statistics are set to non-trivial values, so that a loader that
    dropped them would change the outputs.
    """
    from fidobook.models.resnet import resnet

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet(arch, num_classes, cbam=cbam)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path
