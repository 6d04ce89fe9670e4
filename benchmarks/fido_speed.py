"""How close is a FIDO fit to the cost of the model it explains?

For each configuration this prints seconds per mask (per image explained), peak memory, and the
**lower bound**: the measured time of one forward+backward pass of the model (gradient with respect
to the input only, parameters frozen — what FIDO needs) on a batch of the size FIDO feeds it, times
the number of such passes a fit makes (iterations × ceil(2 × samples × images / batch)). Everything
FIDO does besides the model (sampling, infill, upsampling, regularisers, optimiser) is the gap.

Each configuration runs in a fresh subprocess so that peak memory (max RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to it alone.

Usage:
    python benchmarks/fido_speed.py                 # the full grid (about 15 min on 2 CPU cores)
    python benchmarks/fido_speed.py --quick         # a few representative configurations
    python benchmarks/fido_speed.py --device cuda   # on a GPU
    python benchmarks/fido_speed.py --model small --size 64 --samples 8 --images 16 --mask full

On a CPU, configurations whose model time would exceed ``--budget`` seconds run fewer
iterations (at least 1); the bound is computed for the iterations actually run, and the table
shows them.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time


def build_model(name: str, size: int, num_classes: int, device: str):
    import torch

    from fidobook.models import SmallCNN, resnet

    torch.manual_seed(0)
    if name == "small":
        model = SmallCNN(num_classes=num_classes)
    elif name == "resnet18":
        model = resnet("resnet18", num_classes=num_classes)
    else:
        raise ValueError(f"model: expected 'small' or 'resnet18', got {name!r}")
    return model.to(device).eval()


def time_forward_backward(model, batch: int, size: int, device: str, repeats: int) -> float:
    """Median seconds of one forward+backward (w.r.t. the input) on ``batch`` images."""
    import torch

    from fidobook import frozen_model

    x = torch.rand((batch, 3, size, size), device=device)
    times = []
    with frozen_model(model):
        for i in range(repeats + 1):
            xi = x.clone().requires_grad_(True)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(xi)
            out[:, 0].sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first pass warms up (allocations, kernel selection)
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_one(cfg: dict) -> dict:
    """Runs one configuration in this process and returns its figures."""
    import torch

    from fidobook import FIDO, FIDOConfig

    torch.set_num_threads(cfg["threads"])
    device, size, n, s = cfg["device"], cfg["size"], cfg["images"], cfg["samples"]
    model = build_model(cfg["model"], size, 50, device)
    rows = 2 * n * s
    batch = min(rows, cfg["max_batch"])
    passes_per_iter = math.ceil(rows / batch)

    t_fb = time_forward_backward(model, batch, size, device, repeats=cfg["repeats"])
    # On a slow device, run as many iterations as fit the budget (the bound scales with them).
    iterations = cfg["iterations"]
    if cfg["budget"]:
        iterations = max(1, min(iterations, int(cfg["budget"] / (t_fb * passes_per_iter))))
    bound = t_fb * passes_per_iter * iterations

    mask = None if cfg["mask"] == "full" else int(cfg["mask"])
    fido_cfg = FIDOConfig(iterations=iterations, samples=s, mask_size=mask, max_batch=batch)
    images = torch.rand((n, 3, size, size), device=device, generator=None)
    fido = FIDO(model, fido_cfg)
    # One step on the same batch first: allocations, page faults and kernel choices stay out of
    # the timing (they weigh most in configurations that run a single iteration).
    FIDO(model, dataclasses.replace(fido_cfg, iterations=1)).fit(images, seeds=list(range(n)))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fido.fit(images, seeds=list(range(n)))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        **cfg,
        "iterations_run": iterations,
        "batch": batch,
        "seconds": seconds,
        "seconds_per_mask": seconds / n,
        "bound": bound,
        "bound_per_mask": bound / n,
        "ratio": seconds / bound,
        "peak_mib": peak,
    }


def grid(args) -> list[dict]:
    base = dict(device=args.device, threads=args.threads, iterations=args.iterations, repeats=args.repeats,
                budget=args.budget)
    if args.quick:
        combos = [
            ("small", 64, 1, 1, "full"), ("small", 64, 8, 1, "full"), ("small", 64, 8, 16, "full"),
            ("small", 64, 16, 16, "28"), ("resnet18", 64, 8, 16, "full"), ("resnet18", 224, 8, 1, "28"),
        ]
    elif args.model:
        combos = [(args.model, args.size, args.samples, args.images, args.mask)]
    else:
        combos = list(itertools.product(["small", "resnet18"], [64, 224], [1, 8, 16], [1, 16], ["full", "28"]))
    out = []
    combos = [c for c in combos if (args.only_size in (None, c[1])) and (args.only_model in (None, c[0]))]
    for model, size, samples, images, mask in combos:
        # At most max_batch model inputs per forward: bounds memory, and on a CPU large batches
        # of large images run slower per image (the small CNN's 112x112 first stage falls out
        # of cache: 17 ms a row at 16 rows, 42 ms at 64, measured here).
        max_batch = args.max_batch or (512 if size <= 64 else 16 if model == "small" else 32)
        out.append(dict(base, model=model, size=size, samples=samples, images=images, mask=mask, max_batch=max_batch))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of model time per fit (default: 8 on CPU, none on CUDA)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only-size", type=int, default=None, help="only configurations of this image size")
    p.add_argument("--only-model", default=None, help="only configurations of this model")
    p.add_argument("--model"), p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=8), p.add_argument("--images", type=int, default=1)
    p.add_argument("--mask", default="full")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON config in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    if args.budget is None and args.device == "cpu":
        args.budget = 8.0

    rows = []
    header = (f"{'model':9} {'px':>4} {'S':>3} {'N':>3} {'mask':>5} {'batch':>5} {'iters':>5} "
              f"{'s/mask':>8} {'bound/mask':>10} {'ms/mask/it':>10} {'ratio':>6} {'peak MiB':>9}")
    print(f"device={args.device} threads={args.threads}\n{header}\n{'-' * len(header)}", flush=True)
    for cfg in grid(args):
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{cfg['model']:9} {cfg['size']:>4} {cfg['samples']:>3} {cfg['images']:>3} FAILED:\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['model']:9} {r['size']:>4} {r['samples']:>3} {r['images']:>3} {r['mask']:>5} {r['batch']:>5} "
              f"{r['iterations_run']:>5} {r['seconds_per_mask']:>8.3f} {r['bound_per_mask']:>10.3f} "
              f"{1e3 * r['seconds_per_mask'] / r['iterations_run']:>10.1f} "
              f"{r['ratio']:>6.2f} {r['peak_mib']:>9.0f}", flush=True)
    if rows:
        worst = max(rows, key=lambda r: r["ratio"])
        print(f"\nworst ratio to the lower bound: {worst['ratio']:.2f} "
              f"({worst['model']}, {worst['size']} px, S={worst['samples']}, N={worst['images']}, mask {worst['mask']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
