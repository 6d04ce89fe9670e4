"""Tests of fidobook.data.hard (the hard test cases) and fidobook.workflow.prepare_hard_set."""
from __future__ import annotations

import socket
import subprocess
import warnings

import numpy as np
import pytest
import torch

from fidobook import _io, workflow
from fidobook.data import PART_NAMES, PART_TYPES, class_parts, render_bird
from fidobook.data import hard
from fidobook.data.hard import (
    CORRUPTIONS,
    HARD_CASES,
    default_per_case,
    make_hard_set,
    novel_combinations,
)
from fidobook.models import TrainConfig
from fidobook.parts import PART_LABELS
from fidobook.profiles import Profile

CLASSES = class_parts(6, seed=0)
SIZE, PER_CASE = 32, 3


@pytest.fixture(scope="module")
def hard_set():
    return make_hard_set(CLASSES, per_case=PER_CASE, size=SIZE, seed=0)


def _rows(data, name):
    return torch.nonzero(data["case"] == data["case_names"].index(name)).flatten()


def _plain_render(data, row, **kwargs):
    """The bird of ``row`` rendered again from its render stream, without the case's change."""
    case_id = HARD_CASES.index(data["case_names"][int(data["case"][row])])
    index = int(row) % PER_CASE
    render_rng, _ = hard._rngs(0, case_id, index)
    parts = dict(zip(PART_TYPES, data["variants"][row].tolist()))
    return render_bird(parts, render_rng, SIZE, **kwargs)


class TestShapes:
    def test_keys_shapes_and_dtypes(self, hard_set):
        n = len(HARD_CASES) * PER_CASE
        d = hard_set
        assert d["images"].shape == (n, 3, SIZE, SIZE) and d["images"].dtype == torch.uint8
        assert d["labels"].shape == (n,) and d["labels"].dtype == torch.long
        assert d["boxes"].shape == (n, 4) and d["boxes"].dtype == torch.float32
        assert d["parts"].shape == (n, len(PART_NAMES) - 1, 3)
        assert d["segmentations"].shape == (n, 1, SIZE, SIZE) and d["segmentations"].dtype == torch.uint8
        assert d["part_masks"].shape == (n, SIZE, SIZE) and d["part_masks"].dtype == torch.uint8
        assert d["image_ids"].tolist() == list(range(1, n + 1))
        assert d["case_names"] == list(HARD_CASES)
        assert d["case"].tolist() == [k for k in range(len(HARD_CASES)) for _ in range(PER_CASE)]
        assert d["variants"].shape == (n, 5) and d["removed"].shape == (n, 5)
        assert d["removed"].dtype == torch.bool
        assert d["part_names"] == list(PART_NAMES[1:]) and len(d["classes"]) == len(CLASSES)
        assert d["corruption_names"] == list(CORRUPTIONS)
        assert d["hires"].shape == (PER_CASE, 3, 2 * SIZE, 2 * SIZE)
        assert d["hires_index"].tolist() == _rows(d, "small").tolist()

    def test_without_small_the_hires_is_empty(self):
        d = make_hard_set(CLASSES, ("novel",), per_case=2, size=SIZE)
        assert d["hires"].shape == (0, 3, 2 * SIZE, 2 * SIZE) and d["hires_index"].numel() == 0
        assert d["case_names"] == ["novel"] and d["case"].tolist() == [0, 0]


