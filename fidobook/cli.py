"""The ``fidobook`` command: data, classifier, masks for a data set, and the book's experiments.

    fidobook data  --profile cpu                 # generate the profile's birds (cached)
    fidobook train --profile cpu                 # train the profile's classifier (cached)
    fidobook masks --profile cpu --out masks/    # FIDO masks for the test split, resumable
    fidobook run all --profile cpu --out results/               # every chapter's experiment, headless
    fidobook run cd_vs_scd --profile cub --data-dir CUB_200_2011 --weights r50.pt --arch resnet50 --out r/

``run`` computes the experiments the chapters show (:mod:`fidobook.experiments`) without
Jupyter, with progress bars, and writes each result to ``--out`` as ``<name>.pt`` (a verified
record) and ``<name>.json`` (the same without tensors); results are also cached under the cache
folder, so a chapter executed later with the same profile, data and model reads them.

Arguments are checked when they are parsed, before anything is written: counts are ints >= 1,
``--temperature`` a finite number > 0, ``--seed`` an int in [0, 2**63), ``--device`` a device this
machine has, ``--out`` / ``--cache-dir`` a folder or a path where one can be created.

``masks`` writes one verified record per batch of images (``batch-00042.pt``, atomically, with a
digest of its whole content) and a ``manifest.json`` with the settings and the run environment
(device, dtype, threads, torch and fidobook versions). A rerun verifies every batch already
there: a damaged one (truncated, altered, incomplete, of other images or settings) is reported
with its path and recomputed; temporary files of killed runs are removed. A resume that would
add batches computed under another environment is refused, so a folder never mixes
arithmetic. A batch with non-finite logits or probabilities is never stored. Under ``torchrun``
each process takes every WORLD_SIZE-th batch (by RANK) on ``cuda:LOCAL_RANK``; rank 0 writes the
manifest. Each image's noise is seeded by its image id, so masks do not depend on batching or
sharding.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .infill import INFILLS
from .profiles import PROFILE_NAMES

__all__ = ["main"]

#: Format of a ``masks`` batch record (:func:`fidobook._io.save_record`).
MASKS_FORMAT = "fidobook-masks-1"
_BATCH_FIELDS = ("image_ids", "targets", "logits", "ssr_prob", "sdr_prob", "seconds", "settings")
_SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes seeds below 2**64; we keep to int64
_SEED_STRIDE = 1_000_000  # per-image seed: seed * _SEED_STRIDE + image id


# ----------------------------------------------------------------------------------------------
# Argument types: each raises argparse.ArgumentTypeError, which argparse prints as
# "argument --x: <message>" before exiting with status 2.


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**63), got {text!r}") from None
    if not 0 <= value < _SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**63), got {value}")
    return value


def _device(text: str) -> str:
    """A device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N < device count) or ``mps``."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text} is not available on this machine (torch.cuda.is_available() is False)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text} is not available on this machine (torch.cuda.device_count() is {count})")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise argparse.ArgumentTypeError(
                f"{text} is not available on this machine (torch.backends.mps.is_available() is False)")
    return text


def _folder(text: str) -> Path:
    """An existing writable folder, or a path where one can be created (nothing is created here)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"expected a folder, got the existing file {text!r}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"expected a writable folder, got {text!r} (permission denied)")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}, which cannot be created: "
                                         f"{str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}, which cannot be created: "
                                         f"{str(parent)!r} is not writable")
    return path


# ----------------------------------------------------------------------------------------------
# Commands


def _profile(args):
    from .profiles import get_profile

    return get_profile(args.profile)


def cmd_data(args) -> int:
    from .workflow import prepare_data

    t0 = time.perf_counter()
    root = prepare_data(_profile(args), args.cache_dir, workers=args.workers)
    print(f"data: {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_train(args) -> int:
    from .workflow import prepare_classifier

    profile = _profile(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    _, history = prepare_classifier(profile, args.cache_dir, device=args.device)
    seconds = sum(history["seconds"])
    print(f"classifier ({profile.name}): test accuracy {history['test_acc'][-1]:.4f} after "
          f"{len(history['epoch'])} epochs, {seconds:.0f} s of training "
          f"({time.perf_counter() - t0:.1f} s this run, cache included)")
    return 0


def _read_manifest(path: Path) -> dict:
    """The manifest at ``path``; a file that does not parse stops the run, naming it."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not a readable fidobook masks manifest ({type(e).__name__}: {e}); "
                         f"remove it or choose another --out") from None
    if not isinstance(manifest, dict):
        raise SystemExit(f"{path}: not a fidobook masks manifest (expected a JSON object, got "
                         f"{type(manifest).__name__}); remove it or choose another --out")
    return manifest


