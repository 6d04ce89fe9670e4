import itertools
import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from fidobook.cam import cbam_attention, grad_cam
from fidobook.overmap import (REJECTION_RATES, SOURCES, accept_order, attention_sources, aurc, augrc,
                              auroc, bootstrap, compare_rejection, compare_scores, e_aurc,
                              max_softmax, mc_dropout_probs, mc_dropout_scores, negative_entropy,
                              overlap_iou, overlap_mass, overmap_maps, overmap_scores,
                              rejection_table, risk_coverage, topk_correct)
from fidobook.segmentation import guided_segmentation, segment
from fidobook.stats import VERDICTS

# Five predictions, already in order of confidence: right, wrong, right, right, wrong.
CONF = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
OK = torch.tensor([True, False, True, True, False])


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _brute_force_curve(conf, ok):
    """Mean risk curve over every input order, each stably sorted: the tie expectation."""
    curves = []
    for perm in itertools.permutations(range(len(conf))):
        p = torch.tensor(perm)
        order = torch.argsort(conf[p], descending=True, stable=True)
        wrong = (~ok[p][order]).double()
        curves.append(wrong.cumsum(0) / torch.arange(1, len(conf) + 1))
    return torch.stack(curves).mean(0)


class TestRiskCoverage:
    def test_hand_computed(self):
        coverage, risk = risk_coverage(CONF, OK)
        torch.testing.assert_close(coverage, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0],
                                                          dtype=torch.float64))
        torch.testing.assert_close(risk, torch.tensor([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5],
                                                      dtype=torch.float64))

    def test_areas_hand_computed(self):
        # risks 0, 1/2, 1/3, 1/4, 2/5; perfect ranking (3 right first): 0, 0, 0, 1/4, 2/5
        assert aurc(CONF, OK) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
        assert e_aurc(CONF, OK) == pytest.approx((1 / 2 + 1 / 3) / 5)
        # errors accepted at k = 1..5: 0, 1, 1, 1, 2 -> generalized risks /5, mean over 5
        assert augrc(CONF, OK) == pytest.approx(5 / 25)
        assert auroc(CONF, OK) == pytest.approx(4 / 6)

    def test_perfect_and_worst_rankings(self):
        best = OK.double()
        assert aurc(best, OK) == pytest.approx((1 / 4 + 2 / 5) / 5)
        assert e_aurc(best, OK) == pytest.approx(0.0, abs=1e-15)
        assert augrc(best, OK) == pytest.approx((1 + 2) / 25)
        assert auroc(best, OK) == 1.0
        worst = -best  # both errors first: risks 1, 1, 2/3, 2/4, 2/5
        assert aurc(worst, OK) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2 + 2 / 5) / 5)
        assert augrc(worst, OK) == pytest.approx((1 + 2 + 2 + 2 + 2) / 25)
        assert auroc(worst, OK) == 0.0

    def test_all_right_and_all_wrong(self):
        conf = torch.tensor([0.3, 0.1, 0.2, 0.9])
        right, wrong = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
        assert (aurc(conf, right), e_aurc(conf, right), augrc(conf, right)) == (0.0, 0.0, 0.0)
        assert aurc(conf, wrong) == 1.0 and e_aurc(conf, wrong) == pytest.approx(0.0, abs=1e-15)
        assert augrc(conf, wrong) == pytest.approx((1 + 2 + 3 + 4) / 16)
        assert math.isnan(auroc(conf, wrong))

    def test_ties_hand_computed(self):
        # Blocks {0.9: right}, {0.5: right, wrong}, {0.1: wrong}. At k = 2 half of the tied
        # block's error is expected: risks 0, 0.5/2, 1/3, 2/4 (mean of the two orders).
        conf = torch.tensor([0.5, 0.9, 0.1, 0.5])
        ok = torch.tensor([False, True, False, True])
        _, risk = risk_coverage(conf, ok)
        torch.testing.assert_close(risk, torch.tensor([0, 0.25, 1 / 3, 0.5], dtype=torch.float64))
        assert aurc(conf, ok) == pytest.approx((0.25 + 1 / 3 + 0.5) / 4)
        assert augrc(conf, ok) == pytest.approx((0 + 0.5 + 1 + 2) / 16)
        assert auroc(conf, ok) == pytest.approx(3.5 / 4)

    def test_ties_match_the_mean_over_orders(self):
        conf = torch.tensor([0.2, 0.7, 0.2, 0.7, 0.2, 0.9])
        ok = torch.tensor([True, False, False, True, True, False])
        torch.testing.assert_close(risk_coverage(conf, ok)[1], _brute_force_curve(conf, ok))

    def test_input_order_does_not_matter(self, gen):
        conf = torch.randint(0, 5, (200,), generator=gen).float() / 4  # many ties
        ok = torch.rand(200, generator=gen) < 0.7
        perm = torch.randperm(200, generator=gen)
        torch.testing.assert_close(risk_coverage(conf, ok)[1], risk_coverage(conf[perm], ok[perm])[1])
        for f in (aurc, e_aurc, augrc, auroc):
            assert f(conf, ok) == pytest.approx(f(conf[perm], ok[perm]), abs=1e-12)

    def test_numpy_inputs_and_infinities(self):
        # inf is the most confident, -inf the least: order 0, 1, 3, 4, 2 (right, wrong, right,
        # wrong, right): risks 0, 1/2, 1/3, 2/4, 2/5
        conf = np.array([np.inf, 0.8, -np.inf, 0.6, 0.5])
        _, risk = risk_coverage(conf, OK.numpy())
        torch.testing.assert_close(risk, torch.tensor([0, 1 / 2, 1 / 3, 2 / 4, 2 / 5],
                                                      dtype=torch.float64))
        value = aurc(CONF.numpy(), [bool(v) for v in OK])
        assert isinstance(value, float) and value == aurc(CONF, OK)

    def test_exact_perfect_aurc_is_near_the_integral_for_large_n(self, gen):
        ok = torch.rand(20000, generator=gen) < 0.8
        r = 1 - float(ok.double().mean())
        exact = aurc(ok.double(), ok)
        assert exact == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-3)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="correct"):
            aurc(CONF, OK[:4])
        with pytest.raises(ValueError, match="confidence.*NaN"):
            aurc(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
        with pytest.raises(ValueError, match="confidence.*empty"):
            risk_coverage(torch.tensor([]), torch.tensor([], dtype=torch.bool))
        with pytest.raises(TypeError, match="correct.*booleans"):
            e_aurc(CONF, OK.long())
        with pytest.raises(ValueError, match="confidence.*1-D"):
            augrc(CONF[None], OK)
        with pytest.raises(TypeError, match="confidence"):
            aurc("0.9", OK)


def _trapezoid_reference(conf, ok, generalized):
    """The AUGRC paper's integration (IML-DKFZ/fd-shifts, RiskCoverageStats), re-derived: the
    trapezoid rule over the points at the ends of tie blocks plus a point at coverage 0
    (generalized risk 0 there; the selective risk holds its first value)."""
    conf, ok = np.asarray(conf, dtype=float), np.asarray(ok, dtype=bool)
    n = len(conf)
    order = np.argsort(-conf, kind="stable")
    c, errors = conf[order], np.cumsum(~ok[order])
    ends = [k for k in range(n) if k == n - 1 or c[k] != c[k + 1]]
    coverage = [0.0] + [(k + 1) / n for k in ends]
    if generalized:
        risk = [0.0] + [errors[k] / n for k in ends]
    else:
        first = [errors[k] / (k + 1) for k in ends]
        risk = [first[0]] + first
    return sum((coverage[i + 1] - coverage[i]) * (risk[i] + risk[i + 1]) / 2 for i in range(len(ends)))


class TestAgainstThePapersTrapezoid:
    @pytest.mark.parametrize("ties", [False, True])
    def test_augrc_exceeds_the_trapezoid_by_err_over_2n(self, ties):
        rng = np.random.default_rng(7 + ties)
        for _ in range(20):
            n = int(rng.integers(1, 30))
            conf = rng.integers(0, 4, n).astype(float) if ties else rng.random(n)
            ok = rng.random(n) < 0.6
            err = float((~ok).mean())
            assert augrc(conf, ok) - _trapezoid_reference(conf, ok, True) == pytest.approx(
                err / (2 * n), abs=1e-12)

    def test_hand_computed_identity(self):
        # CONF/OK: AUGRC 5/25 = 0.2 here; the trapezoid from (0, 0) gives 0.2 − (2/5)/(2·5) = 0.16
        assert _trapezoid_reference(CONF, OK, True) == pytest.approx(0.16)
        assert augrc(CONF, OK) - 0.16 == pytest.approx(0.4 / 10)

    def test_aurc_without_ties(self):
        rng = np.random.default_rng(3)
        for _ in range(20):
            n = int(rng.integers(1, 30))
            conf, ok = rng.random(n), rng.random(n) < 0.6
            first_wrong = float(not ok[np.argmax(conf)])
            err = float((~ok).mean())
            assert aurc(conf, ok) - _trapezoid_reference(conf, ok, False) == pytest.approx(
                (err - first_wrong) / (2 * n), abs=1e-12)


class TestSequenceInputs:
    def test_non_numeric_and_ragged_sequences(self):
        with pytest.raises(TypeError, match="confidence: expected numbers"):
            aurc(["a", "b"], [True, False])
        with pytest.raises(TypeError, match="confidence: expected numbers"):
            aurc(np.array([None, 1.0]), [True, False])
        with pytest.raises(ValueError, match="confidence: expected a flat sequence"):
            aurc([[1.0], [2.0, 3.0]], [True, False])
        assert aurc([0.9, 0.1], [True, False]) == aurc(np.array([0.9, 0.1]), np.array([True, False]))


class TestBootstrap:
    def test_reproducible_and_batched_equals_loop(self, gen):
        conf = torch.rand(60, generator=gen)
        ok = torch.rand(60, generator=gen) < conf + 0.2
        a = bootstrap(aurc, conf, ok, n_boot=200, generator=1)
        b = bootstrap("aurc", conf, ok, n_boot=200, generator=torch.Generator().manual_seed(1))
        loop = bootstrap(lambda c, k: aurc(c, k), conf, ok, n_boot=200, generator=1)
        assert a == b
        assert a == pytest.approx(loop, abs=1e-12)
        for f in (e_aurc, augrc, auroc):  # every batched statistic equals its loop
            batched = bootstrap(f, conf, ok, n_boot=50, generator=3)
            looped = bootstrap(lambda c, k, f=f: f(c, k), conf, ok, n_boot=50, generator=3)
            assert batched == pytest.approx(looped, abs=1e-12)
        estimate, low, high = a
        assert estimate == aurc(conf, ok) and low < estimate < high

    def test_all_statistics_and_level(self, gen):
        conf = torch.rand(80, generator=gen)
        ok = torch.rand(80, generator=gen) < conf
        for name in ("aurc", "e_aurc", "augrc", "auroc"):
            _, lo90, hi90 = bootstrap(name, conf, ok, n_boot=300, generator=2, level=0.9)
            _, lo99, hi99 = bootstrap(name, conf, ok, n_boot=300, generator=2, level=0.99)
            assert lo99 <= lo90 <= hi90 <= hi99

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="statistic"):
            bootstrap("accuracy", CONF, OK, generator=0)
        with pytest.raises(ValueError, match="level"):
            bootstrap(aurc, CONF, OK, generator=0, level=1.0)
        with pytest.raises(TypeError, match="generator"):
            bootstrap(aurc, CONF, OK, generator=None)
        with pytest.raises(ValueError, match="n_boot"):
            bootstrap(aurc, CONF, OK, generator=0, n_boot=0)