class TestLabels:
    def test_minus_one_only_for_novel(self, hard_set):
        novel = hard_set["case"] == HARD_CASES.index("novel")
        assert (hard_set["labels"][novel] == -1).all()
        assert (hard_set["labels"][~novel] >= 0).all()

    def test_class_birds_cycle_through_the_classes(self, hard_set):
        for name in HARD_CASES:
            if name == "novel":
                continue
            rows = _rows(hard_set, name)
            assert hard_set["labels"][rows].tolist() == [i % len(CLASSES) for i in range(PER_CASE)]
            table = torch.tensor([[c[p] for p in PART_TYPES] for c in CLASSES])
            assert torch.equal(hard_set["variants"][rows], table[hard_set["labels"][rows]])

    def test_novel_birds_are_no_class(self, hard_set):
        table = torch.tensor([[c[p] for p in PART_TYPES] for c in CLASSES])
        rows = _rows(hard_set, "novel")
        v = hard_set["variants"][rows]
        differ = (v[:, None, :] != table[None]).sum(-1)  # (n, K)
        assert (differ >= 1).all()
        assert hard_set["nearest_distance"][rows].tolist() == differ.min(1).values.tolist()
        assert (hard_set["nearest_distance"][_rows(hard_set, "small")] == 0).all()
        for j in range(5):  # every variant used occurs in some class
            assert set(v[:, j].tolist()) <= set(table[:, j].tolist())


class TestNovelCombinations:
    def test_hand_made_table(self):
        base = {"beak": 0, "eye": 0, "foot": 1, "tail": 2, "wing": 3}
        classes = [base, {**base, "beak": 1, "eye": 2}]
        # Variants in use: beak {0, 1}, eye {0, 2}; two of the four combinations are classes.
        assert novel_combinations(classes).tolist() == [[0, 2, 1, 2, 3], [1, 0, 1, 2, 3]]

    def test_no_novel_combination_left(self):
        base = {"beak": 0, "eye": 0, "foot": 1, "tail": 2, "wing": 3}
        classes = [base, {**base, "beak": 1}]
        assert novel_combinations(classes).shape == (0, 5)
        with pytest.raises(ValueError, match="classes"):
            make_hard_set(classes, ("novel",), per_case=1, size=SIZE)
        assert make_hard_set(classes, ("small",), per_case=1, size=SIZE)["labels"].tolist() == [0]


