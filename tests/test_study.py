import dataclasses

import pytest
import torch
from torch import nn

from fidobook import FIDO, FIDOConfig
from fidobook.study import bootstrap_ci, fit_cached, model_digest


class TinyNet(nn.Module):
    """A linear classifier with a buffer (buffers take part in the digest); counts its forwards."""

    in_channels = 3

    def __init__(self, seed=0, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 12 * 12, k)
        self.register_buffer("running_mean", torch.zeros(3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.forwards = 0
        self.register_forward_hook(self._count)

    @staticmethod
    def _count(module, inputs, output):
        module.forwards += 1

    def forward(self, x):
        return self.fc((x - self.running_mean[:, None, None]).flatten(1))


CFG = FIDOConfig(iterations=4, samples=2, mask_size=4)


def images(n=5):
    return torch.rand((n, 3, 12, 12), generator=torch.Generator().manual_seed(1))


def same(a, b, exact=True):
    """Equal results; ``exact=False`` allows the float rounding of a different batch size."""
    eq = torch.equal if exact else (lambda u, v: torch.allclose(u, v, rtol=1e-5, atol=1e-6))
    for f in ("ssr", "sdr", "joint", "logits", "targets"):
        assert eq(getattr(a, f), getattr(b, f)), f
    assert a.history.keys() == b.history.keys()
    for k in a.history:
        assert eq(a.history[k], b.history[k]), k
    assert a.snapshots.keys() == b.snapshots.keys()
    for k in a.snapshots:
        assert eq(a.snapshots[k], b.snapshots[k]), k
    assert a.model_evaluations == b.model_evaluations


class TestModelDigest:
    def test_equal_weights_equal_digest_any_change_differs(self):
        a, b = TinyNet(0), TinyNet(0)
        assert model_digest(a) == model_digest(b)
        assert len(model_digest(a)) == 64
        with torch.no_grad():
            b.fc.bias[0] += 1e-3
        assert model_digest(a) != model_digest(b)
        c = TinyNet(0)
        c.running_mean[0] = 0.5  # a buffer
        assert model_digest(a) != model_digest(c)

    def test_rejects_non_modules(self):
        with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
            model_digest(lambda x: x)


class TestFitCached:
    def test_equals_a_plain_fit_and_a_hit_calls_no_model(self, tmp_path):
        model, x = TinyNet(), images()
        seeds = [10, 11, 12, 13, 14]
        first = fit_cached(model, x, [0, 1, 2, 0, 1], CFG, seeds=seeds, cache_dir=tmp_path,
                           snapshots=(2,))
        plain = FIDO(model, CFG).fit(x, [0, 1, 2, 0, 1], seeds=seeds, snapshots=(2,))
        same(first, plain)
        assert first.seconds > 0
        files = list((tmp_path / "fido").glob("*/*.pt"))
        assert [f.name for f in files] == ["0-5.pt"]
        model.forwards = 0
        second = fit_cached(model, x, [0, 1, 2, 0, 1], CFG, seeds=seeds, cache_dir=tmp_path,
                            snapshots=(2,))
        assert model.forwards == 0
        same(first, second)
        assert second.seconds == first.seconds  # the stored cost, not the loading time

    def test_chunked_equals_unchunked(self, tmp_path):
        model, x = TinyNet(), images()
        targets = torch.tensor([2, 1, 0, 0, 1])
        whole = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3])
        parts = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3],
                           chunk=2)
        same(whole, parts, exact=False)  # per-image seeds: only the batch size's rounding differs
        names = sorted(f.name for f in (tmp_path / "fido").glob("*/*.pt"))
        assert names == ["0-2.pt", "0-5.pt", "2-4.pt", "4-5.pt"]  # one key, two chunkings
        assert parts.history["loss"].shape == (4, 5)
        assert parts.model_evaluations == 4 * 2 * 5 * 2

    def test_interrupted_run_recomputes_only_the_missing_chunk(self, tmp_path):
        model, x = TinyNet(), images()
        full = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        (folder,) = (tmp_path / "fido").iterdir()
        (folder / "2-4.pt").unlink()
        stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
        model.forwards = 0
        again = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        # one chunk of 2 images: a clean forward, then one forward per iteration
        assert model.forwards == 1 + CFG.iterations
        same(full, again)
        assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt") if p.name != "2-4.pt"} == stamps
        assert not list(folder.glob(".*tmp"))  # no temporary files left behind

    def test_damaged_file_is_refitted_with_a_warning(self, tmp_path):
        model, x = TinyNet(), images(2)
        first = fit_cached(model, x, 0, CFG, seeds=[0, 1], cache_dir=tmp_path)
        (path,) = (tmp_path / "fido").glob("*/*.pt")
        path.write_bytes(b"not a torch file")
        with pytest.warns(UserWarning, match="unreadable"):
            again = fit_cached(model, x, 0, CFG, seeds=[0, 1], cache_dir=tmp_path)
        same(first, again)

    def test_everything_the_masks_depend_on_changes_the_key(self, tmp_path):
        model, x = TinyNet(), images(2)

        def key(**kw):
            args = dict(model=model, images=x, targets=[0, 1], config=CFG, seeds=[0, 1],
                        snapshots=())
            args.update(kw)
            before = set((tmp_path / "fido").glob("*")) if (tmp_path / "fido").exists() else set()
            fit_cached(args.pop("model"), args.pop("images"), args.pop("targets"), args.pop("config"),
                       cache_dir=tmp_path, **args)
            after = set((tmp_path / "fido").glob("*"))
            return after - before

        assert len(key()) == 1
        assert key() == set()  # the same call: the same folder
        for change in (dict(config=dataclasses.replace(CFG, samples=3)),
                       dict(config=dataclasses.replace(CFG, sampler="cd")),
                       dict(targets=[1, 1]), dict(seeds=[0, 2]), dict(snapshots=(1,)),
                       dict(images=x.flip(-1)), dict(model=TinyNet(1))):
            assert len(key(**change)) == 1, change
        # temperature None is the sampler's default: the same fit, the same key
        assert key(config=dataclasses.replace(CFG, temperature=1.0)) == set()

    def test_default_cache_dir_from_environment(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FIDOBOOK_CACHE", str(tmp_path / "env"))
        fit_cached(TinyNet(), images(1), 0, CFG, seeds=[0])
        assert len(list((tmp_path / "env" / "fido").glob("*/0-1.pt"))) == 1

    def test_progress_bar_runs(self, tmp_path):
        res = fit_cached(TinyNet(), images(3), 0, CFG, seeds=[0, 1, 2], cache_dir=tmp_path, chunk=2,
                         progress=True)
        assert res.ssr.shape == (3, 12, 12)


class TestBadInput:
    def call(self, tmp_path, **kw):
        args = dict(model=TinyNet(), images=images(2), targets=0, config=CFG, seeds=[0, 1])
        args.update(kw)
        return fit_cached(args.pop("model"), args.pop("images"), args.pop("targets"), args.pop("config"),
                          cache_dir=tmp_path, **args)

    def test_errors_name_the_argument(self, tmp_path):
        cases = [
            (dict(model=lambda x: x), TypeError, "model: expected a torch.nn.Module"),
            (dict(config={"iterations": 3}), TypeError, "config: expected a FIDOConfig"),
            (dict(images=images(2) * 300), ValueError, r"images: expected values in \[0, 1\]"),
            (dict(images=torch.rand(2, 1, 12, 12)), ValueError, "images: expected 3 channels"),
            (dict(targets=None), TypeError, "targets: expected"),
            (dict(targets=[0, 1, 2]), ValueError, r"targets: expected 2 values"),
            (dict(seeds=None), TypeError, "seeds: expected one int per image"),
            (dict(seeds=[0]), ValueError, "seeds: expected 2 values"),
            (dict(seeds=[0.5, 1.0]), TypeError, "seeds: expected a sequence of ints"),
            (dict(snapshots=[5]), ValueError, r"snapshots: expected iterations in \[1, 4\]"),
            (dict(chunk=0), ValueError, "chunk: expected an int >= 1"),
            (dict(chunk=1.5), TypeError, "chunk"),
            (dict(progress="yes"), TypeError, "progress"),
        ]
        for kw, error, match in cases:
            with pytest.raises(error, match=match):
                self.call(tmp_path, **kw)
        assert not (tmp_path / "fido").exists()  # nothing fitted, nothing written

    def test_out_of_range_target_fails_before_writing(self, tmp_path):
        with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 2\]"):
            self.call(tmp_path, targets=[0, 5])
        assert not list(tmp_path.glob("fido/*/*.pt"))