# Six predictions over K = 4 classes (label −1: no known class). top-1 right: 0, 2, 3;
# top-3 right: 0, 1, 2, 3. Groups: class 0 {0, 5}, class 1 {1, 2}, class 2 {3}, −1 {4}.
TABLE_LOGITS = torch.tensor([[3.0, 2, 1, 0], [3, 2, 1, 0], [0, 3, 2, 1],
                             [0, 1, 3, 2], [3, 2, 1, 0], [0, 3, 2, 1]])
TABLE_LABELS = torch.tensor([0, 1, 1, 2, -1, 0])
TABLE_CONF = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


class TestRejectionTable:
    def test_topk_correct(self):
        assert topk_correct(TABLE_LOGITS, TABLE_LABELS, 1).tolist() == [1, 0, 1, 1, 0, 0]
        assert topk_correct(TABLE_LOGITS, TABLE_LABELS, 3).tolist() == [1, 1, 1, 1, 0, 0]
        assert not topk_correct(TABLE_LOGITS, TABLE_LABELS, 4)[4]  # −1 is never right

    def test_hand_computed(self):
        rows = rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS, rates=(0, 0.2, 0.5, 1))
        got = [[r["rejected"], r["kept"], r["top1_micro"], r["top1_macro"], r["top3_micro"],
                r["top3_macro"]] for r in rows]
        expected = [
            [0, 1.0, 3 / 6, (1 / 2 + 1 / 2 + 1 + 0) / 4, 4 / 6, (1 / 2 + 1 + 1 + 0) / 4],
            [1, 5 / 6, 3 / 5, (1 + 1 / 2 + 1 + 0) / 4, 4 / 5, (1 + 1 + 1 + 0) / 4],
            [3, 0.5, 2 / 3, (1 + 1 / 2) / 2, 1.0, 1.0],  # classes 2 and −1 all rejected
        ]
        for g, e in zip(got, expected):
            assert g == pytest.approx(e)
        assert rows[0]["threshold"] == pytest.approx(0.4) and rows[2]["threshold"] == pytest.approx(0.7)
        assert rows[3]["rejected"] == 6 and math.isnan(rows[3]["top1_micro"])
        assert [r["rate"] for r in rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS)] == \
            list(REJECTION_RATES)

    def test_ties_reject_the_later_sample_first(self):
        conf = torch.zeros(6)  # all tied: the first three inputs are kept
        rows = rejection_table(conf, TABLE_LOGITS, TABLE_LABELS, rates=(0.5,))
        assert rows[0]["top1_micro"] == pytest.approx(2 / 3)

    def test_random_tie_breaking(self):
        conf = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1, 0.5])
        assert accept_order(conf).tolist() == [1, 0, 2, 3, 5, 4]
        orders = {tuple(accept_order(conf, generator=g).tolist()) for g in range(30)}
        assert len(orders) > 1  # the tied block comes in different orders
        for order in orders:
            assert order[0] == 1 and order[-1] == 4 and sorted(order[1:5]) == [0, 2, 3, 5]
        assert accept_order(conf, generator=3).tolist() == accept_order(conf, generator=3).tolist()
        ties = torch.zeros(6)
        a = rejection_table(ties, TABLE_LOGITS, TABLE_LABELS, rates=(0.5,), generator=1)
        b = rejection_table(ties, TABLE_LOGITS, TABLE_LABELS, rates=(0.5,),
                            generator=torch.Generator().manual_seed(1))
        assert a == b
        with pytest.raises(TypeError, match="generator"):
            accept_order(conf, generator="0")

    def test_rounding_of_the_rejected_count(self):
        rows = rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS, rates=(0.05, 0.1, 0.25))
        assert [r["rejected"] for r in rows] == [0, 1, 2]  # 0.3 -> 0, 0.6 -> 1, 1.5 -> 2

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="rates"):
            rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS, rates=(1.5,))
        with pytest.raises(ValueError, match="logits"):
            rejection_table(TABLE_CONF[:5], TABLE_LOGITS, TABLE_LABELS)
        with pytest.raises(ValueError, match="labels"):
            rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS - 1)
        with pytest.raises(TypeError, match="labels"):
            topk_correct(TABLE_LOGITS, TABLE_LABELS.float())
        with pytest.raises(ValueError, match="k"):
            topk_correct(TABLE_LOGITS, TABLE_LABELS, 5)

    @pytest.mark.parametrize("kwargs, error, message", [
        ({"ks": ()}, ValueError, "ks: expected a non-empty sequence"),
        ({"ks": []}, ValueError, "ks: expected a non-empty sequence"),
        ({"ks": 1}, TypeError, "ks: expected a sequence of ints"),
        ({"ks": "13"}, TypeError, "ks: expected a sequence of ints"),
        ({"ks": (1, 1)}, ValueError, "ks: expected distinct values"),
        ({"ks": (1, 5)}, ValueError, r"ks: expected values in \[1, 4\]"),
        ({"ks": (0,)}, ValueError, "ks: expected an int >= 1"),
        ({"ks": (1.0,)}, TypeError, "ks: expected an int"),
        ({"rates": ()}, ValueError, "rates: expected a non-empty sequence"),
        ({"rates": 0.1}, TypeError, "rates: expected a sequence"),
        ({"rates": None}, TypeError, "rates: expected a sequence"),
        ({"rates": ("0.1",)}, TypeError, "rates: expected rejection rates"),
        ({"rates": (float("nan"),)}, ValueError, r"rates: expected rejection rates in \[0, 1\]"),
    ])
    def test_empty_and_invalid_arguments(self, kwargs, error, message):
        with pytest.raises(error, match=message):
            rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS, **kwargs)

    def test_array_arguments(self):
        rows = rejection_table(TABLE_CONF, TABLE_LOGITS, TABLE_LABELS, rates=np.array([0.0, 0.5]),
                               ks=torch.tensor([2]))
        assert [r["rate"] for r in rows] == [0.0, 0.5]
        assert sorted(rows[0])[-2:] == ["top2_macro", "top2_micro"]


