"""The experiments' shared pieces: Result files, the result cache, the registry and run()."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from fidobook import _io
from fidobook.experiments import EXPERIMENTS, SPECS, Result, cached, get, result_key
from fidobook.experiments._base import FORMAT, new_result
from fidobook.experiments.specs import CDvsSCDSpec, ConcreteSpec
from fidobook.profiles import PROFILES


class FakeContext:
    """What cached() needs of a context: a cache folder, fingerprints, a description."""

    def __init__(self, cache_dir: Path, data: str = "d1"):
        self.cache_dir = cache_dir
        self.data = data

    def fingerprint(self, uses=("data", "classifier")):
        return {"data": self.data, "classifier": "m1"} if uses else {}

    def describe(self):
        return {"profile": "test", "source": "birds"}


def compute_counter(calls):
    def compute(spec, context, progress):
        calls.append(spec)
        return new_result("concrete", spec, context, scalars={"x": 1.5, "word": "better"},
                          tables={"t": {"a": [1, 2], "b": ["u", "v"]}},
                          arrays={"m": torch.arange(6.0).view(2, 3)})
    return compute


class TestResult:
    def test_round_trip(self, tmp_path):
        r = new_result("concrete", ConcreteSpec(), FakeContext(tmp_path),
                       scalars={"n": 3, "p": torch.tensor(0.25), "none": None},
                       tables={"t": {"a": [1.0, float("nan")]}}, arrays={"m": torch.ones(2, 2)})
        path = r.save(tmp_path / "r.pt")
        back = Result.load(path)
        assert back.scalars == {"n": 3, "p": 0.25, "none": None}
        assert torch.equal(back.arrays["m"], torch.ones(2, 2))
        assert back.table("t")["a"].isna().tolist() == [False, True]
        summary = json.loads(path.with_suffix(".json").read_text())
        assert summary["format"] == FORMAT and summary["arrays"] == {"m": [2, 2]}
        assert back["n"] == 3 and back.numbers() == {"n": 3, "p": 0.25}

    def test_bad_content_is_refused(self, tmp_path):
        ctx = FakeContext(tmp_path)
        with pytest.raises(ValueError, match="equal length"):
            new_result("concrete", ConcreteSpec(), ctx, tables={"t": {"a": [1], "b": [1, 2]}})
        with pytest.raises(TypeError, match="scalar"):
            new_result("concrete", ConcreteSpec(), ctx, scalars={"v": torch.ones(3)})
        with pytest.raises(TypeError, match="Tensor"):
            new_result("concrete", ConcreteSpec(), ctx, arrays={"v": [1, 2]})
        with pytest.raises(KeyError, match="expected one of"):
            new_result("concrete", ConcreteSpec(), ctx).table("nope")


class TestResultCache:
    def test_second_call_loads(self, tmp_path):
        calls, ctx = [], FakeContext(tmp_path)
        a = cached("concrete", ConcreteSpec(mc=10), ctx, compute_counter(calls), progress=False)
        b = cached("concrete", ConcreteSpec(mc=10), ctx, compute_counter(calls), progress=False)
        assert len(calls) == 1 and a.key == b.key and b.scalars == a.scalars
        assert (tmp_path / "experiments" / "concrete" / f"{a.key}.pt").is_file()

    def test_key_follows_spec_data_and_uses(self, tmp_path):
        ctx = FakeContext(tmp_path)
        k = result_key("concrete", ConcreteSpec(mc=10), ctx)
        assert k != result_key("concrete", ConcreteSpec(mc=11), ctx)
        assert k != result_key("concrete", ConcreteSpec(mc=10), FakeContext(tmp_path, data="d2"))
        assert k != result_key("concrete", ConcreteSpec(mc=10), ctx, uses=())
        assert k == result_key("concrete", ConcreteSpec(mc=10), FakeContext(tmp_path / "elsewhere"))

    def test_damaged_result_is_recomputed(self, tmp_path):
        calls, ctx = [], FakeContext(tmp_path)
        a = cached("concrete", ConcreteSpec(), ctx, compute_counter(calls), progress=False)
        path = tmp_path / "experiments" / "concrete" / f"{a.key}.pt"
        data = bytearray(path.read_bytes())
        at = data.find(torch.tensor([5.0]).numpy().tobytes())  # inside the stored array "m"
        assert at > 0
        data[at + 3] ^= 0x01  # 5.0 becomes another float: torch.load alone would not notice
        path.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="recomputing a damaged result"):
            b = cached("concrete", ConcreteSpec(), ctx, compute_counter(calls), progress=False)
        assert len(calls) == 2 and b.scalars == a.scalars
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cached("concrete", ConcreteSpec(), ctx, compute_counter(calls), progress=False)
        assert len(calls) == 2
        _io.load_record(path, format=FORMAT)  # intact again

    def test_no_cache_computes_and_stores_nothing(self, tmp_path):
        calls, ctx = [], FakeContext(tmp_path)
        cached("concrete", ConcreteSpec(), ctx, compute_counter(calls), progress=False, cache=False)
        cached("concrete", ConcreteSpec(), ctx, compute_counter(calls), progress=False, cache=False)
        assert len(calls) == 2 and not (tmp_path / "experiments").exists()

    def test_compute_must_return_a_result(self, tmp_path):
        with pytest.raises(TypeError, match="expected a Result"):
            cached("concrete", ConcreteSpec(), FakeContext(tmp_path), lambda s, c, p: {}, progress=False)


class TestSpecsAndRegistry:
    def test_every_profile_holds_every_spec(self):
        for profile in PROFILES.values():
            for name, cls in SPECS.items():
                assert isinstance(getattr(profile, name), cls)
        assert EXPERIMENTS == tuple(SPECS)

    def test_spec_checks(self):
        with pytest.raises(ValueError, match="CDvsSCDSpec.n_images"):
            CDvsSCDSpec(n_images=0)
        with pytest.raises(ValueError, match="increasing"):
            CDvsSCDSpec(samples=(4, 1))
        with pytest.raises(ValueError, match="unknown"):
            CDvsSCDSpec().replace(bogus=1)
        assert CDvsSCDSpec().replace(samples=[1, 2]).samples == (1, 2)

    def test_unknown_experiment(self):
        with pytest.raises(ValueError, match="expected one of"):
            get("nope")
