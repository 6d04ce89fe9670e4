import dataclasses
import os
import socket
import subprocess

import pytest
import torch
from torch import nn

from fidobook import FIDO, FIDOConfig, _io
from fidobook import study
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


class RowNet(TinyNet):
    """TinyNet applied to one image at a time: its logits do not depend on the batch size (a
    batched matrix product may sum in another order for another number of rows)."""

    def forward(self, x):
        return torch.cat([super(RowNet, self).forward(r[None]) for r in x])


CFG = FIDOConfig(iterations=4, samples=2, mask_size=4)


def images(n=5):
    return torch.rand((n, 3, 12, 12), generator=torch.Generator().manual_seed(1))


def same(a, b, exact=True, loss_scale=None):
    """Equal results; ``exact=False`` allows the float rounding of a different batch size.

    ``loss_scale``: compare the loss history up to 16 float32 ulps of this scale, the size of
    the log-odds it sums. The loss is ``mean lo_sdr - mean lo_ssr`` (+ regularisers), nearly
    cancelling at the start (-0.08 from log-odds of ~20), so its rounding error scales with the
    log-odds, not with the loss. Measured (5 images, chunks of 2): TinyNet 7.6e-6 (2.3 ulps of
    the scale 28; the batched matrix product rounds differently for 20 and 8 rows), RowNet
    9.5e-7 (0.3 ulps; fido sums a one-image chunk's loss terms in another order).
    """
    eq = torch.equal if exact else (lambda u, v: torch.allclose(u, v, rtol=1e-5, atol=1e-6))
    for f in ("ssr", "sdr", "joint", "logits", "targets"):
        assert eq(getattr(a, f), getattr(b, f)), f
    assert a.history.keys() == b.history.keys()
    for k in a.history:
        if k == "loss" and loss_scale is not None:
            atol = 16 * torch.finfo(torch.float32).eps * loss_scale
            assert torch.allclose(a.history[k], b.history[k], rtol=0.0, atol=atol), k
        else:
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
        # A model whose logits do not depend on the batch size: chunking changes nothing (per-image
        # seeds, per-image losses, element-wise AdamW): masks, logits, snapshots and every history
        # entry but the loss are bit-identical; the loss of the one-image chunk differs by 1 ulp
        # (fido's sum of the loss terms reduces in another order when N == 1; see `same`).
        model, x = RowNet(), images()
        targets = torch.tensor([2, 1, 0, 0, 1])
        whole = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3])
        parts = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3],
                           chunk=2)
        with torch.no_grad():
            scale = float(model(x).abs().max())
        same(whole, parts, loss_scale=scale)
        names = sorted(f.name for f in (tmp_path / "fido").glob("*/*.pt"))
        assert names == ["0-2.pt", "0-5.pt", "2-4.pt", "4-5.pt"]  # one key, two chunkings
        assert parts.history["loss"].shape == (4, 5)
        assert parts.model_evaluations == 4 * 2 * 5 * 2

    def test_batched_model_differs_by_rounding_only(self, tmp_path):
        # With a batched matrix product the logits of 20 rows and of 8 rows differ by a few ulps
        # (measured: up to 6.7e-6 on logits up to 28); the masks and histories differ by that
        # rounding only, the loss relative to the log-odds it sums (see `same`).
        model, x = TinyNet(), images()
        targets = torch.tensor([2, 1, 0, 0, 1])
        whole = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3])
        parts = fit_cached(model, x, targets, CFG, seeds=range(5), cache_dir=tmp_path, snapshots=[1, 3],
                           chunk=2)
        with torch.no_grad():
            scale = float(model(x).abs().max())
        same(whole, parts, exact=False, loss_scale=scale)

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

    def test_old_chunks_without_digest_are_refitted(self, tmp_path):
        # A chunk as the previous format wrote it (torch.save of the record, no digest) in the
        # folder of the current key: not trusted.
        model, x = TinyNet(), images(2)
        first = fit_cached(model, x, 0, CFG, seeds=[0, 1], cache_dir=tmp_path)
        (path,) = (tmp_path / "fido").glob("*/*.pt")
        record = torch.load(path, weights_only=True)
        for k in ("digest", "format", "environment"):
            del record[k]
        torch.save(record, path)
        with pytest.warns(UserWarning, match="expected format"):
            again = fit_cached(model, x, 0, CFG, seeds=[0, 1], cache_dir=tmp_path)
        same(first, again)
        assert _io.load_record(path, format=study._FORMAT, fields=study._FIELDS)  # overwritten

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