class TestBaselines:
    def test_softmax_and_entropy(self):
        logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -1e4, -1e4]])
        torch.testing.assert_close(max_softmax(logits), torch.tensor([0.25, 0.75]))
        h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
        torch.testing.assert_close(negative_entropy(logits), torch.tensor([-math.log(4), -h2]))
        with pytest.raises(ValueError, match="logits"):
            max_softmax(torch.zeros(3))
        with pytest.raises(ValueError, match="logits.*NaN"):
            negative_entropy(torch.tensor([[0.0, float("nan")]]))

    def test_mc_dropout_scores_hand_computed(self):
        probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]],
                              [[0.0, 1.0], [0.5, 0.5]]])  # T=2, N=2, K=2
        s = mc_dropout_scores(probs)
        torch.testing.assert_close(s["msp"], torch.tensor([0.5, 0.5]))
        torch.testing.assert_close(s["negative_entropy"], torch.full((2,), -math.log(2)))
        # disagreeing certain passes: all of it epistemic; agreeing passes: none
        torch.testing.assert_close(s["negative_mutual_information"],
                                   torch.tensor([-math.log(2), 0.0]))
        with pytest.raises(ValueError, match="probs"):
            mc_dropout_scores(probs[0])
        with pytest.raises(ValueError, match="probs"):
            mc_dropout_scores(probs * 2)