def _load_batch(path: Path, ids, settings: dict) -> dict:
    """The verified record of one batch; :class:`fidobook._io.DamagedFile` when it is not sound."""
    from ._io import DamagedFile, load_record

    record = load_record(path, format=MASKS_FORMAT, fields=_BATCH_FIELDS)
    got = record["image_ids"]
    if not isinstance(got, torch.Tensor) or not torch.equal(got, ids):
        raise DamagedFile(path, f"holds images {_id_range(got)}, expected {_id_range(ids)}")
    if record["settings"] != settings:
        raise DamagedFile(path, "computed with other settings than this run's")
    problem = _non_finite(record)
    if problem:
        raise DamagedFile(path, problem)
    return record


def _id_range(ids) -> str:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1:
        return repr(type(ids).__name__)
    return f"{int(ids[0])}..{int(ids[-1])} ({len(ids)})" if len(ids) else "none"


def _non_finite(record: dict) -> str | None:
    """Names the entries of a batch record that hold NaN or inf, or None."""
    bad = []
    for key in ("logits", "ssr_prob", "sdr_prob"):
        t = record[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            bad.append(f"{key} is not a float tensor")
        elif not bool(torch.isfinite(t).all()):
            bad.append(f"{key} has {int((~torch.isfinite(t)).sum())} NaN/inf entries")
    return "; ".join(bad) or None


def cmd_masks(args) -> int:
    from . import _io
    from .data.cub import load_tensors
    from .fido import FIDO, FIDOConfig
    from .workflow import prepare_classifier, prepare_data

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        try:
            _device(device)
        except argparse.ArgumentTypeError as e:
            args.parser.error(f"argument --device: {e} (from LOCAL_RANK under torchrun)")
    out = Path(args.out)
    _io.sweep_tmp(out)  # leftovers of killed writers (live writers' files are kept)
    profile = _profile(args)
    data = load_tensors(prepare_data(profile, args.cache_dir, progress=False), args.split,
                        with_segmentation=False, with_part_masks=False)
    images, labels, ids = data["images"], data["labels"], data["image_ids"]
    if args.limit is not None:
        images, labels, ids = images[: args.limit], labels[: args.limit], ids[: args.limit]

    # Checks that need the data, still before anything is written.
    height, width = images.shape[-2:]
    mask_size = profile.mask_size if args.mask_size is None else args.mask_size
    if mask_size > min(height, width):
        args.parser.error(f"argument --mask-size: expected at most the image size {min(height, width)}, "
                          f"got {mask_size}")
    if len(ids) and args.seed * _SEED_STRIDE + int(ids.max()) >= _SEED_LIMIT:
        args.parser.error(f"argument --seed: expected seed * {_SEED_STRIDE} + image id below 2**63, got "
                          f"{args.seed} * {_SEED_STRIDE} + {int(ids.max())}; choose a smaller seed")
    config = FIDOConfig(
        iterations=profile.fido_iterations if args.iterations is None else args.iterations,
        samples=profile.fido_samples if args.samples is None else args.samples,
        sampler=args.sampler, temperature=args.temperature, mask_size=mask_size,
        infill=args.infill)
    # JSON round trip: the settings compare equal to what the manifest and the records hold.
    settings = json.loads(json.dumps(
        {"profile": profile.name, "split": args.split, "n_images": len(ids), "batch": args.batch,
         "seed": args.seed, "target": args.target, "config": dataclasses.asdict(config)}))
    environment = _io.run_environment(device, torch.float32)

    manifest_path = out / "manifest.json"
    recorded = _read_manifest(manifest_path) if manifest_path.exists() else None
    if recorded is not None and {k: v for k, v in recorded.items() if k != "environment"} != settings:
        raise SystemExit(f"{manifest_path}: holds masks of other settings; choose another --out")

    # Verify the batches already there; damaged ones are recomputed.
    starts = range(0, len(ids), args.batch)
    mine = [(b, s) for b, s in enumerate(starts) if b % world == rank]
    todo, verified, repair = [], 0, set()
    for b, s in mine:
        path = out / f"batch-{b:05d}.pt"
        if not path.exists():
            todo.append((b, s))
            continue
        try:
            _load_batch(path, ids[s : s + args.batch], settings)
            verified += 1
        except _io.DamagedFile as e:
            print(f"[rank {rank}] damaged batch {e}; recomputing it", file=sys.stderr, flush=True)
            todo.append((b, s))
            repair.add(b)

    # Never mix arithmetic: adding batches under another environment is refused. (A rank other
    # than 0 that starts before rank 0 wrote the manifest has nothing to compare with yet.)
    if recorded is not None and todo:
        diff = _io.environment_mismatch(recorded.get("environment") or {}, environment)
        if diff:
            raise SystemExit(
                f"{manifest_path}: its batches were computed under another environment ({diff}); "
                f"{len(todo)} batches remain to compute and would mix different arithmetic. Resume "
                f"with the recorded environment or choose another --out")

    model = None
    if todo:
        model, _ = prepare_classifier(profile, args.cache_dir, device=device, progress=rank == 0)
    if recorded is None and rank == 0:
        _io.atomic_write_text(json.dumps({**settings, "environment": environment}, indent=1), manifest_path)

    done = 0
    fido = FIDO(model, config) if todo else None
    for b, s in todo:
        path = out / f"batch-{b:05d}.pt"
        batch_ids = ids[s : s + args.batch]
        x = images[s : s + args.batch].to(device).float().div_(255)
        y = labels[s : s + args.batch].to(device) if args.target == "label" else None
        seeds = [args.seed * _SEED_STRIDE + int(i) for i in batch_ids]
        try:
            res = fido.fit(x, y, seeds=seeds, progress=args.progress, max_batch=args.max_batch)
        except Exception as e:
            e.add_note(f"fidobook masks: while computing batch {b} (images {_id_range(batch_ids)}) "
                       f"for {path}")
            raise
        record = {"image_ids": batch_ids.clone(), "targets": res.targets.cpu(), "logits": res.logits.cpu(),
                  "ssr_prob": res.history["ssr_prob"][-1].cpu(),
                  "sdr_prob": res.history["sdr_prob"][-1].cpu(), "seconds": float(res.seconds),
                  "settings": settings, "environment": environment}
        problem = _non_finite(record)
        if problem:
            raise FloatingPointError(f"batch {b} (images {_id_range(batch_ids)}): {problem}; "
                                     f"not saved to {path}")
        _io.save_record(record, path, format=MASKS_FORMAT)
        done += 1
        print(f"[rank {rank}] batch {b}: {len(seeds)} images in {res.seconds:.1f} s", flush=True)
    print(f"[rank {rank}] masks: {done} batches computed ({len(repair)} of them repaired), "
          f"{verified} verified, in {out}")
    return 0


def _normalize(text: str):
    """``mean1,mean2,mean3,std1,std2,std3`` -> ((means), (stds))."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(v) for v in values) or min(values[3:]) <= 0:
        raise argparse.ArgumentTypeError(f"expected six numbers 'm1,m2,m3,s1,s2,s3' with s > 0, got {text!r}")
    return tuple(values[:3]), tuple(values[3:])


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected an existing file, got {text!r}")
    return path


def _existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing folder, got {text!r}")
    return path


def cmd_run(args) -> int:
    from .experiments import EXPERIMENTS, Context, run

    from .chapter import chapter_setup

    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    # As a chapter does: fixed threads (when given), deterministic algorithms, seeded.
    chapter_setup(0, args.device, threads=args.threads)
    try:
        ctx = Context.create(args.profile, device=args.device, cache_dir=args.cache_dir,
                             data_dir=args.data_dir, weights=args.weights, arch=args.arch,
                             cbam=args.cbam, normalize=args.normalize, progress=True)
    except (ValueError, TypeError, FileNotFoundError) as e:
        args.parser.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{ctx}; experiments: {', '.join(names)} -> {out}", flush=True)
    total = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        result = run(name, ctx, progress=not args.no_progress, cache=not args.no_cache)
        path = result.save(out / f"{name}.pt")
        # result.seconds is the compute time of the run that made it: small elapsed, cached.
        print(f"{name}: {time.perf_counter() - t0:.1f} s here (its computation took "
              f"{result.seconds:.1f} s), {len(result.scalars)} numbers, {len(result.tables)} "
              f"tables -> {path}", flush=True)
    print(f"run: {len(names)} experiments in {time.perf_counter() - total:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidobook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, device=False):
        if device:
            sp.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                            help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
        sp.add_argument("--profile", default="auto", choices=PROFILE_NAMES,
                        help="smoke, cpu, gpu, cub or auto (default)")
        sp.add_argument("--cache-dir", type=_folder, default=None, help="default: $FIDOBOOK_CACHE or .cache")
        sp.set_defaults(parser=sp)
        return sp

    d = common(sub.add_parser("data", help="generate the profile's bird data set"))
    d.add_argument("--workers", type=_positive_int, default=max(1, min(4, os.cpu_count() or 1)))
    d.set_defaults(func=cmd_data)

    t = common(sub.add_parser("train", help="train (or load) the profile's classifier"), device=True)
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.set_defaults(func=cmd_train)

    m = common(sub.add_parser("masks", help="FIDO masks for a split, in resumable batches"), device=True)
    m.add_argument("--out", type=_folder, required=True, help="output folder (one file per batch)")
    m.add_argument("--split", default="test", choices=["train", "test", "all"])
    m.add_argument("--batch", type=_positive_int, default=16, help="images per fit")
    m.add_argument("--limit", type=_positive_int, default=None, help="only the first N images")
    m.add_argument("--sampler", default="scd", choices=["cd", "scd"])
    m.add_argument("--temperature", type=_positive_float, default=None)
    m.add_argument("--iterations", type=_positive_int, default=None)
    m.add_argument("--samples", type=_positive_int, default=None)
    m.add_argument("--mask-size", type=_positive_int, default=None)
    m.add_argument("--infill", default="blur", choices=list(INFILLS))
    m.add_argument("--max-batch", type=_positive_int, default=None)
    m.add_argument("--target", default="prediction", choices=["prediction", "label"])
    m.add_argument("--seed", type=_seed, default=0, help="an int in [0, 2**63)")
    m.add_argument("--progress", action="store_true")
    m.set_defaults(func=cmd_masks)

    from .experiments import EXPERIMENTS

    r = common(sub.add_parser("run", help="the chapters' experiments, headless"), device=True)
    r.add_argument("experiment", choices=[*EXPERIMENTS, "all"], help="an experiment, or all")
    r.add_argument("--out", type=_folder, required=True, help="folder for <name>.pt and <name>.json")
    r.add_argument("--data-dir", type=_existing_folder, default=None,
                   help="a CUB-200-2011-format folder (default: the profile's generated birds)")
    r.add_argument("--weights", type=_existing_file, default=None,
                   help="a state dict for --arch (a torchvision ResNet, loaded with weights_only=True)")
    r.add_argument("--arch", default=None, choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    r.add_argument("--cbam", action="store_true", help="the weights are for a ResNet with CBAM")
    r.add_argument("--normalize", type=_normalize, default=None,
                   help="the classifier's input mean and std, 'm1,m2,m3,s1,s2,s3' (default ImageNet's)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    r.add_argument("--no-cache", action="store_true", help="compute even if a cached result exists")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_run)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
