"""Tests of fidobook.experiments.one_bird, chapter 2's experiment (FIDO end to end on one bird)."""
from __future__ import annotations

import pytest
import torch

from fidobook.data import PART_NAMES
from fidobook.experiments import Result, one_bird
from fidobook.experiments.specs import ConcreteSpec, OneBirdSpec
from fidobook.infill import INFILLS

TINY = OneBirdSpec(iterations=6, samples=1, mask_size=6)
CUB_TINY = OneBirdSpec(iterations=2, samples=1, mask_size=4)  # a ResNet-18: fewer steps


@pytest.fixture(scope="module")
def result(smoke_context):
    return one_bird.run(TINY, smoke_context, progress=False, cache=False)


class TestL1Drift:
    def test_known_values(self):
        trace = one_bird.l1_drift(1e-3, 12)
        assert trace.shape == (12,) and trace.dtype == torch.float64
        assert trace[0] == 0.5 and trace[1] == 0.5  # the ramp is 0 at step 0: no push yet
        assert bool((trace[2:] < trace[1:-1]).all())  # then it only falls
        # The first push is Adam's second step (the first had a zero gradient), by hand:
        g = 1 / 5 * 1e-3 / 2 * 0.25  # ramp 1/5 · λ1/2 · σ'(0)
        m_hat = 0.1 * g / (1 - 0.9**2)
        v_hat = 0.001 * g * g / (1 - 0.999**2)
        theta = -10.0 * m_hat / (v_hat**0.5 + 0.1)  # lr 10, eps 0.1
        assert float(trace[2]) == pytest.approx(float(torch.sigmoid(torch.tensor(theta))), rel=1e-6)
        assert bool((one_bird.l1_drift(0.0, 5) == 0.5).all())

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="l1"):
            one_bird.l1_drift(-1.0, 3)
        with pytest.raises(ValueError, match="iterations"):
            one_bird.l1_drift(1e-3, 0)


class TestChooseImage:
    def test_rule(self):
        labels = torch.tensor([0, 1, 2, 2, 1])
        predictions = torch.tensor([1, 1, 2, 2, 1])  # image 0 is wrong
        separating = torch.tensor([[True, True], [True, True], [False, True]])  # class 2: one part
        assert one_bird.choose_image(labels, predictions, separating) == 2
        assert one_bird.choose_image(labels, predictions, None) == 1  # the first one right
        none_right = torch.tensor([1, 0, 0, 0, 0])
        assert one_bird.choose_image(labels, none_right, separating) == 2  # first with a neighbour
        assert one_bird.choose_image(labels, none_right, None) == 0

    def test_bad_input(self):
        with pytest.raises(ValueError, match="labels, predictions"):
            one_bird.choose_image(torch.tensor([0, 1]), torch.tensor([0]))