def _dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3))


class TestMCDropout:
    def test_modes_state_and_global_rng_untouched(self, gen):
        net = _dropout_net().train()
        net[1].eval()  # a mixed state must come back mixed
        modes = [m.training for m in net.modules()]
        stats = net[1].running_mean.clone()
        seen = []
        hook = net[1].register_forward_hook(
            lambda m, i, o: seen.append((m.training, net[5].training)))
        images = torch.rand((5, 3, 8, 8), generator=gen)
        rng = torch.get_rng_state()
        try:
            probs = mc_dropout_probs(net, images, 4, generator=gen, batch_size=2)
        finally:
            hook.remove()
        assert probs.shape == (4, 5, 3)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4, 5))
        assert set(seen) == {(False, True)}  # batch norm in eval, dropout sampling
        assert [m.training for m in net.modules()] == modes
        assert torch.equal(net[1].running_mean, stats)
        assert torch.equal(torch.get_rng_state(), rng)
        assert not torch.allclose(probs[0], probs[1])  # the passes differ

    def test_reproducible_with_a_seed(self, gen):
        net = _dropout_net().eval()
        images = (torch.rand((3, 3, 8, 8), generator=gen) * 255).to(torch.uint8)
        a = mc_dropout_probs(net, images, 3, generator=torch.Generator().manual_seed(5))
        b = mc_dropout_probs(net, images, 3, generator=torch.Generator().manual_seed(5))
        c = mc_dropout_probs(net, images, 3, generator=6)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert not net.training

    def test_bad_inputs(self, gen):
        net = _dropout_net()
        images = torch.rand((2, 3, 8, 8), generator=gen)
        with pytest.raises(ValueError, match="passes"):
            mc_dropout_probs(net, images, 1, generator=0)
        with pytest.raises(TypeError, match="generator"):
            mc_dropout_probs(net, images, 2, generator=None)
        with pytest.raises(ValueError, match="images"):
            mc_dropout_probs(net, images * 2, 2, generator=0)
        with pytest.raises(ValueError, match="dropout"):
            mc_dropout_probs(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), images, 2, generator=0)