class TestGroundTruth:
    def test_segmentation_is_the_part_mask_support(self, hard_set):
        seg = hard_set["segmentations"][:, 0]
        assert set(seg.unique().tolist()) <= {0, 255}
        assert torch.equal(seg == 255, hard_set["part_masks"] > 0)

    def test_boxes_are_the_tight_boxes_of_the_segmentation(self, hard_set):
        for m, (x, y, w, h) in zip(hard_set["part_masks"] > 0, hard_set["boxes"].tolist()):
            rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
            assert (x, y) == (cols[0], rows[0]) and (x + w, y + h) == (cols[-1] + 1, rows[-1] + 1)

    def test_missing_parts_are_not_drawn(self, hard_set):
        rows = _rows(hard_set, "missing_parts")
        removed = hard_set["removed"]
        assert all(1 <= k <= 3 for k in removed[rows].sum(1).tolist())
        others = torch.ones(len(removed), dtype=torch.bool)
        others[rows] = False
        assert not removed[others].any()
        for r in rows:
            for j, p in enumerate(PART_TYPES):
                if removed[r, j]:
                    assert not (hard_set["part_masks"][r] == PART_LABELS[p]).any()

    def test_occluded_keeps_the_visible_bird(self, hard_set):
        for r in _rows(hard_set, "occluded"):
            whole = torch.from_numpy(_plain_render(hard_set, r).part_mask)
            visible = hard_set["part_masks"][r]
            assert ((visible == whole) | (visible == 0)).all()  # a subset of the whole bird
            hidden = ((whole > 0) & (visible == 0)).sum() / (whole > 0).sum()
            assert 0 < float(hard_set["occlusion"][r]) == pytest.approx(float(hidden))
        assert (hard_set["occlusion"][_rows(hard_set, "novel")] == 0).all()

    def test_heavy_clutter_draws_the_same_bird_among_more_shapes(self, hard_set):
        for r in _rows(hard_set, "heavy_clutter"):
            plain = _plain_render(hard_set, r)  # the normal 0-8 shapes
            # The pose comes first from the stream and shapes never cover the bird.
            assert np.array_equal(hard_set["part_masks"][r].numpy(), plain.part_mask)
            assert not np.array_equal(hard_set["images"][r].permute(1, 2, 0).numpy(), plain.image)

    def test_small_images_average_the_hires_render(self, hard_set):
        rows = hard_set["hires_index"]
        blocks = hard_set["hires"].long().unflatten(2, (SIZE, 2)).unflatten(4, (SIZE, 2)).sum((3, 5))
        assert torch.equal(hard_set["images"][rows].long(), (blocks + 2) // 4)
        # Image i of every case shows the same class: the small bird covers fewer pixels (scale
        # at most 0.7 against at least 0.8 of the largest that fits).
        small = (hard_set["segmentations"][rows, 0] > 0).sum((1, 2))
        normal = (hard_set["segmentations"][_rows(hard_set, "heavy_clutter"), 0] > 0).sum((1, 2))
        assert (small < normal).all()


class TestCorruption:
    def test_one_corruption_per_corrupted_image(self, hard_set):
        rows = _rows(hard_set, "corrupted")
        assert all(1 <= k < len(CORRUPTIONS) for k in hard_set["corruption"][rows].tolist())
        others = torch.ones(len(hard_set["labels"]), dtype=torch.bool)
        others[rows] = False
        assert (hard_set["corruption"][others] == 0).all()
        for r in rows:  # the ground truth is that of the clean render
            plain = _plain_render(hard_set, r)
            assert np.array_equal(hard_set["part_masks"][r].numpy(), plain.part_mask)
            assert not np.array_equal(hard_set["images"][r].permute(1, 2, 0).numpy(), plain.image)

    def test_hand_computed_corruptions(self):
        images = np.zeros((4, 8, 8, 3), np.uint8)
        images[:, :, :4] = 100
        images[:, :, 4:] = 200  # two halves: mean 150
        noise = np.ones((4, 8, 8, 3))
        kinds = np.array([0, 1, 2, 3])
        strength = np.array([0.0, 10.0, 1.0, 0.5])
        out = hard._corrupt(images, kinds, strength, noise)
        assert np.array_equal(out[0], images[0])  # none: bit-exact
        assert np.array_equal(out[1].astype(int), images[1].astype(int) + 10)  # noise: + 10 x 1
        assert set(np.unique(out[3]).tolist()) == {125, 175}  # contrast: 150 ± 0.5 x 50
        assert out[2, 0, 0, 0] == 100 and out[2, 0, 7, 0] == 200  # blur: far from the edge ...
        assert 100 < out[2, 0, 3, 0] < 150 < out[2, 0, 4, 0] < 200  # ... and smoothed across it
        assert np.array_equal(out[2, 0], out[2, 5])  # constant along the columns


class TestDeterminism:
    def test_same_arguments_same_set(self, hard_set):
        again = make_hard_set(CLASSES, per_case=PER_CASE, size=SIZE, seed=0)
        for key, value in hard_set.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, again[key]), key
            else:
                assert value == again[key], key

    def test_a_case_does_not_depend_on_the_others_nor_on_per_case(self, hard_set):
        alone = make_hard_set(CLASSES, ("small", "occluded"), per_case=2, size=SIZE, seed=0)
        for name in ("small", "occluded"):
            rows = _rows(hard_set, name)[:2]
            assert torch.equal(alone["images"][_rows(alone, name)], hard_set["images"][rows])
        assert torch.equal(alone["hires"], hard_set["hires"][:2])

    def test_seed_changes_the_images(self, hard_set):
        other = make_hard_set(CLASSES, ("novel",), per_case=PER_CASE, size=SIZE, seed=1)
        assert not torch.equal(other["images"], hard_set["images"][_rows(hard_set, "novel")])