class TestBootstrapCi:
    def test_constant_values_collapse_and_nans_are_dropped(self):
        assert bootstrap_ci(torch.tensor([2.0, 2.0, float("nan"), 2.0])) == (2.0, 2.0, 2.0)
        assert all(v != v for v in bootstrap_ci([float("nan")]))

    def test_two_point_sample(self):
        # values 0 and 1: resample means are k/2 with k ~ Binomial(2, 1/2); the 95 % interval is [0, 1]
        mean, low, high = bootstrap_ci([0.0, 1.0], generator=torch.Generator().manual_seed(0))
        assert (mean, low, high) == (0.5, 0.0, 1.0)

    def test_interval_matches_the_normal_approximation(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, generator=g, dtype=torch.float64)
        mean, low, high = bootstrap_ci(x, generator=torch.Generator().manual_seed(1), resamples=4000)
        half = 1.96 * float(x.std()) / 400 ** 0.5
        assert low < mean < high
        assert abs((high - low) / 2 - half) < 0.1 * half

    def test_deterministic_and_checked(self):
        x = torch.rand(30, generator=torch.Generator().manual_seed(0))
        a = bootstrap_ci(x, generator=torch.Generator().manual_seed(3))
        assert a == bootstrap_ci(x, generator=torch.Generator().manual_seed(3))
        with pytest.raises(ValueError, match="level"):
            bootstrap_ci(x, level=1.0)
        with pytest.raises(ValueError, match="resamples"):
            bootstrap_ci(x, resamples=0)
