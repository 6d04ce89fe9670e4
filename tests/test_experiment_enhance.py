"""Tests of fidobook.experiments.enhance (chapter 5, mask-guided classification) on the smoke birds
and on a folder shaped like the real CUB-200-2011 (no small birds there)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cub_shaped import make_cub_shaped, make_resnet_weights
from fidobook.experiments import Context, Result
from fidobook.experiments import enhance as E
from fidobook.experiments.specs import CDvsSCDSpec, EnhanceSpec
from fidobook.stats import verdict

TINY = {"n_test": 5, "n_small": 4, "iterations": 2, "samples": 1, "mask_size": 12, "chunk": 16,
        "resamples": 50}


@pytest.fixture(scope="module")
def birds(smoke_context):
    spec = smoke_context.profile.enhance.replace(**TINY)
    return E.run(spec, smoke_context, cache=False, progress=False)


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    ctx = Context.create("smoke", device="cpu", data_dir=make_cub_shaped(root),
                         weights=make_resnet_weights(root / "r18.pt", 3), arch="resnet18",
                         cache_dir=root / "cache")
    return E.run(ctx.profile.enhance.replace(**TINY), ctx, cache=False, progress=False)


def _names(sets):
    """Every scalar the chapter glues, for the given sets."""
    names = ["n_normal", "iterations", "samples", "size", "mask_size", "threshold", "t_cd",
             "t_scd", "lr", "l1", "tv", "iou_scd_all", "iou_random_all", "box_side_all"]
    names += [f"ref_{k}" for k in ("sigma", "pad", "min_size", "blur")]
    names += [f"{t}_{m}" for t in ("smallest", "largest")
              for m in ("size", "gain", "iou", "iou_random", "truth_gain")]
    for s in sets:
        names += [f"acc_{s}_{k}" for k in range(7)] + [f"bird_size_{s}", f"n_{s}"]
        names += [f"{m}_{s}_{k}" for m in ("diff", "low", "high", "fixed", "broken", "p", "verdict")
                  for k in range(1, 7)]
        names += [f"{m}_{s}" for m in ("loc_verdict", "loc_diff", "sampler_verdict", "sampler_diff",
                                       "best_tau", "best_acc", "region_ref", "side_ref")]
    return names


class TestEnhanceOnBirds:
    def test_fields_and_shapes(self, birds):
        s = birds.scalars
        for name in _names(E.SETS):
            assert s[name] is not None, name
        assert s["n_normal"] == 5 and s["n_small"] == 4 and s["sets"] == "normal, small"
        assert s["source"] == "birds" and s["scale_small_lo"] is not None
        per_image = birds.table("per_image")
        assert len(per_image) == 9 and list(per_image["set"]) == ["normal"] * 5 + ["small"] * 4
        assert set(E.CONDITIONS) <= set(per_image.columns)
        assert len(birds.table("paired")) == 2 * 6 and len(birds.table("accuracy")) == 2 * 7
        assert len(birds.table("sweep")) == 2 * 2 * len(E.THRESHOLDS)
        a = birds.arrays
        g, c = len(birds.table("gallery")), len(birds.table("cases"))
        assert 1 <= g <= E.GALLERY and 1 <= c <= E.GALLERY
        assert a["gallery_images"].shape == (g, 3, 48, 48) and a["gallery_images"].dtype == torch.uint8
        assert a["gallery_crops"].shape == (g, 3, 48, 48) and a["gallery_boxes"].shape == (g, 4)
        assert a["cases_maps"].shape == (c, 48, 48) and a["cases_enhanced"].shape == (c, 3, 48, 48)
        assert a["cases_scd_boxes"].shape == (c, 4) and a["cases_truth"].dtype == torch.uint8
        assert set(birds.table("gallery")["set"]) == {"small"}

    def test_accuracies_are_the_per_image_means(self, birds):
        per_image, s = birds.table("per_image"), birds.scalars
        for name in E.SETS:
            rows = per_image[per_image["set"] == name]
            for k, c in enumerate(E.CONDITIONS):
                assert s[f"acc_{name}_{k}"] == pytest.approx(100 * rows[c].mean())
            for k, c in enumerate(E.CONDITIONS[1:], start=1):
                fixed = int((~rows["uncropped"] & rows[c]).sum())
                broken = int((rows["uncropped"] & ~rows[c]).sum())
                assert (s[f"fixed_{name}_{k}"], s[f"broken_{name}_{k}"]) == (fixed, broken)
                assert s[f"diff_{name}_{k}"] == pytest.approx(s[f"acc_{name}_{k}"] - s[f"acc_{name}_0"])
                assert s[f"low_{name}_{k}"] <= s[f"diff_{name}_{k}"] <= s[f"high_{name}_{k}"]

    def test_verdict_words_come_from_stats_verdict(self, birds):
        s = birds.scalars
        for name in E.SETS:
            for k in range(1, 7):
                word = verdict(s[f"low_{name}_{k}"], s[f"high_{name}_{k}"], 0.0)
                assert s[f"verdict_{name}_{k}"] == E.WORDS[word]
        for row in birds.table("comparisons").itertuples():
            assert row.verdict == verdict(row[4], row[5], 0.0)

    def test_sweep_at_the_reference_threshold_is_the_procedure(self, birds):
        sweep, s = birds.table("sweep"), birds.scalars
        for name in E.SETS:
            for masks, k in (("CD", 1), ("SCD", 2)):
                row = sweep[(sweep["set"] == name) & (sweep["masks"] == masks) & (sweep["threshold"] == 0.5)]
                assert float(row["accuracy, %"].iloc[0]) == pytest.approx(s[f"acc_{name}_{k}"])
            scd = sweep[(sweep["set"] == name) & (sweep["masks"] == "SCD")]
            assert s[f"best_acc_{name}"] == scd["accuracy, %"].max()

    def test_by_size_groups(self, birds):
        by_size, per_image = birds.table("by_size"), birds.table("per_image")
        assert by_size["images"].sum() == len(per_image) and len(by_size) == birds["n_groups"]
        assert by_size["small_birds"].sum() == 4
        expected = pd.qcut(per_image["bird size"].rank(method="first"), len(by_size),
                           labels=[f"Q{q + 1}" for q in range(len(by_size))])
        assert list(per_image["size group"]) == list(expected.astype(str))

    def test_save_load_round_trip(self, birds, tmp_path):
        path = birds.save(tmp_path / "enhance.pt")
        back = Result.load(path)
        assert back.scalars == birds.scalars and back.tables == birds.tables and back.spec == birds.spec
        for k, v in birds.arrays.items():
            assert torch.equal(back.arrays[k], v)

    def test_bad_spec_refused(self, smoke_context):
        with pytest.raises(TypeError, match="enhance spec"):
            E.run(CDvsSCDSpec(), smoke_context, cache=False)
        with pytest.raises(ValueError, match="EnhanceSpec.n_test"):
            EnhanceSpec(n_test=0)
        with pytest.raises(ValueError, match="unknown"):
            EnhanceSpec().replace(thresholds=(1, 2))


class TestEnhanceOnCUB:
    def test_normal_images_only(self, cub):
        s = cub.scalars
        assert s["source"] == "cub" and s["sets"] == "normal" and s["n_normal"] == 5
        assert "normal test images only" in s["sets_note"] and "bounding_boxes.txt" in s["boxes_note"]
        for name in _names(["normal"]):
            assert s[name] is not None, name
        small = [n for n in _names(["small"]) if n not in _names([])] + ["scale_small_lo"]
        assert all(s[n] is None for n in small)
        assert set(cub.table("per_image")["set"]) == {"normal"}
        assert set(cub.table("sweep")["set"]) == {"normal"} and set(cub.table("paired")["set"]) == {"normal"}
        assert cub.arrays["gallery_images"].shape[1:] == (3, 48, 48)


class TestHelpers:
    @pytest.mark.parametrize("n,groups", [(9, 4), (4, 4), (7, 3), (1, 1)])
    def test_size_groups_match_pandas_qcut(self, n, groups):
        values = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n)).double()  # ties
        expected = pd.qcut(pd.Series(values.numpy()).rank(method="first"), groups, labels=False)
        assert E.size_groups(values, groups).tolist() == list(expected)

    def test_size_groups_rejects_more_groups_than_values(self):
        with pytest.raises(ValueError, match="n_groups"):
            E.size_groups(torch.ones(3), 4)

    def test_median_is_the_usual_one(self):
        x = torch.tensor([4.0, 1.0, 3.0, 2.0])
        assert E.median(x) == float(np.median(x.numpy())) == 2.5
