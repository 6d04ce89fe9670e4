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
from fidobook.data.cub import IMAGE_POLICY, Fit, fit_to_size

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

    def test_size_moves_box_and_parts_with_the_pixels(self, fake_cub):
        # The policy written out as a loop: shorter side to 32, centre crop.
        ds, full = CUB(fake_cub, "all", size=32), CUB(fake_cub, "all")
        for i, (w, h) in enumerate(SIZES):
            item, ref = ds[i], full[i]
            assert item["image"].shape == (3, 32, 32)
            rw, rh = (32, int(h * 32 / w + 0.5)) if w <= h else (int(w * 32 / h + 0.5), 32)
            left, top = (rw - 32) // 2, (rh - 32) // 2
            sx, sy = rw / w, rh / h
            x, y, bw, bh = ref["box"].tolist()
            x0, x1 = (min(max(v * sx - left, 0), 32) for v in (x, x + bw))
            y0, y1 = (min(max(v * sy - top, 0), 32) for v in (y, y + bh))
            torch.testing.assert_close(item["box"], torch.tensor([x0, y0, x1 - x0, y1 - y0]))
            for (px, py, vis), got in zip(ref["parts"].tolist(), item["parts"].tolist()):
                qx, qy = px * sx - left, py * sy - top
                if vis and 0 <= qx <= 32 and 0 <= qy <= 32:
                    assert got == pytest.approx([qx, qy, 1.0], abs=1e-4)
                else:
                    assert got == [0.0, 0.0, 0.0]

    def test_grey_scale_jpeg_becomes_rgb(self, fake_cub):
        assert Image.open(fake_cub / "images" / _image_rel(4)).mode == "L"
        for size in (None, 24):
            image = CUB(fake_cub, "all", size=size)[3]["image"]
            assert image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])

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


# --------------------------------------------------------------------------------------------
# One image policy: shorter side to the size, centre crop; boxes, keypoints, segmentations and
# part masks transformed with the image.


class TestFitToSize:
    @pytest.mark.parametrize("w, h, size, resized, left, top", [
        (200, 100, 50, (100, 50), 25, 0),
        (100, 200, 50, (50, 100), 0, 25),
        (30, 70, 32, (32, 75), 0, 21),      # 74.67 rounds up; upsampling
        (80, 20, 32, (128, 32), 48, 0),
        (41, 41, 32, (32, 32), 0, 0),
        (64, 63, 64, (65, 64), 0, 0),       # crop of 1 px: left = 1 // 2 = 0
        (7, 5, 100, (140, 100), 20, 0),
    ])
    def test_known_geometry(self, w, h, size, resized, left, top):
        fit = fit_to_size(w, h, size)
        assert fit == Fit(w, h, size, resized, left, top)
        assert min(fit.resized) == size and fit.left + size <= resized[0] and fit.top + size <= resized[1]

    def test_points_boxes_parts(self):
        fit = fit_to_size(200, 100, 50)  # x * 0.5 - 25, y * 0.5
        torch.testing.assert_close(fit.points(torch.tensor([[60.0, 10.0], [0.0, 100.0]])),
                                   torch.tensor([[5.0, 5.0], [-25.0, 50.0]]))
        boxes = torch.tensor([[40.0, 20.0, 100.0, 40.0],    # cut on the left
                              [0.0, 0.0, 20.0, 10.0],       # cut off entirely
                              [60.0, 10.0, 40.0, 20.0]])    # inside
        torch.testing.assert_close(fit.boxes(boxes), torch.tensor(
            [[0.0, 10.0, 45.0, 20.0], [0.0, 0.0, 0.0, 5.0], [5.0, 5.0, 20.0, 10.0]]))
        parts = torch.tensor([[60.0, 10.0, 1.0], [10.0, 10.0, 1.0], [60.0, 10.0, 0.0],
                              [150.0, 100.0, 1.0], [151.0, 50.0, 1.0]])
        torch.testing.assert_close(fit.parts(parts), torch.tensor(
            [[5.0, 5.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [50.0, 50.0, 1.0], [0.0, 0.0, 0.0]]))

    def test_square_at_its_size_is_untouched(self):
        fit = fit_to_size(40, 40, 40)
        image = Image.fromarray(np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3))
        assert fit.identity and fit.image(image) is image
        p = torch.tensor([[3.25, 39.5, 1.0]])
        assert torch.equal(fit.parts(p), p)

    def test_square_is_only_resized(self):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (41, 41, 3), dtype=np.uint8))
        got = fit_to_size(41, 41, 32).image(image)
        assert np.array_equal(np.asarray(got), np.asarray(image.resize((32, 32), Image.BILINEAR)))

    @pytest.mark.parametrize("args, exc", [((0, 5, 3), ValueError), ((5, 5, 1.5), TypeError),
                                           ((5, -1, 3), ValueError)])
    def test_bad_arguments(self, args, exc):
        with pytest.raises(exc, match=("width", "height", "size")[[isinstance(a, float) or a <= 0
                                                                   for a in args].index(True)]):
            fit_to_size(*args)

    def test_image_of_another_size(self):
        with pytest.raises(ValueError, match="image: expected 20x10, got 10x20"):
            fit_to_size(20, 10, 8).image(Image.new("RGB", (10, 20)))


