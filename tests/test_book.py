"""The book: every chapter executed with the smoke profile, re-validated by nbval, built
strictly to HTML, and loaded in headless Chromium with the network unreachable.

The executed chapters and the site land in pytest's temporary folders; generated data and
checkpoints are shared with ``make train`` through ``.cache/`` (``FIDOBOOK_CACHE``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fidobook import book

ROOT = book.ROOT
CHAPTERS = book.chapters()
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------
# Sources and the toc (no execution)
# ------------------------------------------------------------------------------------------

class TestSources:
    def test_toc_lists_chapters_with_sources(self):
        assert CHAPTERS, "the toc lists no chapter under book/chapters/"
        assert CHAPTERS[0] == "01_concrete"
        for name in CHAPTERS:
            assert (ROOT / "notebooks" / f"{name}.ipynb").is_file()
        for page in ("book/intro.md", "book/appendix.md", "book/references.md",
                     "book/references.bib", "_config.yml", "_toc.yml"):
            assert (ROOT / page).is_file(), page

    @pytest.mark.parametrize("name", CHAPTERS)
    def test_chapter_source_is_clean_and_parameterised(self, name):
        nb = _notebook(ROOT / "notebooks" / f"{name}.ipynb")
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        for cell in code:
            assert cell.get("outputs", []) == [], f"{name}: committed with outputs"
            assert cell.get("execution_count") is None, f"{name}: committed with execution counts"
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
        source = "".join(tagged[0]["source"])
        for parameter in book.PARAMETERS:
            assert f"{parameter} =" in source, f"{name}: parameters cell lacks {parameter}"
        assert "MPLBACKEND" not in json.dumps(nb), f"{name}: a non-inline backend drops figures"

    def test_bibliography_has_the_cited_keys(self):
        bib = (ROOT / "book" / "references.bib").read_text()
        for key in ("korsch2023scd", "chang2019fido", "kantor2021overmap", "maddison2017concrete",
                    "jang2017gumbel", "gal2017concretedropout", "selvaraju2017gradcam",
                    "woo2018cbam", "hesse2023funnybirds", "wah2011cub", "geifman2019bias",
                    "traub2024augrc", "kingma2015adam", "loshchilov2019adamw"):
            assert f"{{{key}," in bib, key
        assert "10.1609/aaai.v35i18.17900" in bib and "15807--15808" in bib
        assert "CNS-TR-2011-001" in bib


class TestHashes:
    def test_hash_depends_on_parameters_only_through_them(self):
        a = book.chapter_hash(CHAPTERS[0], {"profile": "smoke", "seed": 0})
        b = book.chapter_hash(CHAPTERS[0], {"profile": "smoke", "seed": 0})
        c = book.chapter_hash(CHAPTERS[0], {"profile": "smoke", "seed": 1})
        assert a == b
        assert c["hash"] != a["hash"] and c["source"] == a["source"] and c["package"] == a["package"]

    def test_source_hash_ignores_outputs_and_metadata(self, tmp_path):
        nb = _notebook(ROOT / "notebooks" / f"{CHAPTERS[0]}.ipynb")
        plain = tmp_path / "a.ipynb"
        plain.write_text(json.dumps(nb))
        nb["metadata"]["papermill"] = {"duration": 1.0}
        nb["cells"][1].setdefault("outputs", []).append(
            {"output_type": "stream", "name": "stdout", "text": "x"})
        noisy = tmp_path / "b.ipynb"
        noisy.write_text(json.dumps(nb))
        assert book._source_hash(plain) == book._source_hash(noisy)
        nb["cells"][0]["source"] = "changed"
        noisy.write_text(json.dumps(nb))
        assert book._source_hash(plain) != book._source_hash(noisy)

    def test_unknown_chapter_is_refused(self, tmp_path):
        with pytest.raises(ValueError, match="unknown"):
            book.run("smoke", "cpu", only=["99_nope"], out_dir=tmp_path, progress=False)


class TestStaticExplorer:
    def test_slider_is_linked_to_a_stack_of_images(self):
        pytest.importorskip("ipywidgets")
        box = book.static_explorer({"a": b"\x89PNG", "b": b"\x89PNG"}, "t", initial="b")
        slider, stack = box.children
        assert slider.options == ("a", "b") and slider.index == 1
        assert stack.selected_index == 1 and len(stack.children) == 2

    def test_rejects_empty_and_unknown_initial(self):
        pytest.importorskip("ipywidgets")
        with pytest.raises(ValueError, match="at least one"):
            book.static_explorer({})
        with pytest.raises(ValueError, match="initial"):
            book.static_explorer({"a": b""}, initial="z")


# ------------------------------------------------------------------------------------------
# Damaged or interrupted outputs of the pipeline (papermill replaced by a copy: no kernel)
# ------------------------------------------------------------------------------------------

def _mini_book(root: Path) -> Path:
    """A repository with one chapter ``c1`` whose source is a clean parameterised notebook."""
    (root / "notebooks").mkdir(parents=True)
    (root / "fidobook").mkdir()
    (root / "fidobook" / "x.py").write_text("# package code\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   "  - file: book/chapters/c1\n")
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [],
                     "execution_count": None, "source": "profile = 'smoke'"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "c1.ipynb").write_text(json.dumps(nb))
    return root


class TestDamagedOutputs:
    @pytest.fixture()
    def fake_papermill(self, monkeypatch):
        pm = pytest.importorskip("papermill")
        calls = []

        def execute_notebook(source, target, **kwargs):
            calls.append(Path(source).name)
            Path(target).write_text(Path(source).read_text())

        monkeypatch.setattr(pm, "execute_notebook", execute_notebook)
        return calls

    def _run(self, root):
        return book.run("smoke", "cpu", 0, out_dir=root / "out", progress=False, root=root)

    def test_intact_copy_is_reused(self, tmp_path, fake_papermill):
        root = _mini_book(tmp_path)
        self._run(root)
        records = self._run(root)
        assert fake_papermill == ["c1.ipynb"] and records[0]["status"] == "up to date"

    @pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
    def test_damaged_executed_copy_is_executed_again(self, tmp_path, fake_papermill, damage, capsys):
        root = _mini_book(tmp_path)
        self._run(root)
        copy = root / "out" / "c1.ipynb"
        data = copy.read_bytes()
        if damage == "truncate":
            copy.write_bytes(data[: len(data) // 2])
        elif damage == "flip":
            copy.write_bytes(data.replace(b"smoke", b"smokf"))
        else:
            copy.unlink()
        records = self._run(root)
        assert fake_papermill == ["c1.ipynb", "c1.ipynb"] and records[0]["status"] == "ok"
        assert ("damaged" if damage != "delete" else "missing") in capsys.readouterr().out
        assert copy.read_bytes() == data

    def test_damaged_run_record_is_ignored_and_rewritten(self, tmp_path, fake_papermill, capsys):
        root = _mini_book(tmp_path)
        self._run(root)
        record = root / "out" / "c1.run.json"
        record.write_text('{"status": "ok", "hash"')
        self._run(root)
        assert len(fake_papermill) == 2 and "damaged run record" in capsys.readouterr().out
        assert json.loads(record.read_text())["status"] == "ok"

    def test_partial_copies_of_a_killed_run_are_removed(self, tmp_path, fake_papermill):
        root = _mini_book(tmp_path)
        out = root / "out"
        out.mkdir()
        dead = out / ".c1.running-999999999.ipynb"  # no such pid
        older = out / ".c1.running.ipynb"
        tmp = out / ".c1.run.json.somehost.999999999.abc.tmp"
        for f in (dead, older, tmp):
            f.write_text("{")
        os.utime(tmp, (0, 0))  # a day old: removed whatever host wrote it
        self._run(root)
        assert not dead.exists() and not older.exists() and not tmp.exists()
        assert sorted(p.name for p in out.iterdir()) == ["c1.ipynb", "c1.run.json", "run_records.md"]


class TestVendorCheck:
    def _vendored(self, dest: Path) -> Path:
        (dest / "vendor").mkdir(parents=True)
        f = dest / "vendor" / "require.js"
        f.write_text("define();")
        import hashlib
        meta = {"packages": list(book.VENDOR_PACKAGES), "tarballs": [],
                "files": {"vendor/require.js": {"size": f.stat().st_size,
                                                "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}}}
        (dest / "vendor.json").write_text(json.dumps(meta))
        return f

    def test_intact_folder_has_no_problems(self, tmp_path):
        self._vendored(tmp_path)
        assert book.vendor_problems(tmp_path) == []

    @pytest.mark.parametrize("damage", ["edit", "delete", "stamp", "old-stamp"])
    def test_damage_is_named(self, tmp_path, damage):
        f = self._vendored(tmp_path)
        stamp = tmp_path / "vendor.json"
        if damage == "edit":
            f.write_text("define();;")
        elif damage == "delete":
            f.unlink()
        elif damage == "stamp":
            stamp.write_text("{")
        else:
            stamp.write_text(json.dumps({"packages": list(book.VENDOR_PACKAGES)}))
        problems = book.vendor_problems(tmp_path)
        assert len(problems) == 1
        assert ("require.js" if damage in ("edit", "delete") else "vendor.json") in problems[0]


class TestDevice:
    def test_cuda_without_a_gpu_is_a_clear_error(self, monkeypatch):
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ValueError, match="CUDA is not available"):
            book.chapter_setup(device="cuda")
        with pytest.raises(ValueError, match="expected 'auto', 'cpu'"):
            book.chapter_setup(device="gpu0")


# ------------------------------------------------------------------------------------------
# The smoke run, nbval, the strict build, the browser
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every chapter executed with the smoke profile (device cpu, seed 0)."""
    out = tmp_path_factory.mktemp("chapters-smoke")
    t0 = time.perf_counter()
    records = book.run("smoke", "cpu", 0, out_dir=out, progress=False, timeout=600)
    print(f"smoke run of {len(records)} chapters: {time.perf_counter() - t0:.1f} s")
    return out, records


