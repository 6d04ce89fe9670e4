"""Tests of fidobook.models.train: training, evaluation, augmentation and the checkpoint cache."""
import dataclasses
import math

import pytest
import torch

from fidobook.models import (TrainConfig, augment, cache_key, data_fingerprint, evaluate, load_cached_classifier,
                             load_checkpoint, predict, save_checkpoint, train_classifier)
from fidobook.models import train as train_mod

# A tiny configuration: trains the separable task below in about a second. No flips: the task
# (which quadrant is bright) is not mirror-symmetric.
TINY = TrainConfig(width=8, epochs=12, batch_size=16, lr=1e-2, dropout=0.0, crop_scale=1.0,
                   hflip=False)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a busy machine thread synchronisation makes
    # them ~10x slower; the library leaves the thread count to its caller, so the test sets it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _quadrants(n_per_class: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes: a bright square in quadrant k on a noisy dark background; uint8 images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 3, size, size, generator=g) * 0.3
    h = size // 2
    for i, k in enumerate(labels.tolist()):
        r, c = divmod(k, 2)
        images[i, :, r * h + 2:r * h + h - 2, c * h + 2:c * h + h - 2] = 0.9
    return (images * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def data():
    return _quadrants(16, seed=0), _quadrants(8, seed=1)


@pytest.fixture
def fit_counter(monkeypatch):
    calls = []
    real = train_mod._fit

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_fit", counting)
    return calls


class TestTrainConfig:
    def test_frozen_and_hashable(self):
        cfg = TrainConfig()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.epochs = 3
        assert hash(cfg) == hash(TrainConfig())

    def test_dict_round_trip(self):
        cfg = TrainConfig(depths=[1, 1, 2], arch="resnet18")
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg

    @pytest.mark.parametrize("field,value,match", [
        ("arch", "vgg", "arch"), ("optimizer", "adam", "optimizer"), ("epochs", 0, "epochs"),
        ("crop_scale", 0.0, "crop_scale"), ("lr", -1.0, "lr"), ("label_smoothing", 1.0, "label"),
    ])
    def test_bad_values(self, field, value, match):
        with pytest.raises((ValueError, TypeError), match=match):
            TrainConfig(**{field: value})


class TestTrainClassifier:
    def test_learns_separable_task(self, data):
        train, test = data
        model, history = train_classifier(TINY, train, test, progress=False)
        assert history["test_acc"][-1] >= 0.95
        assert len(history["train_loss"]) == TINY.epochs
        assert set(history) == {"epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds"}
        assert not model.training

    def test_deterministic_and_rng_untouched(self, data):
        train, _ = data
        cfg = dataclasses.replace(TINY, epochs=2, crop_scale=0.8, dropout=0.2)
        torch.manual_seed(123)
        expected_next = torch.rand(1)
        torch.manual_seed(123)
        a, _ = train_classifier(cfg, train, progress=False)
        assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG is not consumed
        b, _ = train_classifier(cfg, train, progress=False)
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k

    def test_float_images_and_mapping(self, data):
        (x, y), _ = data
        cfg = dataclasses.replace(TINY, epochs=1)
        _, h = train_classifier(cfg, {"images": x.float() / 255, "labels": y}, progress=False)
        assert math.isnan(h["test_acc"][0])

    def test_bad_inputs(self, data):
        (x, y), _ = data
        with pytest.raises(ValueError, match=r"train images.*\[0, 1\]"):
            train_classifier(TINY, (x.float(), y), progress=False)
        with pytest.raises(ValueError, match="train labels"):
            train_classifier(TINY, (x, y[:-1]), progress=False)
        with pytest.raises(ValueError, match="image_size"):
            train_classifier(dataclasses.replace(TINY, image_size=32), (x, y), progress=False)
        with pytest.raises(ValueError, match="num_classes"):
            train_classifier(dataclasses.replace(TINY, num_classes=3), (x, y), progress=False)
        with pytest.raises(TypeError, match="config"):
            train_classifier({"epochs": 1}, (x, y), progress=False)


class TestCache:
    def test_hit_returns_identical_weights_without_training(self, data, tmp_path, fit_counter):
        train, test = data
        cfg = dataclasses.replace(TINY, epochs=2)
        a, ha = train_classifier(cfg, train, test, cache_dir=tmp_path, progress=False)
        b, hb = train_classifier(cfg, train, test, cache_dir=tmp_path, progress=False)
        assert len(fit_counter) == 1
        assert ha == hb
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
        assert len(list(tmp_path.iterdir())) == 1

    def test_key_depends_on_config_and_data(self, data):
        train, test = data
        k = cache_key(TINY, train, test)
        assert k == cache_key(TINY, train, test)
        assert k != cache_key(dataclasses.replace(TINY, seed=1), train, test)
        assert k != cache_key(TINY, train, None)
        x, y = train
        x2 = x.clone()
        x2[0, 0, 0, 0] ^= 1
        assert k != cache_key(TINY, (x2, y), test)
        assert cache_key(TINY, train, fingerprint="birds-v1") != cache_key(TINY, train, fingerprint="v2")
        assert data_fingerprint(x, y) != data_fingerprint(x, y.flip(0))

    def test_fingerprint_subsamples_large_tensors(self, monkeypatch):
        monkeypatch.setattr(train_mod, "_FINGERPRINT_ELEMENTS", 1000)
        x = torch.zeros(7, 3, 11, 13, dtype=torch.uint8)  # 3003 values > 1000
        a = data_fingerprint(x)
        x[-1, -1, -1, -1] = 1  # flat index 3002: not in the subsample (the last one is 2999)
        assert data_fingerprint(x) == a
        x[0, 0, 0, 0] = 1  # flat index 0: always hashed
        assert data_fingerprint(x) != a

    @pytest.mark.parametrize("damage", ["truncate", "flip_tensor_byte", "empty"])
    def test_damaged_checkpoint_is_retrained(self, data, tmp_path, fit_counter, damage):
        train, _ = data
        cfg = dataclasses.replace(TINY, epochs=1)
        model, _ = train_classifier(cfg, train, cache_dir=tmp_path, progress=False)
        (path,) = tmp_path.iterdir()
        raw = bytearray(path.read_bytes())
        if damage == "truncate":
            raw = raw[: len(raw) // 2]
        elif damage == "empty":
            raw = bytearray()
        else:  # flip one byte inside the stored fc.weight values
            needle = model.state_dict()["fc.weight"].contiguous().numpy().tobytes()[:64]
            pos = bytes(raw).find(needle)
            assert pos > 0
            raw[pos + 10] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(ValueError, match="checkpoint"):
            load_checkpoint(path)
        with pytest.warns(UserWarning, match="damaged"):
            again, _ = train_classifier(cfg, train, cache_dir=tmp_path, progress=False)
        assert len(fit_counter) == 2
        load_checkpoint(path)  # rewritten, valid again
        torch.testing.assert_close(again.fc.weight, model.fc.weight)

    def test_interrupted_save_leaves_no_file(self, data, tmp_path, monkeypatch):
        train, _ = data
        cfg = dataclasses.replace(TINY, epochs=1)
        model, history = train_classifier(cfg, train, progress=False)

        def failing_save(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04 partial")
            raise KeyboardInterrupt  # an interruption mid-write

        monkeypatch.setattr(torch, "save", failing_save)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path / "m.pt", model, cfg, history)
        assert list(tmp_path.iterdir()) == []

    def test_interrupted_save_keeps_old_file(self, data, tmp_path, monkeypatch):
        train, _ = data
        cfg = dataclasses.replace(TINY, epochs=1)
        model, history = train_classifier(cfg, train, progress=False)
        save_checkpoint(tmp_path / "m.pt", model, cfg, history)

        def failing_save(obj, f, *args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", failing_save)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path / "m.pt", model, cfg, history)
        assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
        loaded, cfg2, h2 = load_checkpoint(tmp_path / "m.pt")
        assert cfg2 == cfg and h2["epoch"] == history["epoch"]

    def test_wrong_key_rejected(self, data, tmp_path):
        train, _ = data
        cfg = dataclasses.replace(TINY, epochs=1)
        model, history = train_classifier(cfg, train, progress=False)
        save_checkpoint(tmp_path / "m.pt", model, cfg, history, key="a" * 64)
        with pytest.raises(ValueError, match="cache key"):
            load_checkpoint(tmp_path / "m.pt", key="b" * 64)
        with pytest.raises(FileNotFoundError):
            load_checkpoint(tmp_path / "none.pt")


class TestPredictEvaluate:
    def test_evaluate_and_modes_restored(self, data):
        train, test = data
        model, history = train_classifier(TINY, train, test, progress=False)
        model.train()
        ev = evaluate(model, *test, batch_size=5)
        assert model.training  # mode restored
        assert ev.logits.shape == (len(test[1]), 4) and ev.predictions.dtype == torch.long
        assert ev.accuracy == pytest.approx(history["test_acc"][-1])
        logits = predict(model, test[0].float() / 255, batch_size=7)
        torch.testing.assert_close(logits, ev.logits, atol=1e-5, rtol=1e-5)

    def test_predict_checks(self):
        from fidobook.models import SmallCNN
        with pytest.raises(ValueError, match="images"):
            predict(SmallCNN(3, width=8), torch.rand(2, 1, 8, 8))


class TestAugment:
    def test_identity_when_off(self):
        cfg = TrainConfig(hflip=False, crop_scale=1.0)
        x = torch.rand(3, 3, 8, 8)
        assert augment(x, cfg, torch.Generator().manual_seed(0)) is x

    def test_flip_only_is_exact(self):
        cfg = TrainConfig(hflip=True, crop_scale=1.0)
        x = torch.rand(64, 3, 8, 8)
        y = augment(x, cfg, torch.Generator().manual_seed(0))
        same = (y == x).flatten(1).all(1)
        flipped = (y == x.flip(-1)).flatten(1).all(1)
        assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64

    def test_affine_reproducible_in_range(self):
        cfg = TrainConfig(crop_scale=0.6, translate=0.1)
        x = torch.rand(4, 3, 16, 16)
        a = augment(x, cfg, torch.Generator().manual_seed(1))
        b = augment(x, cfg, torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and a.shape == x.shape
        assert float(a.min()) >= 0 and float(a.max()) <= 1


class TestLoadCached:
    def test_hit_needs_no_data_and_miss_returns_none(self, data, tmp_path):
        train, test = data
        cfg = dataclasses.replace(TINY, epochs=1)
        assert load_cached_classifier(cfg, tmp_path, "birds-v1") is None
        model, history = train_classifier(cfg, train, test, cache_dir=tmp_path, progress=False,
                                          fingerprint="birds-v1")
        hit = load_cached_classifier(cfg, tmp_path, "birds-v1")
        assert hit is not None and hit[1] == history
        torch.testing.assert_close(hit[0].fc.weight, model.fc.weight)
        assert load_cached_classifier(cfg, tmp_path, "birds-v2") is None  # other data, other key
