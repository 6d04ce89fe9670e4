"""The fidobook command: arguments checked before anything is written; masks written per batch as
verified records, damaged batches recomputed, a resume never mixes environments or stores NaN."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fidobook import _io, cli, workflow
from fidobook.data import birds


class Tiny(nn.Module):
    in_channels = 3

    def __init__(self, k):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class Poisoned(Tiny):
    """Logits with ``value`` in them: on every call, or only on masked inputs (after the first)."""

    def __init__(self, k, value, always):
        super().__init__(k)
        self.value, self.always, self.calls = value, always, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out + self.value if self.always or self.calls > 1 else out


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    root = birds.generate(tmp_path / "birds", n_classes=3, train_per_class=1, test_per_class=3, size=32,
                          progress=False)
    calls = {"fits": 0}
    monkeypatch.setattr(workflow, "prepare_data", lambda profile, cache_dir=None, **kw: root)
    monkeypatch.setattr(workflow, "prepare_classifier", lambda profile, cache_dir=None, **kw: (Tiny(3), {}))
    from fidobook import fido

    original = fido.FIDO.fit

    def counting_fit(self, *a, **kw):
        calls["fits"] += 1
        return original(self, *a, **kw)

    monkeypatch.setattr(fido.FIDO, "fit", counting_fit)
    return tmp_path, calls


@pytest.fixture
def nothing_runs(monkeypatch):
    """For argument tests: any data, training or fit means a bad argument got through."""
    def forbidden(*a, **kw):
        raise AssertionError("a bad argument reached the computation")

    from fidobook import fido

    monkeypatch.setattr(workflow, "prepare_data", forbidden)
    monkeypatch.setattr(workflow, "prepare_classifier", forbidden)
    monkeypatch.setattr(fido.FIDO, "fit", forbidden)


def run_masks(out, *extra):
    return cli.main(["masks", "--profile", "smoke", "--out", str(out), "--batch", "4", "--iterations", "3",
                     "--samples", "2", "--mask-size", "8", "--device", "cpu", *extra])


def assert_usage_error(capsys, argv, message):
    """``fidobook argv`` exits with status 2 and ``argument ...: message`` on stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    return err


def batch_files(out):
    return sorted(out.glob("batch-*.pt"))


