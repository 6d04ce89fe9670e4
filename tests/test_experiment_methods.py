"""Tests of fidobook.experiments.methods: chapter 7's comparison of attribution methods."""
from __future__ import annotations

import math

import pytest
import torch

from cub_shaped import make_cub_shaped, make_resnet_weights
from fidobook.experiments import Context, Result, cd_vs_scd, methods, run
from fidobook.experiments.specs import CDvsSCDSpec, MethodsSpec
from fidobook.metrics import normalize_maps
from fidobook.profiles import PROFILES

#: Seconds-sized: 3 images, 2 FIDO steps, the smallest sizes of every method.
TINY = MethodsSpec(n_images=3, fido_iterations=2, fido_snapshots=(1,), fido_s_max=2, fido_chunk=3,
                   mask_size=6, ig_steps=2, smooth_samples=2, steps=2, resamples=50)
BASELINES = ["saliency", "SmoothGrad", "integrated gradients", "occlusion", "Grad-CAM"]
ORDER = BASELINES + ["FIDO CD, S = 2", "FIDO SCD, S = 1", "random"]


@pytest.fixture(scope="module")
def result(smoke_context):
    return run("methods", smoke_context, TINY, progress=False, cache=False)


class TestResult:
    def test_fields_and_shapes(self, result, smoke_context):
        n, side = 3, smoke_context.profile.image_size
        assert result.name == "methods" and result.spec["n_images"] == 3
        assert result.table("methods").method.tolist() == ORDER
        scores = result.table("scores")
        assert len(scores) == n * len(ORDER) and scores.method.unique().tolist() == ORDER
        assert set(methods.METRICS) <= set(scores.columns)  # the smoke birds have segmentations
        summary = result.table("summary")
        assert len(summary) == len(ORDER) * len(methods.METRICS)
        assert (summary["low"] <= summary["mean"] + 1e-12).all()
        assert (summary["mean"] <= summary["high"] + 1e-12).all()
        g = min(methods.GALLERY, n)
        assert result.arrays["gallery_images"].shape == (g, 3, side, side)
        maps = result.arrays["gallery_maps"]
        assert maps.shape == (g, len(ORDER), side, side)
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        assert result.arrays["gallery_objects"].shape == (g, side, side)
        assert result.arrays["ig_completeness"].shape == (n,)
        assert result["n_images"] == n and result["image_size"] == side

    def test_known_answers(self, result, smoke_context):
        side = smoke_context.profile.image_size
        window = side // 8
        stride = window // 2
        assert (result["window"], result["stride"]) == (window, stride)
        cost = result.table("cost").set_index("method")
        assert cost.loc["saliency", "forward passes"] == 1
        assert cost.loc["SmoothGrad", "forward passes"] == TINY.smooth_samples
        assert cost.loc["integrated gradients", "backward passes"] == TINY.ig_steps
        windows = (math.ceil((side - window) / stride) + 1) ** 2
        assert cost.loc["occlusion", "forward passes"] == windows + 1
        # FIDO: two masks (SSR and SDR) × S samples × iterations forward passes per map
        assert cost.loc["FIDO CD, S = 2", "forward passes"] == 2 * 2 * TINY.fido_iterations
        assert cost.loc["FIDO SCD, S = 1", "forward passes"] == 2 * 1 * TINY.fido_iterations
        assert cost.loc["random", "passes per map"] == "none"
        # Every method other than FIDO SCD against it, on every paired score.
        paired = result.table("paired")
        assert len(paired) == (len(ORDER) - 1) * len(methods.PAIRED)
        assert result["paired_total"] == (len(ORDER) - 2) * len(methods.PAIRED)
        assert (result["paired_better"] + result["paired_worse"] + result["paired_no_difference"]
                == result["paired_total"])
        # The best of each metric is the best mean among the methods other than random.
        summary = result.table("summary")
        for metric, (_, higher) in methods.METRICS.items():
            d = summary[(summary.metric == metric) & (summary.method != "random")].set_index("method")["mean"]
            assert result[f"best_{metric}"] == (d.idxmax() if higher else d.idxmin())
            assert result[f"best_{metric}_value"] == pytest.approx(d.max() if higher else d.min())

    def test_fido_maps_are_chapter_4s_fits(self, result, smoke_context):
        # The same images and the same cached fits as chapter 4 with the matching spec.
        c4 = methods.chapter4_spec(TINY)
        ev = cd_vs_scd.images_for(c4, smoke_context)
        assert result.arrays["gallery_index"].tolist() == ev.index[:3].tolist()
        fits = cd_vs_scd.fits(c4, smoke_context, settings=[("SCD, t = 1", 1)], evaluation=ev)
        expected = normalize_maps(fits["SCD, t = 1", 1].joint.cpu())
        torch.testing.assert_close(result.arrays["gallery_maps"][:, ORDER.index("FIDO SCD, S = 1")],
                                   expected)

    def test_save_load_round_trip(self, result, tmp_path):
        path = result.save(tmp_path / "methods.pt")
        back = Result.load(path)
        assert back.scalars == result.scalars and back.tables == result.tables
        assert set(back.arrays) == set(result.arrays)
        for k, v in result.arrays.items():
            assert torch.equal(back.arrays[k], v)


class TestSpec:
    def test_bad_spec_refused(self, smoke_context):
        with pytest.raises(TypeError, match="spec: expected a methods spec"):
            methods.run(CDvsSCDSpec(), smoke_context)
        with pytest.raises(ValueError, match="MethodsSpec.n_images: expected an int >= 1"):
            MethodsSpec(n_images=0)
        with pytest.raises(ValueError, match="MethodsSpec.sigma: expected a finite number >= 0"):
            MethodsSpec(sigma=-0.1)
        with pytest.raises(ValueError, match="expected fields among"):
            MethodsSpec().replace(batch=4)

    @pytest.mark.parametrize("name", list(PROFILES))
    def test_profiles_reuse_chapter_4s_fits(self, name):
        # Chapter 7's images and FIDO settings are chapter 4's, so its cached fits are found.
        profile = PROFILES[name]
        mine, theirs = methods.chapter4_spec(profile.methods), profile.cd_vs_scd
        for field in ("n_images", "iterations", "snapshots", "mask_size", "chunk", "seed"):
            assert getattr(mine, field) == getattr(theirs, field), field
        assert profile.methods.fido_s_max == max(theirs.samples) and 1 in theirs.samples


class TestOnACUBFolder:
    def test_without_segmentations(self, tmp_path):
        # The reader's ResNet on a CUB-shaped folder without segmentations: the scores against
        # the bird's outline are skipped and the result says so; the rest is scored.
        bare = make_cub_shaped(tmp_path / "bare", with_segmentations=False)
        weights = make_resnet_weights(tmp_path / "r18.pt", 3)
        ctx = Context.create("smoke", device="cpu", data_dir=bare, weights=weights, arch="resnet18",
                             cache_dir=tmp_path / "cache")
        r = run("methods", ctx, TINY.replace(n_images=2), progress=False, cache=False)
        assert "rank_object" not in r.table("scores").columns
        assert r["best_rank_object"] == "not scored" and r["best_rank_object_value"] is None
        assert "no segmentations" in r["objects_note"] and "keypoint" in r["parts_note"]
        assert "gallery_objects" not in r.arrays
        assert not r.table("scores")["rank_parts"].isna().all()
