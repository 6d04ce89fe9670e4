"""Tests of fidobook.experiments.cd_vs_scd: chapter 4's grid on the smoke birds, tiny sizes."""
import copy
import dataclasses
import json
import math

import pytest
import torch

from fidobook import FIDOConfig
from fidobook.experiments import Result, cd_vs_scd, run
from fidobook.experiments.specs import CDvsSCDSpec, OneBirdSpec
from fidobook.stats import verdict
from fidobook.study import fit_cached

TINY = CDvsSCDSpec(n_images=3, iterations=3, snapshots=(2, 5), samples=(1, 2), mask_size=6,
                   chunk=2, steps=2, resamples=50, margin=0.02, seed=1)


def private_cache(ctx, folder, *, objects=True):
    """``ctx`` with its own fit cache in ``folder`` (data and models already loaded are shared);
    ``objects=False`` drops the segmentations, as on a CUB folder without them."""
    ctx.classifier(), ctx.split("test")  # load into the shared dicts first
    out = copy.copy(ctx)
    out.cache_dir = folder
    if not objects:
        def evaluation_set(*args, **kwargs):
            return dataclasses.replace(ctx.evaluation_set(*args, **kwargs), objects=None)
        out.evaluation_set = evaluation_set
    return out


@pytest.fixture(scope="module")
def tiny(smoke_context, tmp_path_factory):
    ctx = private_cache(smoke_context, tmp_path_factory.mktemp("cd_vs_scd"))
    return ctx, cd_vs_scd.run(TINY, ctx, progress=False, cache=False)


class TestRun:
    def test_fields_and_shapes(self, tiny):
        ctx, r = tiny
        assert r.name == "cd_vs_scd" and r.spec["seed"] == 1
        n, settings, recorded = 3, len(cd_vs_scd.SETTINGS), (2, 3)  # the snapshot 5 >= 3 is dropped
        assert cd_vs_scd.recorded_iterations(TINY) == recorded
        scores = r.table("scores")
        assert len(scores) == settings * len(TINY.samples) * len(recorded) * n
        assert sorted(scores["T"].unique()) == list(recorded)
        assert (scores["forward passes"] == 2 * scores["S"] * scores["T"]).all()
        final = scores[scores["T"] == 3]
        assert final[["rank_object", "box_iou", "deletion", "insertion", "tv"]].notna().all().all()
        assert scores[scores["T"] == 2][["deletion", "insertion"]].isna().all().all()
        for name in ("summary", "claim_a", "claim_b", "holds", "noise", "matched", "cost",
                     "gallery", "random"):
            assert len(r.table(name)) > 0, name
        assert len(r.table("claim_a")) == (settings * len(TINY.samples) - 1) * len(cd_vs_scd.QUALITY)
        h, w = ctx.split("test")["images"].shape[-2:]
        assert r.arrays["gallery_images"].shape == (3, 3, h, w)
        assert r.arrays["gallery_maps"].shape == (3, len(r.table("gallery")), h, w)
        assert r.arrays["gallery_objects"].shape == (3, h, w)
        assert r["matched_metric"] == "the relevance rank on the bird"
        assert r["parts_note"] == ctx.evaluation_set(3).parts_note
        for key in ("claim_a_s1", "smallest_scd_1", "matched_verdict", "a_insertion_verdict",
                    "b_scd1_tv_better", "tv_ratio_scd01", "cv0_01", "passes_ref", "parts_note"):
            assert key in r.scalars, key

    def test_cost_is_two_s_t(self, tiny):
        _, r = tiny
        cost = r.table("cost")
        assert (cost["forward passes per mask"] == 2 * cost["S"] * TINY.iterations).all()
        assert r["passes_ref"] == 2 * 2 * 3 and r["passes_s1"] == 2 * 1 * 3

    def test_claim_a_against_a_slow_reference(self, tiny):
        # Δ mean recomputed from the per-image table; the word is stats.verdict of the interval.
        _, r = tiny
        final = r.table("scores").query("T == 3")
        ref = final.query("setting == 'CD, t = 0.1' and S == 2").set_index("image")
        for _, row in r.table("claim_a").iterrows():
            a = final[(final["setting"] == row["setting"]) & (final["S"] == row["S"])].set_index("image")
            d = (a[row["metric"]] - ref[row["metric"]]).dropna()
            if not cd_vs_scd.METRICS[row["metric"]][1]:
                d = -d
            assert row["Δ mean"] == pytest.approx(d.mean(), abs=1e-12)
            assert row["verdict"] == verdict(row["low"], row["high"], TINY.margin)
        holds = r.table("holds").set_index(["setting", "S"])["holds"]
        for (setting, S), ok in holds.items():
            rows = r.table("claim_a").query("setting == @setting and S == @S")
            assert ok == rows["verdict"].isin(["better", "not worse"]).all()

    def test_claim_b_words(self, tiny):
        _, r = tiny
        b = r.table("claim_b")
        assert set(b.loc[b["metric"] == "area", "verdict"]) == {"(size)"}
        judged = b[b["metric"] != "area"]
        for _, row in judged.iterrows():
            assert row["verdict"] == verdict(row["low"], row["high"], 0.0)
        count = int(((b["setting"] == "SCD, t = 1") & (b["metric"] == "tv") & (b["verdict"] == "better")).sum())
        assert r["b_scd1_tv_better"] == count

    def test_noise_numbers(self, tiny):
        _, r = tiny
        assert r["cv0_1"] == pytest.approx(math.sqrt(0.2), rel=1e-9)  # uniform keep sample at t = 1
        assert r["equivalent_s"] == pytest.approx((r["cv0_01"] / r["cv0_1"]) ** 2)

    def test_round_trip(self, tiny, tmp_path):
        _, r = tiny
        path = r.save(tmp_path / "r.pt")
        back = Result.load(path)
        dump = lambda x: json.dumps(x, sort_keys=True, allow_nan=True)  # NaN == NaN as text
        assert dump(back.scalars) == dump(r.scalars)
        assert dump(back.tables) == dump(r.tables)
        assert back.arrays.keys() == r.arrays.keys()
        assert all(torch.equal(back.arrays[k], r.arrays[k]) for k in r.arrays)

    def test_registry_and_cache(self, tiny):
        ctx, r = tiny
        first = run("cd_vs_scd", ctx, TINY, progress=False)  # computed once, stored
        again = run("cd_vs_scd", ctx, TINY, progress=False)
        assert again.key == first.key and again.seconds == first.seconds
        assert json.dumps(again.tables, allow_nan=True) == json.dumps(r.tables, allow_nan=True)