class TestOverlap:
    MAPS = torch.tensor([[[0.0, 0.2], [0.6, 1.0]],
                         [[1.0, 1.0], [1.0, 1.0]]])  # (2, 2, 2)
    SEG = torch.tensor([[[False, True], [True, False]],
                        [[True, False], [False, False]]])

    def test_mass_hand_computed_and_not_available(self):
        torch.testing.assert_close(overlap_mass(self.MAPS, self.SEG),
                                   torch.tensor([0.8 / 1.8, 0.25], dtype=torch.float64))
        got = overlap_mass(self.MAPS, self.SEG, torch.tensor([True, False]))
        torch.testing.assert_close(got, torch.tensor([0.8 / 1.8, 0.0], dtype=torch.float64))
        zero = overlap_mass(torch.zeros(1, 2, 2), self.SEG[:1])
        assert zero.tolist() == [0.0]

    def test_iou_hand_computed(self):
        # map 1: region >= 0.5 is {0.6, 1.0}; seg {0.2, 0.6}: 1 shared of 3 -> 1/3.
        # map 2 is constant: an empty region -> 0.
        torch.testing.assert_close(overlap_iou(self.MAPS, self.SEG),
                                   torch.tensor([1 / 3, 0.0], dtype=torch.float64))
        # scale does not matter after normalisation; without it, 0.2 falls below 0.5 anyway
        torch.testing.assert_close(overlap_iou(10 * self.MAPS, self.SEG), overlap_iou(self.MAPS, self.SEG))
        raw = overlap_iou(self.MAPS, self.SEG, normalize=False, threshold=0.1)
        torch.testing.assert_close(raw, torch.tensor([2 / 3, 1 / 4], dtype=torch.float64))
        assert overlap_iou(self.MAPS, self.SEG, available=torch.tensor([False, True]))[0] == 0

    def test_mask_formats_and_segmentation_objects(self):
        expected = overlap_mass(self.MAPS, self.SEG)
        for seg in (self.SEG.to(torch.uint8) * 255, self.SEG.to(torch.uint8), self.SEG.long(),
                    self.SEG.float() * 0.9, self.SEG[:, None]):
            torch.testing.assert_close(overlap_mass(self.MAPS[:, None], seg), expected)
        Segmentation = namedtuple("Segmentation", "masks available probs")
        seg = Segmentation(self.SEG, torch.tensor([False, True]), None)
        torch.testing.assert_close(overlap_mass(self.MAPS, seg),
                                   torch.tensor([0.0, 0.25], dtype=torch.float64))

    def test_iou_undefined_is_zero_by_the_overmap_policy(self):
        # empty region (constant map) and empty segmentation: the IoU is undefined (NaN in
        # fidobook.metrics.map_iou); Over-MAP's confidence is 0, like "not available"
        empty = torch.zeros(1, 2, 2, dtype=torch.bool)
        assert overlap_iou(torch.ones(1, 2, 2), empty).tolist() == [0.0]
        assert overlap_iou(torch.zeros(1, 2, 2), empty, normalize=False).tolist() == [0.0]
        with pytest.raises(TypeError, match="normalize"):
            overlap_iou(self.MAPS, self.SEG, normalize=1)

    def test_part_labels_are_not_a_segmentation(self):
        labels = torch.tensor([[[0, 3], [7, 1]]])
        with pytest.raises(ValueError, match="segmentations: expected a binary integer mask"):
            overlap_mass(self.MAPS[:1], labels)
        with pytest.raises(ValueError, match="segmentations: expected a binary integer mask"):
            overlap_iou(self.MAPS[:1], labels.to(torch.uint8))

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="segmentations"):
            overlap_mass(self.MAPS, self.SEG[:, :1])
        with pytest.raises(ValueError, match="maps.*non-negative"):
            overlap_iou(-self.MAPS, self.SEG)
        with pytest.raises(ValueError, match="available"):
            overlap_mass(self.MAPS, self.SEG, torch.tensor([1, 0]))
        with pytest.raises(ValueError, match="threshold"):
            overlap_iou(self.MAPS, self.SEG, threshold=1.5)
        with pytest.raises(ValueError, match="segmentations.*range"):
            overlap_mass(self.MAPS, self.SEG.float() * 2)
        with pytest.raises(TypeError, match="maps"):
            overlap_mass(self.SEG, self.SEG)