class TestOneBird:
    def test_fields_and_shapes(self, result, smoke_context):
        size = smoke_context.profile.image_size
        t, n_infills = TINY.iterations, len(INFILLS)
        assert result.name == "one_bird" and result.spec["iterations"] == t
        for name in ("accuracy", "p_clean", "p_blur", "ssr_prob_end", "sdr_prob_end", "drift_gap",
                     "area_bird", "joint_bird", "top_bird", "area_disc", "joint_disc", "top_disc",
                     "cd_vs_scd", "t_effect", "max_theta_cd", "frozen_cd", "infill_lowest_p",
                     *(f"{k}_l1_{tag}" for k in ("ssr_mean", "ssr_half", "ssr_prob", "sdr_prob")
                       for tag in "321"),
                     *(f"hard_{k}_{v}" for k in ("ssr", "ssr_rand", "sdr", "sdr_rand") for v in ("p", "px"))):
            assert isinstance(result[name], float | int), name
        assert result["source"] == "birds" and result["n_logits"] == 2 * TINY.mask_size ** 2
        assert result["infill_best"] in INFILLS and result["infill_lowest"] in INFILLS
        lengths = {name: len(result.table(name)) for name in result.tables}
        assert lengths == {"neighbours": result["n_neighbours"], "sparsity": 3, "shares": len(PART_NAMES),
                           "hard": 4, "infills": n_infills, "samplers": 3}
        expected = {"image": (3, size, size), "part_mask": (size, size), "object": (size, size),
                    "outline": (size, size), "ssr": (size, size), "sdr": (size, size),
                    "joint": (size, size), "original_mean": (t,), "drift": (3, t + 1),
                    "l1_mean": (3, t), "l1_joint": (3, size, size),
                    "infill_images": (n_infills, 3, size, size),
                    "infill_joint": (n_infills, size, size), "sampler_joint": (3, size, size),
                    "sampler_ssr_prob": (3, t), "sampler_sdr_prob": (3, t),
                    **{f"history_{k}": (t,) for k in ("loss", "ssr_prob", "sdr_prob", "l1", "tv")}}
        assert {k: tuple(v.shape) for k, v in result.arrays.items()} == expected
        assert result.arrays["image"].dtype == torch.uint8

    def test_the_bird(self, result, smoke_context):
        test = smoke_context.split("test")
        i, c = result["bird_index"], result["bird_label"]
        assert int(test["labels"][i]) == c and result["bird_class"] == test["classes"][c]
        image = test["images"][i]
        assert torch.equal(result.arrays["image"], image)
        assert result["n_neighbours"] >= 1 and result["bird_parts"]
        classes = smoke_context.class_parts()
        for k, part, _ in result.table("neighbours").itertuples(index=False):
            differs = [p for p in classes[c] if classes[c][p] != classes[k][p]]
            assert differs == [part]

    def test_known_answers(self, result):
        # The 'original' infill: the regularisers alone move the masks, as AdamW on one logit.
        assert result["drift_gap"] < 1e-3
        torch.testing.assert_close(result.arrays["drift"][0],
                                   one_bird.l1_drift(1e-3, TINY.iterations + 1))
        shares = result.table("shares").set_index("part")
        assert shares["area"].sum() == pytest.approx(1) and shares["joint"].sum() == pytest.approx(1)
        # on the birds, "on the bird" is everything but the background label
        assert result["area_bird"] == pytest.approx(100 * (1 - shares.loc["background", "area"]))
        assert result["joint_bird"] == pytest.approx(100 * (1 - shares.loc["background", "joint"]))
        disc = shares.index[shares["separates"] == "yes"]
        assert result["joint_disc"] == pytest.approx(100 * shares.loc[disc, "joint"].sum())
        hard = result.table("hard").set_index("test")
        assert hard.loc["keep SSR (k > ½)", "pixels"] == hard.loc["keep random", "pixels"]
        assert result["ssr_prob_end"] == pytest.approx(float(result.arrays["history_ssr_prob"][-1]))
        samplers = result.table("samplers").set_index("sampler")
        assert samplers.loc["SCD, t = 1", "p(c), SSR"] == pytest.approx(result["ssr_prob_end"])
        infills = result.table("infills").set_index("infill")
        assert infills.loc["blur", "p(c), infill alone"] == pytest.approx(result["p_blur"])

    def test_round_trip(self, result, tmp_path):
        saved = Result.load(result.save(tmp_path / "one_bird.pt"))
        assert saved.scalars == result.scalars and saved.tables == result.tables
        for k, v in result.arrays.items():
            assert torch.equal(saved.arrays[k], v), k

    def test_image_by_index(self, smoke_context):
        spec = OneBirdSpec(iterations=2, samples=1, mask_size=4, image=3)
        r = one_bird.run(spec, smoke_context, progress=False, cache=False)
        assert r["bird_index"] == 3 and "spec.image" in r["rule"]

    def test_bad_spec(self, smoke_context):
        with pytest.raises(TypeError, match="spec: expected a one_bird spec"):
            one_bird.run(ConcreteSpec(), smoke_context)
        with pytest.raises(ValueError, match="OneBirdSpec.mask_size"):
            one_bird.run(TINY.replace(mask_size=1000), smoke_context, cache=False)
        with pytest.raises(ValueError, match="OneBirdSpec.image: expected an index"):
            one_bird.run(TINY.replace(image=10**6), smoke_context, cache=False)
        with pytest.raises(ValueError, match="OneBirdSpec.image"):
            OneBirdSpec(image=-1)


# ----------------------------------------------------------------------------------------------
# A CUB-format folder with the reader's classifier


@pytest.fixture(scope="module")
def cub_weights(tmp_path_factory):
    from cub_shaped import make_resnet_weights

    return make_resnet_weights(tmp_path_factory.mktemp("weights") / "r18.pt", 3)


def _cub_context(root, weights, **kwargs):
    from cub_shaped import make_cub_shaped

    from fidobook.experiments import Context

    data_dir = make_cub_shaped(root / "data", **kwargs)
    return Context.create("smoke", device="cpu", data_dir=data_dir, weights=weights,
                          arch="resnet18", cache_dir=root / "cache")


class TestOnACUBFolder:
    def test_with_segmentations(self, tmp_path, cub_weights):
        from cub_shaped import CUB_PARTS

        ctx = _cub_context(tmp_path, cub_weights)
        r = one_bird.run(CUB_TINY, ctx, progress=False, cache=False)
        assert r["source"] == "cub" and r["n_classes"] == 3 and r["n_test"] == 6
        assert r["n_neighbours"] == 0 and r["bird_variants"] is None
        assert "no class table" in r["rule"] and "keypoints" in r["parts_note"]
        assert r["object_note"] == "the bird's segmentation" and "outline" in r.arrays
        shares = r.table("shares")
        assert shares["part"].tolist() == ["background", *CUB_PARTS]
        # the parts to find are the visible ones: the labels of the keypoint discs
        present = sorted(set(r.arrays["part_mask"].unique().tolist()) - {0})
        assert [j for j, s in enumerate(shares["separates"]) if s == "yes"] == present
        test = ctx.split("test")
        assert torch.equal(r.arrays["object"], test["segmentations"][r["bird_index"], 0] > 127)
        joint = r.arrays["joint"]
        assert r["joint_bird"] == pytest.approx(100 * float(joint[r.arrays["object"]].sum() / joint.sum()))
        assert len(r.table("infills")) == len(INFILLS)

    def test_without_segmentations_the_box(self, tmp_path, cub_weights):
        ctx = _cub_context(tmp_path, cub_weights, with_segmentations=False)
        r = one_bird.run(CUB_TINY.replace(image=1), ctx, progress=False, cache=False)
        assert "outline" not in r.arrays and "bounding box" in r["object_note"]
        x, y, w, h = ctx.split("test")["boxes"][1].tolist()
        size = ctx.profile.image_size
        inside = torch.tensor([[x <= j + 0.5 < x + w and y <= i + 0.5 < y + h for j in range(size)]
                               for i in range(size)])  # pixel centres in the box (slow loop)
        assert torch.equal(r.arrays["object"], inside)
        assert r["area_bird"] == pytest.approx(100 * inside.float().mean().item())
