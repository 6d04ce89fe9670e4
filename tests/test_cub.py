"""Tests of fidobook.data.cub: the CUB-200-2011 format reader, on a fake "real CUB" folder
(JPEGs of different sizes, 15 parts, no segmentations) and on generated birds."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fidobook._io import DamagedFile
from fidobook.data import CUB, PART_NAMES, generate, load_tensors

CUB_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
             "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat"]
CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
SIZES = [(50, 40), (64, 48), (30, 70), (41, 41), (80, 20), (36, 60)]  # (W, H) of images 1..6
SPLIT = [1, 0, 1, 0, 1, 1]


def _cub_files() -> dict[str, str]:
    """The text files of a 6-image, 3-class CUB folder (relative path -> content)."""
    files = {
        "classes.txt": "".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, start=1)),
        "parts/parts.txt": "".join(f"{i} {p}\n" for i, p in enumerate(CUB_PARTS, start=1)),
    }
    images, labels, split, boxes, locs = [], [], [], [], []
    for iid, (w, h) in enumerate(SIZES, start=1):
        c = (iid - 1) // 2
        images.append(f"{iid} {CLASSES[c]}/{CLASSES[c][4:]}_{iid:04d}_{100 + iid}.jpg\n")
        labels.append(f"{iid} {c + 1}\n")
        split.append(f"{iid} {SPLIT[iid - 1]}\n")
        boxes.append(f"{iid} 2.0 3.0 {w - 10}.0 {h - 8}.0\n")
        for pid in range(1, 16):
            vis = int((iid + pid) % 3 != 0)
            x, y = (float(pid % w), float((2 * pid) % h)) if vis else (0.0, 0.0)
            locs.append(f"{iid} {pid} {x} {y} {vis}\n")
    files.update({"images.txt": "".join(images), "image_class_labels.txt": "".join(labels),
                  "train_test_split.txt": "".join(split), "bounding_boxes.txt": "".join(boxes),
                  "parts/part_locs.txt": "".join(locs)})
    return files


def _write_cub(root: Path, overrides: dict[str, str | bytes | None] | None = None) -> Path:
    """Writes the folder; ``overrides`` replaces text files (None: left out; bytes: as they are)."""
    files = {**_cub_files(), **(overrides or {})}
    for rel, text in files.items():
        if text is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                (root / rel).write_bytes(text)
            else:
                (root / rel).write_text(text, encoding="utf-8")
    rng = np.random.default_rng(0)
    for line, (w, h) in zip(_cub_files()["images.txt"].splitlines(), SIZES):
        path = root / "images" / line.split()[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if line.startswith("4 "):
            image = image.convert("L")  # real CUB has a few grey-scale JPEGs
        image.save(path, quality=90)
    return root


@pytest.fixture
def fake_cub(tmp_path) -> Path:
    return _write_cub(tmp_path / "CUB_200_2011")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("cub") / "birds", n_classes=3, train_per_class=3,
                    test_per_class=2, size=40, progress=False)


class TestCUBReal:
    def test_metadata(self, fake_cub):
        ds = CUB(fake_cub, "all")
        assert len(ds) == 6 and ds.num_classes == 3
        assert ds.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
        assert ds.part_names == CUB_PARTS
        assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert not ds.has_segmentation and not ds.has_part_masks
        assert len(CUB(fake_cub, "train")) == 4 and CUB(fake_cub, "test").image_ids.tolist() == [2, 4]

    def test_items_original_size(self, fake_cub):
        ds = CUB(fake_cub, "all")
        for i, (w, h) in enumerate(SIZES):
            item = ds[i]
            assert set(item) == {"image", "label", "box", "parts", "index", "image_id"}
            assert item["image"].shape == (3, h, w) and item["image"].dtype == torch.float32
            assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
            assert item["box"].tolist() == [2.0, 3.0, w - 10, h - 8]
            assert item["parts"].shape == (15, 3)
            assert item["index"] == i and item["image_id"] == i + 1
        assert ds[-1]["image_id"] == 6

    def test_resize_scales_box_and_parts(self, fake_cub):
        ds, full = CUB(fake_cub, "all", size=32), CUB(fake_cub, "all")
        for i, (w, h) in enumerate(SIZES):
            item, ref = ds[i], full[i]
            assert item["image"].shape == (3, 32, 32)
            s = torch.tensor([32 / w, 32 / h])
            torch.testing.assert_close(item["box"], ref["box"] * s.repeat(2))
            torch.testing.assert_close(item["parts"][:, :2], ref["parts"][:, :2] * s)
            assert torch.equal(item["parts"][:, 2], ref["parts"][:, 2])

    def test_to_tensors_needs_size_for_mixed_sizes(self, fake_cub):
        with pytest.raises(ValueError, match="size: expected an int"):
            CUB(fake_cub, "all").to_tensors()
        t = load_tensors(fake_cub, "train", size=24)
        assert t["images"].shape == (4, 3, 24, 24) and t["images"].dtype == torch.uint8
        assert "segmentations" not in t and "part_masks" not in t
        ds = CUB(fake_cub, "train", size=24)
        torch.testing.assert_close(t["images"][1].float() / 255, ds[1]["image"])
        assert torch.equal(t["labels"], ds.labels) and t["parts"].shape == (4, 15, 3)

    def test_parent_folder_and_segmentations_next_to_it(self, fake_cub):
        # The official archives unpack into CUB_200_2011/ and segmentations/ side by side.
        for line, (w, h) in zip(_cub_files()["images.txt"].splitlines(), SIZES):
            path = fake_cub.parent / "segmentations" / Path(line.split()[1]).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((h, w), 128, np.uint8)).save(path)
        ds = CUB(fake_cub.parent, "all", size=16)
        assert ds.root == fake_cub and ds.has_segmentation
        seg = ds[0]["segmentation"]
        assert seg.shape == (1, 16, 16) and torch.allclose(seg, torch.full_like(seg, 128 / 255))
        assert "segmentation" not in CUB(fake_cub, "all", with_segmentation=False)[0]


class TestCUBSynthetic:
    def test_items(self, synthetic):
        ds = CUB(synthetic, "train")
        assert len(ds) == 9 and ds.num_classes == 3 and ds.part_names == list(PART_NAMES[1:])
        item = ds[4]
        assert item["segmentation"].shape == (1, 40, 40) and item["part_mask"].dtype == torch.long
        assert torch.equal(item["segmentation"][0] > 0, item["part_mask"] > 0)
        for pid, (x, y, vis) in enumerate(item["parts"].tolist(), start=1):
            if vis:
                assert int(item["part_mask"][int(y), int(x)]) == pid
        x, y, w, h = item["box"].tolist()
        rows, cols = torch.nonzero(item["part_mask"], as_tuple=True)
        assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)

    def test_resize_nearest_part_mask(self, synthetic):
        item = CUB(synthetic, "test", size=20)[0]
        assert item["part_mask"].shape == (20, 20)
        assert set(item["part_mask"].unique().tolist()) <= set(range(len(PART_NAMES)))

    def test_load_tensors_matches_items(self, synthetic):
        t = load_tensors(synthetic, "all")
        ds = CUB(synthetic, "all")
        assert t["images"].shape == (15, 3, 40, 40) and t["segmentations"].shape == (15, 1, 40, 40)
        assert t["part_masks"].shape == (15, 40, 40) and t["part_masks"].dtype == torch.uint8
        for i in (0, 7, 14):
            item = ds[i]
            torch.testing.assert_close(t["images"][i].float() / 255, item["image"])
            assert torch.equal(t["part_masks"][i].long(), item["part_mask"])
            assert torch.equal(t["boxes"][i], item["box"]) and torch.equal(t["parts"][i], item["parts"])
        assert t["classes"] == ds.classes


LINE_ERRORS = [
    # (file, replacement content, line number in the message)
    ("images.txt", "1 a.jpg\nfoo\n", 2),
    ("images.txt", "1 a.jpg\n1 b.jpg\n", 2),  # repeated id
    ("image_class_labels.txt", "1 1\n2 x\n", 2),
    ("image_class_labels.txt", "1 1\n2 9\n", 2),  # unknown class id
    ("image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n5 3\n6 3\n7 3\n", 7),  # unknown image id
    ("train_test_split.txt", "1 1\n2 2\n", 2),
    ("bounding_boxes.txt", "1 1.0 2.0 3.0\n", 1),
    ("bounding_boxes.txt", "1 1.0 2.0 3.0 -4.0\n", 1),
    ("bounding_boxes.txt", "1 1.0 nan 3.0 4.0\n", 1),
    ("classes.txt", "1 001.a\nx 002.b\n", 2),
    ("parts/parts.txt", "1 back\nbeak\n", 2),
    ("parts/part_locs.txt", "1 1 0.0 0.0 0\n1 2 3.0 4.0 5\n", 2),
    ("parts/part_locs.txt", "1 99 0.0 0.0 0\n", 1),  # unknown part id
    ("parts/part_locs.txt", "1 1 0.0 0.0 0\n1 1 0.0 0.0 0\n", 2),  # repeated pair
    # ids must be plain decimal integers that fit a LongTensor (int() takes all of these)
    ("images.txt", "1 a.jpg\n-2 b.jpg\n", 2),
    ("images.txt", "+1 a.jpg\n", 1),
    ("images.txt", "1_0 a.jpg\n", 1),
    ("images.txt", "\u0661 a.jpg\n", 1),  # ARABIC-INDIC DIGIT ONE
    ("images.txt", "9223372036854775808 a.jpg\n", 1),  # 2**63
    ("train_test_split.txt", "1 1 1\n", 1),  # a field too many
    ("bounding_boxes.txt", "1 1_0 2.0 3.0 4.0\n", 1),
    # repeated and unknown ids in every keyed table
    ("classes.txt", "1 001.a\n1 002.b\n", 2),
    ("parts/parts.txt", "1 back\n1 beak\n", 2),
    ("image_class_labels.txt", "1 1\n1 1\n", 2),
    ("train_test_split.txt", "1 1\n2 0\n9 1\n", 3),
    ("bounding_boxes.txt", "1 1.0 2.0 3.0 4.0\n1 1.0 2.0 3.0 4.0\n", 2),
    ("parts/part_locs.txt", "1 1 0.0 0.0 0\n9 1 0.0 0.0 0\n", 2),
]


class TestBadInput:
    @pytest.mark.parametrize("rel, text, line", LINE_ERRORS)
    def test_malformed_line_names_file_and_line(self, tmp_path, rel, text, line):
        root = _write_cub(tmp_path / "cub", {rel: text})
        with pytest.raises(ValueError, match=re.escape(f"{root / rel} line {line}:")):
            CUB(root, "all")

    def test_malformed_message(self, tmp_path):
        root = _write_cub(tmp_path / "cub", {"images.txt": "1 a.jpg\nfoo\n"})
        with pytest.raises(ValueError, match=r"images.txt line 2: expected '<image_id> <path>', got 'foo'"):
            CUB(root)
        root = _write_cub(tmp_path / "cub2", {"images.txt": "+1 a.jpg\n"})
        with pytest.raises(ValueError, match=re.escape("got '+1 a.jpg' (<image_id> '+1': expected a "
                                                       "non-negative integer)")):
            CUB(root)

    @pytest.mark.parametrize("rel", ["train_test_split.txt", "bounding_boxes.txt", "parts/part_locs.txt"])
    def test_missing_lines_name_file(self, tmp_path, rel):
        text = "".join(_cub_files()[rel].splitlines(keepends=True)[:-1])  # drop the last line
        root = _write_cub(tmp_path / "cub", {rel: text})
        with pytest.raises(ValueError, match=re.escape(f"{root / rel}: no line for")):
            CUB(root)

    @pytest.mark.parametrize("rel", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                     "bounding_boxes.txt", "classes.txt", "parts/parts.txt",
                                     "parts/part_locs.txt"])
    def test_missing_file(self, tmp_path, rel):
        root = _write_cub(tmp_path / "cub", {rel: None})
        with pytest.raises(FileNotFoundError, match=re.escape(str(root / rel))):
            CUB(root)

    def test_missing_image(self, fake_cub):
        rel = _cub_files()["images.txt"].splitlines()[2].split()[1]
        (fake_cub / "images" / rel).unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(f"{fake_cub / 'images' / rel}") + ".*line 3"):
            CUB(fake_cub, "all")
        assert len(CUB(fake_cub, "test")) == 2  # image 3 is a training image

    def test_missing_part_mask(self, synthetic, tmp_path):
        root = Path(shutil.copytree(synthetic, tmp_path / "copy"))
        victim = min((root / "part_masks").rglob("*.png"))
        victim.unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(str(victim))):
            CUB(root, "all")
        assert "part_mask" not in CUB(root, "all", with_part_masks=False)[0]

    @pytest.mark.parametrize("split", ["val", "Train", None])
    def test_bad_split(self, fake_cub, split):
        with pytest.raises(ValueError, match="split"):
            CUB(fake_cub, split)

    @pytest.mark.parametrize("size, exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError),
                                           (True, TypeError), ("32", TypeError)])
    def test_bad_size(self, fake_cub, size, exc):
        with pytest.raises(exc, match="size"):
            CUB(fake_cub, size=size)

    def test_bad_root_and_index(self, tmp_path, fake_cub):
        with pytest.raises(FileNotFoundError, match="root"):
            CUB(tmp_path / "nowhere")
        ds = CUB(fake_cub, "test")
        with pytest.raises(IndexError, match="index"):
            ds[2]
        with pytest.raises(TypeError, match="index"):
            ds[0.5]


# --------------------------------------------------------------------------------------------
# A data set is input from strangers: paths confined, text strictly UTF-8, images fully decoded.


def _image_rel(line: int) -> str:
    """The path listed on ``line`` (1-based) of the fake folder's images.txt."""
    return _cub_files()["images.txt"].splitlines()[line - 1].split(None, 1)[1]