class TestErrors:
    @pytest.mark.parametrize("cases, match", [
        (("small", "nope"), "cases"), (("small", "small"), "cases"), ((), "cases")])
    def test_bad_cases(self, cases, match):
        with pytest.raises(ValueError, match=match):
            make_hard_set(CLASSES, cases, per_case=1, size=SIZE)

    def test_a_bare_string_is_not_a_list_of_cases(self):
        with pytest.raises(TypeError, match="cases"):
            make_hard_set(CLASSES, "small", per_case=1, size=SIZE)

    @pytest.mark.parametrize("kwargs, error, match", [
        ({"per_case": 0}, ValueError, "per_case"), ({"per_case": True}, TypeError, "per_case"),
        ({"size": 8}, ValueError, "size"), ({"seed": -1}, ValueError, "seed"),
        ({"progress": 1}, TypeError, "progress")])
    def test_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            make_hard_set(CLASSES, ("novel",), **{"per_case": 1, "size": SIZE, **kwargs})

    def test_bad_class_tables(self):
        with pytest.raises(ValueError, match="classes"):
            make_hard_set([], per_case=1, size=SIZE)
        with pytest.raises(ValueError, match=r"classes\[0\]"):
            make_hard_set([{"beak": 9, "eye": 0, "foot": 0, "tail": 0, "wing": 0}], per_case=1)
        with pytest.raises(TypeError, match="classes"):
            make_hard_set({"beak": 0}, per_case=1)


def test_default_per_case():
    assert default_per_case(10, 10) == 20
    assert default_per_case(50, 20) == 200
    assert default_per_case(100, 50) == 500
    assert default_per_case(2, 1) == 8


class TestPrepareHardSet:
    @pytest.fixture()
    def profile(self):
        return Profile(name="tiny", n_classes=3, train_per_class=1, test_per_class=1, image_size=24,
                       classifier=TrainConfig(arch="small_cnn", width=8, epochs=1, image_size=24),
                       fido_iterations=1, fido_samples=1, mask_size=4)

    def test_cached_and_loaded(self, profile, tmp_path, monkeypatch):
        first = workflow.prepare_hard_set(profile, ("novel", "small"), per_case=2, cache_dir=tmp_path)
        files = list((tmp_path / "hard").glob("hard-tiny-*.pt"))
        assert len(files) == 1
        assert not list((tmp_path / "hard").glob(".*.tmp"))  # written atomically

        def fail(*args, **kwargs):
            raise AssertionError("generated again instead of loading the cache")

        monkeypatch.setattr(hard, "make_hard_set", fail)
        second = workflow.prepare_hard_set(profile, ("novel", "small"), per_case=2, cache_dir=tmp_path)
        for key, value in first.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, second[key]), key
            else:
                assert value == second[key], key
        classes = workflow.birds.read_class_parts(workflow.data_dir(profile, tmp_path))
        expected = make_hard_set(classes, ("novel", "small"), 2, 24, 0)  # the unpatched function
        assert torch.equal(expected["images"], first["images"])

    def test_other_arguments_other_file(self, profile, tmp_path):
        workflow.prepare_hard_set(profile, ("novel",), per_case=1, cache_dir=tmp_path)
        workflow.prepare_hard_set(profile, ("novel",), per_case=2, cache_dir=tmp_path)
        workflow.prepare_hard_set(profile, ("small",), per_case=1, cache_dir=tmp_path)
        assert len(list((tmp_path / "hard").glob("*.pt"))) == 3

    def test_default_per_case_and_cases(self, profile, tmp_path):
        d = workflow.prepare_hard_set(profile, cache_dir=tmp_path)
        assert d["case_names"] == list(HARD_CASES) and len(d["labels"]) == 8 * len(HARD_CASES)

    def test_errors_before_any_work(self, profile, tmp_path):
        with pytest.raises(ValueError, match="cases"):
            workflow.prepare_hard_set(profile, ("nope",), cache_dir=tmp_path)
        with pytest.raises(ValueError, match="per_case"):
            workflow.prepare_hard_set(profile, per_case=0, cache_dir=tmp_path)
        assert not tmp_path.joinpath("data").exists()


