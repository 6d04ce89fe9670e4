"""Tests of fidobook.data.birds: the synthetic fine-grained birds in CUB-200-2011's format."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidobook.data import birds
from fidobook.data.birds import (
    N_VARIANTS,
    PART_NAMES,
    PART_TYPES,
    class_distances,
    class_parts,
    generate,
    part_differences,
    read_class_parts,
    render_bird,
    variant_gallery,
)

TINY = dict(n_classes=4, train_per_class=3, test_per_class=2, size=40, progress=False)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("birds") / "tiny", seed=0, **TINY)


@pytest.fixture(scope="module")
def dropped(tmp_path_factory) -> Path:
    """Every training image loses at least one part type."""
    return generate(tmp_path_factory.mktemp("birds") / "dropped", seed=1, part_dropout=1.0, **TINY)


class TestClassParts:
    def test_unique_and_in_range(self):
        classes = class_parts(50, seed=0)
        assert len(classes) == 50
        assert len({tuple(c[p] for p in PART_TYPES) for c in classes}) == 50
        for c in classes:
            assert list(c) == list(PART_TYPES)
            assert all(0 <= c[p] < N_VARIANTS[p] for p in PART_TYPES)

    def test_many_pairs_differ_in_one_part(self):
        n = 50
        d = class_distances(class_parts(n, seed=0))
        assert d.shape == (n, n) and (np.diag(d) == 0).all() and (d == d.T).all()
        assert (d[~np.eye(n, dtype=bool)] >= 1).all()
        # every class but the ceil(n / 10) prototypes has a neighbour one part away
        n_pairs = int((d == 1).sum()) // 2
        assert n_pairs >= n - math.ceil(n / 10)
        assert int(((d == 1).sum(1) > 0).sum()) >= n - math.ceil(n / 10)

    def test_deterministic_and_seeded(self):
        assert class_parts(20, seed=3) == class_parts(20, seed=3)
        assert class_parts(20, seed=3) != class_parts(20, seed=4)

    def test_all_combinations(self):
        classes = class_parts(2592, seed=0)
        assert len({tuple(c.values()) for c in classes}) == 2592

    def test_part_differences(self):
        a = {"beak": 0, "eye": 0, "foot": 0, "tail": 0, "wing": 0}
        assert part_differences(a, {**a, "foot": 2}) == ["foot"]
        assert part_differences(a, a) == []

    @pytest.mark.parametrize("n, exc", [(0, ValueError), (2593, ValueError), ("3", TypeError), (True, TypeError)])
    def test_bad_n_classes(self, n, exc):
        with pytest.raises(exc, match="n_classes"):
            class_parts(n)


class TestRenderBird:
    parts = {"beak": 2, "eye": 1, "foot": 3, "tail": 4, "wing": 5}

    def test_shapes_and_inside(self):
        for seed in range(10):
            bird = render_bird(self.parts, seed, size=48)
            assert bird.image.shape == (48, 48, 3) and bird.image.dtype == np.uint8
            assert bird.part_mask.shape == (48, 48) and bird.part_mask.dtype == np.uint8
            assert set(np.unique(bird.part_mask)) == set(range(len(PART_NAMES)))  # all parts seen
            m = bird.part_mask
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())  # fully inside

    def test_deterministic(self):
        a, b = render_bird(self.parts, 7), render_bird(self.parts, np.random.default_rng(7))
        assert np.array_equal(a.image, b.image) and np.array_equal(a.part_mask, b.part_mask)
        c = render_bird(self.parts, 8)
        assert not np.array_equal(a.image, c.image)

    def test_remove_is_an_intervention(self):
        # Same generator, eye removed: the same bird with head where the eye was.
        full = render_bird(self.parts, 3, size=64)
        no_eye = render_bird(self.parts, 3, size=64, remove=("eye",))
        assert no_eye.removed == ("eye",)
        expected = np.where(full.part_mask == PART_NAMES.index("eye"), PART_NAMES.index("head"), full.part_mask)
        assert np.array_equal(no_eye.part_mask, expected)
        none = render_bird(self.parts, 3, size=64, remove=PART_TYPES)
        assert set(np.unique(none.part_mask)) == {0, 1, 2}

    def test_box_and_keypoints(self):
        bird = render_bird(self.parts, 11, size=64)
        x, y, w, h = bird.box()
        rows, cols = np.nonzero(bird.segmentation)
        assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        kp = bird.keypoints()
        assert kp.shape == (7, 3) and (kp[:, 2] == 1).all()
        for pid, (kx, ky, _) in enumerate(kp, start=1):
            assert bird.part_mask[int(ky), int(kx)] == pid

    def test_gallery(self):
        g = variant_gallery(32)
        assert g.shape == (5 * 32, 9 * 32, 3) and g.dtype == np.uint8

    def test_bad_input(self):
        with pytest.raises(ValueError, match="parts"):
            render_bird({"beak": 0}, 0)
        with pytest.raises(ValueError, match=r"parts\['eye'\]"):
            render_bird({**self.parts, "eye": 3}, 0)
        with pytest.raises(ValueError, match="remove"):
            render_bird(self.parts, 0, remove=("legs",))
        with pytest.raises(TypeError, match="rng"):
            render_bird(self.parts, "seed")
        with pytest.raises(ValueError, match="size"):
            render_bird(self.parts, 0, size=8)
        with pytest.raises(ValueError, match="clutter"):
            render_bird(self.parts, 0, clutter=(3, 1))


class TestGenerate:
    def test_byte_identical(self, tiny, tmp_path):
        again = generate(tmp_path / "again", seed=0, **TINY)
        assert _hashes(again) == _hashes(tiny)
        other = generate(tmp_path / "other", seed=5, **TINY)
        images0 = {v for k, v in _hashes(tiny).items() if k.startswith("images/")}
        images5 = {v for k, v in _hashes(other).items() if k.startswith("images/")}
        assert images0.isdisjoint(images5)

    def test_images_independent_of_order(self, tiny, tmp_path):
        # What makes `workers` and chunking safe: an image depends on (seed, index) only.
        # (A real process pool is not started here: spawning workers costs seconds.)
        meta = json.loads((tiny / "fidobook_birds.json").read_text())
        names = [r[1] for r in _table(tiny / "classes.txt")]
        for sub in ("images", "segmentations", "part_masks"):
            for name in names:
                (tmp_path / sub / name).mkdir(parents=True)
        classes = class_parts(TINY["n_classes"], seed=0)
        rows = birds._make_images(tmp_path, classes, names, meta["args"], 7, 9)
        rows = birds._make_images(tmp_path, classes, names, meta["args"], 3, 5) + rows
        full = _hashes(tiny)
        for image_line, *_ in rows:
            rel = image_line.split()[1]
            for sub in ("images", "segmentations", "part_masks"):
                assert hashlib.sha256((tmp_path / sub / rel).read_bytes()).hexdigest() == full[f"{sub}/{rel}"]
        lines = (tiny / "parts" / "part_locs.txt").read_text().splitlines(keepends=True)
        assert rows[0][4] == "".join(lines[3 * 7:4 * 7])  # image 4 = index 3

    def test_cache_and_conflicts(self, tiny, tmp_path):
        stamp = (tiny / "images.txt").stat().st_mtime_ns
        assert generate(tiny, seed=0, **TINY) == tiny
        assert (tiny / "images.txt").stat().st_mtime_ns == stamp
        with pytest.raises(ValueError, match="other arguments"):
            generate(tiny, seed=0, **{**TINY, "size": 32})
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "notes.txt").write_text("mine")
        with pytest.raises(ValueError, match="non-empty folder"):
            generate(tmp_path / "busy", **TINY)
        (tmp_path / "empty").mkdir()
        assert (generate(tmp_path / "empty", **TINY) / "fidobook_birds.json").is_file()
        assert not list(tiny.parent.glob("*.tmp-*")) and not list(tmp_path.glob("*.tmp-*"))

    def test_format(self, tiny):
        n_classes, per = TINY["n_classes"], TINY["train_per_class"] + TINY["test_per_class"]
        images = _table(tiny / "images.txt")
        assert [int(r[0]) for r in images] == list(range(1, n_classes * per + 1))
        labels = {int(a): int(b) for a, b in _table(tiny / "image_class_labels.txt")}
        split = {int(a): int(b) for a, b in _table(tiny / "train_test_split.txt")}
        classes = _table(tiny / "classes.txt")
        assert [int(r[0]) for r in classes] == list(range(1, n_classes + 1))
        for iid, rel in images:
            assert rel.split("/")[0] == classes[labels[int(iid)] - 1][1]
        assert sum(split.values()) == n_classes * TINY["train_per_class"]
        assert [" ".join(r) for r in _table(tiny / "parts" / "parts.txt")] == \
            [f"{i} {n}" for i, n in enumerate(PART_NAMES) if i]
        table = read_class_parts(tiny)
        assert table == class_parts(n_classes, seed=0)
        meta = json.loads((tiny / "fidobook_birds.json").read_text())
        assert meta["format_version"] == birds.FORMAT_VERSION and meta["args"]["size"] == TINY["size"]

    @pytest.mark.parametrize("which", ["tiny", "dropped"])
    def test_ground_truth_consistent(self, which, request):
        root = request.getfixturevalue(which)
        split = {int(a): int(b) for a, b in _table(root / "train_test_split.txt")}
        boxes = {int(r[0]): tuple(map(float, r[1:])) for r in _table(root / "bounding_boxes.txt")}
        locs: dict[int, dict[int, tuple]] = {}
        for iid, pid, x, y, vis in _table(root / "parts" / "part_locs.txt"):
            locs.setdefault(int(iid), {})[int(pid)] = (float(x), float(y), int(vis))
        for iid, rel in _table(root / "images.txt"):
            iid = int(iid)
            image = np.asarray(Image.open(root / "images" / rel))
            seg = np.asarray(Image.open(root / "segmentations" / rel))
            mask = np.asarray(Image.open(root / "part_masks" / rel))
            assert image.shape == (TINY["size"], TINY["size"], 3)
            assert set(np.unique(seg)) <= {0, 255} and np.array_equal(seg > 0, mask > 0)
            rows, cols = np.nonzero(seg)
            assert boxes[iid] == (cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                  rows.max() - rows.min() + 1)
            assert sorted(locs[iid]) == list(range(1, len(PART_NAMES)))
            for pid, (x, y, vis) in locs[iid].items():
                if vis:
                    assert mask[int(y), int(x)] == pid, (iid, pid)
                else:
                    assert (x, y) == (0.0, 0.0) and not (mask == pid).any()
            visible = [locs[iid][pid][2] for pid in range(1, len(PART_NAMES))]
            if split[iid] == 0:
                assert all(visible)  # test images have every part
            elif which == "dropped":
                assert not all(visible[2:])  # part_dropout=1: some part type removed
            assert visible[:2] == [1, 1]  # body and head always

    @pytest.mark.parametrize("kwargs, exc, match", [
        (dict(n_classes=0), ValueError, "n_classes"),
        (dict(size=8), ValueError, "size"),
        (dict(part_dropout=1.5), ValueError, "part_dropout"),
        (dict(clutter=(3, 1)), ValueError, "clutter"),
        (dict(clutter=3), TypeError, "clutter"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(train_per_class=0, test_per_class=0), ValueError, "train_per_class"),
        (dict(workers=0), ValueError, "workers"),
    ])
    def test_bad_arguments(self, tmp_path, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            generate(tmp_path / "x", **{**TINY, **kwargs})
        assert not (tmp_path / "x").exists()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class TestVerifiedReuse:
    """A reused set is checked against its manifest; damage is reported with the path and
    repaired (one image rendered again, or the whole set regenerated for a text file)."""

    @pytest.fixture()
    def copy(self, tiny, tmp_path) -> Path:
        """A private copy of the tiny set, free to damage."""
        return Path(shutil.copytree(tiny, tmp_path / "tiny"))

    @staticmethod
    def _manifest(root: Path) -> dict:
        return json.loads((root / "fidobook_manifest.json").read_text())

    def test_manifest_lists_every_file_with_size_and_sha256(self, tiny):
        manifest = self._manifest(tiny)
        assert manifest["format"] == "fidobook-birds-manifest-1" and manifest["algorithm"] == "sha256"
        files = {k: v for k, v in _hashes(tiny).items()
                 if k not in ("fidobook_manifest.json", "fidobook_birds.json")}
        assert manifest["files"] == {k: [(tiny / k).stat().st_size, v] for k, v in files.items()}
        n_images = TINY["n_classes"] * (TINY["train_per_class"] + TINY["test_per_class"])
        assert len(files) == 3 * n_images + 8

    def _repaired(self, copy, tiny, rel, match):
        """``generate`` warns naming ``rel`` and the reason, rewrites only that image's three
        files, and the set is byte-identical to the original again."""
        stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
        with pytest.warns(UserWarning, match=match) as caught:
            assert generate(copy, seed=0, **TINY) == copy
        assert any(str(copy / rel) in str(w.message) for w in caught)  # names the file
        assert _hashes(copy) == _hashes(tiny)
        name = rel.split("/", 1)[1]
        changed = {str(p.relative_to(copy)) for p, t in stamps.items()
                   if p.exists() and p.stat().st_mtime_ns != t}
        assert changed <= {f"{d}/{name}" for d in ("images", "segmentations", "part_masks")}

    def test_truncated_image_is_rendered_again(self, copy, tiny):
        rel = _table(copy / "images.txt")[6][1]
        path = copy / "images" / rel
        path.write_bytes(path.read_bytes()[:50])
        with pytest.raises(OSError):  # what a reader met before: an error naming no file
            Image.open(path).load()
        self._repaired(copy, tiny, f"images/{rel}", "truncated")

    def test_flipped_byte_is_rendered_again(self, copy, tiny):
        rel = _table(copy / "images.txt")[3][1]
        path = copy / "part_masks" / rel
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # same size
        path.write_bytes(bytes(raw))
        self._repaired(copy, tiny, f"part_masks/{rel}", "SHA-256 mismatch")

    def test_missing_image_is_rendered_again(self, copy, tiny):
        rel = _table(copy / "images.txt")[-1][1]
        (copy / "segmentations" / rel).unlink()
        self._repaired(copy, tiny, f"segmentations/{rel}", "missing")

    def test_damaged_text_file_regenerates_the_set(self, copy, tiny):
        path = copy / "bounding_boxes.txt"
        path.write_text(path.read_text()[:-20])
        with pytest.warns(UserWarning, match=rf"'{path}': .*truncated.*generating the set again"):
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)
        assert not list(copy.parent.glob("tiny.*"))  # no tmp or old folder left

    def test_repair_that_still_differs_regenerates_the_set(self, copy, tiny, monkeypatch):
        # As if the renders had changed (another Pillow): a rendered-again image that does not
        # match the manifest is not trusted either.
        rel = f"images/{_table(copy / 'images.txt')[0][1]}"
        (copy / rel).write_bytes(b"")
        real = birds._save_png
        monkeypatch.setattr(birds, "_save_png",
                            lambda array, path: real(255 - array, path) if "images" in str(path)
                            else real(array, path))
        with pytest.warns(UserWarning) as caught:
            generate(copy, seed=0, **TINY)
        again = ("the images rendered again differ too (another numpy or Pillow version?): "
                 "generating the set again")
        assert [str(w.message).rsplit("; ", 1)[-1] for w in caught] == [
            "rendering image(s) [1] again", again]
        monkeypatch.undo()
        assert generate(copy, seed=0, **TINY) == copy  # the regenerated set verifies

    def test_damaged_manifest_verifies_by_decoding(self, copy, tiny):
        (copy / "fidobook_manifest.json").write_text('{"format": "fidobook-birds-manif')
        with pytest.warns(UserWarning, match="damaged manifest .*unreadable"):
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)  # manifest written again, equal

    def test_damaged_description_regenerates_the_set(self, copy, tiny):
        (copy / "fidobook_birds.json").write_bytes(b"\xff{")
        with pytest.warns(UserWarning, match="fidobook_birds.json' is unreadable"):
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)

    def test_set_without_manifest_is_decoded_once_and_gets_one(self, copy, tiny, monkeypatch):
        (copy / "fidobook_manifest.json").unlink()  # as written before manifests
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an intact old set: no warning
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)
        decoded = []
        monkeypatch.setattr(birds, "_decodes", lambda *a: decoded.append(a))
        generate(copy, seed=0, **TINY)
        assert decoded == []  # the manifest now: no decoding

    def test_set_without_manifest_with_a_truncated_image(self, copy, tiny):
        (copy / "fidobook_manifest.json").unlink()
        rel = _table(copy / "images.txt")[2][1]
        path = copy / "images" / rel
        path.write_bytes(path.read_bytes()[:-30])
        with pytest.warns(UserWarning, match=rf"'{path}': does not decode"):
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)

    def test_set_without_manifest_with_a_bad_text_file(self, copy, tiny):
        (copy / "fidobook_manifest.json").unlink()
        (copy / "train_test_split.txt").write_text("1 1\n")
        with pytest.warns(UserWarning, match="train_test_split.txt': content differs"):
            generate(copy, seed=0, **TINY)
        assert _hashes(copy) == _hashes(tiny)

    def test_folders_of_killed_runs_are_removed(self, tmp_path):
        root = tmp_path / "set"
        host, dead = socket.gethostname(), _dead_pid()
        stale = [tmp_path / f"set.tmp-{host}-{dead}", tmp_path / f"set.old-{host}-{dead}",
                 tmp_path / f"set.tmp-{dead}"]  # the last: the name before hosts were recorded
        alive = [tmp_path / f"set.tmp-{host}-{os.getppid()}",  # a writer still running
                 tmp_path / f"set.tmp-elsewhere-{dead}",  # another host's, recent
                 tmp_path / f"other.tmp-{host}-{dead}"]  # another set's
        for folder in stale + alive:
            (folder / "images").mkdir(parents=True)
            (folder / "images" / "half.png").write_bytes(b"\x89PNG")
        generate(root, seed=0, **TINY)
        assert not any(f.exists() for f in stale) and all(f.exists() for f in alive)
        old = time.time() - 2 * 24 * 3600
        os.utime(tmp_path / f"set.tmp-elsewhere-{dead}", (old, old))
        generate(root, seed=0, **TINY)  # a reuse sweeps too
        assert not (tmp_path / f"set.tmp-elsewhere-{dead}").exists()
