"""The one verdict rule (fidobook.stats.verdict) and the paired comparison built on it."""
import math

import pytest
import torch

from fidobook.stats import VERDICTS, paired_comparison, verdict


class TestVerdict:
    @pytest.mark.parametrize("low, high, margin, word", [
        (0.1, 0.2, 0.0, "better"),
        (-0.2, -0.1, 0.0, "worse"),
        (-0.1, 0.1, 0.0, "not measurably different"),
        (0.0, 0.1, 0.0, "not measurably different"),  # touching 0 is not excluding it
        (0.01, 0.1, 0.02, "better"),
        (-0.01, 0.03, 0.02, "not worse"),
        (-0.015, -0.005, 0.02, "not worse"),  # measurably lower, but by less than the margin
        (-0.05, -0.01, 0.02, "worse"),
        (-0.05, 0.01, 0.02, "inconclusive"),
        (float("nan"), 0.1, 0.0, "inconclusive"),
    ])
    def test_words(self, low, high, margin, word):
        assert verdict(low, high, margin) == word
        assert word in VERDICTS

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="low <= high"):
            verdict(0.2, 0.1)
        with pytest.raises(ValueError, match="margin"):
            verdict(0.0, 0.1, -0.1)


class TestPairedComparison:
    def test_sign_follows_the_better_direction(self):
        a, b = torch.full((40,), 0.3), torch.full((40,), 0.1)
        up = paired_comparison(a, b, resamples=200, generator=torch.Generator().manual_seed(0))
        down = paired_comparison(a, b, higher_is_better=False, resamples=200,
                                 generator=torch.Generator().manual_seed(0))
        assert up.word == "better" and math.isclose(up.mean, 0.2, rel_tol=1e-6)
        assert down.word == "worse" and math.isclose(down.mean, -0.2, rel_tol=1e-6)

    def test_nan_items_are_left_out_and_counted(self):
        a = torch.tensor([1.0, float("nan"), 2.0, 3.0])
        b = torch.tensor([1.0, 5.0, 2.0, float("nan")])
        c = paired_comparison(a, b, resamples=100, generator=torch.Generator().manual_seed(0))
        assert c.n == 2 and c.mean == 0.0 and c.word == "not measurably different"

    def test_unpaired_lengths_are_refused(self):
        with pytest.raises(ValueError, match="paired"):
            paired_comparison(torch.ones(3), torch.ones(4))