def test_set_keys_are_the_keys_of_a_set(hard_set):
    # what a cached set must hold to be trusted (workflow.prepare_hard_set)
    assert tuple(hard_set) == hard._SET_KEYS


class TestPrepareHardSetDamage:
    """A damaged cached set: a warning naming the path and the reason, then generated again
    (equal to a fresh one) and overwritten."""

    CASES = ("novel", "small")

    @pytest.fixture()
    def profile(self):
        return Profile(name="tiny", n_classes=3, train_per_class=1, test_per_class=1, image_size=24,
                       classifier=TrainConfig(arch="small_cnn", width=8, epochs=1, image_size=24),
                       fido_iterations=1, fido_samples=1, mask_size=4)

    def cached(self, profile, tmp_path):
        first = workflow.prepare_hard_set(profile, self.CASES, per_case=2, cache_dir=tmp_path)
        (path,) = (tmp_path / "hard").glob("hard-tiny-*.pt")
        return first, path

    def regenerated(self, profile, tmp_path, first, path, match):
        with pytest.warns(UserWarning, match=match) as caught:
            again = workflow.prepare_hard_set(profile, self.CASES, per_case=2, cache_dir=tmp_path)
        assert any(str(path) in str(w.message) for w in caught)  # names the file
        assert again.keys() == first.keys()
        for key, value in first.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, again[key]), key
            else:
                assert value == again[key], key
        # overwritten with an intact record: the next call loads it without a word
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            workflow.prepare_hard_set(profile, self.CASES, per_case=2, cache_dir=tmp_path)

    def test_flipped_byte_in_the_images(self, profile, tmp_path):
        first, path = self.cached(profile, tmp_path)
        raw = bytearray(path.read_bytes())
        at = raw.find(first["images"].numpy().tobytes())  # stored uncompressed
        assert at > 0
        raw[at + 10] ^= 0x40
        path.write_bytes(bytes(raw))
        assert not torch.equal(torch.load(path, weights_only=True)["images"], first["images"])
        self.regenerated(profile, tmp_path, first, path, "digest mismatch")

    def test_truncated_file(self, profile, tmp_path):
        first, path = self.cached(profile, tmp_path)
        path.write_bytes(path.read_bytes()[:1000])
        self.regenerated(profile, tmp_path, first, path, "unreadable")

    def test_missing_field(self, profile, tmp_path):
        first, path = self.cached(profile, tmp_path)
        record = _io.load_record(path, format=workflow._HARD_RECORD)
        del record["labels"], record["format"]
        _io.save_record(record, path, format=workflow._HARD_RECORD)  # intact but incomplete
        self.regenerated(profile, tmp_path, first, path, r"missing fields \['labels'\]")

    def test_record_of_another_set(self, profile, tmp_path):
        first, path = self.cached(profile, tmp_path)
        other = make_hard_set(CLASSES[:3], self.CASES, per_case=1, size=24, seed=0)
        _io.save_record(other, path, format=workflow._HARD_RECORD)
        self.regenerated(profile, tmp_path, first, path, "holds another hard set")

    def test_file_without_digest(self, profile, tmp_path):
        first, path = self.cached(profile, tmp_path)
        _io.atomic_torch_save(first, path)  # how the cache was written before: no digest
        self.regenerated(profile, tmp_path, first, path, "expected format")

    def test_temporary_file_of_a_killed_writer_is_removed(self, profile, tmp_path):
        _, path = self.cached(profile, tmp_path)
        proc = subprocess.Popen(["true"])
        proc.wait()  # a pid that no longer exists
        tmp = path.parent / f".{path.name}.{socket.gethostname()}.{proc.pid}.x1y2.tmp"
        tmp.write_bytes(b"half a set")
        workflow.prepare_hard_set(profile, self.CASES, per_case=2, cache_dir=tmp_path)
        assert not tmp.exists()