# --------------------------------------------------------------------------------------------
# The pipeline: overmap_scores / overmap_maps / attention_sources, and the paired comparisons
# --------------------------------------------------------------------------------------------

class _RedSegmenter(nn.Module):
    """Known-answer segmenter: object where the red channel exceeds 0.5 (logit ±10)."""

    def forward(self, x):
        return 20 * (x[:, :1] - 0.5)


@pytest.fixture(scope="module")
def tiny():
    """A tiny CBAM classifier, a segmenter, 6 images of 16 px (a red square on each) and their
    true squares."""
    from fidobook.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(3, width=4).eval()
    g = torch.Generator().manual_seed(1)
    images = 0.4 * torch.rand(6, 3, 16, 16, generator=g)
    truth = torch.zeros(6, 16, 16, dtype=torch.bool)
    for i in range(6):
        a = 2 + i % 4
        truth[i, a:a + 6 + i % 3, a + 1:a + 7] = True
    images[:, 0][truth] = 0.9  # a red square: the segmenter's object
    images[5] = 0.2  # no red at all: the segmentation is not available
    truth[5] = False
    truth[5, 0, 0] = True
    return model, _RedSegmenter(), images, truth


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


class TestOverMAPScores:
    def test_equals_the_pieces_composed_by_hand(self, tiny):
        model, seg, images, truth = tiny
        got = overmap_scores(model, images, segmenter=seg, objects=truth,
                             segmentations=("guided", "plain", "true"))
        targets = model(images).argmax(1)  # None: the prediction
        cam = grad_cam(model, images, targets)
        att = cbam_attention(model, images)
        plain = segment(seg, images)
        guided = guided_segmentation(plain.probs, cam)
        segs = {"guided": (guided.masks, guided.available), "plain": (plain.masks, plain.available),
                "true": (truth, torch.ones(6, dtype=torch.bool))}
        for source, m in (("gradcam", cam), ("cbam", att)):
            for kind, (masks, ok) in segs.items():
                torch.testing.assert_close(got[f"{source}/{kind}"], overlap_mass(m, masks, ok))
                torch.testing.assert_close(got[f"{source}/{kind}/iou"], overlap_iou(m, masks, 0.5, ok))
        assert torch.equal(got["available/guided"], guided.available)
        assert got["available/plain"].tolist() == [True] * 5 + [False]  # image 5: no red
        assert got["available/true"].all()
        assert got["gradcam/plain"][5] == 0 and got["cbam/guided"][5] == 0  # not available: 0
        iou = got["segmentation_iou"]
        assert torch.allclose(iou[:5], torch.ones(5, dtype=torch.float64))  # the red squares
        assert iou[5] == 0  # an empty mask against a one-pixel object
        assert list(got)[:2] == ["gradcam/guided", "gradcam/guided/iou"]
        for v in got.values():
            assert v.shape == (6,) and v.device.type == "cpu"

    def test_batch_size_targets_and_uint8(self, tiny):
        model, seg, images, _ = tiny
        whole = overmap_scores(model, images, [1] * 6, segmenter=seg)
        for kw in ({"batch_size": 1}, {"batch_size": 4}):
            parts = overmap_scores(model, images, torch.ones(6, dtype=torch.long), segmenter=seg, **kw)
            for k in whole:
                torch.testing.assert_close(parts[k], whole[k])
        as_bytes = (images * 255).round().to(torch.uint8)
        a = overmap_scores(model, as_bytes, 1, segmenter=seg, batch_size=4)
        b = overmap_scores(model, as_bytes.float() / 255, 1, segmenter=seg)
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        other = overmap_scores(model, images, 0, segmenter=seg)
        assert not torch.equal(other["gradcam/guided"], whole["gradcam/guided"])  # targets matter
        torch.testing.assert_close(other["cbam/plain"], whole["cbam/plain"])  # CBAM is classless

    def test_extra_maps_known_answer(self, tiny):
        model, seg, images, truth = tiny
        inside = truth.float()  # all its mass on the object: 1 where the segmentation is right
        got = overmap_scores(model, images, segmenter=seg, objects=truth, sources=(),
                             segmentations=("true", "plain"), extra_maps={"oracle_map": inside})
        assert set(got) == {"oracle_map/true", "oracle_map/true/iou", "oracle_map/plain",
                            "oracle_map/plain/iou", "available/true", "available/plain",
                            "segmentation_iou"}
        assert got["oracle_map/true"].tolist() == [1.0] * 6
        assert got["oracle_map/plain"].tolist() == [1.0] * 5 + [0.0]  # not available: 0
        on_channel = overmap_scores(model, images, segmenter=seg, sources=(),
                                    segmentations=("plain",), extra_maps={"m": inside[:, None]})
        torch.testing.assert_close(on_channel["m/plain"], got["oracle_map/plain"])

    def test_guided_without_gradcam_source_and_true_only(self, tiny):
        model, seg, images, truth = tiny
        full = overmap_scores(model, images, segmenter=seg)
        only_cbam = overmap_scores(model, images, segmenter=seg, sources=("cbam",))
        assert set(only_cbam) == {"cbam/guided", "cbam/guided/iou", "cbam/plain", "cbam/plain/iou",
                                  "available/guided", "available/plain"}
        torch.testing.assert_close(only_cbam["cbam/guided"], full["cbam/guided"])
        oracle = overmap_scores(model, images, objects=truth, segmentations=("true",))
        assert set(oracle) == {f"{s}/true{x}" for s in SOURCES for x in ("", "/iou")} | {"available/true"}

    def test_maps_match_scores(self, tiny):
        model, seg, images, truth = tiny
        kw = {"segmenter": seg, "segmentations": ("guided", "plain", "true")}
        scores = overmap_scores(model, images, objects=truth, **kw)
        maps, segs = overmap_maps(model, images[:3], objects=truth[:3], **kw, batch_size=2)
        assert list(maps) == ["gradcam", "cbam"] and list(segs) == ["guided", "plain", "true"]
        for source, m in maps.items():
            assert m.shape == (3, 16, 16) and m.device.type == "cpu"
            for kind, s in segs.items():
                torch.testing.assert_close(overlap_mass(m, s.masks, s.available),
                                           scores[f"{source}/{kind}"][:3])

    def test_no_hook_survives_a_run_or_an_error(self, tiny):
        model, seg, images, _ = tiny
        before = _hooks(model)
        overmap_scores(model, images, segmenter=seg, batch_size=3)
        assert _hooks(model) == before

        class Broken(nn.Module):
            def forward(self, x):
                raise RuntimeError("segmenter broke")

        with pytest.raises(RuntimeError, match="segmenter broke"):
            overmap_scores(model, images, segmenter=Broken())
        assert _hooks(model) == before
        assert not model.training and all(p.requires_grad for p in model.parameters())

    def test_attention_sources(self, tiny):
        from fidobook.models import SmallCNN
        from fidobook.models.resnet import resnet

        assert attention_sources(tiny[0]) == ("gradcam", "cbam")
        assert attention_sources(SmallCNN(3, width=4, cbam=False)) == ("gradcam",)
        assert attention_sources(resnet("resnet18", 3)) == ("gradcam",)
        assert attention_sources(resnet("resnet18", 3, cbam=True)) == ("gradcam", "cbam")
        assert attention_sources(nn.Linear(2, 2)) == ()
        with pytest.raises(TypeError, match="model"):
            attention_sources("resnet18")

    def test_errors(self, tiny):
        from fidobook.models import SmallCNN

        model, seg, images, truth = tiny
        with pytest.raises(ValueError, match="sources: 'cbam' needs CBAM blocks"):
            overmap_scores(SmallCNN(3, width=4, cbam=False), images, segmenter=seg)
        with pytest.raises(ValueError, match="segmenter"):
            overmap_scores(model, images)
        with pytest.raises(ValueError, match="objects"):
            overmap_scores(model, images, segmenter=seg, segmentations=("true",))
        with pytest.raises(ValueError, match="objects: expected shape"):
            overmap_scores(model, images, objects=truth[:3], segmentations=("true",))
        with pytest.raises(ValueError, match="sources"):
            overmap_scores(model, images, segmenter=seg, sources=("fido",))
        with pytest.raises(ValueError, match="sources"):
            overmap_scores(model, images, segmenter=seg, sources=())
        with pytest.raises(ValueError, match="segmentations"):
            overmap_scores(model, images, segmenter=seg, segmentations=("plain", "plain"))
        with pytest.raises(TypeError, match="segmentations"):
            overmap_scores(model, images, segmenter=seg, segmentations="plain")
        with pytest.raises(ValueError, match="extra_maps"):
            overmap_scores(model, images, segmenter=seg, extra_maps={"gradcam": truth.float()})
        with pytest.raises(ValueError, match="extra_maps"):
            overmap_scores(model, images, segmenter=seg, extra_maps={"a/b": truth.float()})
        with pytest.raises(ValueError, match=r"extra_maps\['m'\]: expected non-negative"):
            overmap_scores(model, images, segmenter=seg, extra_maps={"m": -truth.float()})
        with pytest.raises(ValueError, match=r"extra_maps\['m'\]: expected shape"):
            overmap_scores(model, images, segmenter=seg, extra_maps={"m": truth[:2].float()})
        with pytest.raises(ValueError, match="images"):
            overmap_scores(model, images * 2, segmenter=seg)
        with pytest.raises(ValueError, match="images: expected 3 channels"):
            overmap_scores(model, images[:, :2], segmenter=seg)
        with pytest.raises(ValueError, match="target"):
            overmap_scores(model, images, 7, segmenter=seg)
        with pytest.raises(ValueError, match="iou_threshold"):
            overmap_scores(model, images, segmenter=seg, iou_threshold=2.0)
        with pytest.raises(TypeError, match="images"):
            overmap_scores(model, images.double(), segmenter=seg)  # no silent cast