class TestArguments:
    @pytest.mark.parametrize("flag", ["--batch", "--limit", "--iterations", "--samples", "--mask-size",
                                      "--max-batch", "--workers", "--threads"])
    @pytest.mark.parametrize("value", ["0", "-1", "2.5", "many"])
    def test_counts_must_be_positive_ints(self, tmp_path, capsys, nothing_runs, flag, value):
        command = {"--workers": "data", "--threads": "train"}.get(flag, "masks")
        argv = [command, "--profile", "smoke", flag, value]
        if command == "masks":
            argv += ["--out", str(tmp_path / "masks"), "--device", "cpu"]
        assert_usage_error(capsys, argv, f"argument {flag}: expected an int >= 1, got ")
        assert list(tmp_path.iterdir()) == []  # nothing written

    @pytest.mark.parametrize("value", ["0", "-0.5", "nan", "inf", "-inf", "hot"])
    def test_temperature_must_be_positive_finite(self, tmp_path, capsys, nothing_runs, value):
        assert_usage_error(capsys, ["masks", "--out", str(tmp_path / "m"), "--device", "cpu",
                                    f"--temperature={value}"],  # "=": "-inf" would read as an option
                           "argument --temperature: expected a finite number > 0")
        assert not (tmp_path / "m").exists()

    @pytest.mark.parametrize("value", ["-1", str(2**63), str(2**64), "1.5", "x"])
    def test_seed_must_be_below_2_63(self, tmp_path, capsys, nothing_runs, value):
        assert_usage_error(capsys, ["masks", "--out", str(tmp_path / "m"), "--device", "cpu", "--seed", value],
                           "argument --seed: expected an int in [0, 2**63)")
        assert not (tmp_path / "m").exists()

    @pytest.mark.parametrize("device, cuda, count, mps, message", [
        ("cuda", False, 0, False, ("argument --device: cuda is not available on this machine "
                                   "(torch.cuda.is_available() is False)")),
        ("cuda:1", True, 1, False, ("argument --device: cuda:1 is not available on this machine "
                                    "(torch.cuda.device_count() is 1)")),
        ("mps", False, 0, False, ("argument --device: mps is not available on this machine "
                                  "(torch.backends.mps.is_available() is False)")),
        ("tpu", True, 1, True, "argument --device: expected cpu, cuda, cuda:N or mps, got 'tpu'"),
        ("meta", True, 1, True, "argument --device: expected cpu, cuda, cuda:N or mps, got 'meta'"),
    ])
    def test_device_must_be_available(self, tmp_path, capsys, monkeypatch, nothing_runs, device, cuda,
                                      count, mps, message):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        for command in (["masks", "--out", str(tmp_path / "m")], ["train"]):
            assert_usage_error(capsys, [*command, "--device", device], message)
        assert not (tmp_path / "m").exists()
        # the same machine state accepts the devices it has
        assert cli._device("cpu") == "cpu"
        if cuda:
            assert cli._device("cuda") == "cuda" and cli._device(f"cuda:{count - 1}") == f"cuda:{count - 1}"

    def test_torchrun_local_rank_must_name_an_available_gpu(self, tmp_path, capsys, monkeypatch, nothing_runs):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
            monkeypatch.setenv(name, value)
        assert_usage_error(capsys, ["masks", "--out", str(tmp_path / "m"), "--device", "cuda"],
                           "argument --device: cuda:1 is not available on this machine "
                           "(torch.cuda.device_count() is 1) (from LOCAL_RANK under torchrun)")
        assert not (tmp_path / "m").exists()

    @pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
    @pytest.mark.parametrize("where, message", [
        ("file", "the existing file"),
        ("file/sub", "which cannot be created: "),
        ("", "expected a folder, got ''"),
    ])
    def test_folders_must_be_folders(self, tmp_path, capsys, nothing_runs, flag, where, message):
        (tmp_path / "file").write_text("not a folder")
        path = str(tmp_path / where) if where else ""
        argv = ["masks", "--device", "cpu", "--out", str(tmp_path / "m"), flag, path]
        err = assert_usage_error(capsys, argv, f"argument {flag}: expected a folder, got ")
        assert message in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

    @pytest.mark.parametrize("flag, value", [("--profile", "laptop"), ("--infill", "sharpen"),
                                             ("--sampler", "mc"), ("--split", "val")])
    def test_names_must_be_known(self, tmp_path, capsys, nothing_runs, flag, value):
        assert_usage_error(capsys, ["masks", "--device", "cpu", "--out", str(tmp_path / "m"), flag, value],
                           f"argument {flag}: invalid choice: '{value}'")

    def test_valid_arguments_parse_to_values(self, tmp_path):
        args = cli.build_parser().parse_args(
            ["masks", "--out", str(tmp_path / "a" / "b"), "--device", "cpu", "--batch", "3", "--seed",
             str(2**63 - 1), "--temperature", "0.5", "--profile", "cpu", "--cache-dir", str(tmp_path)])
        assert (args.batch, args.seed, args.temperature, args.profile) == (3, 2**63 - 1, 0.5, "cpu")
        assert args.out == tmp_path / "a" / "b" and not args.out.exists()  # created later, not here
        assert args.limit is None and args.iterations is None and args.mask_size is None

    @pytest.mark.parametrize("flag, value, message", [
        ("--seed", str(2**63 - 1), "argument --seed: expected seed * 1000000 + image id below 2**63"),
        ("--mask-size", "33", "argument --mask-size: expected at most the image size 32, got 33"),
    ])
    def test_checks_against_the_data_before_writing(self, tiny_world, capsys, flag, value, message):
        tmp, calls = tiny_world
        out = tmp / "masks"
        with pytest.raises(SystemExit) as exc:
            run_masks(out, flag, value)
        assert exc.value.code == 2 and message in capsys.readouterr().err
        assert calls["fits"] == 0 and not (out / "manifest.json").exists()


