"""Tests of fidobook.experiments.concrete, chapter 1's experiment (no data, no classifier)."""
from __future__ import annotations

import math

import pytest
import torch

from fidobook.experiments import Context, Result, concrete, result_key, run
from fidobook.experiments.specs import ConcreteSpec, OneBirdSpec
from fidobook.relaxation import pathwise_gradient_moments

TINY = ConcreteSpec(mc=4000, replicates=40, hist=4000)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return Context.create("smoke", device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def result(context):
    return concrete.run(TINY, context, progress=False, cache=False)


class TestConcrete:
    def test_fields(self, result):
        assert result.name == "concrete" and result.spec["mc"] == TINY.mc
        for name in ("hist_n", "rounding_gap", "mc_n", "cv_worst", "slope_01", "slope_1",
                     "equiv_0", "equiv_2", "equiv_5", "cd_zero_theta", "naive_zero_theta",
                     "scd_max_rel_err", "cd_bad_lo", "cd_bad_hi", "cd_bad_max", "cd_large_err",
                     *(f"cv_t{t}_{th}" for t in ("01", "1") for th in (0, 2, 5))):
            assert isinstance(result[name], float | int), name
        assert len(result.table("above_half")) == 12
        assert len(result.table("cv")) == 12
        assert len(result.table("variance")) == 2 * len(concrete.SAMPLE_SIZES)
        assert list(result.table("freeze")["method"]) == list(concrete.FREEZE_METHODS)
        t = len(concrete.EXPLORER_TEMPERATURES)
        shapes = {k: tuple(v.shape) for k, v in result.arrays.items()}
        assert shapes == {"explorer_t": (t,), "explorer_density": (t, 50), "explorer_above": (t,),
                          "cv_curve_t": (41,), "cv_curve": (3, 41), "freeze_theta": (8001,),
                          "freeze_grads": (3, 8001), "freeze_truth": (8001,)}
        assert result.arrays["freeze_grads"].dtype == torch.float32

    def test_known_answers(self, result):
        # θ = 0, t = 1: z is uniform, g = u(1 − u), CV = sqrt(1/5)
        assert result["cv_t1_0"] == pytest.approx(math.sqrt(0.2), abs=1e-9)
        cv = result.table("cv").set_index(["t", "θ"])["CV, quadrature"]
        assert cv[(0.3, 2.0)] == pytest.approx(pathwise_gradient_moments(2.0, 0.3).cv, rel=1e-12)
        assert result["equiv_2"] == pytest.approx((cv[(0.1, 2.0)] / cv[(1.0, 2.0)]) ** 2)
        # float32: CD freezes once σ(−θ) rounds to 1, the naive SCD once σ(θ) does; fidobook never
        assert -18 < result["cd_zero_theta"] < -15 and 15 < result["naive_zero_theta"] < 18
        assert result["scd_zero_points"] == 0 and result["scd_max_rel_err"] < 1e-5

    def test_monte_carlo_agrees_with_the_truth(self, result):
        table = result.table("above_half")
        gap = (table["P(z > 1/2), measured"] - table["σ(θ)"]).abs().max()
        assert gap == pytest.approx(result["rounding_gap"]) and gap < 5 / math.sqrt(TINY.hist)
        density = result.arrays["explorer_density"]
        torch.testing.assert_close(density.sum(1) / 50, torch.ones(len(density), dtype=density.dtype))
        var = result.table("variance")
        exact = {t: pathwise_gradient_moments(0.0, t).variance for t in (0.1, 1.0)}
        torch.testing.assert_close(torch.tensor(var["Var[g]/S"].tolist()),
                                   torch.tensor([exact[t] / s for t, s in zip(var["t"], var["S"])]))
        assert -1.5 < result["slope_1"] < -0.5
        cd = result.table("cv")["CV, Monte Carlo CD"]
        assert cd.notna().sum() == 3  # measured at t = 0.1 only

    def test_seed(self, context, result):
        again = concrete.run(TINY, context, progress=False, cache=False)
        assert again.scalars == result.scalars
        other = concrete.run(TINY.replace(seed=1), context, progress=False, cache=False)
        assert other["rounding_gap"] != result["rounding_gap"]
        assert other["cv_t1_0"] == result["cv_t1_0"]  # quadrature: no draws

    def test_cache_and_round_trip(self, context, result, tmp_path):
        first = run("concrete", context, TINY, progress=False)
        path = context.cache_dir / "experiments" / "concrete" / f"{first.key}.pt"
        assert path.is_file() and path.with_suffix(".json").is_file()
        second = run("concrete", context, TINY, progress=False)
        assert second.key == first.key and second.scalars == first.scalars
        saved = Result.load(result.save(tmp_path / "r.pt"))
        assert saved.scalars == result.scalars and saved.tables == result.tables
        for k, v in result.arrays.items():
            assert torch.equal(saved.arrays[k], v), k

    def test_uses_no_data(self, context, tmp_path):
        # An empty "data set": nothing of it is read, and the key does not depend on it.
        (tmp_path / "images.txt").write_text("")
        other = Context.create("smoke", device="cpu", cache_dir=context.cache_dir, data_dir=tmp_path)
        assert result_key("concrete", TINY, other, concrete.USES) == \
            result_key("concrete", TINY, context, concrete.USES)
        small = concrete.run(ConcreteSpec(mc=100, replicates=2, hist=100), other, progress=False,
                             cache=False)
        assert small.context["source"].startswith("none")

    def test_bad_spec(self, context):
        with pytest.raises(TypeError, match="spec: expected a concrete spec"):
            concrete.run(OneBirdSpec(), context)
        with pytest.raises(ValueError, match="ConcreteSpec.mc"):
            ConcreteSpec(mc=0)
        with pytest.raises(ValueError, match="ConcreteSpec.replicates: expected an int >= 2"):
            concrete.run(TINY.replace(replicates=1), context, cache=False)
        with pytest.raises(ValueError, match="ConcreteSpec: expected fields"):
            TINY.replace(samples=3)