class TestCodeInKey:
    def test_a_change_to_the_fit_code_refits(self, tmp_path, monkeypatch):
        model, x, calls = TinyNet(), images(2), []
        real_fit = FIDO.fit

        def counting_fit(self, *args, **kwargs):
            calls.append(1)
            return real_fit(self, *args, **kwargs)

        monkeypatch.setattr(FIDO, "fit", counting_fit)
        fit_cached(model, x, [0, 1], CFG, seeds=[0, 1], cache_dir=tmp_path)
        fit_cached(model, x, [0, 1], CFG, seeds=[0, 1], cache_dir=tmp_path)
        assert len(calls) == 1
        monkeypatch.setattr(study, "fit_code_digest", lambda: "another-fido.py")
        fit_cached(model, x, [0, 1], CFG, seeds=[0, 1], cache_dir=tmp_path)
        assert len(calls) == 2

    def test_digest_covers_the_fit_modules(self):
        assert {"fido.py", "samplers.py", "infill.py"} <= set(study._FIT_CODE)
        assert len(study.fit_code_digest()) == 16


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class TestDamagedChunks:
    """Every fault of a stored chunk: a warning naming the path and the reason, then that chunk
    alone is fitted again and overwritten; the result equals a fresh fit."""

    def setup(self, tmp_path, model=None):
        model = model or TinyNet()
        x = images()
        full = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        (folder,) = (tmp_path / "fido").iterdir()
        return model, x, full, folder

    def refit(self, tmp_path, model, x, full, folder, match, name="2-4.pt"):
        others = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt") if p.name != name}
        model.forwards = 0
        with pytest.warns(UserWarning, match=match) as caught:
            again = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        assert any(str(folder / name) in str(w.message) for w in caught)  # names the path
        assert model.forwards == 1 + CFG.iterations  # one chunk of two images fitted
        same(full, again)
        assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt") if p.name != name} == others
        _io.load_record(folder / name, format=study._FORMAT, fields=study._FIELDS)  # repaired

    def test_flipped_byte_in_the_logits(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        path = folder / "2-4.pt"
        logits = torch.load(path, weights_only=True)["logits"]
        raw = bytearray(path.read_bytes())
        at = raw.find(logits.numpy().tobytes())  # tensors are stored uncompressed
        assert at > 0
        raw[at + 6] ^= 0x10
        path.write_bytes(bytes(raw))
        # torch itself loads the altered file without complaint: only the digest tells
        assert not torch.equal(torch.load(path, weights_only=True)["logits"], logits)
        self.refit(tmp_path, model, x, full, folder, "digest mismatch")

    def test_truncated_file(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        path = folder / "2-4.pt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        self.refit(tmp_path, model, x, full, folder, "unreadable")

    def test_empty_file(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        (folder / "4-5.pt").write_bytes(b"")
        self.refit(tmp_path, model, x, full, folder, "unreadable", name="4-5.pt")

    def test_missing_field_with_a_valid_digest(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        path = folder / "2-4.pt"
        record = _io.load_record(path, format=study._FORMAT)
        del record["history"], record["format"]
        _io.save_record(record, path, format=study._FORMAT)  # intact, but incomplete
        self.refit(tmp_path, model, x, full, folder, r"missing fields \['history'\]")

    def test_record_of_another_fit(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        fit_cached(model, x, 0, CFG, seeds=range(1, 6), cache_dir=tmp_path, chunk=2)
        (other,) = [f for f in (tmp_path / "fido").iterdir() if f != folder]
        (folder / "2-4.pt").write_bytes((other / "2-4.pt").read_bytes())  # intact, wrong fit
        self.refit(tmp_path, model, x, full, folder, "another fit")

    def test_temporary_files_of_a_killed_writer_are_removed(self, tmp_path):
        model, x, full, folder = self.setup(tmp_path)
        host = socket.gethostname()
        dead = folder / f".2-4.pt.{host}.{dead_pid()}.abc123.tmp"
        alive = folder / f".4-5.pt.{host}.{os.getpid()}.def456.tmp"  # a writer still running
        dead.write_bytes(b"half a chunk")
        alive.write_bytes(b"half a chunk")
        again = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        same(full, again)
        assert not dead.exists() and alive.exists()


class TestEnvironment:
    """Chunks record where they were computed; a resume never mixes arithmetic."""

    def test_each_chunk_records_its_environment(self, tmp_path):
        fit_cached(TinyNet(), images(2), 0, CFG, seeds=[0, 1], cache_dir=tmp_path)
        (path,) = (tmp_path / "fido").glob("*/*.pt")
        record = _io.load_record(path, format=study._FORMAT, fields=study._FIELDS)
        assert record["environment"] == _io.run_environment("cpu", torch.float32)

    def test_resume_under_another_thread_count_refuses(self, tmp_path, monkeypatch):
        model, x = TinyNet(), images()
        full = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        (folder,) = (tmp_path / "fido").iterdir()
        (folder / "2-4.pt").unlink()
        threads = torch.get_num_threads()
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 3)
        model.forwards = 0
        with pytest.raises(ValueError, match=rf"1 of 3 chunks to fit in '{folder}'.*threads "
                                             rf"{threads} vs {threads + 3} now"):
            fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        assert model.forwards == 0 and not (folder / "2-4.pt").exists()  # nothing fitted
        monkeypatch.undo()  # back in the recorded environment: the resume goes on
        same(full, fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2))

    def test_a_damaged_chunk_under_another_environment_refuses(self, tmp_path, monkeypatch):
        model, x = TinyNet(), images()
        fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        (folder,) = (tmp_path / "fido").iterdir()
        (folder / "0-2.pt").write_bytes(b"")
        real = _io.run_environment
        monkeypatch.setattr(_io, "run_environment",
                            lambda device, dtype: {**real(device, dtype), "torch": "0.0.1"})
        with pytest.warns(UserWarning, match="unreadable"), \
                pytest.raises(ValueError, match=r"torch '[^']*' vs '0.0.1' now"):
            fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)

    def test_a_complete_hit_from_another_environment_is_fine(self, tmp_path, monkeypatch):
        model, x = TinyNet(), images()
        full = fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
        model.forwards = 0
        same(full, fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2))
        assert model.forwards == 0

    def test_stored_chunks_of_mixed_environments_refuse(self, tmp_path):
        model, x = TinyNet(), images()
        fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)
        (folder,) = (tmp_path / "fido").iterdir()
        record = _io.load_record(folder / "4-5.pt", format=study._FORMAT)
        del record["format"]
        record["environment"] = {**record["environment"], "device": "cuda:Some GPU"}
        _io.save_record(record, folder / "4-5.pt", format=study._FORMAT)
        with pytest.raises(ValueError, match=r"different environments \(device \[\"'cpu'\", "
                                             r"\"'cuda:Some GPU'\"\]\)"):
            fit_cached(model, x, 0, CFG, seeds=range(5), cache_dir=tmp_path, chunk=2)


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
            (dict(images=images(2).double()), TypeError, "images: expected dtype torch.float32"),
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


    def test_images_that_require_grad_are_detached(self, tmp_path):
        x = images(2)
        plain = self.call(tmp_path / "a", images=x)
        same(plain, self.call(tmp_path / "b", images=x.clone().requires_grad_(True)))


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