class TestCompareScores:
    def test_perfect_against_random_and_self(self, gen):
        ok = torch.rand(60, generator=gen) < 0.7
        perfect, random = ok.double(), torch.zeros(60)
        c = compare_scores("e_aurc", perfect, random, ok, n_boot=200, generator=0)
        assert c.word == "better" and c.n == 60 and c.margin == 0
        assert c.mean == pytest.approx(e_aurc(random, ok) - e_aurc(perfect, ok))
        assert c.low > 0
        worse = compare_scores("aurc", random, perfect, ok, n_boot=200, generator=0)
        assert worse.word == "worse" and worse.mean == pytest.approx(-c.mean)
        assert compare_scores("auroc", perfect, random, ok, n_boot=200, generator=0).word == "better"
        same = compare_scores("augrc", perfect, perfect, ok, n_boot=50, generator=0)
        assert (same.mean, same.low, same.high, same.word) == (0.0, 0.0, 0.0, "not measurably different")

    def test_paired_resamples_are_bootstraps(self, gen):
        # The interval of the difference uses the same resamples as bootstrap() with the same seed.
        conf_a, conf_b = torch.rand(40, generator=gen), torch.rand(40, generator=gen)
        ok = torch.rand(40, generator=gen) < 0.6
        c = compare_scores("augrc", conf_a, conf_b, ok, n_boot=300, generator=3, level=0.9)
        idx = torch.randint(40, (300, 40), generator=torch.Generator().manual_seed(3))
        diffs = torch.tensor([augrc(conf_b[i], ok[i]) - augrc(conf_a[i], ok[i]) for i in idx],
                             dtype=torch.float64)
        low, high = torch.quantile(diffs.double(), torch.tensor([0.05, 0.95], dtype=torch.float64))
        assert (c.low, c.high) == pytest.approx((float(low), float(high)), abs=1e-12)
        assert c.word in VERDICTS

    def test_errors(self):
        with pytest.raises(ValueError, match="statistic"):
            compare_scores("risk", CONF, CONF, OK, generator=0)
        with pytest.raises(ValueError, match="b: expected shape"):
            compare_scores("aurc", CONF, CONF[:3], OK, generator=0)
        with pytest.raises(ValueError, match="b: expected no NaN"):
            compare_scores("aurc", CONF, CONF * float("nan"), OK, generator=0)
        with pytest.raises(TypeError, match="generator"):
            compare_scores("aurc", CONF, CONF, OK, generator=None)