class TestImagesAndFits:
    def test_images_follow_the_rule(self, tiny):
        ctx, _ = tiny
        ev = cd_vs_scd.images_for(TINY, ctx)
        total = len(ctx.split("test")["labels"])
        expected = torch.randperm(total, generator=torch.Generator().manual_seed(1))[:3].sort().values
        assert torch.equal(ev.index, expected)
        assert cd_vs_scd.noise_seeds(TINY, ctx, ev) == (expected + total).tolist()

    def test_fits_keep_the_chapters_cache_keys(self, tiny):
        # The fits the notebook made before (the same images, seeds, config, snapshots and chunk;
        # the memory bound takes no part in the key) are the ones fits() stores: no new folder.
        ctx, _ = tiny
        ev = cd_vs_scd.images_for(TINY, ctx)
        got = cd_vs_scd.fits(TINY, ctx, settings=[("SCD, t = 1", 1)], evaluation=ev)
        folders = sorted((ctx.cache_dir / "fido").iterdir())
        config = FIDOConfig(iterations=3, samples=1, mask_size=6, sampler="scd", temperature=1.0)
        old = fit_cached(ctx.classifier(), ev.images, ev.labels, config,
                         seeds=(ev.index + TINY.seed * len(ctx.split("test")["labels"])).tolist(),
                         cache_dir=ctx.cache_dir, snapshots=(2,), chunk=2, max_batch=5)
        assert sorted((ctx.cache_dir / "fido").iterdir()) == folders
        assert torch.equal(old.logits, got["SCD, t = 1", 1].logits)

    def test_fits_refuses_bad_settings(self, tiny):
        ctx, _ = tiny
        with pytest.raises(ValueError, match="settings"):
            cd_vs_scd.fits(TINY, ctx, settings=[("SCD, t = 2", 1)])
        with pytest.raises(ValueError, match="settings"):
            cd_vs_scd.fits(TINY, ctx, settings=[("SCD, t = 1", 0)])
        with pytest.raises(TypeError, match="n_images"):
            cd_vs_scd.images_for(object(), ctx)


class TestBadSpec:
    def test_other_spec_refused(self, smoke_context):
        with pytest.raises(TypeError, match="CDvsSCDSpec"):
            cd_vs_scd.run(OneBirdSpec(), smoke_context, cache=False)

    @pytest.mark.parametrize("change", [{"margin": -0.1}, {"samples": (2, 1)}, {"n_images": 0},
                                        {"seed": -1}])
    def test_bad_values(self, change):
        with pytest.raises(ValueError):
            TINY.replace(**change)


class TestWithoutSegmentations:
    def test_object_scores_skipped(self, smoke_context, tmp_path):
        ctx = private_cache(smoke_context, tmp_path, objects=False)
        spec = TINY.replace(samples=(1,), snapshots=())
        r = cd_vs_scd.run(spec, ctx, progress=False, cache=False)
        assert "rank_object" not in r.table("scores")
        assert "rank_object" not in set(r.table("claim_a")["metric"])
        assert "skipped" in r["objects_note"] and r["area_object"] is None
        assert r["matched_metric"].startswith("the relevance rank on the parts")
        assert "gallery_objects" not in r.arrays
