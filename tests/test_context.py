"""Tests of fidobook.experiments.context: the data source and models of the experiments, on a
folder shaped like the real CUB-200-2011 (tests/cub_shaped.py) and on the generated birds."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from cub_shaped import CUB_PARTS, make_cub_shaped, make_resnet_weights
from fidobook.experiments.context import Context, EvaluationSet
from fidobook.models.cnn import IMAGENET_MEAN, IMAGENET_STD
from fidobook.models.resnet import ResNet

SMOKE = 48  # px, the smoke profile's image size


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A CUB-shaped data set with segmentations (next to CUB_200_2011/, as the archives unpack)."""
    return make_cub_shaped(tmp_path_factory.mktemp("cub"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """The same without segmentations."""
    return make_cub_shaped(tmp_path_factory.mktemp("bare"), with_segmentations=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_resnet_weights(tmp_path_factory.mktemp("w") / "resnet18_cub.pt", 3)


@pytest.fixture(scope="module")
def ctx(folder, weights, tmp_path_factory):
    """The reader's ResNet-18 on the CUB-shaped folder (segmenter: one epoch)."""
    return Context.create("smoke", device="cpu", data_dir=folder, weights=weights, arch="resnet18",
                          cache_dir=tmp_path_factory.mktemp("cache"), segmenter={"epochs": 1})


def _create(folder, cache, **kwargs):
    return Context.create("smoke", device="cpu", data_dir=folder, cache_dir=cache, **kwargs)


class TestSplits:
    def test_at_the_profile_size(self, ctx):
        assert ctx.source == "cub" and ctx.profile.image_size == SMOKE
        train, test = ctx.split("train"), ctx.split("test")
        assert train["images"].shape == (12, 3, SMOKE, SMOKE) and test["images"].shape == (6, 3, SMOKE, SMOKE)
        assert train["images"].dtype == torch.uint8
        assert test["part_names"] == CUB_PARTS and ctx.num_classes == 3
        assert ctx.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
        assert test["parts"].shape == (6, 15, 3) and test["boxes"].shape == (6, 4)
        assert float(test["parts"][..., :2].max()) <= SMOKE and float(test["boxes"][:, :2].min()) >= 0
        assert ctx.split("test") is test  # kept in memory

    def test_grey_scale_image_is_rgb(self, ctx):
        train = ctx.split("train")
        (i,) = (train["image_ids"] == 2).nonzero()[0].tolist()  # image 2 is a grey-scale JPEG
        image = train["images"][i]
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert not torch.equal(train["images"][i + 1][0], train["images"][i + 1][1])

    def test_segmentations_become_object_masks(self, ctx, folder):
        assert ctx.has_segmentations
        seg = ctx.split("test")["segmentations"]
        assert seg.shape == (6, 1, SMOKE, SMOKE) and seg.dtype == torch.uint8
        assert set(seg.unique().tolist()) == {0, 255}  # the annotators' average, thresholded at 0.5
        from fidobook.data import load_tensors
        levels = load_tensors(folder, "test", SMOKE)["segmentations"]  # the grey levels as stored
        assert len(levels.unique()) > 2 and torch.equal(seg == 255, levels >= 128)

    def test_part_masks_are_keypoint_discs(self, ctx):
        from fidobook.parts import keypoint_discs
        test = ctx.split("test")
        assert test["part_masks"].dtype == torch.uint8 and test["part_masks"].shape == (6, SMOKE, SMOKE)
        assert torch.equal(test["part_masks"].long(), keypoint_discs(test["parts"], test["boxes"], SMOKE))
        assert int(test["part_masks"].max()) <= 15 and test["part_labels"] == ["background"] + CUB_PARTS
        assert "discs" in test["parts_note"] and "keypoints" in test["parts_note"]
        # every visible keypoint carries its own label
        for n, p in (test["parts"][..., 2] > 0).nonzero().tolist():
            x, y = test["parts"][n, p, :2].clamp(max=SMOKE - 1e-3).long().tolist()
            assert int(test["part_masks"][n, y, x]) == p + 1

    def test_without_segmentations(self, bare, weights, tmp_path):
        c = _create(bare, tmp_path, weights=weights, arch="resnet18")
        assert not c.has_segmentations and c.split("test")["segmentations"] is None
        assert c.segmenter() is None
        e = c.evaluation_set(3)
        assert e.objects is None and e.parts.shape == (3, SMOKE, SMOKE)
        assert c.fingerprint(("segmenter",))["segmenter"] is None
        assert c.describe()["segmentations"] is False

    def test_bad_split(self, ctx):
        with pytest.raises(ValueError, match="split"):
            ctx.split("val")


class TestEvaluationSet:
    def test_disc_ground_truth_and_note(self, ctx):
        e = ctx.evaluation_set(4, seed=1)
        test = ctx.split("test")
        assert isinstance(e, EvaluationSet) and len(e) == 4
        assert e.images.shape == (4, 3, SMOKE, SMOKE) and e.images.dtype == torch.float32
        assert 0 <= float(e.images.min()) and float(e.images.max()) <= 1
        assert torch.equal(e.part_masks, test["part_masks"][e.index].long())
        assert torch.equal(e.parts, e.part_masks > 0) and e.parts.any()
        assert "discs" in e.parts_note and "all visible parts" in e.parts_note
        x, y, w, h = test["boxes"][e.index].unbind(1)
        torch.testing.assert_close(e.boxes, torch.stack([x, y, x + w, y + h], 1))
        assert torch.equal(e.objects, test["segmentations"][e.index, 0] == 255)
        assert torch.equal(e.labels, test["labels"][e.index])

    def test_rules(self, ctx):
        assert ctx.evaluation_set(None).index.tolist() == list(range(6))
        assert ctx.evaluation_set(3, rule="first").index.tolist() == [0, 1, 2]
        assert ctx.evaluation_set(3, rule="spaced").index.tolist() == [0, 2, 5]
        a, b = ctx.evaluation_set(3, seed=0), ctx.evaluation_set(3, seed=0)
        assert torch.equal(a.index, b.index) and a.index.tolist() == sorted(a.index.tolist())
        with pytest.raises(ValueError, match="rule"):
            ctx.evaluation_set(3, rule="best")


class TestReaderWeights:
    def test_loaded_wrapped_and_matching_torchvision(self, ctx, weights):
        model = ctx.classifier()
        assert isinstance(model, ResNet) and not model.training and model.fc.out_features == 3
        assert next(model.parameters()).device == ctx.device
        tv = torchvision.models.resnet18(weights=None, num_classes=3)
        tv.load_state_dict(torch.load(weights, weights_only=True))  # keys as torchvision's
        x = torch.rand((2, 3, SMOKE, SMOKE), generator=torch.Generator().manual_seed(0))  # [0, 1]
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(model(x), tv.eval()((x - mean) / std))
        assert ctx.classifier() is model

    def test_normalize_is_honoured(self, folder, weights, tmp_path):
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        c = _create(folder, tmp_path, weights=weights, arch="resnet18", normalize=(mean, std))
        tv = torchvision.models.resnet18(weights=None, num_classes=3)
        tv.load_state_dict(torch.load(weights, weights_only=True))
        x = torch.rand((2, 3, SMOKE, SMOKE), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = tv.eval()((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
            torch.testing.assert_close(c.classifier()(x), want)
        assert c.describe()["normalize"] == [list(mean), list(std)]

    def test_cbam_weights(self, folder, tmp_path):
        path = make_resnet_weights(tmp_path / "cbam.pt", 3, cbam=True)
        c = _create(folder, tmp_path, weights=path, arch="resnet18", cbam=True)
        assert len(c.classifier().cbam_modules) == 8

    def test_read_with_weights_only(self, folder, weights, tmp_path, monkeypatch):
        calls = []
        real = torch.load

        def spy(*args, **kwargs):
            calls.append(kwargs.get("weights_only"))
            return real(*args, **kwargs)

        monkeypatch.setattr(torch, "load", spy)
        _create(folder, tmp_path, weights=weights, arch="resnet18")
        assert calls == [True]

    def test_a_pickled_object_is_refused(self, folder, tmp_path):
        path = tmp_path / "pickle.pt"
        torch.save({"fc.weight": torch.zeros(3, 512), "note": Path("x")}, path)  # not tensors only
        with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*tensors only"):
            _create(folder, tmp_path, weights=path, arch="resnet18")


class TestErrors:
    def test_another_class_count(self, folder, tmp_path):
        path = make_resnet_weights(tmp_path / "ten.pt", 10)
        message = (re.escape(f"weights {str(path)!r}: expected 3 classes from data_dir "
                             f"{str(folder)!r}") + r".*the file has 10")
        with pytest.raises(ValueError, match=message):
            _create(folder, tmp_path, weights=path, arch="resnet18")

    def test_missing_keys(self, folder, weights, tmp_path):
        with pytest.raises(ValueError, match=re.escape(repr(str(weights))) + r".*missing keys.*cbam"
                           + r".*looks like resnet18 without CBAM"):
            _create(folder, tmp_path, weights=weights, arch="resnet18", cbam=True)

    def test_unexpected_keys_and_another_arch(self, folder, tmp_path):
        path = make_resnet_weights(tmp_path / "r34.pt", 3, arch="resnet34")
        with pytest.raises(ValueError, match=re.escape(repr(str(path))) + r".*unexpected keys.*layer1\.2\."
                           + r".*looks like resnet34"):
            _create(folder, tmp_path, weights=path, arch="resnet18")

    def test_cbam_file_without_cbam(self, folder, tmp_path):
        path = make_resnet_weights(tmp_path / "cbam.pt", 3, cbam=True)
        with pytest.raises(ValueError, match=r"cbam\.pt.*unexpected keys.*with CBAM"):
            _create(folder, tmp_path, weights=path, arch="resnet18")

    @pytest.mark.parametrize("content", ["junk", "list", "empty"])
    def test_not_a_state_dict(self, folder, tmp_path, content):
        path = tmp_path / f"{content}.pt"
        if content == "junk":
            path.write_bytes(b"not a torch file")
        else:
            torch.save([torch.zeros(2)] if content == "list" else {}, path)
        with pytest.raises(ValueError, match=re.escape(f"weights {str(path)!r}: expected")):
            _create(folder, tmp_path, weights=path, arch="resnet18")

    def test_weights_without_arch_and_arch_without_weights(self, folder, weights, tmp_path):
        with pytest.raises(ValueError, match=r"arch: expected one of .*resnet18.* with weights, got None"):
            _create(folder, tmp_path, weights=weights)
        with pytest.raises(ValueError, match="arch: only used with weights"):
            _create(folder, tmp_path, arch="resnet18")
        with pytest.raises(ValueError, match="arch"):
            _create(folder, tmp_path, weights=weights, arch="resnet19")
        with pytest.raises(ValueError, match="cbam: only used with weights"):
            _create(folder, tmp_path, cbam=True)
        with pytest.raises(ValueError, match="normalize: only used with weights"):
            _create(folder, tmp_path, normalize=((0, 0, 0), (1, 1, 1)))

    def test_weights_without_data_dir_or_file(self, weights, tmp_path, folder):
        with pytest.raises(ValueError, match="weights: .*give data_dir"):
            Context.create("smoke", device="cpu", cache_dir=tmp_path, weights=weights, arch="resnet18")
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.pt"))):
            _create(folder, tmp_path, weights=tmp_path / "none.pt", arch="resnet18")

    def test_data_dir_not_a_folder(self, tmp_path, folder):
        afile = tmp_path / "file.txt"
        afile.write_text("x")
        with pytest.raises(FileNotFoundError, match=re.escape(f"data_dir: expected a CUB-format folder, "
                                                              f"got {str(afile)!r} (not a directory)")):
            _create(afile, tmp_path)
        with pytest.raises(FileNotFoundError, match="no such folder"):
            _create(tmp_path / "nowhere", tmp_path)
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty")) + ".*no images.txt"):
            _create(tmp_path / "empty", tmp_path)
        with pytest.raises(TypeError, match="data_dir"):
            _create(3, tmp_path)

    @pytest.mark.parametrize("normalize, exc", [(((0, 0), (1, 1)), ValueError),
                                                (((0, 0, 0), (1, 0, 1)), ValueError),
                                                (((0, 0, 0), (1, float("nan"), 1)), ValueError),
                                                ((0.5, 0.2), TypeError), ("ab", TypeError)])
    def test_bad_normalize(self, folder, weights, tmp_path, normalize, exc):
        with pytest.raises(exc, match="normalize"):
            _create(folder, tmp_path, weights=weights, arch="resnet18", normalize=normalize)

    def test_overrides_on_a_profile_object(self, folder, tmp_path):
        from fidobook.profiles import get_profile
        c = Context.create(get_profile("smoke"), device="cpu", data_dir=folder, cache_dir=tmp_path,
                           classifier={"epochs": 1})
        assert c.profile.classifier.epochs == 1 and c.profile.classifier.width == 24
        with pytest.raises(ValueError, match="unknown"):
            Context.create(get_profile("smoke"), device="cpu", cache_dir=tmp_path, nonsense=1)


class TestTrainedOnTheFolder:
    def test_classifier_from_scratch_then_cached(self, folder, tmp_path, monkeypatch):
        c = _create(folder, tmp_path, classifier={"epochs": 1})
        with torch.no_grad():  # the first call trains, even under the caller's no_grad
            model = c.classifier()
            assert model(c.evaluation_set(2).images).shape == (2, 3)
        assert not model.training and torch.is_grad_enabled()
        assert c.describe()["arch"] == "small_cnn"
        import fidobook.models.train as train

        def refuse(*args, **kwargs):
            raise AssertionError("trained again")

        monkeypatch.setattr(train, "train_classifier", refuse)  # a second context loads it
        again = _create(folder, tmp_path, classifier={"epochs": 1}).fingerprint(("data", "classifier"))
        assert again == c.fingerprint(("data", "classifier"))

    def test_segmenter_trained_on_the_segmentations(self, ctx):
        from fidobook.models.segnet import SegNet
        with torch.no_grad():
            seg = ctx.segmenter()
            out = seg(ctx.evaluation_set(2).images)
        assert isinstance(seg, SegNet) and not seg.training and ctx.segmenter() is seg
        assert out.shape == (2, 1, SMOKE, SMOKE)


class TestFingerprint:
    def test_stable_across_contexts_and_copies(self, ctx, folder, weights, tmp_path):
        every = ("data", "classifier", "segmenter")
        first = ctx.fingerprint(every)
        assert set(first) == {"image_size", "device", "data", "classifier", "segmenter"}
        assert first["segmenter"] is not None and first["image_size"] == SMOKE
        assert first["data"].startswith("cub-") and ctx.fingerprint() == {
            k: first[k] for k in ("image_size", "device", "data", "classifier")}
        other = _create(folder, ctx.cache_dir, weights=weights, arch="resnet18", segmenter={"epochs": 1})
        assert other.fingerprint(every) == first
        root = Path(shutil.copytree(folder.parent, tmp_path / "copy"))  # with segmentations/
        moved = _create(root / "CUB_200_2011", tmp_path, weights=weights, arch="resnet18")
        assert moved.fingerprint(("data",))["data"] == first["data"]
        assert set(moved.fingerprint(("data",))) == {"image_size", "device", "data"}
        assert set(moved.fingerprint(())) == {"image_size", "device"}

    @pytest.mark.parametrize("split", ["test", "train"])
    def test_changes_when_an_image_changes(self, folder, weights, tmp_path, split):
        root = Path(shutil.copytree(folder.parent, tmp_path / "copy")) / "CUB_200_2011"
        before = _create(root, tmp_path, weights=weights, arch="resnet18").fingerprint(("data",))
        line = next(line for line in (root / "train_test_split.txt").read_text().splitlines()
                    if line.split()[1] == ("0" if split == "test" else "1"))
        iid = line.split()[0]
        rel = next(line.split()[1] for line in (root / "images.txt").read_text().splitlines()
                   if line.split()[0] == iid)
        path = root / "images" / rel
        image = Image.open(path).convert("RGB")
        image.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
        image.save(path, quality=90)
        after = _create(root, tmp_path, weights=weights, arch="resnet18").fingerprint(("data",))
        assert after["data"] != before["data"]

    def test_bad_uses(self, ctx):
        with pytest.raises(ValueError, match="uses"):
            ctx.fingerprint(("data", "pixels"))
        with pytest.raises(TypeError, match="uses"):
            ctx.fingerprint("data")

    def test_describe(self, ctx, weights):
        d = ctx.describe()
        assert d["source"] == "cub" and d["weights"] == str(weights) and d["arch"] == "resnet18"
        assert d["num_classes"] == 3 and d["image_size"] == SMOKE and "shorter side" in d["image_policy"]
        assert "resnet18" in repr(ctx)
        # what only the birds know
        assert ctx.class_parts() is None and ctx.hard_set() is None
        assert ctx.separating_parts(torch.tensor([0, 1])) is None


class TestBirds:
    def test_the_generated_birds_still_work(self, tmp_path):
        c = Context.create("smoke", device="cpu", cache_dir=tmp_path, classifier={"epochs": 2})
        assert c.source == "birds" and c.num_classes == 10 and c.class_parts() is not None
        test = c.split("test")
        assert test["images"].shape == (100, 3, SMOKE, SMOKE)
        assert test["parts_note"] == "the generated part masks" and test["part_labels"][0] == "background"
        e = c.evaluation_set(5)
        assert "separate" in e.parts_note and e.objects is not None
        with torch.no_grad():
            assert c.classifier()(e.images).shape == (5, 10)
        f = c.fingerprint(("data", "classifier"))
        assert f["data"].startswith("birds-") and len(f["data"]) == 26 and len(f["classifier"]) == 20
        assert c.describe()["image_policy"] == "as generated"
        assert c.separating_parts(e.labels).shape == (5, 5)
