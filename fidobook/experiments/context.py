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

On a CUB-format folder:

- images are brought to ``profile.image_size`` by :data:`fidobook.data.cub.IMAGE_POLICY`
  (shorter side to the size, centre crop; boxes, keypoints and segmentations alike);
- segmentations (real CUB's average several annotators) become object masks by the package's
  one rule for grey levels, ``value >= 0.5`` (uint8 ``>= 128``), stored as 0/255;
- ``part_masks`` are keypoint discs (:func:`fidobook.parts.keypoint_discs`, radius
  :data:`fidobook.parts.DISC_RADIUS` of ``sqrt(box area)``), labels ``p + 1`` for
  ``part_names[p]`` (for the birds, labels of :data:`fidobook.data.PART_NAMES`); in both cases
  label ``l`` is ``split["part_labels"][l]``;
- the reader's ``weights`` are read (``weights_only=True``) and checked against the data's class
  count when the context is created, so a wrong file fails at once, naming it;
- the data are identified by :meth:`fidobook.data.CUB.digest` (the files' bytes, both splits,
  the size and the image policy), so a trained model or a result is never reused for other data.

Everything is loaded lazily and kept in memory, so one context serves several experiments::

    ctx = Context.create("cpu")                                       # the birds
    ctx = Context.create("cub", data_dir="CUB_200_2011", weights="resnet50_cub.pt", arch="resnet50")
    test = ctx.split("test")        # dict of tensors at the profile's size
    model = ctx.classifier()        # eval mode, on ctx.device, takes [0, 1] images
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import _checks

__all__ = ["Context", "EvaluationSet", "FINGERPRINT_PARTS"]

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: What :meth:`Context.fingerprint` can cover.
FINGERPRINT_PARTS = ("data", "classifier", "segmenter")


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
        normalize (tuple or None): ``(mean, std)`` the reader's classifier expects; None: ImageNet's.
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
        self._reader = None
        self._data_digest: str | None = None

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
            data_dir (path, optional): a CUB-200-2011-format folder (the one holding
                ``images.txt``, or its parent as the archive unpacks); None: the generated birds.
            weights (path, optional): a state-dict file of a torchvision ResNet ``arch`` (needs
                ``data_dir``: the class count comes from the data). Read with
                ``weights_only=True`` and checked now.
            arch (str, optional): ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``;
                required with ``weights``, only used with them.
            cbam (bool, optional): the weights are for a ResNet with CBAM. Default: False.
            normalize (pair of sequences, optional): ``(mean, std)`` per channel the reader's
                classifier was trained with (only used with ``weights``). Default: ImageNet's.
            progress (bool, optional): progress bars while preparing data and models.
            **overrides: :class:`Profile` fields replaced (as :func:`fidobook.get_profile`:
                ``classifier``/``segmenter`` and the experiment specs may be mappings of fields).

        Raises:
            FileNotFoundError: ``data_dir`` is not a folder or holds no ``images.txt``;
                ``weights`` is not a file.
            ValueError / TypeError: bad arguments, naming them; weights that do not fit (another
                class count, missing or unexpected keys, not a state dict), naming the file.
        """
        from ..profiles import Profile, get_profile
        from ..workflow import default_cache_dir

        if isinstance(profile, Profile):
            profile = _replace_profile(profile, overrides) if overrides else profile
        else:
            profile = get_profile(profile, **overrides)
        device = _resolve_device(device)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        for name, value in (("cbam", cbam), ("progress", progress)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {value!r}")
        if data_dir is not None:
            data_dir = _check_data_dir(data_dir)
        if weights is not None:
            if isinstance(weights, bool) or not isinstance(weights, (str, os.PathLike)):
                raise TypeError(f"weights: expected a path, got {type(weights).__name__}")
            weights = Path(weights)
            if data_dir is None:
                raise ValueError("weights: a classifier of one's own needs its data set: give "
                                 "data_dir too (the class count comes from the data)")
            if not weights.is_file():
                raise FileNotFoundError(f"weights: expected a state-dict file, got {str(weights)!r} "
                                        f"(not a file)")
            if arch is None:
                raise ValueError(f"arch: expected one of {list(_ARCHS)} with weights, got None "
                                 f"(weights {str(weights)!r})")
        if arch is not None:
            _checks.check_choice(arch, "arch", _ARCHS)
            if weights is None:
                raise ValueError(f"arch: only used with weights, got arch={arch!r} without weights "
                                 "(without weights the profile's classifier is trained)")
        if cbam and weights is None:
            raise ValueError("cbam: only used with weights, got cbam=True without weights")
        if normalize is not None:
            if weights is None:
                raise ValueError("normalize: only used with weights (the profile's classifiers "
                                 "normalise inside with ImageNet's statistics)")
            normalize = _check_normalize(normalize)
        context = cls(profile, device, cache_dir, data_dir, weights, arch, cbam, normalize, progress)
        if weights is not None:
            context._models["classifier"] = context._load_weights()
        return context

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

    def _size(self) -> int | None:
        """The reader's ``size``: None for the birds (generated at the profile's size)."""
        return None if self.source == "birds" else self.profile.image_size

    @property
    def reader(self):
        """The :class:`fidobook.data.CUB` of the whole data set (text files parsed and checked,
        no image decoded): classes, part names, whether there are segmentations."""
        if self._reader is None:
            from ..data.cub import CUB

            self._reader = CUB(self.root, "all", self._size())
        return self._reader

    def split(self, name: str = "test") -> dict:
        """Split ``name`` (``train``/``test``) at the profile's size. Kept in memory.

        The dict of :func:`fidobook.data.load_tensors`, with for every source:

        - ``segmentations`` (uint8 Tensor[N, 1, H, W] of 0/255, or None without them): object
          masks (real data: grey levels ``>= 128`` are the object);
        - ``part_masks`` (uint8 Tensor[N, H, W]): part labels, ``part_labels[l]`` naming label
          ``l`` (0 = background); the data set's part masks when it has them (the birds), else
          keypoint discs (real CUB);
        - ``part_labels`` (list of str) and ``parts_note`` (str: which part ground truth this is).
        """
        _checks.check_choice(name, "split", ["train", "test"])
        if name not in self._splits:
            from ..data.cub import load_tensors

            birds = self.source == "birds"
            data = load_tensors(self.root, name, self._size(), progress=self.progress)
            seg = data.get("segmentations")
            if seg is not None and not birds:
                data["segmentations"] = (seg >= 128).to(torch.uint8) * 255
            elif seg is None:
                data["segmentations"] = None
            if birds:
                from ..data import PART_NAMES

                data["part_labels"] = list(PART_NAMES)
                data["parts_note"] = "the generated part masks"
            elif data.get("part_masks") is not None:  # a CUB-format folder with part masks
                data["part_labels"] = ["background"] + list(data["part_names"])
                data["parts_note"] = "the data set's part masks"
            else:
                from ..parts import DISC_RADIUS, keypoint_discs

                data["part_masks"] = keypoint_discs(data["parts"], data["boxes"],
                                                    tuple(data["images"].shape[-2:]),
                                                    dtype=torch.uint8)
                data["part_labels"] = ["background"] + list(data["part_names"])
                data["parts_note"] = (f"discs of radius {DISC_RADIUS:g} x sqrt(box area) around the "
                                      f"visible keypoints (the data set has no part masks)")
            self._splits[name] = data
        return self._splits[name]

    @property
    def has_segmentations(self) -> bool:
        """Whether the data set has object segmentations (real CUB ships them separately)."""
        return self.reader.has_segmentation

    @property
    def class_names(self) -> list[str]:
        """The class names, by label (without CUB's ``NNN.`` prefix)."""
        return list(self.reader.classes)

    @property
    def num_classes(self) -> int:
        """K, from ``classes.txt`` (not from the labels that happen to occur)."""
        return self.reader.num_classes

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
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        data = self.split(split)
        total = len(data["labels"])
        n = total if n is None else min(_checks.check_positive_int(n, "n"), total)
        if rule == "random":
            index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
        elif rule == "spaced":
            index = torch.linspace(0, total - 1, n).round().long() if n else torch.zeros(0, dtype=torch.long)
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
        """Identifies the data: the birds' generation arguments, or the bytes of every file of
        the folder with the size and image policy (:meth:`fidobook.data.CUB.digest`)."""
        if self._data_digest is None:
            if self.source == "birds":
                digest = hashlib.sha256((self.root / "fidobook_birds.json").read_bytes()).hexdigest()
            else:
                digest = self.reader.digest()
            self._data_digest = digest[:20]
        return self._data_digest

    def classifier(self) -> nn.Module:
        """The classifier, in eval mode on ``device``, taking [0, 1] images: the reader's weights,
        or the profile's, trained (on the birds or on the folder's training split) and cached."""
        if "classifier" not in self._models:
            with torch.enable_grad():  # the first call may train, even inside a caller's no_grad
                self._models["classifier"], self._models["classifier_history"] = self._load_classifier()
        return self._models["classifier"]

    def classifier_history(self) -> dict | None:
        """The training history of the classifier (per-epoch ``train_loss``, ``train_acc``,
        ``test_acc``, ``seconds``, ...), or None for the reader's own weights."""
        self.classifier()
        return self._models["classifier_history"]

    def _load_weights(self) -> nn.Module:
        """The reader's ResNet from ``weights``: read with ``weights_only=True``, its class count
        checked against the data, its keys against ``arch`` and ``cbam``."""
        from ..models.cnn import Normalize
        from ..models.resnet import describe_state_dict, load_state, read_state_dict, resnet

        state = read_state_dict(self.weights, name="weights")
        k = self.num_classes
        found = describe_state_dict(state)["num_classes"]
        if found is not None and found != k:
            raise ValueError(f"weights {str(self.weights)!r}: expected {k} classes from data_dir "
                             f"{str(self.reader.root)!r} ({k} lines in classes.txt), the file has "
                             f"{found} (fc.weight {tuple(state['fc.weight'].shape)})")
        model = resnet(self.arch, k, cbam=self.cbam)
        load_state(model, state, source=str(self.weights), name="weights")
        if self.normalize is not None:
            model.normalize = Normalize(*self.normalize)
        return model.to(self.device).eval()

    def _load_classifier(self) -> tuple[nn.Module, dict | None]:
        """``(model, training history or None)``."""
        if self.weights is not None:
            return self._load_weights(), None
        if self.source == "birds":
            from ..workflow import prepare_classifier

            return prepare_classifier(self.profile, self.cache_dir, device=self.device,
                                      progress=self.progress)
        from ..models.train import load_cached_classifier, train_classifier

        config = self.profile.classifier
        if config.num_classes is None:  # from classes.txt, not from the labels that occur
            config = dataclasses.replace(config, num_classes=self.num_classes)
        return self._train(config, load_cached_classifier, train_classifier)

    def segmenter(self) -> nn.Module | None:
        """The object segmenter trained on the data's segmentations; None without them."""
        if "segmenter" not in self._models:
            if self.source == "birds":
                from ..workflow import prepare_segmenter

                with torch.enable_grad():  # as in classifier()
                    model, _ = prepare_segmenter(self.profile, self.cache_dir, device=self.device,
                                                 progress=self.progress)
            elif not self.has_segmentations:
                model = None
            else:
                from ..models.segnet import load_cached_segmenter, train_segmenter

                with torch.enable_grad():  # as in classifier()
                    model, _ = self._train(self.profile.segmenter, load_cached_segmenter,
                                           train_segmenter)
            self._models["segmenter"] = model
        return self._models["segmenter"]

    def _train(self, config, load_cached, train) -> tuple[nn.Module, dict]:
        """``(model, history)`` trained on this folder's splits (cached by config and data)."""
        fingerprint = f"cub-{self._data_fingerprint()}"
        folder = self.cache_dir / "models"
        hit = load_cached(config, folder, fingerprint, device=self.device)
        if hit is not None:
            return hit
        return train(config, self.split("train"), self.split("test"), cache_dir=folder,
                     device=self.device, progress=self.progress, fingerprint=fingerprint)

    # -- identity --------------------------------------------------------------------------

    def fingerprint(self, uses: Sequence[str] = ("data", "classifier")) -> dict:
        """What results depend on besides the spec, for the parts an experiment ``uses``.

        Args:
            uses (sequence of str): among :data:`FINGERPRINT_PARTS`: ``"data"`` (the data set:
                the birds' generation arguments, or the bytes of the folder's files with the size
                and image policy), ``"classifier"`` and ``"segmenter"`` (their weights); only
                those are computed (a model not yet trained is trained). An experiment that needs
                no data passes ``()``. Default: ``("data", "classifier")``.

        Returns:
            dict: ``image_size``, ``device`` and, for each part used, a digest (20 hex
            characters; ``data`` prefixed with the source, ``"birds-"`` or ``"cub-"``;
            ``segmenter`` None without segmentations). Plain values, stable across processes
            and across copies of the folder.
        """
        if isinstance(uses, str) or not isinstance(uses, Sequence):
            raise TypeError(f"uses: expected a sequence of {list(FINGERPRINT_PARTS)}, got {uses!r}")
        for u in uses:
            _checks.check_choice(u, "uses", FINGERPRINT_PARTS)
        from ..study import model_digest

        out = {"image_size": self.profile.image_size, "device": self.device.type}
        for u in uses:
            if u == "data":
                out[u] = f"{self.source}-{self._data_fingerprint()}"
            else:
                out[u] = self._model_digest(u, model_digest)
        return out

    def _model_digest(self, which: str, model_digest) -> str | None:
        key = f"digest:{which}"
        if key not in self._models:
            model = self.classifier() if which == "classifier" else self.segmenter()
            self._models[key] = None if model is None else model_digest(model)[:20]
        return self._models[key]

    def describe(self) -> dict:
        """Plain-value description for results and run records."""
        return {
            "profile": self.profile.name,
            "source": self.source,
            "data_dir": None if self.data_dir is None else str(self.data_dir),
            "weights": None if self.weights is None else str(self.weights),
            "arch": self.arch if self.weights is not None else self.profile.classifier.arch,
            "cbam": self.cbam if self.weights is not None else self.profile.classifier.cbam,
            "normalize": None if self.normalize is None else [list(v) for v in self.normalize],
            "device": str(self.device),
            "image_size": self.profile.image_size,
            "image_policy": "as generated" if self.source == "birds" else _image_policy(),
            "num_classes": self.num_classes,
            "segmentations": self.has_segmentations,
            "threads": torch.get_num_threads(),
        }

    def __repr__(self) -> str:
        where = "generated birds" if self.data_dir is None else str(self.data_dir)
        model = f", weights={str(self.weights)!r} ({self.arch})" if self.weights else ""
        return f"Context(profile={self.profile.name!r}, {where}, device={self.device}{model})"


def _image_policy() -> str:
    from ..data.cub import IMAGE_POLICY

    return IMAGE_POLICY


def _resolve_device(device) -> torch.device:
    from ..chapter import resolve_device

    return resolve_device(device)


def _replace_profile(profile, overrides: dict):
    """``profile`` with fields replaced; a mapping for a dataclass field (``classifier``,
    ``segmenter``, a spec) replaces fields of the profile's own, as :func:`get_profile` does."""
    fields = [f.name for f in dataclasses.fields(profile)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"overrides: expected Profile fields among {fields}, got unknown {unknown}")
    merged = {}
    for k, v in overrides.items():
        current = getattr(profile, k)
        if isinstance(v, Mapping) and dataclasses.is_dataclass(current):
            v = dataclasses.replace(current, **v)
        merged[k] = v
    return dataclasses.replace(profile, **merged)


def _check_data_dir(data_dir) -> Path:
    """``data_dir`` as a Path, if it is a CUB-format folder (``images.txt`` in it or in its
    ``CUB_200_2011/``); the error names the folder."""
    if isinstance(data_dir, bool) or not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir: expected a path, got {type(data_dir).__name__}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "not a directory" if data_dir.exists() else "no such folder"
        raise FileNotFoundError(f"data_dir: expected a CUB-format folder, got {str(data_dir)!r} "
                                f"({what})")
    if not ((data_dir / "images.txt").is_file() or (data_dir / "CUB_200_2011" / "images.txt").is_file()):
        raise FileNotFoundError(f"data_dir: expected a CUB-200-2011-format folder (images.txt, "
                                f"classes.txt, ...), got {str(data_dir)!r} (no images.txt in it or "
                                f"in its CUB_200_2011/)")
    return data_dir


def _check_normalize(normalize) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as two tuples of 3 finite floats, std > 0."""
    import math

    try:
        mean, std = normalize
        mean, std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise TypeError(f"normalize: expected (mean, std), two sequences of 3 numbers, got "
                        f"{normalize!r}") from None
    if (len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std)
            or any(v <= 0 for v in std)):
        raise ValueError(f"normalize: expected (mean, std) with 3 finite values each and std > 0, "
                         f"got {normalize!r}")
    return mean, std