# (W, H) of the drawn images; the long axis alternates, one is square.
DRAWN = [(120, 70), (77, 131), (140, 90), (100, 100), (71, 139)]
DOT = 6  # radius of a drawn keypoint, original pixels


def _drawn_cub(root: Path) -> tuple[Path, list[dict]]:
    """A CUB folder whose images, segmentations and part masks draw the annotations: a white dot
    at part 1 on a black image, the box filled in the segmentation, a disc of label ``pid``
    around each visible keypoint in the part mask. Part 4 sits at the start of the long axis
    (the crop cuts it off); part 5 is invisible in the file."""
    files = {"classes.txt": "1 001.Black_footed_Albatross\n",
             "parts/parts.txt": "".join(f"{i} {p}\n" for i, p in enumerate(CUB_PARTS, start=1))}
    images, labels, split, boxes, locs, truth = [], [], [], [], [], []
    for iid, (w, h) in enumerate(DRAWN, start=1):
        rel = f"001.Black_footed_Albatross/Black_footed_Albatross_{iid:04d}_{iid}.jpg"
        images.append(f"{iid} {rel}\n")
        labels.append(f"{iid} 1\n")
        split.append(f"{iid} 1\n")
        x0, y0, x1, y1 = round(0.2 * w), round(0.25 * h), round(0.75 * w), round(0.8 * h)
        boxes.append(f"{iid} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0\n")
        short = min(w, h)
        kp = {1: (w / 2 + 0.13 * short, h / 2 - 0.11 * short),
              2: (w / 2 - 0.2 * short, h / 2 + 0.17 * short),
              3: (w / 2 + 0.04 * short, h / 2 + 0.21 * short),
              4: (2.5, h / 2) if w >= h else (w / 2, 2.5)}
        for pid in range(1, 16):
            x, y = kp.get(pid, (0.0, 0.0))
            locs.append(f"{iid} {pid} {x} {y} {int(pid in kp)}\n")
        yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
        image = np.zeros((h, w), np.uint8)
        image[(xx - kp[1][0]) ** 2 + (yy - kp[1][1]) ** 2 <= DOT ** 2] = 255
        seg = np.zeros((h, w), np.uint8)
        seg[y0:y1, x0:x1] = 255
        mask = np.zeros((h, w), np.uint8)
        for pid, (x, y) in kp.items():
            mask[(xx - x) ** 2 + (yy - y) ** 2 <= DOT ** 2] = pid
        for folder, array, suffix in (("images", image, ".jpg"), ("segmentations", seg, ".png"),
                                      ("part_masks", mask, ".png")):
            path = (root / folder / rel).with_suffix(suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).convert("RGB" if folder == "images" else "L").save(path, **(
                {"quality": 98} if folder == "images" else {}))
        truth.append({"box": (x0, y0, x1 - x0, y1 - y0), "kp": kp})
    files.update({"images.txt": "".join(images), "image_class_labels.txt": "".join(labels),
                  "train_test_split.txt": "".join(split), "bounding_boxes.txt": "".join(boxes),
                  "parts/part_locs.txt": "".join(locs)})
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root, truth


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    return _drawn_cub(tmp_path_factory.mktemp("drawn") / "cub")


def _centroid(weights: np.ndarray) -> tuple[float, float]:
    """(x, y) of the weighted mean of the pixel centres."""
    yy, xx = np.mgrid[0:weights.shape[0], 0:weights.shape[1]] + 0.5
    total = weights.sum()
    return float((xx * weights).sum() / total), float((yy * weights).sum() / total)