class TestMasks:
    def test_masks_resume_without_duplicates(self, tiny_world, capsys):
        tmp, calls = tiny_world
        out = tmp / "masks"
        assert run_masks(out) == 0
        files = batch_files(out)
        assert [f.name for f in files] == ["batch-00000.pt", "batch-00001.pt", "batch-00002.pt"]  # 9 images / 4
        assert calls["fits"] == 3
        first = _io.load_record(files[1], format=cli.MASKS_FORMAT)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["environment"] == _io.run_environment("cpu", torch.float32)
        assert not list(out.glob("*.tmp"))  # the manifest too is written atomically

        # an interrupted run: one batch missing, stray temporary files of dead writers left behind
        files[1].unlink()
        old = out / ".batch-00001.pt.abc.tmp"
        old.write_bytes(b"partial")
        os.utime(old, (time.time() - 3600,) * 2)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        mine = out / f".batch-00002.pt.{socket.gethostname()}.{dead}.x1y2.tmp"
        mine.write_bytes(b"partial")
        capsys.readouterr()
        assert run_masks(out) == 0
        assert "masks: 1 batches computed (0 of them repaired), 2 verified" in capsys.readouterr().out
        assert not old.exists() and not mine.exists()
        assert calls["fits"] == 4  # only the missing batch was recomputed
        again = _io.load_record(files[1], format=cli.MASKS_FORMAT)
        assert torch.equal(first["logits"], again["logits"])  # seeded per image id: same masks
        ids = torch.cat([_io.load_record(f, format=cli.MASKS_FORMAT)["image_ids"] for f in batch_files(out)])
        assert ids.tolist() == sorted(set(ids.tolist())) and len(ids) == 9

    def test_masks_refuse_other_settings(self, tiny_world):
        tmp, _ = tiny_world
        out = tmp / "masks"
        assert run_masks(out, "--limit", "4") == 0
        assert json.loads((out / "manifest.json").read_text())["n_images"] == 4
        with pytest.raises(SystemExit, match="holds masks of other settings"):
            run_masks(out, "--limit", "4", "--sampler", "cd")

    def test_sharding_splits_batches_between_ranks(self, tiny_world, monkeypatch):
        tmp, calls = tiny_world
        out = tmp / "masks"
        monkeypatch.setenv("WORLD_SIZE", "2")
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            assert run_masks(out) == 0
        assert calls["fits"] == 3
        assert len(batch_files(out)) == 3
        assert (out / "manifest.json").exists()

    @pytest.mark.parametrize("damage", ["truncated", "emptied", "flipped byte", "missing field",
                                        "other images", "other settings", "unverified"])
    def test_damaged_batches_are_reported_and_recomputed(self, tiny_world, capsys, damage):
        tmp, calls = tiny_world
        out = tmp / "masks"
        assert run_masks(out) == 0
        files = batch_files(out)
        good = _io.load_record(files[1], format=cli.MASKS_FORMAT)
        raw = files[1].read_bytes()
        if damage == "truncated":
            files[1].write_bytes(raw[: len(raw) // 2])
        elif damage == "emptied":
            files[1].write_bytes(b"")
        elif damage == "flipped byte":  # inside the logits' bytes: torch.load alone would not notice
            at = raw.find(good["logits"].numpy().tobytes()) + 5
            assert at > 5
            files[1].write_bytes(raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1:])
        elif damage == "missing field":
            _io.save_record({k: v for k, v in good.items() if k not in ("sdr_prob", "format")}, files[1],
                            format=cli.MASKS_FORMAT)
        elif damage == "other images":
            files[1].write_bytes(files[0].read_bytes())
        elif damage == "other settings":
            _io.save_record({**{k: v for k, v in good.items() if k != "format"},
                             "settings": {**good["settings"], "seed": 7}}, files[1], format=cli.MASKS_FORMAT)
        else:  # a plain torch.save of the right content, as the package wrote before records
            torch.save({k: v for k, v in good.items() if k not in ("format", "settings", "environment")},
                       files[1])
        capsys.readouterr()
        assert run_masks(out) == 0
        captured = capsys.readouterr()
        assert "masks: 1 batches computed (1 of them repaired), 2 verified" in captured.out
        assert f"damaged batch {str(files[1])!r}" in captured.err
        reason = {"flipped byte": "digest mismatch", "missing field": "missing fields ['sdr_prob']",
                  "other images": "holds images", "other settings": "other settings",
                  "unverified": "expected format"}.get(damage, "unreadable")
        assert reason in captured.err, captured.err
        assert calls["fits"] == 4  # just that batch
        repaired = _io.load_record(files[1], format=cli.MASKS_FORMAT, fields=cli._BATCH_FIELDS)
        assert torch.equal(repaired["logits"], good["logits"])
        assert torch.equal(repaired["image_ids"], good["image_ids"])

    @pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
    def test_unreadable_manifest_is_an_error_naming_it(self, tiny_world, text):
        tmp, calls = tiny_world
        out = tmp / "masks"
        out.mkdir()
        (out / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(SystemExit) as exc:
            run_masks(out)
        assert str(out / "manifest.json") in str(exc.value.code)
        assert "not a" in str(exc.value.code) and calls["fits"] == 0 and not batch_files(out)

    @pytest.mark.parametrize("field", ["device", "dtype", "threads", "torch", "fidobook"])
    def test_resume_under_another_environment_is_refused(self, tiny_world, capsys, field):
        tmp, calls = tiny_world
        out = tmp / "masks"
        assert run_masks(out) == 0
        path = out / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["environment"][field] = "elsewhere"
        path.write_text(json.dumps(manifest))
        capsys.readouterr()
        assert run_masks(out) == 0  # every batch there: verifying them is fine
        assert "0 batches computed (0 of them repaired), 3 verified" in capsys.readouterr().out
        batch_files(out)[1].unlink()
        with pytest.raises(SystemExit) as exc:
            run_masks(out)
        message = str(exc.value.code)
        assert str(path) in message and f"{field} 'elsewhere' vs" in message and "1 batches remain" in message
        assert calls["fits"] == 3 and len(batch_files(out)) == 2

    @pytest.mark.parametrize("poison", ["nan always", "nan on masked inputs", "inf always", "nan result"])
    def test_non_finite_results_are_never_stored(self, tiny_world, monkeypatch, poison):
        tmp, _ = tiny_world
        out = tmp / "masks"
        if poison == "nan result":  # whatever the fit lets through, the CLI checks before saving
            from fidobook import fido

            fit = fido.FIDO.fit

            def nan_fit(self, *a, **kw):
                res = fit(self, *a, **kw)
                res.history["sdr_prob"][-1, 0] = float("nan")
                return res

            monkeypatch.setattr(fido.FIDO, "fit", nan_fit)
        else:
            value = float("inf") if poison.startswith("inf") else float("nan")
            monkeypatch.setattr(workflow, "prepare_classifier", lambda profile, cache_dir=None, **kw: (
                Poisoned(3, value, always=poison.endswith("always")), {}))
        with pytest.raises((FloatingPointError, ValueError, RuntimeError)) as exc:
            run_masks(out)
        said = str(exc.value) + " ".join(getattr(exc.value, "__notes__", []))
        assert "batch 0" in said, said
        assert not batch_files(out) and not list(out.glob(".*.tmp"))
