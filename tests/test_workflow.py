"""Tests of fidobook.workflow: reuse of the cached data set and checkpoints is verified.

(``prepare_hard_set`` is tested in tests/test_hard.py.)
"""
from __future__ import annotations

import socket
import subprocess

import pytest
import torch

from fidobook import workflow
from fidobook.models import TrainConfig
from fidobook.profiles import Profile


@pytest.fixture()
def profile():
    return Profile(name="tiny", n_classes=3, train_per_class=2, test_per_class=1, image_size=24,
                   classifier=TrainConfig(arch="small_cnn", width=8, epochs=1, image_size=24),
                   fido_iterations=1, fido_samples=1, mask_size=4)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class TestPrepareData:
    def test_truncated_image_is_reported_and_repaired(self, profile, tmp_path):
        root = workflow.prepare_data(profile, tmp_path, progress=False)
        fresh = workflow.load_split(profile, "test", tmp_path)
        rel = (root / "images.txt").read_text().splitlines()[2].split()[1]  # a test image
        path = root / "images" / rel
        path.write_bytes(path.read_bytes()[:40])
        # Before: "ready", then an OSError naming no file when the split was read. Now:
        with pytest.warns(UserWarning, match=rf"'{path}': .*truncated.*rendering image\(s\) \[3\]"):
            assert workflow.prepare_data(profile, tmp_path, progress=False) == root
        again = workflow.load_split(profile, "test", tmp_path)
        assert torch.equal(fresh["images"], again["images"])

    def test_folder_of_a_killed_run_is_removed(self, profile, tmp_path):
        root = workflow.data_dir(profile, tmp_path)
        half = root.with_name(f"{root.name}.tmp-{socket.gethostname()}-{dead_pid()}")
        (half / "images").mkdir(parents=True)
        workflow.prepare_data(profile, tmp_path, progress=False)
        assert not half.exists() and (root / "fidobook_manifest.json").is_file()


class TestCheckpointTemporaryFiles:
    def leftover(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".small_cnn-0123.pt.{socket.gethostname()}.{dead_pid()}.abcd.tmp"
        tmp.write_bytes(b"half a checkpoint")
        return tmp

    def test_swept_when_training_and_on_a_cache_hit(self, profile, tmp_path):
        models = tmp_path / "models"
        tmp = self.leftover(models)
        workflow.prepare_classifier(profile, tmp_path, progress=False)
        assert not tmp.exists() and len(list(models.glob("*.pt"))) == 1
        tmp = self.leftover(models)
        workflow.prepare_classifier(profile, tmp_path, progress=False)  # a hit: no training
        assert not tmp.exists()

    def test_swept_by_train_classifier(self, profile, tmp_path):
        tmp = self.leftover(tmp_path / "direct")
        split = workflow.load_split(profile, "train", tmp_path)
        from fidobook.models import train_classifier

        train_classifier(profile.classifier, split, cache_dir=tmp_path / "direct", progress=False)
        assert not tmp.exists()
