"""Named run sizes for the book: ``smoke`` (CI), ``cpu`` (a laptop), ``gpu`` (full experiments),
``cub`` (the gpu sizes at 224 px with a ResNet-50, for a real CUB-200-2011-format folder).

A chapter's ``parameters`` cell names a profile and overrides a few fields::

    profile = get_profile("cpu", cd_vs_scd={"n_images": 50}, classifier={"epochs": 10})

``"auto"`` resolves to ``"gpu"`` when CUDA is available and to ``"cpu"`` otherwise. Profiles are
frozen dataclasses: a chapter cannot change one by accident, and two equal profiles compare equal
(which keeps cache keys stable).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._checks import check_positive_int
from .experiments.specs import (SPECS, BirdsSpec, CDvsSCDSpec, ConcreteSpec, EnhanceSpec, MethodsSpec,
                                OneBirdSpec, OverMAPSpec)
from .models.segnet import SegConfig
from .models.train import TrainConfig

__all__ = ["Profile", "PROFILES", "PROFILE_NAMES", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """One run size: the data set, the classifier and the FIDO experiments.

    Attributes:
        name (str): ``"smoke"``, ``"cpu"``, ``"gpu"`` (or a caller's own name).
        n_classes (int): K, bird classes generated.
        train_per_class (int): training images per class.
        test_per_class (int): test images per class.
        image_size (int): H = W of the generated images, px.
        data_seed (int): seed of the bird generator.
        classifier (TrainConfig): the classifier the chapters train (and cache).
        fido_iterations (int): optimisation steps per FIDO mask of ``fidobook masks`` (its default).
        fido_samples (int): S, mask samples per image per step of ``fidobook masks``.
        mask_size (int): h = w of the low-resolution FIDO mask (upsampled to the image).
        segmenter (SegConfig): the object segmenter Over-MAP uses (trained and cached by
            :func:`fidobook.workflow.prepare_segmenter`). Default: ``SegConfig()``.
        max_batch (int or None): the most model inputs in one forward pass of FIDO and of the
            faithfulness curves (a memory bound: it changes speed, never results, and is part of
            no cache key). None: all rows of a step at once.
        concrete, one_bird, birds, cd_vs_scd, enhance, overmap, methods: the specs of the
            chapters' experiments (:mod:`fidobook.experiments.specs`): every size a chapter uses.
    """

    name: str
    n_classes: int
    train_per_class: int
    test_per_class: int
    image_size: int
    classifier: TrainConfig
    fido_iterations: int
    fido_samples: int
    mask_size: int
    data_seed: int = 0
    segmenter: SegConfig = SegConfig()
    max_batch: int | None = None
    concrete: ConcreteSpec = ConcreteSpec()
    one_bird: OneBirdSpec = OneBirdSpec()
    birds: BirdsSpec = BirdsSpec()
    cd_vs_scd: CDvsSCDSpec = CDvsSCDSpec()
    enhance: EnhanceSpec = EnhanceSpec()
    overmap: OverMAPSpec = OverMAPSpec()
    methods: MethodsSpec = MethodsSpec()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name: expected a non-empty str, got {self.name!r}")
        check_positive_int(self.n_classes, "n_classes", minimum=2)
        for f in ("train_per_class", "test_per_class", "image_size", "fido_iterations",
                  "fido_samples", "mask_size"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.data_seed, "data_seed", minimum=0)
        if not isinstance(self.classifier, TrainConfig):
            raise TypeError(f"classifier: expected a TrainConfig, got {type(self.classifier).__name__}")
        if not isinstance(self.segmenter, SegConfig):
            raise TypeError(f"segmenter: expected a SegConfig, got {type(self.segmenter).__name__}")
        if self.mask_size > self.image_size:
            raise ValueError(f"mask_size: expected at most image_size={self.image_size}, "
                             f"got {self.mask_size}")
        if self.max_batch is not None:
            check_positive_int(self.max_batch, "max_batch")
        for name, cls in SPECS.items():
            spec = getattr(self, name)
            if not isinstance(spec, cls):
                raise TypeError(f"{name}: expected a {cls.__name__}, got {type(spec).__name__}")
            mask = getattr(spec, "mask_size", None)
            if mask is not None and mask > self.image_size:
                raise ValueError(f"{name}.mask_size: expected at most image_size={self.image_size}, "
                                 f"got {mask}")

    def birds_kwargs(self) -> dict:
        """Keyword arguments for :func:`fidobook.data.birds.generate` (all but ``root``)."""
        return {"n_classes": self.n_classes, "train_per_class": self.train_per_class,
                "test_per_class": self.test_per_class, "size": self.image_size,
                "seed": self.data_seed}


# Measured on 2 cores (torch.set_num_threads(2)), machine otherwise nearly idle:
# - cpu: the default SmallCNN (0.30 M parameters), 20 epochs on 10 000 birds at 64 px:
#   98.4 % test accuracy in 284 s of training; the 16 remaining errors are 15 beak confusions
#   (hooked/short vs thick) and one tail.
# - smoke: 10 classes x 80 birds at 48 px, 25 epochs: ~65 % test accuracy in ~15 s.
# - gpu: not measured here (no GPU); the birds generator renders ~35 images/s per core at 224 px.
# - segmenter, cpu: SegNet(width=16, levels=3), 0.11 M parameters, 3 epochs on the 10 000 birds:
#   test IoU 0.905 / 0.937 / 0.942 after epochs 1-3. 141 s of training with the machine shared
#   (load 4-5 on the 2 cores); by CPU time about 60-80 s on an idle machine, plus ~12 s to decode
#   the images. smoke: SegNet(width=8, levels=2), 4 epochs on 800 birds at 48 px: IoU 0.80.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", n_classes=10, train_per_class=80, test_per_class=10, image_size=48,
        classifier=TrainConfig(arch="small_cnn", width=24, epochs=25, batch_size=64, lr=1e-2,
                               image_size=48),
        fido_iterations=20, fido_samples=4, mask_size=12,
        segmenter=SegConfig(width=8, levels=2, epochs=4, batch_size=16, lr=1e-2, image_size=48),
        max_batch=256,
        concrete=ConcreteSpec(mc=20_000, replicates=400, hist=20_000),
        one_bird=OneBirdSpec(iterations=20, samples=4, mask_size=12),
        birds=BirdsSpec(examples=6, train_examples=12, error_examples=8),
        cd_vs_scd=CDvsSCDSpec(n_images=6, iterations=8, snapshots=(4,), samples=(1, 2, 4),
                              mask_size=12, chunk=6, steps=4, resamples=1000),
        enhance=EnhanceSpec(n_test=8, n_small=8, iterations=8, samples=2, mask_size=12, chunk=16,
                            resamples=1000),
        overmap=OverMAPSpec(per_case=6, n_fido=7, fido_iterations=20, fido_samples=2,
                            mask_size=12, mc_passes=4, n_boot=200, mc_batch=64),
        methods=MethodsSpec(n_images=6, fido_iterations=8, fido_snapshots=(4,), fido_s_max=4,
                            fido_chunk=6, mask_size=12, ig_steps=8, smooth_samples=4,
                            steps=8, resamples=1000),
    ),
    "cpu": Profile(
        name="cpu", n_classes=50, train_per_class=200, test_per_class=20, image_size=64,
        classifier=TrainConfig(arch="small_cnn", width=32, epochs=20, batch_size=64, lr=1e-2,
                               image_size=64),
        fido_iterations=150, fido_samples=8, mask_size=16,
        segmenter=SegConfig(width=16, levels=3, epochs=3, batch_size=64, lr=3e-3, image_size=64),
        max_batch=256,
        concrete=ConcreteSpec(mc=1_000_000, replicates=10_000, hist=200_000),
        one_bird=OneBirdSpec(iterations=150, samples=8, mask_size=16),
        birds=BirdsSpec(examples=6, train_examples=12, error_examples=8),
        cd_vs_scd=CDvsSCDSpec(n_images=100, iterations=20, snapshots=(5, 10),
                              samples=(1, 2, 4, 8, 16), mask_size=16, chunk=25, steps=16,
                              resamples=2000),
        enhance=EnhanceSpec(n_test=200, n_small=100, iterations=30, samples=4, mask_size=16,
                            chunk=50, resamples=2000),
        overmap=OverMAPSpec(per_case=100, n_fido=42, fido_iterations=100, fido_samples=2,
                            mask_size=16, mc_passes=10, n_boot=1000, mc_batch=128),
        methods=MethodsSpec(n_images=100, fido_iterations=20, fido_snapshots=(5, 10),
                            fido_s_max=16, fido_chunk=25, mask_size=16, ig_steps=32,
                            smooth_samples=16, steps=16, resamples=2000),
    ),
    "gpu": Profile(
        name="gpu", n_classes=100, train_per_class=300, test_per_class=50, image_size=224,
        classifier=TrainConfig(arch="resnet18", cbam=True, dropout=0.2, stem="imagenet",
                               epochs=60, batch_size=128, lr=2e-3, weight_decay=0.05,
                               image_size=224),
        fido_iterations=300, fido_samples=16, mask_size=56,
        segmenter=SegConfig(width=32, levels=4, epochs=8, batch_size=64, lr=2e-3, image_size=224),
        max_batch=512,
        concrete=ConcreteSpec(mc=10_000_000, replicates=50_000, hist=1_000_000),
        one_bird=OneBirdSpec(iterations=300, samples=16, mask_size=56),
        birds=BirdsSpec(examples=6, train_examples=12, error_examples=8),
        cd_vs_scd=CDvsSCDSpec(n_images=200, iterations=300, snapshots=(50, 100, 200),
                              samples=(1, 2, 4, 8, 16), mask_size=56, chunk=50, steps=32,
                              resamples=2000),
        enhance=EnhanceSpec(n_test=500, n_small=500, iterations=100, samples=8, mask_size=56,
                            chunk=250, resamples=2000),
        overmap=OverMAPSpec(per_case=250, n_fido=350, fido_iterations=300, fido_samples=4,
                            mask_size=56, mc_passes=30, n_boot=2000, mc_batch=128),
        methods=MethodsSpec(n_images=200, fido_iterations=300, fido_snapshots=(50, 100, 200),
                            fido_s_max=16, fido_chunk=50, mask_size=56, ig_steps=64,
                            smooth_samples=32, steps=32, resamples=2000),
    ),
}

# cub: the book on a real CUB-200-2011-format folder (``data_dir``) at 224 px on a GPU, with the
# reader's ResNet-50 (``weights``) or, without weights, a ResNet-50 + CBAM trained from scratch on
# the folder. The experiments' sizes are the gpu profile's (they carry on one GPU); without a
# data_dir it generates the gpu profile's birds.
PROFILES["cub"] = dataclasses.replace(
    PROFILES["gpu"], name="cub",
    classifier=dataclasses.replace(PROFILES["gpu"].classifier, arch="resnet50"))

#: Names :func:`get_profile` accepts.
PROFILE_NAMES = tuple(PROFILES) + ("auto",)


def get_profile(name: str = "auto", **overrides) -> Profile:
    """A named profile, with some fields replaced.

    Args:
        name (str, optional): ``"smoke"``, ``"cpu"``, ``"gpu"`` or ``"auto"`` (``"gpu"`` if
            ``torch.cuda.is_available()``, else ``"cpu"``). Default: ``"auto"``.
        **overrides: :class:`Profile` fields to replace. ``classifier`` may be a
            :class:`TrainConfig` or a mapping of :class:`TrainConfig` fields merged into the
            profile's own; ``segmenter`` likewise a :class:`SegConfig` or a mapping of its fields.

    Returns:
        Profile: ``name`` is the resolved name (``"auto"`` never appears).

    Raises:
        ValueError: unknown profile name or field (the message lists the valid ones).

    Examples::

        >>> get_profile("smoke", cd_vs_scd={"n_images": 2}).cd_vs_scd.n_images
        2
        >>> get_profile("cpu", classifier={"epochs": 5}).classifier.epochs
        5
    """
    if not isinstance(name, str) or name not in PROFILE_NAMES:
        raise ValueError(f"name: expected one of {list(PROFILE_NAMES)}, got {name!r}")
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    profile = PROFILES[name]
    fields = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"overrides: expected Profile fields among {fields}, got unknown {unknown}")
    for field, cls in (("classifier", TrainConfig), ("segmenter", SegConfig), *SPECS.items()):
        config = overrides.get(field)
        if isinstance(config, Mapping):
            config_fields = [f.name for f in dataclasses.fields(cls)]
            bad = sorted(set(config) - set(config_fields))
            if bad:
                raise ValueError(f"{field}: expected {cls.__name__} fields among {config_fields}, "
                                 f"got unknown {bad}")
            overrides[field] = dataclasses.replace(getattr(profile, field), **config)
    return dataclasses.replace(profile, **overrides)
