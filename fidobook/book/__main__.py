"""``python -m fidobook.book``: run, build, check, screenshot, vendor."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ..profiles import PROFILE_NAMES
from ._common import CHAPTERS_DIR, ROOT, VENDOR_DIR, _log
from .assets import vendor
from .browser import _problems, browser_check, external_resources, screenshot
from .html import build
from .pipeline import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fidobook.book", description="The book pipeline: execute the chapters, build the HTML, check it offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the chapters (only those that changed)")
    p.add_argument("--profile", default="auto", choices=list(PROFILE_NAMES))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--weights", default=None, help="the reader's classifier weights (with --arch)")
    p.add_argument("--arch", default=None, help="resnet18, resnet34, resnet50 or resnet101")
    p.add_argument("--chapters", default=os.environ.get("CHAPTERS") or None,
                   help="comma-separated chapter names (default: $CHAPTERS, else all)")
    p.add_argument("--force", action="store_true", help="execute even if up to date")
    p.add_argument("--out", default=str(CHAPTERS_DIR))
    p.add_argument("--timeout", type=int, default=3600, help="per-cell timeout, s")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("build", help="strict HTML build of the executed chapters")
    p.add_argument("--chapters-dir", default=str(CHAPTERS_DIR))
    p.add_argument("--path-output", default=None)
    p.add_argument("--no-strict", action="store_true")

    p = sub.add_parser("check", help="offline check of the built HTML (no CDN; Chromium renders)")
    p.add_argument("--html", default=str(ROOT / "book" / "_build" / "html"))
    p.add_argument("--screenshots", default=None, help="folder for page screenshots")
    p.add_argument("--no-browser", action="store_true")

    p = sub.add_parser("screenshot", help="PNG of a built page as a reader sees it")
    p.add_argument("page")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1600)

    p = sub.add_parser("vendor", help="fetch MathJax and the widget scripts from npm")
    p.add_argument("--dest", default=str(VENDOR_DIR))
    p.add_argument("--force", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "run":
        only = [c.strip() for c in args.chapters.split(",") if c.strip()] if args.chapters else None
        try:
            run(args.profile, args.device, args.seed, data_dir=args.data_dir,
                cache_dir=args.cache_dir, weights=args.weights, arch=args.arch, only=only, force=args.force, out_dir=args.out,
                timeout=args.timeout, progress=not args.no_progress)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.command == "build":
        try:
            build(args.chapters_dir, args.path_output, strict=not args.no_strict)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.command == "check":
        external = external_resources(args.html)
        for page, urls in external.items():
            print(f"{page}: loads from the network: {urls}")
        bad = bool(external)
        if not args.no_browser:
            t0 = time.perf_counter()
            for r in browser_check(args.html, screenshots=args.screenshots):
                problems = _problems(r)
                bad |= bool(problems)
                print(f"{r['page']}: {r['mjx_containers']} typeset maths, {r['images']} images, "
                      f"{r['widget_views']} widget views, {r['widget_sliders']} sliders"
                      + (f" -- PROBLEMS: {'; '.join(problems)}" if problems else ""))
            _log(f"browser check in {time.perf_counter() - t0:.1f} s")
        return 1 if bad else 0
    elif args.command == "screenshot":
        print(screenshot(args.page, args.png, width=args.width, height=args.height))
    elif args.command == "vendor":
        vendor(args.dest, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
