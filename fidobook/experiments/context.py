"""The data source and the models an experiment runs on.

A :class:`Context` is either

- the **generated birds** of a profile (the default): data generated and cached under
  ``cache_dir``, the profile's classifier and segmenter trained from scratch and cached, the hard
  test cases available, part masks and the class table known;
- a **CUB-200-2011-format folder** (``data_dir``): images brought to the profile's size by the
  reader's declared policy (:mod:`fidobook.data.cub`), with the reader's own classifier weights
  (``weights`` + ``arch``, a torchvision ResNet state dict loaded with ``weights_only=True``) or,
  without weights, the profile's classifier trained on the folder's training split. Part ground
  truth there is discs around the visible keypoints (:func:`fidobook.parts.keypoint_discs`);
  segmentations are used when the folder has them, and the scores that need them are skipped
  (and the chapters say so) when it does not.

Everything is loaded lazily and kept in memory, so one context serves several experiments::

    ctx = Context.create("cpu")                                       # the birds
    ctx = Context.create("cub", data_dir="CUB_200_2011", weights="resnet50_cub.pt", arch="resnet50")
    test = ctx.split("test")        # dict of tensors at the profile's size
    model = ctx.classifier()        # eval mode, on ctx.device, takes [0, 1] images
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import _checks

__all__ = ["Context", "EvaluationSet"]

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclasses.dataclass
class EvaluationSet:
    """Images chosen for an experiment, with their ground truth at the profile's size.

    Attributes:
        index (LongTensor[N]): positions in the split.
        images (Tensor[N, 3, H, W]): float in [0, 1], on the context's device.
        labels (LongTensor[N]): classes (CPU).
        boxes (Tensor[N, 4]): x0, y0, x1, y1 pixel edges of the bird (CPU).
        objects (BoolTensor[N, H, W] or None): the bird's pixels; None without segmentations.
        parts (BoolTensor[N, H, W]): the part ground truth the scores use (see ``parts_note``).
        part_masks (LongTensor[N, H, W]): the part labels behind ``parts``.
        parts_note (str): which part ground truth this is, for the chapters' text.
    """

    index: Tensor
    images: Tensor
    labels: Tensor
    boxes: Tensor
    objects: Tensor | None
    parts: Tensor
    part_masks: Tensor
    parts_note: str

    def __len__(self) -> int:
        return len(self.index)


class Context:
    """Data and models for the experiments. Build one with :meth:`create`.

    Attributes:
        profile (Profile): the run sizes.
        device (torch.device): where models run.
        cache_dir (Path): where data, checkpoints, fits and results are cached.
        data_dir (Path or None): a CUB-format folder, or None for the generated birds.
        weights (Path or None): the reader's classifier weights (with ``arch``).
        arch (str or None): ``resnet18/34/50/101`` for ``weights``.
        cbam (bool): the weights are for a ResNet with CBAM blocks (as :func:`fidobook.models.resnet`).
        normalize (tuple or None): ``(mean, std)`` the classifier expects; default ImageNet's.
    """

    def __init__(self, profile, device, cache_dir, data_dir=None, weights=None, arch=None,
                 cbam=False, normalize=None, progress=False):
        self.profile = profile
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.weights = None if weights is None else Path(weights)
        self.arch = arch
        self.cbam = bool(cbam)
        self.normalize = normalize
        self.progress = progress
        self._splits: dict[str, dict] = {}
        self._models: dict[str, object] = {}
        self._fingerprints: dict[str, object] = {}

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, profile="auto", *, device: str | torch.device = "auto", cache_dir=None,
               data_dir=None, weights=None, arch: str | None = None, cbam: bool = False,
               normalize=None, progress: bool = False, **overrides) -> "Context":
        """A context for ``profile`` on the birds, or on ``data_dir`` with optional ``weights``.

        Args:
            profile (str or Profile): a profile name (``smoke``, ``cpu``, ``gpu``, ``cub``,
                ``auto``) or a :class:`fidobook.profiles.Profile`. Default: ``"auto"``.
            device (str or torch.device): ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
            cache_dir (path, optional): default ``$FIDOBOOK_CACHE`` or ``.cache``.
            data_dir (path, optional): a CUB-200-2011-format folder; None: the generated birds.
            weights (path, optional): a state-dict file for ``arch`` (needs ``data_dir``: the class
                count comes from the data).
            arch (str, optional): ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``;
                required with ``weights``.
            cbam (bool, optional): the weights are for a ResNet with CBAM. Default: False.
            normalize (pair of sequences, optional): ``(mean, std)`` per channel for the reader's
                classifier. Default: ImageNet's.
            progress (bool, optional): progress bars while preparing data and models.
            **overrides: :class:`Profile` fields replaced (as :func:`fidobook.get_profile`).

        Raises:
            ValueError / TypeError / FileNotFoundError: bad arguments, naming them.
        """
        from ..profiles import Profile, get_profile
        from ..workflow import default_cache_dir

        if isinstance(profile, Profile):
            profile = dataclasses.replace(profile, **overrides) if overrides else profile
        else:
            profile = get_profile(profile, **overrides)
        device = _resolve_device(device)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if data_dir is not None:
            data_dir = Path(data_dir)
            if not data_dir.is_dir():
                raise FileNotFoundError(f"data_dir: expected a CUB-format folder, got {str(data_dir)!r} "
                                        f"(not a directory)")
        if weights is not None:
            weights = Path(weights)
            if data_dir is None:
                raise ValueError("weights: a classifier of one's own needs its data set: give "
                                 "data_dir too (the class count comes from the data)")
            if not weights.is_file():
                raise FileNotFoundError(f"weights: expected a state-dict file, got {str(weights)!r} "
                                        f"(not a file)")
            if arch is None:
                raise ValueError(f"arch: expected one of {list(_ARCHS)} with weights, got None")
        if arch is not None:
            _checks.check_choice(arch, "arch", _ARCHS)
            if weights is None:
                raise ValueError("arch: only used with weights (without weights the profile's "
                                 "classifier is trained)")
        if normalize is not None:
            mean, std = normalize
            if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
                raise ValueError(f"normalize: expected (mean, std) with 3 values each and std > 0, "
                                 f"got {normalize!r}")
            normalize = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        return cls(profile, device, cache_dir, data_dir, weights, arch, cbam, normalize, progress)

    # -- the data --------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """``"birds"`` (generated) or ``"cub"`` (a CUB-format folder)."""
        return "birds" if self.data_dir is None else "cub"

    @property
    def root(self) -> Path:
        """The data set's folder (generated on first use for the birds)."""
        if self.data_dir is not None:
            return self.data_dir
        if "root" not in self._models:
            from ..workflow import prepare_data

            self._models["root"] = prepare_data(self.profile, self.cache_dir, progress=self.progress)
        return self._models["root"]

    def split(self, name: str = "test") -> dict:
        """Split ``name`` (``train``/``test``) at the profile's size, as
        :func:`fidobook.data.load_tensors` returns it, plus ``part_masks`` for real data (keypoint
        discs) and ``parts_note``. Kept in memory."""
        _checks.check_choice(name, "split", ["train", "test"])
        if name not in self._splits:
            from ..data.cub import load_tensors

            data = load_tensors(self.root, name, self.profile.image_size, progress=self.progress)
            if data.get("part_masks") is None:
                from ..parts import keypoint_discs

                data["part_masks"] = keypoint_discs(data["parts"], data["boxes"],
                                                    tuple(data["images"].shape[-2:]))
                data["parts_note"] = ("discs around the visible keypoints (no part masks in the "
                                      "data set)")
            else:
                data["parts_note"] = "the generated part masks"
            if data.get("segmentations") is None:
                data["segmentations"] = None
            self._splits[name] = data
        return self._splits[name]

    @property
    def has_segmentations(self) -> bool:
        """Whether the data set has object segmentations (real CUB ships them separately)."""
        return self.split("test").get("segmentations") is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.split("test")["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_parts(self):
        """The birds' class table (:func:`fidobook.data.read_class_parts`), None for real data."""
        if self.source != "birds":
            return None
        from ..data import read_class_parts

        return read_class_parts(self.root)

    def separating_parts(self, labels: Tensor) -> Tensor | None:
        """BoolTensor[N, 5]: the part types that separate each label's class from another one
        (birds only; None for real data, where this is not known)."""
        classes = self.class_parts()
        if classes is None:
            return None
        from ..parts import discriminative_parts

        return discriminative_parts(classes)[labels.cpu()]

    def hard_set(self, cases=None, per_case: int | None = None) -> dict | None:
        """The generated hard test cases (birds only; None for real data)."""
        if self.source != "birds":
            return None
        from ..workflow import prepare_hard_set

        return prepare_hard_set(self.profile, cases, per_case, self.cache_dir, progress=self.progress)

    def evaluation_set(self, n: int | None, *, split: str = "test", rule: str = "random",
                       seed: int = 0) -> EvaluationSet:
        """``n`` images of ``split`` and their ground truth, chosen by a fixed rule.

        Args:
            n (int or None): how many (all when None or larger than the split).
            rule (str): ``"random"`` (a seeded permutation, sorted), ``"spaced"`` (evenly spaced
                over the split, which is ordered by class) or ``"first"``.
            seed (int): the permutation's seed (``"random"`` only).

        The part ground truth is the union of the parts that separate the class from another
        (birds), or of all visible keypoint discs (real data); ``parts_note`` says which.
        """
        from torchvision.ops import box_convert

        from ..metrics import part_union_masks

        _checks.check_choice(rule, "rule", ["random", "spaced", "first"])
        data = self.split(split)
        total = len(data["labels"])
        n = total if n is None else min(_checks.check_positive_int(n, "n"), total)
        if rule == "random":
            index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
        elif rule == "spaced":
            index = torch.linspace(0, total - 1, n).round().long()
        else:
            index = torch.arange(n)
        labels = data["labels"][index]
        part_masks = data["part_masks"][index].long()
        separating = self.separating_parts(labels)
        if separating is not None:
            parts = part_union_masks(part_masks, separating)
            note = "the part types that separate the class from another (generated part masks)"
        else:
            parts = part_masks > 0
            note = data["parts_note"] + "; all visible parts, since which parts separate two classes is not known"
        seg = data.get("segmentations")
        return EvaluationSet(
            index=index,
            images=data["images"][index].to(self.device).float().div_(255),
            labels=labels,
            boxes=box_convert(data["boxes"][index].float(), "xywh", "xyxy"),
            objects=None if seg is None else seg[index, 0] > 127,
            parts=parts, part_masks=part_masks, parts_note=note)

    # -- the models ------------------------------------------------------------------------

    def _data_fingerprint(self) -> str:
        """Identifies the data: the birds' generation arguments, or the decoded test split."""
        if self.source == "birds":
            return hashlib.sha256((self.root / "fidobook_birds.json").read_bytes()).hexdigest()[:20]
        from ..models.train import data_fingerprint

        test = self.split("test")
        return data_fingerprint(test["images"], test["labels"])[:20]

    def classifier(self) -> nn.Module:
        """The classifier: the reader's weights, or the profile's, trained and cached."""
        if "classifier" not in self._models:
            self._models["classifier"] = self._load_classifier()
        return self._models["classifier"]

    def _load_classifier(self) -> nn.Module:
        if self.weights is not None:
            from ..models import resnet
            from ..models.cnn import Normalize

            model = resnet(self.arch, self.num_classes, cbam=self.cbam, weights_path=self.weights)
            if self.normalize is not None:
                model.normalize = Normalize(*self.normalize)
            return model.to(self.device).eval()
        if self.source == "birds":
            from ..workflow import prepare_classifier

            model, _ = prepare_classifier(self.profile, self.cache_dir, device=self.device,
                                          progress=self.progress)
            return model
        from ..models.train import load_cached_classifier, train_classifier

        return self._train(self.profile.classifier, load_cached_classifier, train_classifier,
                           with_segmentation=False)

    def segmenter(self) -> nn.Module | None:
        """The object segmenter trained on the data's segmentations; None without them."""
        if "segmenter" not in self._models:
            if self.source == "birds":
                from ..workflow import prepare_segmenter

                model, _ = prepare_segmenter(self.profile, self.cache_dir, device=self.device,
                                             progress=self.progress)
            elif not self.has_segmentations:
                model = None
            else:
                from ..models.segnet import load_cached_segmenter, train_segmenter

                model = self._train(self.profile.segmenter, load_cached_segmenter, train_segmenter,
                                    with_segmentation=True)
            self._models["segmenter"] = model
        return self._models["segmenter"]

    def _train(self, config, load_cached, train, *, with_segmentation: bool) -> nn.Module:
        """A model trained on this folder's splits (cached by config and data fingerprint)."""
        fingerprint = f"cub-{self._data_fingerprint()}"
        folder = self.cache_dir / "models"
        hit = load_cached(config, folder, fingerprint, device=self.device)
        if hit is not None:
            return hit[0]
        train_split, test_split = self.split("train"), self.split("test")
        if with_segmentation:
            train_split = dict(train_split, segmentations=train_split["segmentations"])
        model, _ = train(config, train_split, test_split, cache_dir=folder, device=self.device,
                         progress=self.progress, fingerprint=fingerprint)
        return model

    # -- identity --------------------------------------------------------------------------

    def fingerprint(self, uses: Sequence[str] = ("data", "classifier")) -> dict:
        """What results depend on besides the spec, for the parts an experiment ``uses``.

        Args:
            uses (sequence of str): among ``"data"`` (the data set), ``"classifier"`` and
                ``"segmenter"`` (their weights); an experiment that needs no data passes ``()``.

        Returns:
            dict: plain values (digests of 20 hex characters), stable across processes.
        """
        allowed = ("data", "classifier", "segmenter")
        for u in uses:
            _checks.check_choice(u, "uses", allowed)
        from ..study import model_digest

        out = {"image_size": self.profile.image_size, "device": self.device.type}
        for u in uses:
            if u not in self._fingerprints:
                if u == "data":
                    value = f"{self.source}-{self._data_fingerprint()}"
                else:
                    model = self.classifier() if u == "classifier" else self.segmenter()
                    value = None if model is None else model_digest(model)[:20]
                self._fingerprints[u] = value
            out[u] = self._fingerprints[u]
        return out

    def describe(self) -> dict:
        """Plain-value description for results and run records."""
        return {
            "profile": self.profile.name,
            "source": self.source,
            "data_dir": None if self.data_dir is None else str(self.data_dir),
            "weights": None if self.weights is None else str(self.weights),
            "arch": self.arch if self.weights is not None else self.profile.classifier.arch,
            "device": str(self.device),
            "image_size": self.profile.image_size,
            "num_classes": self.num_classes,
            "segmentations": self.has_segmentations,
            "threads": torch.get_num_threads(),
        }

    def __repr__(self) -> str:
        where = "generated birds" if self.data_dir is None else str(self.data_dir)
        model = f", weights={str(self.weights)!r} ({self.arch})" if self.weights else ""
        return f"Context(profile={self.profile.name!r}, {where}, device={self.device}{model})"


def _resolve_device(device) -> torch.device:
    from ..chapter import resolve_device

    return resolve_device(device)
