"""The ``fidobook`` command: generate data, train the classifier, compute masks for a data set.

    fidobook data  --profile cpu                 # generate the profile's birds (cached)
    fidobook train --profile cpu                 # train the profile's classifier (cached)
    fidobook masks --profile cpu --out masks/    # FIDO masks for the test split, resumable

``masks`` writes one file per batch of images (``batch-00042.pt``) atomically and skips batches
already written, so an interrupted run resumes without losing or duplicating work. Under
``torchrun`` each process takes every WORLD_SIZE-th batch (by RANK) on ``cuda:LOCAL_RANK``.
Each image's noise is seeded by its image id, so masks do not depend on batching or sharding.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["main"]


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
    torch.set_num_threads(args.threads) if args.threads else None
    t0 = time.perf_counter()
    _, history = prepare_classifier(profile, args.cache_dir, device=args.device)
    seconds = sum(history["seconds"])
    print(f"classifier ({profile.name}): test accuracy {history['test_acc'][-1]:.4f} after "
          f"{len(history['epoch'])} epochs, {seconds:.0f} s of training "
          f"({time.perf_counter() - t0:.1f} s this run, cache included)")
    return 0


def cmd_masks(args) -> int:
    from .data.cub import load_tensors
    from .fido import FIDO, FIDOConfig
    from ._io import atomic_torch_save
    from .workflow import prepare_classifier, prepare_data

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    profile = _profile(args)
    model, _ = prepare_classifier(profile, args.cache_dir, device=device, progress=rank == 0)
    data = load_tensors(prepare_data(profile, args.cache_dir, progress=False), args.split,
                        with_segmentation=False, with_part_masks=False)
    images, labels, ids = data["images"], data["labels"], data["image_ids"]
    if args.limit:
        images, labels, ids = images[: args.limit], labels[: args.limit], ids[: args.limit]

    config = FIDOConfig(iterations=args.iterations or profile.fido_iterations,
                        samples=args.samples or profile.fido_samples, sampler=args.sampler,
                        temperature=args.temperature, mask_size=args.mask_size or profile.mask_size,
                        infill=args.infill, max_batch=args.max_batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"profile": profile.name, "split": args.split, "n_images": len(ids), "batch": args.batch,
                "seed": args.seed, "target": args.target, "config": dataclasses.asdict(config)}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        if json.loads(manifest_path.read_text()) != json.loads(json.dumps(manifest)):
            raise SystemExit(f"{manifest_path}: holds masks of other settings; choose another --out")
    elif rank == 0:
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, manifest_path)

    fido = FIDO(model, config)
    starts = range(0, len(ids), args.batch)
    mine = [(b, s) for b, s in enumerate(starts) if b % world == rank]
    done = skipped = 0
    for b, s in mine:
        path = out / f"batch-{b:05d}.pt"
        if path.exists():
            skipped += 1
            continue
        x = images[s : s + args.batch].to(device).float().div_(255)
        y = labels[s : s + args.batch].to(device) if args.target == "label" else None
        seeds = [args.seed * 1_000_000 + int(i) for i in ids[s : s + args.batch]]
        res = fido.fit(x, y, seeds=seeds, progress=args.progress)
        atomic_torch_save({"image_ids": ids[s : s + args.batch].clone(), "targets": res.targets.cpu(),
                           "logits": res.logits.cpu(), "ssr_prob": res.history["ssr_prob"][-1].cpu(),
                           "sdr_prob": res.history["sdr_prob"][-1].cpu(), "seconds": res.seconds}, path)
        done += 1
        print(f"[rank {rank}] batch {b}: {len(seeds)} images in {res.seconds:.1f} s", flush=True)
    print(f"[rank {rank}] masks: {done} batches computed, {skipped} already there, in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidobook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, device=False):
        if device:
            sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        sp.add_argument("--profile", default="auto", help="smoke, cpu, gpu or auto (default)")
        sp.add_argument("--cache-dir", default=None, help="default: $FIDOBOOK_CACHE or .cache")
        return sp

    d = common(sub.add_parser("data", help="generate the profile's bird data set"))
    d.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    d.set_defaults(func=cmd_data)

    t = common(sub.add_parser("train", help="train (or load) the profile's classifier"), device=True)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.set_defaults(func=cmd_train)

    m = common(sub.add_parser("masks", help="FIDO masks for a split, in resumable batches"), device=True)
    m.add_argument("--out", required=True, help="output folder (one file per batch)")
    m.add_argument("--split", default="test", choices=["train", "test", "all"])
    m.add_argument("--batch", type=int, default=16, help="images per fit")
    m.add_argument("--limit", type=int, default=None, help="only the first N images")
    m.add_argument("--sampler", default="scd", choices=["cd", "scd"])
    m.add_argument("--temperature", type=float, default=None)
    m.add_argument("--iterations", type=int, default=None)
    m.add_argument("--samples", type=int, default=None)
    m.add_argument("--mask-size", type=int, default=None)
    m.add_argument("--infill", default="blur")
    m.add_argument("--max-batch", type=int, default=None)
    m.add_argument("--target", default="prediction", choices=["prediction", "label"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--progress", action="store_true")
    m.set_defaults(func=cmd_masks)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
