"""Tests of fidobook.experiments.overmap (chapter 6): on the smoke birds (the shared, cached smoke
data, classifier and segmenter) and on folders shaped like the real CUB-200-2011."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cub_shaped import make_cub_shaped, make_resnet_weights

from fidobook import overmap as om
from fidobook.data.hard import HARD_CASES
from fidobook.experiments import Context, Result
from fidobook.experiments import run as run_named
from fidobook.data.hard import corrupt_images
from fidobook.experiments.overmap import (
    BASELINES,
    FIDO_SCORE,
    NAME,
    ORACLE,
    OVERMAP,
    RANDOM,
    evaluation_data,
    run,
)
from fidobook.experiments.specs import CDvsSCDSpec, OverMAPSpec
from fidobook.models.train import predict
from fidobook.stats import VERDICTS

TINY = OverMAPSpec(n_normal=10, per_case=1, n_fido=7, fido_iterations=2, fido_samples=1,
                   mask_size=12, mc_passes=2, mc_batch=8, n_boot=20, seed=0)
TABLES = ("per_image", "by_case", "examples", "availability", "rejection", "areas", "vs_random",
          "relation", "breakdown", "summary", "timings")


@pytest.fixture(scope="module")
def birds(smoke_context):
    return run(TINY, smoke_context, progress=False, cache=False)


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class TestOnTheBirds:
    def test_fields_and_shapes(self, birds, smoke_context):
        size = smoke_context.profile.image_size
        cases = ["normal", *HARD_CASES]
        n = 10 + len(HARD_CASES)
        assert birds.name == NAME and birds.spec == dataclasses.asdict(TINY)
        assert birds["n_images"] == n and birds["n_normal"] == 10 and birds["source"] == "birds"
        assert birds["overmap"] and birds["mc_dropout"] and birds["fido"] and birds["notes"] == ""
        assert birds["sources"] == "gradcam, cbam"
        assert set(TABLES + ("fido_areas", "fido_examples")) <= set(birds.tables)
        per_image = birds.table("per_image")
        assert len(per_image) == n and list(per_image.case.unique()) == cases
        assert set(BASELINES) | set(OVERMAP) | set(ORACLE) <= set(per_image.columns)
        assert list(birds.table("by_case").case) == cases + ["all"]
        a = birds.arrays
        assert a["example_images"].shape == (7, 3, size, size) and a["example_images"].dtype == torch.uint8
        for key in ("example_gradcam", "example_cbam", "fido_gradcam", "fido_joint"):
            assert a[key].shape == (7, size, size) and a[key].is_floating_point()
        for key in ("example_plain", "example_guided", "fido_guided"):
            assert a[key].shape == (7, size, size) and a[key].dtype == torch.bool
        assert birds["n_fido"] == 7 and birds["fido_per_case"] == 1
        assert len(birds.table("relation")) == 5 * 3  # fifths of Grad-CAM, CBAM and the oracle
        assert birds["verdict"].startswith("At 12–18 % rejected")

    def test_scores_are_the_package_functions(self, birds, smoke_context):
        data = evaluation_data(TINY, smoke_context)
        model = smoke_context.classifier()
        logits = predict(model, data["images"]).float()
        per_image = birds.table("per_image")
        pred = logits.argmax(1)
        assert per_image.prediction.tolist() == pred.tolist()
        assert per_image.correct.tolist() == om.topk_correct(logits, data["labels"]).tolist()
        torch.testing.assert_close(torch.tensor(per_image["max softmax"].to_numpy()),
                                   om.max_softmax(logits).double())
        s = om.overmap_scores(model, data["images"], pred, segmenter=smoke_context.segmenter(),
                              batch_size=5)
        for name in ("Over-MAP Grad-CAM", "Over-MAP CBAM, plain seg."):
            torch.testing.assert_close(torch.tensor(per_image[name].to_numpy()), s[OVERMAP[name]])
        assert per_image["available, guided"].tolist() == s["available/guided"].tolist()

    def test_known_answers(self, birds):
        per_image, areas = birds.table("per_image"), birds.table("areas").set_index("score")
        correct = torch.tensor(per_image.correct.to_numpy())
        assert birds["acc_all"] == pytest.approx(per_image.correct.mean())
        # no ranking: the AURC is the error rate; every E-AURC is >= 0
        assert areas.loc[RANDOM, "AURC"] == pytest.approx(1 - birds["acc_all"])
        assert (areas["E-AURC"] > -1e-12).all()
        conf = torch.tensor(per_image["−entropy"].to_numpy())
        assert areas.loc["−entropy", "E-AURC"] == pytest.approx(om.e_aurc(conf, correct))
        rejection = birds.table("rejection")
        assert rejection[rejection.rate == 0].top3_macro.nunique() == 1
        summary = birds.table("summary").set_index("score")["gain at 12–18 % (points)"]
        window = rejection[rejection.rate.isin([0.12, 0.15, 0.18])].groupby("score")["gain"].mean()
        for name in summary.index:
            assert summary[name] == pytest.approx(window[name])
        # the paired comparison's estimate is the difference of the tables' gains
        best, base = birds["overmap_best"], birds["baseline_best"]
        assert best == max(OVERMAP, key=lambda s: summary[s])
        assert 100 * birds["gain_difference"] == pytest.approx(summary[best] - summary[base])
        assert birds["gain_word"] in VERDICTS
        assert set(birds.table("vs_random").verdict) <= set(VERDICTS)
        assert birds["best_eaurc_score"] == areas.loc[list(BASELINES) + list(OVERMAP), "E-AURC"].idxmin()
        # the FIDO subset: its rows are the subset's
        fido = birds.table("fido_areas").set_index("score")
        subset = per_image.groupby("case", sort=False).head(1)
        sub_correct = torch.tensor(subset.correct.to_numpy())
        assert fido.loc["max softmax", "AURC"] == pytest.approx(
            om.aurc(torch.tensor(subset["max softmax"].to_numpy()), sub_correct))
        assert FIDO_SCORE in fido.index and birds["fido_errors"] == int((~sub_correct).sum())

    def test_save_load_round_trip(self, birds, tmp_path):
        path = birds.save(tmp_path / "overmap.pt")
        back = Result.load(path)
        assert back.scalars.keys() == birds.scalars.keys()
        assert all(_same(back.scalars[k], v) for k, v in birds.scalars.items())
        assert back.tables.keys() == birds.tables.keys()
        for name, columns in birds.tables.items():
            for column, values in columns.items():
                assert all(_same(a, b) for a, b in zip(back.tables[name][column], values))
        assert all(torch.equal(back.arrays[k], v) for k, v in birds.arrays.items())

    def test_bad_spec(self, smoke_context):
        with pytest.raises(TypeError, match="spec"):
            run(CDvsSCDSpec(), smoke_context, cache=False)
        with pytest.raises(TypeError, match=r"OverMAPSpec\), got CDvsSCDSpec"):  # by name: this module's run
            run_named("overmap", smoke_context, CDvsSCDSpec(), cache=False)
        assert smoke_context.profile.overmap.mc_batch == 64  # the profile's spec
        with pytest.raises(ValueError, match="per_case"):
            OverMAPSpec(per_case=0)
        with pytest.raises(ValueError, match="n_normal"):
            OverMAPSpec(n_normal=0)
        with pytest.raises(ValueError, match="unknown"):
            TINY.replace(batch=64)  # a memory bound is not a spec field


class TestCorruptImages:
    def test_deterministic_prefix_free_and_corrupting(self):
        images = (torch.rand(5, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        out, kinds = corrupt_images(images, 3)
        again, _ = corrupt_images(images, 3)
        head, head_kinds = corrupt_images(images[:2], 3)
        assert out.shape == images.shape and out.dtype == torch.uint8 and torch.equal(out, again)
        assert torch.equal(out[:2], head) and torch.equal(kinds[:2], head_kinds)
        assert set(kinds.tolist()) <= {1, 2, 3}
        assert all(not torch.equal(out[i], images[i]) for i in range(5))
        assert not torch.equal(corrupt_images(images, 4)[0], out)

    def test_errors(self):
        with pytest.raises(TypeError, match="images"):
            corrupt_images(torch.rand(2, 3, 8, 8), 0)
        with pytest.raises(TypeError, match="images"):
            corrupt_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 0)
        with pytest.raises(ValueError, match="seed"):
            corrupt_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), -1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_resnet_weights(tmp_path_factory.mktemp("w") / "r18.pt", 3)


class TestOnCUBShaped:
    SPEC = TINY.replace(n_normal=None, per_case=3, n_fido=2)

    def test_without_segmentations_cbam_or_dropout(self, tmp_path, weights):
        folder = make_cub_shaped(tmp_path / "bare", with_segmentations=False)
        ctx = Context.create("smoke", device="cpu", cache_dir=tmp_path / "cache", data_dir=folder,
                             weights=weights, arch="resnet18")
        r = run(self.SPEC, ctx, progress=False, cache=False)
        assert r["source"] == "cub" and list(r.table("by_case").case) == ["normal", "corrupted", "all"]
        assert r["n_images"] == 6 + 3 and "corrupted" in r["evaluation_note"]
        assert not r["overmap"] and not r["mc_dropout"] and not r["fido"] and r["sources"] == "gradcam"
        for said in ("no CBAM blocks", "no segmentations", "no dropout layer"):
            assert said in r["notes"]
        assert set(r.table("per_image").columns) >= {"max softmax", "−entropy"}
        assert not set(r.table("per_image").columns) & (set(OVERMAP) | set(ORACLE))
        assert "fido_areas" not in r.tables and list(r.arrays) == ["example_images"]
        assert math.isnan(r["na_guided"]) and math.isnan(r["eaurc_gradcam"]) and math.isnan(r["n_fido"])
        assert r["gradcam_vs_random"] == "n/a" and r["verdict"].startswith("Over-MAP could not")
        assert set(r.table("areas").score) == {"max softmax", "−entropy", RANDOM}
        # the corrupted copies: the same labels, other pixels
        data = evaluation_data(self.SPEC, ctx)
        test = ctx.split("test")
        chosen = data["index"][data["case"] == 1]
        assert torch.equal(data["labels"][data["case"] == 1], test["labels"][chosen])
        assert not torch.equal(data["images"][data["case"] == 1], test["images"][chosen])
        assert data["objects"] is None

    def test_with_segmentations(self, tmp_path, weights):
        folder = make_cub_shaped(tmp_path / "full")
        ctx = Context.create("smoke", device="cpu", cache_dir=tmp_path / "cache", data_dir=folder,
                             weights=weights, arch="resnet18")
        r = run(self.SPEC, ctx, progress=False, cache=False)
        assert r["overmap"] and r["fido"] and not r["mc_dropout"]
        assert "no segmentations" not in r["notes"] and "no CBAM blocks" in r["notes"]
        per_image = r.table("per_image")
        assert {"Over-MAP Grad-CAM", "Over-MAP Grad-CAM, plain seg.", *ORACLE} <= set(per_image.columns)
        assert "Over-MAP CBAM" not in per_image.columns
        assert r["n_fido"] == 2 and "example_cbam" not in r.arrays
        assert r.arrays["example_guided"].shape == (2, 48, 48)
        data = evaluation_data(self.SPEC, ctx)
        corrupted = data["case"] == 1
        assert torch.equal(data["objects"][corrupted],
                           ctx.split("test")["segmentations"][data["index"][corrupted], 0] > 127)
