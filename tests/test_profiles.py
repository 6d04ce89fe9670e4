"""Tests of fidobook.profiles."""
import dataclasses

import pytest
import torch

from fidobook.models import TrainConfig
from fidobook.profiles import PROFILE_NAMES, PROFILES, Profile, get_profile


class TestProfiles:
    @pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
    def test_named(self, name):
        p = get_profile(name)
        assert isinstance(p, Profile) and p.name == name
        assert isinstance(p.classifier, TrainConfig)
        assert p.classifier.image_size in (None, p.image_size)
        kw = p.birds_kwargs()
        assert kw == {"n_classes": p.n_classes, "train_per_class": p.train_per_class,
                      "test_per_class": p.test_per_class, "size": p.image_size, "seed": p.data_seed}

    def test_sizes_grow(self):
        s, c, g = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]
        for f in ("n_classes", "image_size", "fido_iterations", "max_batch"):
            assert getattr(s, f) <= getattr(c, f) <= getattr(g, f), f
        assert c.n_classes == 50 and c.image_size == 64
        assert g.classifier.arch == "resnet18"

    def test_auto_follows_cuda(self, monkeypatch):
        expected = "gpu" if torch.cuda.is_available() else "cpu"
        assert get_profile("auto").name == expected
        assert get_profile().name == expected
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert get_profile("auto").name == "gpu"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert get_profile("auto") == PROFILES["cpu"]

    def test_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            get_profile("smoke").fido_samples = 3

    def test_overrides(self):
        p = get_profile("smoke", cd_vs_scd={"n_images": 2}, fido_samples=3)
        assert (p.cd_vs_scd.n_images, p.fido_samples) == (2, 3)
        assert PROFILES["smoke"].cd_vs_scd.n_images != 2 or PROFILES["smoke"].fido_samples != 3
        assert p.cd_vs_scd.iterations == PROFILES["smoke"].cd_vs_scd.iterations  # merged, not replaced
        p = get_profile("cpu", classifier={"epochs": 5})
        assert p.classifier.epochs == 5
        assert p.classifier.width == PROFILES["cpu"].classifier.width
        cfg = TrainConfig(epochs=1)
        assert get_profile("cpu", classifier=cfg).classifier is cfg

    def test_unknown_name_lists_valid(self):
        with pytest.raises(ValueError, match=r"smoke.*cpu.*gpu.*auto.*'laptop'"):
            get_profile("laptop")

    def test_unknown_field_lists_valid(self):
        with pytest.raises(ValueError, match=r"n_classes.*unknown \['n_clases'\]"):
            get_profile("smoke", n_clases=3)
        with pytest.raises(ValueError, match=r"TrainConfig fields.*unknown \['epoch'\]"):
            get_profile("smoke", classifier={"epoch": 3})

    def test_bad_values(self):
        with pytest.raises(ValueError, match="fido_samples"):
            get_profile("smoke", fido_samples=0)
        with pytest.raises(ValueError, match="n_images"):
            get_profile("smoke", cd_vs_scd={"n_images": 0})
        with pytest.raises(TypeError, match="classifier"):
            get_profile("smoke", classifier=3)
        with pytest.raises(ValueError, match="mask_size"):
            get_profile("smoke", mask_size=1000)

    def test_names(self):
        assert PROFILE_NAMES == ("smoke", "cpu", "gpu", "cub", "auto")
        cub, gpu = PROFILES["cub"], PROFILES["gpu"]
        assert cub.image_size == 224 and cub.classifier.arch == "resnet50" and cub.cd_vs_scd == gpu.cd_vs_scd