@pytest.fixture(scope="module")
def site(smoke, tmp_path_factory):
    """The strict HTML build of the smoke chapters."""
    if not (book.VENDOR_DIR / "vendor.json").is_file():
        pytest.fail("book/_vendor is missing: run `make setup` (python -m fidobook.book vendor)")
    out = tmp_path_factory.mktemp("site")
    return book.build(smoke[0], out, strict=True)


class TestSmokeRun:
    def test_every_chapter_ran_and_has_a_run_record(self, smoke):
        out, records = smoke
        assert [r["chapter"] for r in records] == CHAPTERS
        for r in records:
            assert r["status"] == "ok", r.get("error")
            assert (out / f"{r['chapter']}.ipynb").is_file()
            on_disk = json.loads((out / f"{r['chapter']}.run.json").read_text())
            for key in ("profile", "profile_resolved", "device_resolved", "seed", "wall_seconds",
                        "date", "fidobook", "torch", "hash", "hashes"):
                assert key in on_disk, key
            assert on_disk["profile"] == "smoke" and on_disk["device_resolved"] == "cpu"

    @pytest.mark.parametrize("name", CHAPTERS)
    def test_executed_chapter_has_no_errors_and_has_figures(self, smoke, name):
        nb = _notebook(smoke[0] / f"{name}.ipynb")
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in code)
        outputs = [o for c in code for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"

    def test_widget_state_is_stored(self, smoke):
        nb = _notebook(smoke[0] / "01_concrete.ipynb")
        state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        models = {m["model_name"] for m in state.values()}
        assert {"SelectionSliderModel", "StackModel", "ImageModel", "LinkModel"} <= models

    def test_rerun_skips_unchanged_chapters(self, smoke):
        t0 = time.perf_counter()
        again = book.run("smoke", "cpu", 0, out_dir=smoke[0], progress=False)
        assert [r["status"] for r in again] == ["up to date"] * len(CHAPTERS)
        assert time.perf_counter() - t0 < 30

    def test_appendix_table_comes_from_the_records(self, smoke):
        page = (smoke[0] / "run_records.md").read_text()
        for name in CHAPTERS:
            assert f"`{name}`" in page
        assert "smoke → smoke" in page and "| `smoke` | `cpu` | `gpu` |" in page

    def test_nbval_reproduces_the_outputs(self, smoke):
        notebooks = [str(smoke[0] / f"{n}.ipynb") for n in CHAPTERS]
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
               "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE),
               "--nbval-cell-timeout", "600", *notebooks]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