class TestImagePolicy:
    def test_stated_once(self):
        import fidobook.data.cub as cub
        assert "shorter side" in IMAGE_POLICY and "centre-crop" in IMAGE_POLICY
        assert "IMAGE_POLICY" in cub.__doc__ and "centre-cropped" in cub.__doc__

    @pytest.mark.parametrize("size", [32, 48, 96])  # 96: every image upsampled on its short side
    def test_drawn_annotations_land_where_the_transform_says(self, drawn, size):
        root, truth = drawn
        ds = CUB(root, "all", size=size)
        for i, ((w, h), t) in enumerate(zip(DRAWN, truth)):
            item = ds[i]
            fit = fit_to_size(w, h, size)
            assert item["image"].shape == (3, size, size) and item["part_mask"].shape == (size, size)
            # the box: the filled rectangle of the segmentation, clipped by the crop
            bx, by, bw, bh = item["box"].tolist()
            torch.testing.assert_close(item["box"], fit.boxes(torch.tensor(t["box"], dtype=torch.float32)))
            rows, cols = np.nonzero(item["segmentation"][0].numpy() >= 0.5)
            assert abs(cols.min() - bx) <= 1 and abs(cols.max() + 1 - (bx + bw)) <= 1
            assert abs(rows.min() - by) <= 1 and abs(rows.max() + 1 - (by + bh)) <= 1
            # the keypoints: each disc of the part mask is centred on its moved keypoint
            parts = item["parts"]
            for pid in (1, 2, 3):
                x, y, vis = parts[pid - 1].tolist()
                assert vis == 1 and (x, y) == pytest.approx(fit.points(torch.tensor(t["kp"][pid])).tolist())
                assert int(item["part_mask"][int(y), int(x)]) == pid
                cx, cy = _centroid((item["part_mask"] == pid).numpy().astype(float))
                assert abs(cx - x) <= 1 and abs(cy - y) <= 1, (w, h, size, pid)
            # the white dot of the image is at part 1
            cx, cy = _centroid(item["image"][0].numpy())
            assert abs(cx - parts[0, 0]) <= 0.75 and abs(cy - parts[0, 1]) <= 0.75, (w, h, size)
            # part 4 sits where the crop cuts (except on the square image); part 5 was invisible
            x4, y4, vis4 = parts[3].tolist()
            if w == h:
                assert vis4 == 1 and (x4, y4) == pytest.approx([2.5 * size / w, size / 2])
            else:
                assert [x4, y4, vis4] == [0.0, 0.0, 0.0]
                assert not (item["part_mask"] == 4).any()
            assert parts[4].tolist() == [0.0, 0.0, 0.0]

    def test_load_tensors_size_none_keeps_stored_sizes(self, synthetic):
        # The generated birds are read as stored; size = their own size changes nothing.
        a, b = load_tensors(synthetic, "test"), load_tensors(synthetic, "test", size=40)
        for key in ("images", "segmentations", "part_masks", "boxes", "parts"):
            assert torch.equal(a[key], b[key]), key


class TestDigest:
    def test_stable_for_a_copy_and_reads_no_pixels(self, tmp_path, fake_cub, no_image_reads):
        copy = Path(shutil.copytree(fake_cub, tmp_path / "elsewhere"))
        assert CUB(fake_cub, "all", size=32).digest() == CUB(copy, "all", size=32).digest()
        assert len(CUB(fake_cub, "all").digest()) == 64

    def test_changes_with_a_byte_the_size_or_the_split(self, tmp_path, fake_cub):
        ref = CUB(fake_cub, "all", size=32).digest()
        assert CUB(fake_cub, "all", size=24).digest() != ref
        assert CUB(fake_cub, "train", size=32).digest() != ref
        path = fake_cub / "images" / _image_rel(5)
        data = bytearray(path.read_bytes())
        data[-3] ^= 1
        path.write_bytes(bytes(data))
        assert CUB(fake_cub, "all", size=32).digest() != ref

    def test_covers_segmentations(self, tmp_path, fake_cub):
        without = CUB(fake_cub, "all").digest()
        rel = Path(_image_rel(1)).with_suffix(".png")
        for i in range(1, 7):
            path = fake_cub.parent / "segmentations" / Path(_image_rel(i)).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full(SIZES[i - 1][::-1], 255, np.uint8)).save(path)
        with_seg = CUB(fake_cub, "all").digest()
        assert with_seg != without and CUB(fake_cub, "all", with_segmentation=False).digest() == without
        Image.fromarray(np.zeros(SIZES[0][::-1], np.uint8)).save(fake_cub.parent / "segmentations" / rel)
        assert CUB(fake_cub, "all").digest() != with_seg
