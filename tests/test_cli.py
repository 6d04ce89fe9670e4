"""The fidobook command: masks are written per batch, atomically, and a rerun resumes."""
import json

import pytest
import torch
from torch import nn

from fidobook import cli, workflow
from fidobook.data import birds


class Tiny(nn.Module):
    in_channels = 3

    def __init__(self, k):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


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


def run_masks(out, *extra):
    return cli.main(["masks", "--profile", "smoke", "--out", str(out), "--batch", "4", "--iterations", "3",
                     "--samples", "2", "--mask-size", "8", "--device", "cpu", *extra])


def test_masks_resume_without_duplicates(tiny_world):
    tmp, calls = tiny_world
    out = tmp / "masks"
    assert run_masks(out) == 0
    files = sorted(out.glob("batch-*.pt"))
    assert [f.name for f in files] == ["batch-00000.pt", "batch-00001.pt", "batch-00002.pt"]  # 9 images / 4
    assert calls["fits"] == 3
    first = torch.load(files[1], weights_only=True)

    # an interrupted run: one batch missing, a stray temporary file left behind
    files[1].unlink()
    (out / ".batch-00001.pt.abc.tmp").write_bytes(b"partial")
    assert run_masks(out) == 0
    assert calls["fits"] == 4  # only the missing batch was recomputed
    again = torch.load(files[1], weights_only=True)
    assert torch.equal(first["logits"], again["logits"])  # seeded per image id: same masks
    ids = torch.cat([torch.load(f, weights_only=True)["image_ids"] for f in sorted(out.glob("batch-*.pt"))])
    assert ids.tolist() == sorted(set(ids.tolist())) and len(ids) == 9


def test_masks_refuse_other_settings(tiny_world):
    tmp, _ = tiny_world
    out = tmp / "masks"
    assert run_masks(out, "--limit", "4") == 0
    assert json.loads((out / "manifest.json").read_text())["n_images"] == 4
    with pytest.raises(SystemExit, match="holds masks of other settings"):
        run_masks(out, "--limit", "4", "--sampler", "cd")


def test_sharding_splits_batches_between_ranks(tiny_world, monkeypatch):
    tmp, calls = tiny_world
    out = tmp / "masks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert run_masks(out) == 0
    assert calls["fits"] == 3
    assert len(list(out.glob("batch-*.pt"))) == 3
