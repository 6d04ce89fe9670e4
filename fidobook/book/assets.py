"""Offline assets: MathJax 3, RequireJS and the ipywidgets embed scripts vendored from npm."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ._common import VENDOR_DIR, VENDOR_PACKAGES, _file_sha, _log


def vendor(dest: str | os.PathLike = VENDOR_DIR, *, force: bool = False) -> Path:
    """Fetches MathJax 3, RequireJS and the ipywidgets embed scripts from the npm registry.

    Runs ``npm pack`` for :data:`VENDOR_PACKAGES` and unpacks what the HTML needs into
    ``dest/vendor/`` (``mathjax/``, ``require.js``, ``html-manager/``); Sphinx copies
    ``dest`` into the built site's ``_static/`` (see ``_config.yml``). Skipped when
    ``dest/vendor.json`` lists the same packages and every vendored file still has the size and
    SHA-256 recorded there (:func:`vendor_problems`); otherwise the damage is reported and the
    files fetched again. The new copy is assembled beside ``dest`` and swapped in whole, so an
    interrupted run never leaves a partial folder that looks complete.

    Returns:
        Path: ``dest``.
    """
    dest = Path(dest)
    if not force and (dest / "vendor.json").is_file():
        problems = vendor_problems(dest)
        if not problems:
            return dest
        _log(f"vendored files in {dest} are damaged ({'; '.join(problems[:3])}"
             f"{' ...' if len(problems) > 3 else ''}); fetching them again")
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("vendor: expected npm on PATH (the offline HTML needs MathJax and "
                           "the ipywidgets embed scripts from the npm registry), got none")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _log(f"npm pack {' '.join(VENDOR_PACKAGES)}")
        subprocess.run([npm, "pack", "--silent", "--pack-destination", str(tmp),
                        *VENDOR_PACKAGES], check=True, stdout=subprocess.DEVNULL)
        unpacked = {}
        for tgz in sorted(tmp.glob("*.tgz")):
            where = tmp / tgz.name[:-4]
            with tarfile.open(tgz) as tar:
                tar.extractall(where, filter="data")
            unpacked[tgz.name] = where / "package"

        def find(prefix):
            hits = [v for k, v in unpacked.items() if k.startswith(prefix)]
            if len(hits) != 1:
                raise RuntimeError(f"vendor: expected one {prefix}*.tgz from npm, got {hits}")
            return hits[0]

        staging = tmp / "out" / "vendor"
        staging.mkdir(parents=True)
        shutil.copytree(find("mathjax-") / "es5", staging / "mathjax")
        shutil.copy2(find("requirejs-") / "require.js", staging / "require.js")
        shutil.copytree(find("jupyter-widgets-html-manager-") / "dist", staging / "html-manager",
                        ignore=shutil.ignore_patterns("*.map", "embed.js", "*.LICENSE.txt"))
        for pkg, prefix in (("mathjax", "mathjax-"), ("html-manager", "jupyter-widgets-html-manager-")):
            lic = find(prefix) / "LICENSE"
            if lic.is_file():
                shutil.copy2(lic, staging / pkg / "LICENSE")
        # Fetched at set-up time, never committed (the folder ignores itself).
        (tmp / "out" / ".gitignore").write_text("*\n")
        files = {p.relative_to(tmp / "out").as_posix(): {"size": p.stat().st_size, "sha256": _file_sha(p)}
                 for p in sorted((tmp / "out" / "vendor").rglob("*")) if p.is_file()}
        (tmp / "out" / "vendor.json").write_text(json.dumps(
            {"packages": list(VENDOR_PACKAGES), "tarballs": sorted(unpacked), "files": files},
            indent=2) + "\n")
        # Copy beside dest, then swap: a killed run leaves either the old folder or the new one.
        dest.parent.mkdir(parents=True, exist_ok=True)
        incoming = dest.with_name(f"{dest.name}.incoming-{os.getpid()}")
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        shutil.copytree(tmp / "out", incoming)
        if dest.exists():
            dest.replace(old)
        incoming.replace(dest)
        shutil.rmtree(old, ignore_errors=True)
    _log(f"vendored into {dest}")
    return dest


def vendor_problems(dest: str | os.PathLike = VENDOR_DIR) -> list[str]:
    """What is wrong with a vendored folder: an empty list when it is complete and intact.

    Checks that ``vendor.json`` parses, lists :data:`VENDOR_PACKAGES`, and that every file it
    records exists with the recorded size and SHA-256 (about 6 MB to hash: milliseconds).
    """
    dest = Path(dest)
    stamp = dest / "vendor.json"
    try:
        meta = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return [f"{stamp}: unreadable ({type(e).__name__})"]
    if not isinstance(meta, dict) or meta.get("packages") != list(VENDOR_PACKAGES):
        return [f"{stamp}: lists other packages than {list(VENDOR_PACKAGES)}"]
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{stamp}: no file digests (written by an older version)"]
    problems = []
    for rel, want in files.items():
        p = dest / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want.get("size") or _file_sha(p) != want.get("sha256"):
            problems.append(f"{p}: size or SHA-256 differs from {stamp.name}")
    return problems


