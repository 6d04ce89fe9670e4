import pytest
import torch

from fidobook.data import PART_NAMES, PART_TYPES, class_distances, class_parts, part_differences
from fidobook.parts import (DISC_RADIUS, PART_LABELS, class_table, disc_radii,
                            discriminative_parts, error_parts, keypoint_discs, part_mass)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _slow_part_mass(maps, labels, num_labels):
    out = torch.zeros(maps.shape[0], num_labels, dtype=torch.float64)
    for n in range(maps.shape[0]):
        total = maps[n].double().sum()
        for label in range(num_labels):
            out[n, label] = maps[n][labels[n] == label].double().sum() / total
    return out


class TestPartMass:
    def test_matches_a_loop(self, gen):
        maps = torch.rand((3, 10, 12), generator=gen)
        labels = torch.randint(0, len(PART_NAMES), (3, 10, 12), generator=gen, dtype=torch.uint8)
        got = part_mass(maps, labels)
        assert got.shape == (3, len(PART_NAMES)) and got.dtype == torch.float64
        torch.testing.assert_close(got, _slow_part_mass(maps, labels, len(PART_NAMES)))
        torch.testing.assert_close(got.sum(1), torch.ones(3, dtype=torch.float64))

    def test_ones_give_area_shares_and_channel_dim_is_accepted(self):
        labels = torch.zeros((1, 4, 4), dtype=torch.long)
        labels[0, :2, :] = PART_LABELS["foot"]  # half the image
        area = part_mass(torch.ones((1, 1, 4, 4)), labels[:, None])
        assert area[0, 0] == 0.5 and area[0, PART_LABELS["foot"]] == 0.5

    def test_known_value_and_num_labels(self):
        m = torch.tensor([[[1.0, 3.0]]])
        labels = torch.tensor([[[0, 2]]])
        assert part_mass(m, labels, 3).tolist() == [[0.25, 0.0, 0.75]]

    def test_zero_map_is_nan_not_an_error(self):
        out = part_mass(torch.zeros((2, 3, 3)), torch.zeros((2, 3, 3), dtype=torch.long))
        assert torch.isnan(out).all()

    def test_bad_inputs(self):
        maps, labels = torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="same"):
            part_mass(maps, labels[:1])
        with pytest.raises(ValueError, match="non-negative"):
            part_mass(-maps, labels)
        with pytest.raises(ValueError, match="labels in"):
            part_mass(maps, labels + 8)
        with pytest.raises(TypeError, match="integer"):
            part_mass(maps, labels.float())
        with pytest.raises(TypeError, match="floating"):
            part_mass(labels, labels)
        with pytest.raises(ValueError, match="shape"):
            part_mass(maps[0], labels[0])


class TestClassTables:
    def test_class_table(self):
        classes = class_parts(12, seed=1)
        table = class_table(classes)
        assert table.shape == (12, 5) and table.dtype == torch.long
        assert table[3].tolist() == [classes[3][p] for p in PART_TYPES]
        with pytest.raises(ValueError, match="keys"):
            class_table([{"beak": 0}])
        with pytest.raises(TypeError):
            class_table({})

    def test_discriminative_parts_matches_pairwise_differences(self):
        classes = class_parts(20, seed=3)
        got = discriminative_parts(classes)
        d = class_distances(classes)
        for k in range(20):
            expected = {part_differences(classes[k], classes[j])[0]
                        for j in range(20) if d[k, j] == 1}
            assert {p for p, on in zip(PART_TYPES, got[k].tolist()) if on} == expected

    def test_error_parts(self):
        classes = [{"beak": 0, "eye": 0, "foot": 0, "tail": 0, "wing": 0},
                   {"beak": 0, "eye": 0, "foot": 1, "tail": 0, "wing": 0},
                   {"beak": 1, "eye": 0, "foot": 1, "tail": 2, "wing": 0}]
        targets = torch.tensor([0, 0, 1, 2, 2])
        predictions = torch.tensor([0, 1, 2, 0, 2])
        e = error_parts(targets, predictions, classes)
        assert e.index.tolist() == [1, 2, 3]
        assert e.distance.tolist() == [1, 2, 3]
        foot = PART_TYPES.index("foot")
        assert e.differs[0].nonzero().flatten().tolist() == [foot]
        none = error_parts([0, 1], [0, 1], classes)
        assert none.index.numel() == 0 and none.differs.shape == (0, 5)
        with pytest.raises(ValueError, match="predictions"):
            error_parts(targets, predictions[:2], classes)
        with pytest.raises(ValueError, match="class indices"):
            error_parts(targets, predictions + 3, classes)


def _slow_discs(parts, boxes, H, W, radius=DISC_RADIUS):
    """keypoint_discs as a loop over pixels: nearest visible keypoint within the radius."""
    out = torch.zeros((parts.shape[0], H, W), dtype=torch.long)
    for n in range(parts.shape[0]):
        r = max(radius * (float(boxes[n, 2]) * float(boxes[n, 3])) ** 0.5, 1.0)
        for i in range(H):
            for j in range(W):
                best, label = None, 0
                for p in range(parts.shape[1]):
                    x, y, vis = parts[n, p].tolist()
                    if vis <= 0:
                        continue
                    d = ((j + 0.5 - x) ** 2 + (i + 0.5 - y) ** 2) ** 0.5
                    if d <= r and (best is None or d < best):
                        best, label = d, p + 1
                out[n, i, j] = label
    return out