def _with_image_entry(line: int, rel: str) -> dict[str, str]:
    """images.txt with the path of ``line`` replaced by ``rel``."""
    lines = _cub_files()["images.txt"].splitlines(keepends=True)
    lines[line - 1] = f"{line} {rel}\n"
    return {"images.txt": "".join(lines)}


@pytest.fixture
def no_image_reads(monkeypatch):
    """Fails the test if the reader opens any image."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"an image was read: {args}")
    monkeypatch.setattr("fidobook.data.cub.Image.open", refuse)


class TestConfinedPaths:
    @pytest.mark.parametrize("entry", ["../../../x.jpg", "001.a/../../../../x.jpg", "ABSOLUTE_OUTSIDE",
                                       "ABSOLUTE_INSIDE", "C:\\x.jpg", "..\\..\\..\\x.jpg", "a\0b.jpg"])
    def test_entry_outside_root_names_file_and_line(self, tmp_path, no_image_reads, entry):
        root = tmp_path / "a" / "b" / "cub"
        outside = tmp_path / "a" / "x.jpg"  # what ../../../x.jpg reaches from root/images
        outside.parent.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(outside)
        entry = {"ABSOLUTE_OUTSIDE": str(outside),
                 "ABSOLUTE_INSIDE": str(root / "images" / _image_rel(3))}.get(entry, entry)
        _write_cub(root, _with_image_entry(3, entry))
        message = re.escape(f"{root / 'images.txt'} line 3: expected a path inside")
        with pytest.raises(ValueError, match=message):
            CUB(root, "train")  # the bad entry is a test image: every entry is checked

    @pytest.mark.parametrize("what", ["file", "folder"])
    def test_link_out_of_root(self, tmp_path, no_image_reads, what):
        root = _write_cub(tmp_path / "cub")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        Image.new("RGB", (8, 8)).save(elsewhere / "x.jpg")
        victim = root / "images" / _image_rel(2)
        if what == "file":
            victim.unlink()
            victim.symlink_to(elsewhere / "x.jpg")
        else:  # the class folder of image 1 and 2 is a link
            victim = victim.parent
            for f in victim.iterdir():
                f.rename(elsewhere / f.name)
            victim.rmdir()
            victim.symlink_to(elsewhere, target_is_directory=True)
        line = 2 if what == "file" else 1
        with pytest.raises(ValueError, match=re.escape(f"{root / 'images.txt'} line {line}:") + ".*a link to "
                           + re.escape(str(elsewhere.resolve()))):
            CUB(root, "all")

    def test_links_inside_and_linked_folders_are_accepted(self, tmp_path, fake_cub):
        reference = CUB(fake_cub, "all")[1]["image"]
        # images/ on another disk, and an entry that links to another image inside it
        root = _write_cub(tmp_path / "linked")
        (root / "images").rename(tmp_path / "disk")
        (root / "images").symlink_to(tmp_path / "disk", target_is_directory=True)
        victim = root / "images" / _image_rel(2)
        victim.unlink()
        (fake_cub / "images" / _image_rel(2)).rename(root / "images" / "copy.jpg")
        victim.symlink_to(Path("..") / "copy.jpg")
        assert torch.equal(CUB(root, "all")[1]["image"], reference)

    def test_text_file_linked_out_of_root(self, tmp_path, no_image_reads):
        root = _write_cub(tmp_path / "cub")
        secret = tmp_path / "secret"
        secret.write_text("1 001.not_yours\n")
        (root / "classes.txt").unlink()
        (root / "classes.txt").symlink_to(secret)
        with pytest.raises(ValueError, match=re.escape(f"{root / 'classes.txt'}: expected a file inside")):
            CUB(root)

    @pytest.mark.parametrize("folder", ["segmentations", "part_masks"])
    def test_mask_link_out_of_root(self, synthetic, tmp_path, no_image_reads, folder):
        root = Path(shutil.copytree(synthetic, tmp_path / "copy"))
        line = 4
        rel = (root / "images.txt").read_text().splitlines()[line - 1].split(None, 1)[1]
        victim = root / folder / Path(rel).with_suffix(".png")
        victim.unlink()
        victim.symlink_to(synthetic / folder / Path(rel).with_suffix(".png"))
        with pytest.raises(ValueError, match=re.escape(f"{root / 'images.txt'} line {line}:") + ".*"
                           + re.escape(f"for {victim})")):
            CUB(root, "test")
        CUB(root, "all", with_segmentation=False, with_part_masks=False)  # images are fine


@pytest.mark.parametrize("rel", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                 "bounding_boxes.txt", "classes.txt", "parts/parts.txt",
                                 "parts/part_locs.txt"])
class TestTextEncoding:
    def test_latin1_byte_names_file_and_line(self, tmp_path, rel):
        lines = _cub_files()[rel].encode("utf-8").splitlines(keepends=True)
        lines[1] = lines[1].rstrip(b"\n") + b"\xe9\n"  # 'é' in latin-1, on line 2
        root = _write_cub(tmp_path / "cub", {rel: b"".join(lines)})
        with pytest.raises(ValueError, match=re.escape(f"{root / rel} line 2: expected UTF-8 text "
                                                       "(the file must be UTF-8 encoded), got the byte 0xe9 "
                                                       f"at column {len(lines[1]) - 1}")):
            CUB(root)

    def test_bom_and_crlf_are_accepted(self, tmp_path, fake_cub, rel):
        text = _cub_files()[rel].replace("\n", "\r\n")
        root = _write_cub(tmp_path / "cub", {rel: b"\xef\xbb\xbf" + text.encode("utf-8")})
        ds, ref = CUB(root, "all"), CUB(fake_cub, "all")
        assert ds.classes == ref.classes and ds.part_names == ref.part_names
        assert torch.equal(ds.parts, ref.parts) and torch.equal(ds.boxes, ref.boxes)


class TestDamagedImages:
    @staticmethod
    def _damage(path: Path, how: str) -> None:
        data = path.read_bytes()
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an image at all",
                          "empty": b""}[how])

    @pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
    def test_jpeg_names_file_and_line(self, fake_cub, how):
        path = fake_cub / "images" / _image_rel(3)
        self._damage(path, how)
        ds = CUB(fake_cub, "all")  # opening does not decode images
        message = re.escape(repr(str(path))) + r": expected an image that decodes.*" + \
            re.escape(f"listed in {fake_cub / 'images.txt'} line 3")
        with pytest.raises(DamagedFile, match=message) as info:
            ds[2]
        assert info.value.path == path and isinstance(info.value, ValueError)
        with pytest.raises(DamagedFile, match=message):
            load_tensors(fake_cub, "train", size=16)
        assert ds[1]["image_id"] == 2  # the others still load

    @pytest.mark.parametrize("folder", ["images", "segmentations", "part_masks"])
    def test_png_names_file_and_line(self, synthetic, tmp_path, folder):
        root = Path(shutil.copytree(synthetic, tmp_path / "copy"))
        rel = (root / "images.txt").read_text().splitlines()[4].split(None, 1)[1]  # line 5
        path = root / folder / Path(rel).with_suffix(".png")
        self._damage(path, "truncated")
        ds = CUB(root, "all")
        with pytest.raises(DamagedFile, match=re.escape(repr(str(path))) + ".*"
                           + re.escape(f"listed in {root / 'images.txt'} line 5")):
            ds[4]

    def test_load_truncated_images_flag_is_ignored_and_restored(self, fake_cub, monkeypatch):
        # Another library may set PIL's global; the reader still refuses truncated images.
        self._damage(fake_cub / "images" / _image_rel(1), "truncated")
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        with pytest.raises(DamagedFile, match="truncated"):
            CUB(fake_cub, "all")[0]
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
        assert CUB(fake_cub, "all")[1]["image"].shape == (3, 48, 64)

    def test_fidobook_never_sets_load_truncated_images(self):
        import fidobook
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # after importing the package
        # No module sets it (a source scan: importing every module would run the book's code).
        # cub.py's reader switches it off while decoding and puts back what it found.
        allowed = {"False", "_strict_saved"}
        found = []
        for path in Path(fidobook.__file__).parent.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            found += [(path.name, v) for v in re.findall(r"LOAD_TRUNCATED_IMAGES\s*=(?!=)\s*([^\s#]+)", text)
                      if v not in allowed or path.name != "cub.py"]
            found += [(path.name, "setattr") for _ in re.findall(r"setattr\([^)]*LOAD_TRUNCATED", text)]
        assert found == []

    def test_decompression_bomb(self, fake_cub, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # image 1 has 2,000 pixels > 2 * 100
        with pytest.raises(DamagedFile, match="DecompressionBombError"):
            CUB(fake_cub, "all")[0]

    def test_part_label_out_of_range(self, synthetic, tmp_path):
        root = Path(shutil.copytree(synthetic, tmp_path / "copy"))
        rel = (root / "images.txt").read_text().splitlines()[0].split(None, 1)[1]
        path = root / "part_masks" / Path(rel).with_suffix(".png")
        mask = np.asarray(Image.open(path)).copy()
        mask[0, 0] = len(PART_NAMES)
        Image.fromarray(mask).save(path)
        with pytest.raises(DamagedFile, match=re.escape(repr(str(path))) + re.escape(
                f": expected part labels in [0, {len(PART_NAMES) - 1}]")):
            CUB(root, "all")[0]

    def test_image_removed_after_opening(self, fake_cub):
        ds = CUB(fake_cub, "all")
        path = fake_cub / "images" / _image_rel(6)
        path.unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(f"{path}: no such file (listed in "
                                                              f"{fake_cub / 'images.txt'} line 6)")):
            ds[5]
