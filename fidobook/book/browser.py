"""Checking the built HTML: no network resources, and headless Chromium renders maths, figures
and widgets offline."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .pipeline import chapters



_EXTERNAL = re.compile(r"""<(script|link|img|iframe)\b[^>]*?\b(src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""",
                       re.IGNORECASE)


def external_resources(html_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Scripts, style sheets, images and frames a built page would load from the network.

    Returns:
        dict: page (relative path) -> list of external URLs it loads (only pages that load any).
        Plain links (``<a href>``) do not count; ``<link rel=...>`` tags other than style
        sheets, preloads and icons do not either.
    """
    html_dir = Path(html_dir)
    out = {}
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(errors="replace")
        urls = []
        for m in _EXTERNAL.finditer(text):
            tag = m.group(0)
            if m.group(1).lower() == "link" and not re.search(
                    r"""rel\s*=\s*["'](stylesheet|preload|modulepreload|icon|shortcut icon)["']""",
                    tag, re.IGNORECASE):
                continue
            urls.append(m.group(3))
        if urls:
            out[page.relative_to(html_dir).as_posix()] = urls
    return out


def find_chromium() -> str:
    """The headless browser: ``$CHROMIUM`` or the first of chromium / chromium-browser /
    google-chrome on PATH."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("find_chromium: expected a Chromium on PATH (Debian: apt-get install -y "
                       "chromium; `make setup` does it), got none")


def _chromium_cmd(extra: Sequence[str], budget_ms: int) -> list[str]:
    # The network is made unreachable: every host name fails to resolve and every request
    # would go through a proxy that does not exist. file:// pages load normally.
    return [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--allow-file-access-from-files", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            f"--virtual-time-budget={budget_ms}", *extra]


def render_dom(page: str | os.PathLike, *, budget_ms: int = 20000, timeout: int = 120) -> str:
    """The DOM of a page after its scripts ran (headless Chromium, network unreachable)."""
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory() as profile:
        cmd = _chromium_cmd([f"--user-data-dir={profile}", "--dump-dom", page.as_uri()], budget_ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"render_dom: chromium exited with {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = 1280,
               height: int = 1600, budget_ms: int = 20000, timeout: int = 120) -> Path:
    """A PNG of what a reader sees at the top of ``page`` (headless Chromium, offline)."""
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = _chromium_cmd([f"--user-data-dir={profile}", f"--screenshot={png}",
                             f"--window-size={width},{height}", "--hide-scrollbars",
                             page.as_uri()], budget_ms)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"screenshot: chromium exited with {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    return png


def _dom_report(page: Path, dom: str) -> dict:
    """Counts what rendered in a page's DOM: maths, figures, widgets."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(dom, "html.parser")
    main = soup.find("main") or soup
    math_blocks = main.select("div.math, span.math")
    untypeset = [m for m in math_blocks if m.find("mjx-container") is None]
    images = main.find_all("img")
    broken = []
    for img in images:
        src = img.get("src", "")
        if src.startswith(("data:", "blob:")):  # inline data; widget images are blob URLs
            continue
        target = (page.parent / src.split("?")[0].split("#")[0]).resolve()
        if not src or not target.is_file():
            broken.append(src)
    widget_scripts = soup.find_all("script", attrs={"type": "application/vnd.jupyter.widget-view+json"})
    return {
        "page": page.name,
        "mjx_containers": len(main.find_all("mjx-container")),
        "math_blocks": len(math_blocks),
        "math_untypeset": len(untypeset),
        "images": len(images),
        "images_broken": broken,
        "widget_views_expected": len(widget_scripts),
        "widget_views": len(main.select(".jupyter-widgets.widget-container, .widget-box")),
        "widget_sliders": len(main.select(".widget-slider")),
        "widget_images": len(main.select(".widget-image, img.jupyter-widgets")),
    }


def browser_check(html_dir: str | os.PathLike, pages: Sequence[str] | None = None, *,
                  screenshots: str | os.PathLike | None = None) -> list[dict]:
    """Loads built pages in headless Chromium (offline) and reports what rendered.

    Args:
        html_dir (path): the built site.
        pages (sequence of str, optional): pages relative to ``html_dir``. Default: every
            chapter page, the intro and the appendix.
        screenshots (path, optional): also write ``<page>.png`` screenshots there.

    Returns:
        list of dict: per page, counts of typeset maths (``mjx_containers``, ``math_blocks``,
        ``math_untypeset``), figures (``images``, ``images_broken``) and widgets
        (``widget_views_expected``, ``widget_views``, ``widget_sliders``, ``widget_images``).
    """
    html_dir = Path(html_dir)
    if pages is None:
        pages = ["book/intro.html"] + [f"book/chapters/{n}.html" for n in chapters()] + [
            "book/appendix.html"]
    reports = []
    for rel in pages:
        page = html_dir / rel
        if not page.is_file():
            raise FileNotFoundError(f"browser_check: expected a built page {page}, got none")
        report = _dom_report(page, render_dom(page))
        report["page"] = rel
        if screenshots is not None:
            report["screenshot"] = str(screenshot(page, Path(screenshots) / (
                rel.replace("/", "_").removesuffix(".html") + ".png")))
        reports.append(report)
    return reports


def _problems(report: dict) -> list[str]:
    out = []
    if report["math_untypeset"]:
        out.append(f"{report['math_untypeset']} of {report['math_blocks']} maths not typeset")
    if report["images_broken"]:
        out.append(f"broken images {report['images_broken']}")
    if report["widget_views_expected"] and not report["widget_views"]:
        out.append(f"{report['widget_views_expected']} widget views not rendered")
    return out