class TestExperimentsRecorded:
    def test_every_chapter_records_the_experiments_it_used(self, smoke):
        from fidobook.experiments import EXPERIMENTS

        used = {e["experiment"] for r in smoke[1] for e in r.get("experiments", [])}
        assert used == set(EXPERIMENTS)
        for r in smoke[1]:
            for e in r.get("experiments", []):
                assert e["spec"] and e["key"] and e["context"]["profile"] == "smoke"

    def test_headless_run_gives_the_chapters_numbers(self, smoke, tmp_path):
        """`fidobook run all --no-cache` recomputes every experiment: same spec, same numbers."""
        out = tmp_path / "results"
        proc = subprocess.run([sys.executable, "-m", "fidobook.cli", "run", "all", "--profile", "smoke",
                               "--device", "cpu", "--threads", "2", "--no-cache", "--no-progress",
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        from fidobook.experiments import Result, get

        compared = 0
        for r in smoke[1]:
            for e in r.get("experiments", []):
                headless = Result.load(out / f"{e['experiment']}.pt")
                if headless.key != e["key"]:  # the chapter overrode its spec: not the same run
                    continue
                timings = getattr(get(e["experiment"]), "TIMINGS", ())
                for name, value in e["numbers"].items():
                    if "seconds" in name or "speedup" in name or name in timings:
                        continue  # wall times: measured, not computed
                    assert headless.numbers()[name] == pytest.approx(value, rel=1e-9, abs=1e-12), \
                        f"{e['experiment']}: {name}"
                compared += 1
        assert compared >= 5


# ------------------------------------------------------------------------------------------
# The book on a folder shaped like the real CUB-200-2011, with a ResNet-18 state dict
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cub_folder(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from cub_shaped import make_cub_shaped, make_resnet_weights
    finally:
        sys.path.pop(0)
    root = make_cub_shaped(tmp_path_factory.mktemp("cub") / "CUB_200_2011")
    classes = len((root / "classes.txt").read_text().splitlines())
    weights = make_resnet_weights(tmp_path_factory.mktemp("weights") / "resnet18.pt", classes,
                                  arch="resnet18")
    return root, weights


@pytest.fixture(scope="module")
def cub_smoke(cub_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("chapters-cub")
    cache = tmp_path_factory.mktemp("cache-cub")
    t0 = time.perf_counter()
    records = book.run("smoke", "cpu", 0, data_dir=str(cub_folder[0]), weights=str(cub_folder[1]),
                       arch="resnet18", cache_dir=str(cache), out_dir=out, progress=False,
                       timeout=600)
    print(f"CUB-shaped smoke run of {len(records)} chapters: {time.perf_counter() - t0:.1f} s")
    return out, records, cache


class TestCUBShaped:
    def test_every_chapter_runs_on_cub_shaped_data(self, cub_smoke):
        out, records, _ = cub_smoke
        assert [r["chapter"] for r in records] == CHAPTERS
        for r in records:
            assert r["status"] == "ok", r.get("error")
            assert r["weights"] and r["arch"] == "resnet18"
            nb = _notebook(out / f"{r['chapter']}.ipynb")
            outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
            assert not [o for o in outputs if o["output_type"] == "error"], r["chapter"]

    def test_headless_run_all_on_cub_shaped_data(self, cub_folder, cub_smoke, tmp_path):
        out = tmp_path / "results"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fidobook.cli", "run", "all", "--profile", "smoke",
                               "--device", "cpu", "--data-dir", str(cub_folder[0]), "--weights",
                               str(cub_folder[1]), "--arch", "resnet18", "--cache-dir",
                               str(tmp_path / "cache"), "--no-progress", "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        print(proc.stdout[-3000:])
        print(f"fidobook run all on the CUB-shaped folder: {time.perf_counter() - t0:.1f} s")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        from fidobook.experiments import EXPERIMENTS, Result, get

        for name in EXPERIMENTS:
            result = Result.load(out / f"{name}.pt")
            if get(name).USES:  # chapter 1's experiment uses no data and no classifier
                assert result.context["source"] == "cub" and result.context["weights"], name


class TestSite:
    def test_strict_build_wrote_every_page(self, site):
        for rel in ["index.html", "book/intro.html", "book/appendix.html",
                    "book/references.html"] + [f"book/chapters/{n}.html" for n in CHAPTERS]:
            assert (site / rel).is_file(), rel
        appendix = (site / "book" / "appendix.html").read_text()
        assert all(name in appendix for name in CHAPTERS)
        references = (site / "book" / "references.html").read_text()
        assert "Simplified Concrete Dropout" in references  # titles keep their case

    def test_no_page_loads_anything_from_the_network(self, site):
        assert book.external_resources(site) == {}
        assert (site / "_static" / "vendor" / "mathjax" / "tex-chtml.js").is_file()
        assert (site / "_static" / "vendor" / "html-manager" / "embed-amd.js").is_file()
        page = (site / "book" / "chapters" / "01_concrete.html").read_text()
        assert "_static/vendor/mathjax/tex-chtml.js" in page
        assert "_static/vendor/require.js" in page

    def test_the_browser_really_is_offline(self, tmp_path):
        # The same MathJax, from a CDN: with the network unreachable nothing may typeset.
        page = tmp_path / "cdn.html"
        page.write_text('<html><body><p>$$x^2$$</p><script id="MathJax-script" async '
                        'src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js">'
                        '</script></body></html>')
        dom = book.render_dom(page, budget_ms=5000)
        assert "<p>" in dom and "mjx-container" not in dom

    def test_pages_render_offline_in_chromium(self, site):
        t0 = time.perf_counter()
        reports = {r["page"]: r for r in book.browser_check(site, screenshots=site.parent / "shots")}
        print(f"browser check: {time.perf_counter() - t0:.1f} s")
        for page, r in reports.items():
            assert not book._problems(r), (page, r)
        ch1 = reports["book/chapters/01_concrete.html"]
        assert ch1["math_blocks"] > 20 and ch1["mjx_containers"] >= ch1["math_blocks"]
        assert ch1["images"] >= 5 and not ch1["images_broken"]
        assert ch1["widget_views_expected"] >= 1 and ch1["widget_sliders"] >= 1
        assert ch1["widget_images"] >= 1
        assert Path(ch1["screenshot"]).stat().st_size > 10_000
