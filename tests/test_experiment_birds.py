"""Tests of fidobook.experiments.birds (chapter 3's report): on the smoke birds (the shared,
cached smoke data and classifier) and on folders shaped like the real CUB-200-2011."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from cub_shaped import CUB_PARTS, make_cub_shaped, make_resnet_weights

from fidobook.data import PART_NAMES, PART_TYPES
from fidobook.experiments import Context, Result
from fidobook.experiments import run as run_named
from fidobook.experiments.birds import NAME, architecture, forward_report, run
from fidobook.experiments.specs import BirdsSpec, OneBirdSpec
from fidobook.models import SmallCNN, evaluate
from fidobook.parts import error_parts, part_mass

TINY = BirdsSpec(examples=2, train_examples=3, error_examples=2, seed=0)

ALWAYS = ("keypoints", "areas", "architecture", "config", "history", "per_image", "per_class",
          "confusions", "examples")
BIRDS_ONLY = ("generation", "variants", "classes", "pairs_by_distance", "one_part_pairs",
              "missing_parts", "missing_counts", "train_examples", "neighbours", "errors",
              "errors_by_part", "errors_by_distance", "error_examples")


@pytest.fixture(scope="module")
def birds(smoke_context):
    return run(TINY, smoke_context, progress=False, cache=False)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class TestOnTheBirds:
    def test_fields_and_shapes(self, birds, smoke_context):
        ctx = smoke_context
        n, k, size = len(ctx.split("test")["labels"]), ctx.num_classes, ctx.profile.image_size
        assert birds.name == NAME and birds.spec == dataclasses.asdict(TINY)
        assert birds["source"] == "birds" and birds["num_classes"] == k and birds["n_test"] == n
        assert set(ALWAYS + BIRDS_ONLY + ("attention",)) <= set(birds.tables)
        assert birds["has_cbam"] is True and birds["trained"] is True
        assert len(birds.table("per_image")) == n and len(birds.table("per_class")) == k
        assert len(birds.table("history")) == birds["epochs"] == ctx.profile.classifier.epochs
        a = birds.arrays
        assert a["confusion"].shape == (k, k) and sorted(a["order"].tolist()) == list(range(k))
        assert a["example_images"].shape == (2, 3, size, size) and a["example_images"].dtype == torch.uint8
        assert a["example_part_masks"].shape == (2, size, size)
        assert a["example_keypoints"].shape == (2, len(PART_NAMES) - 1, 3)
        assert a["example_attention"].shape[:2] == (2, 1)
        assert a["train_images"].shape == (3, 3, size, size)
        assert a["error_images"].shape[0] == len(birds.table("error_examples")) <= 2
        assert a["gallery"].shape == (5 * size, 9 * size, 3)
        assert a["neighbour_images"].shape[1:] == (size, size, 3)
        assert a["distances"].shape == (k, k)

    def test_accuracy_matches_evaluate(self, birds, smoke_context):
        test = smoke_context.split("test")
        reference = evaluate(smoke_context.classifier(), test["images"], test["labels"])
        per_image = birds.table("per_image")
        assert per_image.prediction.tolist() == reference.predictions.tolist()
        assert birds["accuracy"] == pytest.approx(reference.accuracy)
        assert birds["n_correct"] + birds["n_errors"] == birds["n_test"]
        per_class = birds.table("per_class")
        assert per_class["correct"].sum() == birds["n_correct"]
        assert per_class["test images"].sum() == birds["n_test"]

    def test_confusion_rows_and_top_pairs(self, birds):
        confusion = birds.arrays["confusion"].double()
        torch.testing.assert_close(confusion.sum(1), torch.ones(len(confusion), dtype=torch.float64))
        top = birds.table("confusions")
        assert (top["true"] != top["predicted"]).all()
        assert top["test images"].is_monotonic_decreasing
        assert top["test images"].sum() <= birds["n_errors"]

    def test_errors_by_part_match_error_parts(self, birds, smoke_context):
        per_image = birds.table("per_image")
        errors = error_parts(torch.tensor(per_image.label.tolist()),
                             torch.tensor(per_image.prediction.tolist()), smoke_context.class_parts())
        assert birds.table("errors")["index"].tolist() == errors.index.tolist()
        single = errors.distance == 1
        by_part = birds.table("errors_by_part").set_index("part type")
        assert list(by_part.index) == list(PART_TYPES)
        assert by_part["errors differing only in it"].tolist() == errors.differs[single].sum(0).tolist()
        assert birds["n_single"] == int(single.sum())
        assert birds.table("errors_by_distance")["test errors"].sum() == birds["n_errors"]
        for _, row in birds.table("error_examples").iterrows():
            assert row.true != row.predicted and row.part in PART_TYPES

    def test_class_structure(self, birds, smoke_context):
        k = smoke_context.num_classes
        assert birds["n_pairs"] == k * (k - 1) // 2
        assert birds.table("pairs_by_distance")["class pairs"].sum() == birds["n_pairs"]
        assert birds.table("one_part_pairs")["pairs"].sum() == birds["n_one"]
        d = birds.arrays["distances"]
        assert int((d.triu(1) == 1).sum()) == birds["n_one"] and (d.diagonal() == 0).all()

    def test_areas_and_bird_share(self, birds, smoke_context):
        masks = smoke_context.split("test")["part_masks"].long()
        expected = part_mass(torch.ones(masks.shape), masks).mean(0)
        areas = birds.table("areas")
        assert areas["part label"].tolist() == list(PART_NAMES)
        torch.testing.assert_close(torch.tensor(areas["mean share of the image"].tolist(),
                                                dtype=torch.float64), expected)
        assert birds["bird_share"] == pytest.approx(1 - float(expected[0]))

    def test_attention_is_the_last_cbam_map(self, birds, smoke_context):
        # Reference: one plain forward pass, the last block's stored map, upsampled by hand.
        model, ex = smoke_context.classifier(), birds.table("examples")
        test = smoke_context.split("test")
        with torch.no_grad():
            model(test["images"][ex["index"].tolist()].float() / 255)
        expected = model.cbam_modules[-1].last_attention
        torch.testing.assert_close(birds.arrays["example_attention"], expected)
        up = F.interpolate(expected, size=test["images"].shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
        on_bird = (up * (test["part_masks"][ex["index"].tolist()] > 0)).sum((1, 2)) / up.sum((1, 2))
        assert 0 < birds["att_bird"] < 1 and on_bird.min() > 0
        shares = birds.table("attention")["attention, all"]
        assert shares.sum() == pytest.approx(1.0)
        assert birds["att_bird"] == pytest.approx(1 - shares.iloc[0])

    def test_no_hook_left_on_the_classifier(self, birds, smoke_context):
        assert _hooks(smoke_context.classifier()) == 0

    def test_max_batch_and_chunks_change_nothing(self, birds, smoke_context, monkeypatch):
        import fidobook.experiments.birds as module

        monkeypatch.setattr(module, "_CHUNK", 7)  # the per-pixel shares' chunks
        ctx = Context.create(dataclasses.replace(smoke_context.profile, max_batch=7), device="cpu",
                             cache_dir=smoke_context.cache_dir)
        other = run(TINY, ctx, progress=False, cache=False)
        assert other.table("per_image").prediction.tolist() == birds.table("per_image").prediction.tolist()
        torch.testing.assert_close(other.arrays["example_attention"], birds.arrays["example_attention"])
        assert other["att_bird"] == pytest.approx(birds["att_bird"], abs=1e-6)
        for name in ("areas", "attention"):
            for column in list(birds.tables[name])[1:]:
                assert other.tables[name][column] == pytest.approx(birds.tables[name][column],
                                                                   abs=1e-6), (name, column)

    def test_save_load_round_trip(self, birds, tmp_path):
        path = birds.save(tmp_path / "birds.pt")
        back = Result.load(path)
        assert back.tables == birds.tables and back.spec == birds.spec
        assert {k: v for k, v in back.scalars.items() if not _nan(v)} == \
               {k: v for k, v in birds.scalars.items() if not _nan(v)}
        assert set(back.arrays) == set(birds.arrays)
        for name, value in birds.arrays.items():
            assert torch.equal(back.arrays[name], value), name
        assert (tmp_path / "birds.json").is_file()

    def test_the_registry_runs_it(self, smoke_context):
        result = run_named("birds", smoke_context, TINY.replace(examples=1), progress=False,
                           cache=False)
        assert result.name == "birds" and len(result.table("examples")) == 1


class TestSpec:
    def test_a_bad_spec_is_refused(self, smoke_context):
        with pytest.raises(TypeError, match="spec: expected a birds spec"):
            run(OneBirdSpec(), smoke_context, cache=False)
        with pytest.raises(TypeError, match="spec: expected a birds spec"):
            run({"examples": 2}, smoke_context, cache=False)

    @pytest.mark.parametrize("field", ["examples", "train_examples", "error_examples"])
    def test_counts_must_be_positive(self, field):
        with pytest.raises(ValueError, match=f"BirdsSpec.{field}"):
            BirdsSpec(**{field: 0})

    def test_seed_and_unknown_fields(self):
        assert BirdsSpec().replace(seed=3).seed == 3
        with pytest.raises(ValueError, match="BirdsSpec.seed"):
            BirdsSpec(seed=-1)
        with pytest.raises(ValueError, match="unknown"):
            BirdsSpec().replace(max_batch=4)

    def test_profiles_hold_a_birds_spec(self):
        from fidobook.profiles import PROFILES

        for profile in PROFILES.values():
            assert isinstance(profile.birds, BirdsSpec)


# ----------------------------------------------------------------------------------------------
# CUB-format folders


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return make_cub_shaped(tmp_path_factory.mktemp("cub"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    return make_cub_shaped(tmp_path_factory.mktemp("bare"), with_segmentations=False)


class TestOnACUBFolder:
    def test_reader_weights_without_cbam(self, cub, tmp_path):
        weights = make_resnet_weights(tmp_path / "r18.pt", 3)
        ctx = Context.create("smoke", device="cpu", data_dir=cub, weights=weights,
                             arch="resnet18", cache_dir=tmp_path / "cache")
        result = run(TINY, ctx, progress=False, cache=False)
        assert result["source"] == "cub" and result["num_classes"] == 3
        assert result["has_cbam"] is False and result["trained"] is False
        assert result["segmentations"] is True and result["bird_share_from"] == "the segmentations"
        assert set(ALWAYS) <= set(result.tables)
        assert not set(BIRDS_ONLY + ("attention",)) & set(result.tables)
        assert len(result.table("history")) == 0 and "epochs" not in result.scalars
        assert "example_attention" not in result.arrays and "gallery" not in result.arrays
        assert result.table("keypoints").part.tolist() == CUB_PARTS
        assert result.table("areas")["part label"].tolist() == ["background"] + CUB_PARTS
        assert result.table("per_class")["name"].tolist() == ctx.class_names
        assert result["n_correct"] + result["n_errors"] == result["n_test"] == 6
        assert result.arrays["example_segmentations"].dtype == torch.bool
        assert result.arrays["order"].tolist() == [0, 1, 2]

    def test_cbam_weights_without_segmentations(self, bare, tmp_path):
        weights = make_resnet_weights(tmp_path / "r18c.pt", 3, cbam=True)
        ctx = Context.create("smoke", device="cpu", data_dir=bare, weights=weights,
                             arch="resnet18", cbam=True, cache_dir=tmp_path / "cache")
        result = run(TINY, ctx, progress=False, cache=False)
        assert result["has_cbam"] is True and result["segmentations"] is False
        assert result["bird_share_from"] == "the bounding boxes"
        assert "example_segmentations" not in result.arrays
        attention = result.table("attention")
        assert len(attention) == len(CUB_PARTS) + 1
        assert attention["attention, all"].sum() == pytest.approx(1.0)
        assert 0 < result["att_bird"] < 1 and 0 < result["att_area"] < 1
        # Without segmentations the bird is its box: pixels whose centre lies inside (slow loop).
        test, inside = ctx.split("test"), []
        for x, y, w, h in test["boxes"].tolist():
            size = test["images"].shape[-1]
            inside += [x <= j + 0.5 < x + w and y <= i + 0.5 < y + h
                       for i in range(size) for j in range(size)]
        assert result["bird_share"] == pytest.approx(sum(inside) / len(inside))
        assert result["att_area"] == pytest.approx(result["bird_share"])

    def test_trained_classifier_has_its_history(self, bare, tmp_path):
        # The profile's classifier trained on the folder (two epochs): the report finds the
        # training history of the very checkpoint the context trained.
        ctx = Context.create("smoke", device="cpu", data_dir=bare, cache_dir=tmp_path / "cache",
                             classifier={"epochs": 2})
        result = run(TINY, ctx, progress=False, cache=False)
        assert result["trained"] is True and result["epochs"] == 2
        assert len(result.table("history")) == 2


class TestHelpers:
    def test_architecture_shapes_and_no_hook_left(self):
        model = SmallCNN(num_classes=4, width=8)
        rows = architecture(model, 32)
        assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in model.parameters())
        assert rows[-1]["output (C, H, W)"] == "4" and _hooks(model) == 0
        assert any(r["CBAM"] for r in rows) == bool(model.cbam_modules)

    def test_architecture_removes_hooks_after_an_error(self):
        class Broken(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.block = torch.nn.Conv2d(3, 2, 3)

            def forward(self, x):
                self.block(x)  # the hook fires, then the forward fails
                raise RuntimeError("boom")

        model = Broken().train()
        with pytest.raises(RuntimeError, match="boom"):
            architecture(model, 8)
        assert _hooks(model) == 0 and model.training

    def test_forward_report_batches_and_dtypes(self):
        torch.manual_seed(0)
        model = SmallCNN(num_classes=4, width=8).eval()
        images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
        logits, att = forward_report(model, images, batch_size=2)
        full, att_full = forward_report(model, images.float() / 255, batch_size=None)
        torch.testing.assert_close(logits, full)
        torch.testing.assert_close(att, att_full)
        assert logits.shape == (5, 4) and att.shape[:2] == (5, 1) and _hooks(model) == 0
        none, no_att = forward_report(model, images, attention=False)
        assert no_att is None and torch.allclose(none, logits)

    def test_forward_report_bad_input(self):
        model = SmallCNN(num_classes=4, width=8).eval()
        with pytest.raises(ValueError, match="images: expected shape"):
            forward_report(model, torch.zeros(2, 1, 8, 8))
        with pytest.raises(ValueError, match="batch_size"):
            forward_report(model, torch.zeros(2, 3, 8, 8), batch_size=0)


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
