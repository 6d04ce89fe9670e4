import pytest
import torch

from fidobook.data import PART_NAMES, PART_TYPES, class_distances, class_parts, part_differences
from fidobook.parts import (PART_LABELS, class_table, discriminative_parts, error_parts,
                            part_mass)


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