class TestCompareRejection:
    def _data(self, gen, n=50, k=4):
        logits = torch.randn(n, k, generator=gen)
        labels = torch.randint(k, (n,), generator=gen)
        labels[:5] = -1  # no known class: always wrong
        return logits, labels

    def test_full_sample_matches_the_tables(self, gen):
        logits, labels = self._data(gen)
        a = max_softmax(logits).round(decimals=1)  # many ties: the tie rule matters
        b = torch.rand(50, generator=gen)
        rates = (0.1, 0.2)
        c = compare_rejection(a, b, logits, labels, rates, n_boot=30, generator=7)

        def mean(conf):
            rows = rejection_table(conf, logits, labels, rates, generator=7)
            return sum(r["top3_macro"] for r in rows) / len(rows)

        assert c.mean == pytest.approx(mean(a) - mean(b), abs=1e-12)
        assert c.low <= c.mean + 1e-9 or c.high >= c.mean - 1e-9
        assert c.word in VERDICTS and c.n == 50

    def test_self_is_zero_and_perfect_is_better(self, gen):
        logits, labels = self._data(gen, n=80)
        same = compare_rejection(CONF.repeat(16), CONF.repeat(16), logits, labels, n_boot=20,
                                 generator=0)
        assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
        right = topk_correct(logits, labels, 1).double()
        c = compare_rejection(right, -right, logits, labels, (0.3,), metric="top1_micro",
                              n_boot=100, generator=0)
        assert c.word == "better" and c.mean > 0

    def test_errors(self, gen):
        logits, labels = self._data(gen)
        conf = torch.rand(50, generator=gen)
        with pytest.raises(ValueError, match="metric"):
            compare_rejection(conf, conf, logits, labels, metric="top3", generator=0)
        with pytest.raises(ValueError, match="ks"):
            compare_rejection(conf, conf, logits, labels, metric="top9_macro", generator=0)
        with pytest.raises(ValueError, match="rates"):
            compare_rejection(conf, conf, logits, labels, (1.5,), generator=0)
        with pytest.raises(ValueError, match="b, logits"):
            compare_rejection(conf, conf[:4], logits, labels, generator=0)