class TestKeypointDiscs:
    def test_matches_a_loop(self, gen):
        N, P, H, W = 3, 15, 13, 17  # CUB's 15 parts, a non-square image
        parts = torch.rand((N, P, 3), generator=gen) * torch.tensor([W, H, 1.0])
        parts[..., 2] = (torch.rand((N, P), generator=gen) < 0.7).float()
        parts[parts[..., 2] == 0] = 0.0  # invisible parts are (0, 0, 0), as CUB writes them
        boxes = torch.tensor([[1.0, 2.0, 12.0, 9.0], [0.0, 0.0, 40.0, 30.0], [3.0, 3.0, 2.0, 2.0]])
        got = keypoint_discs(parts, boxes, (H, W))
        assert got.shape == (N, H, W) and got.dtype == torch.long
        assert torch.equal(got, _slow_discs(parts, boxes, H, W))
        assert torch.equal(keypoint_discs(parts, boxes, (H, W), dtype=torch.uint8).long(), got)
        assert torch.equal(keypoint_discs(parts, boxes, (H, W), radius=0.3),
                           _slow_discs(parts, boxes, H, W, 0.3))

    def test_radius_scales_with_the_box(self):
        parts = torch.tensor([[[10.0, 10.0, 1.0]]]).repeat(2, 1, 1)
        boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 80.0, 80.0]])  # r = 4 and 8 px
        torch.testing.assert_close(disc_radii(boxes), torch.tensor([4.0, 8.0], dtype=torch.float64))
        area = keypoint_discs(parts, boxes, 30).sum((1, 2)).tolist()
        assert area[1] == pytest.approx(4 * area[0], rel=0.1)
        assert area[0] == pytest.approx(3.14159 * 16, rel=0.15)

    def test_nearest_wins_and_ties_go_to_the_lower_part(self):
        parts = torch.tensor([[[4.0, 5.0, 1.0], [8.0, 5.0, 1.0]]])
        boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0]])  # r = 10: the discs overlap
        got = keypoint_discs(parts, boxes, (10, 12))[0]
        assert got[5, 3] == 1 and got[5, 8] == 2
        assert got[5, 5] == 1 and got[5, 6] == 2  # centres 5.5 and 6.5: nearer to 4 and to 8
        tie = keypoint_discs(torch.tensor([[[5.5, 5.5, 1.0], [5.5, 5.5, 1.0]]]), boxes, 30)[0]
        assert set(tie.unique().tolist()) == {0, 1}

    def test_min_radius_invisible_and_empty(self):
        parts = torch.tensor([[[2.2, 3.7, 1.0], [5.0, 5.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 5.0]])  # no area: r = 1 px
        got = keypoint_discs(parts, boxes, 8)
        assert got[0, 3, 2] == 1 and (got[0] == 2).sum() == 0  # its own pixel, and no invisible part
        assert (got[1] == 0).all()  # nothing visible: background
        assert keypoint_discs(parts[:0], boxes[:0], 8).shape == (0, 8, 8)

    def test_keypoints_off_the_image_and_a_large_set(self, gen):
        parts = torch.tensor([[[-0.5, 4.0, 1.0], [9.7, 9.9, 1.0], [30.0, 30.0, 1.0]]])
        boxes = torch.tensor([[0.0, 0.0, 25.0, 25.0]])  # r = 2.5 px
        got = keypoint_discs(parts, boxes, (9, 10))
        assert torch.equal(got, _slow_discs(parts, boxes, 9, 10))
        assert (got == 1).any() and (got == 2).any() and not (got == 3).any()
        # many images: the same as each alone
        parts = torch.rand((40, 15, 3), generator=gen) * torch.tensor([24.0, 20.0, 1.3])
        boxes = torch.rand((40, 4), generator=gen) * 30
        whole = keypoint_discs(parts, boxes, (20, 24))
        for n in (0, 17, 39):
            assert torch.equal(whole[n], keypoint_discs(parts[n:n + 1], boxes[n:n + 1], (20, 24))[0])
        assert torch.equal(whole[:3], _slow_discs(parts[:3], boxes[:3], 20, 24))

    @pytest.mark.parametrize("args, kwargs, exc, match", [
        ((torch.zeros(2, 15, 2), torch.zeros(2, 4), 8), {}, ValueError, "parts: expected shape"),
        ((torch.zeros(2, 15, 3), torch.zeros(3, 4), 8), {}, ValueError, "one box per image"),
        ((torch.zeros(2, 15, 3), torch.zeros(2, 3), 8), {}, ValueError, "boxes: expected shape"),
        ((torch.zeros(2, 15, 3), torch.zeros(2, 4), 0), {}, ValueError, "size"),
        ((torch.zeros(2, 15, 3), torch.zeros(2, 4), (8, 2.5)), {}, TypeError, "size"),
        ((torch.zeros(2, 15, 3), torch.zeros(2, 4), 8), {"radius": 0}, ValueError, "radius"),
        ((torch.zeros(2, 15, 3), torch.zeros(2, 4), 8), {"dtype": torch.float32}, TypeError, "dtype"),
        ((torch.full((2, 15, 3), float("nan")), torch.zeros(2, 4), 8), {}, ValueError, "parts"),
        ((torch.zeros(1, 300, 3), torch.zeros(1, 4), 8), {"dtype": torch.uint8}, ValueError, "dtype"),
        (([[1.0, 2.0, 1.0]], torch.zeros(1, 4), 8), {}, TypeError, "parts"),
    ])
    def test_bad_input(self, args, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            keypoint_discs(*args, **kwargs)
