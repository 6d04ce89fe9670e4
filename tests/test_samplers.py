import math

import pytest
import torch

from fidobook.samplers import (
    ConcreteDropout,
    SimplifiedConcreteDropout,
    get_sampler,
    logistic_noise,
    open_uniform,
)

SAMPLER_CLASSES = [ConcreteDropout, SimplifiedConcreteDropout]


def reference_binary_concrete(theta, u, t):
    """Slow float64 reference: keep = σ((θ + log u − log(1 − u)) / t)."""
    theta, u = theta.double(), u.double()
    return 1.0 / (1.0 + torch.exp(-(theta + torch.log(u) - torch.log(1 - u)) / t))


class TestSamplers:
    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    def test_shapes_range_and_defaults(self, cls):
        s = cls()
        theta = torch.randn(3, 5, 7)
        out = s.sample(theta, 4, generator=torch.Generator().manual_seed(0))
        assert out.shape == (4, 3, 5, 7)
        assert out.dtype == theta.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(s.expected(theta), torch.sigmoid(theta))
        assert torch.equal(s.hard(theta), theta > 0)
        assert s.temperature == (0.1 if cls is ConcreteDropout else 1.0)

    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    def test_generator_makes_draws_reproducible(self, cls):
        theta = torch.randn(10)
        a = cls().sample(theta, 3, generator=torch.Generator().manual_seed(7))
        b = cls().sample(theta, 3, generator=torch.Generator().manual_seed(7))
        c = cls().sample(theta, 3, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)

    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    @pytest.mark.parametrize("theta", [-3.0, -1.0, -0.2, 0.0, 0.5, 2.0, 4.0])
    def test_hard_decisions_match_expected(self, cls, theta):
        # P(keep > 1/2) = σ(θ) for every temperature: the mean of 200k hard decisions must
        # match within 5 standard errors.
        n = 200_000
        for t in (0.1, 1.0):
            s = cls(temperature=t)
            keep = s.sample(torch.tensor([theta]), n, generator=torch.Generator().manual_seed(1))
            rate = float((keep > 0.5).double().mean())
            p = 1 / (1 + math.exp(-theta))
            assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, (cls.__name__, t, rate, p)

    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    def test_matches_binary_concrete_reference(self, cls):
        # Both samplers draw BinConcrete(θ, t); compare quantiles with the float64 reference.
        t = 0.5
        theta = torch.tensor([0.7])
        u = open_uniform((100_000, 1), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ref = reference_binary_concrete(theta, u, t)
        got = cls(temperature=t).sample(theta.double(), 100_000, generator=torch.Generator().manual_seed(4))
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        assert torch.allclose(torch.quantile(got[:, 0], q), torch.quantile(ref[:, 0], q), atol=0.01)

    @pytest.mark.parametrize("t", [0.01, 0.1, 1.0, 10.0, 100.0])
    def test_cd_and_scd_agree_on_same_draws_when_not_saturated(self, t):
        theta = torch.linspace(-8, 8, 101, dtype=torch.float64)
        u = open_uniform((50, 101), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        # keep u away from 0/1 so that the eps guard of CD is negligible against u and 1 - u
        u = u.clamp(1e-4, 1 - 1e-4)
        cd = ConcreteDropout(temperature=t, eps=1e-12).relax(theta, u)
        scd = SimplifiedConcreteDropout(temperature=t).relax(theta, u)
        assert torch.allclose(cd, scd, atol=1e-6)
        # ... and both equal the closed form with the same u
        assert torch.allclose(scd, reference_binary_concrete(theta, u, t), atol=1e-12)

    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    @pytest.mark.parametrize("t", [0.01, 0.1, 1.0, 10.0, 100.0])
    def test_gradcheck(self, cls, t):
        # θ and u kept where (θ + n)/t is moderate so finite differences resolve the slope.
        gen = torch.Generator().manual_seed(int(t * 100))
        u = open_uniform((6,), generator=gen, dtype=torch.float64).clamp(0.2, 0.8)
        theta = (-logistic_noise(u) + t * torch.randn(6, generator=gen, dtype=torch.float64) * 0.5)
        theta.requires_grad_(True)
        s = cls(temperature=t)
        assert torch.autograd.gradcheck(lambda th: s.relax(th, u), (theta,), eps=1e-6 * min(t, 1), atol=1e-5)

    def test_scd_gradient_is_pathwise_formula(self):
        t = 0.3
        theta = torch.linspace(-8, 8, 61, requires_grad=True)  # |x| <= ~30: inside float32 range
        u = torch.full((61,), 0.3)
        z = SimplifiedConcreteDropout(temperature=t).relax(theta, u)
        (g,) = torch.autograd.grad(z.sum(), theta)
        x = (theta.detach().double() + logistic_noise(u.double())) / t
        exact = torch.sigmoid(x) * torch.sigmoid(-x) / t  # z (1 − z) / t, in float64
        assert torch.allclose(g.double(), exact, rtol=1e-4, atol=0)
        assert (g > 0).all()


class TestCDFloat32Saturation:
    """Locates the float32 region where CD's gradient vanishes (the subject of Korsch et al.)."""

    @staticmethod
    def gradients(sampler, theta, u=0.5):
        theta = theta.clone().requires_grad_(True)
        z = sampler.relax(theta, torch.full_like(theta, u))
        (g,) = torch.autograd.grad(z.sum(), theta)
        return g

    def test_cd_gradient_is_exactly_zero_once_drop_rate_rounds_to_one(self):
        theta = torch.arange(-40.0, 41.0, 0.5)
        g = self.gradients(ConcreteDropout(temperature=1.0), theta)
        dead = theta[g == 0]
        # σ(−θ) rounds to 1 in float32 from θ ≈ −16.6 on: 1 − p is then exactly 0 and the
        # sigmoid backward y (1 − y) is exactly 0 — the logit freezes.
        assert torch.sigmoid(torch.tensor(17.0)).item() == 1.0  # p = σ(−θ) at θ = −17
        assert float(dead.max()) < 0 and (dead <= -17).all()
        assert torch.equal(g[theta <= -17] == 0, torch.ones_like(g[theta <= -17], dtype=torch.bool))
        assert (g[(theta > -15) & (theta < 15)] != 0).all()

    def test_naive_sigmoid_freezes_on_the_keep_side_but_scd_does_not(self):
        # Autograd's sigmoid backward y (1 − y) reads the rounded output: σ(17) == 1.0 in float32,
        # so the naive gradient is exactly 0 there; SCD's backward σ(x) σ(−x) is not.
        theta = torch.tensor([17.0, 20.0, 30.0], requires_grad=True)
        (naive,) = torch.autograd.grad(torch.sigmoid(theta).sum(), theta)
        assert (naive == 0).all()
        g = self.gradients(SimplifiedConcreteDropout(temperature=1.0), theta.detach(), u=0.5)
        exact = torch.sigmoid(theta.detach().double()) * torch.sigmoid(-theta.detach().double())
        assert torch.allclose(g.double(), exact, rtol=1e-5)

    def test_scd_gradient_never_vanishes_in_the_working_range(self):
        theta = torch.arange(-40.0, 41.0, 0.5)
        g = self.gradients(SimplifiedConcreteDropout(temperature=1.0), theta, u=0.5)
        assert (g[theta.abs() <= 30] > 0).all()


class TestBadInput:
    def test_bad_temperature(self):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="temperature"):
                SimplifiedConcreteDropout(temperature=bad)
        with pytest.raises(TypeError, match="temperature"):
            ConcreteDropout(temperature="hot")

    def test_bad_logits_and_n(self):
        s = SimplifiedConcreteDropout()
        with pytest.raises(TypeError, match="logits"):
            s.sample([0.0, 1.0], 2)
        with pytest.raises(TypeError, match="logits"):
            s.sample(torch.zeros(3, dtype=torch.long), 2)
        with pytest.raises(ValueError, match="logits"):
            s.sample(torch.tensor([0.0, float("nan")]), 2)
        with pytest.raises(ValueError, match="n"):
            s.sample(torch.zeros(3), 0)

    def test_unknown_sampler(self):
        with pytest.raises(ValueError, match=r"sampler: expected one of \['cd', 'scd'\]"):
            get_sampler("gumbel")
        assert isinstance(get_sampler("cd", 0.5), ConcreteDropout)
        assert get_sampler("scd", 0.5).temperature == 0.5


class TestConcreteDropoutEps:
    """The numbers ConcreteDropout's docstring gives for its eps (1e-7) against the reference codes'
    numpy.finfo(float).eps (2.2e-16), in float32."""

    REF_EPS = 2.220446049250313e-16  # numpy.finfo(float).eps

    @staticmethod
    def log_odds(theta, eps):
        """CD's inner term log(p + ε) − log(1 − p + ε) with p = σ(−θ), and its derivative in θ."""
        theta = theta.clone().requires_grad_(True)
        p = torch.sigmoid(-theta)
        term = torch.log(p + eps) - torch.log(1.0 - p + eps)
        (g,) = torch.autograd.grad(term.sum(), theta)
        return term.detach(), g

    def test_default_is_1e7_not_the_reference_float64_epsilon(self):
        assert ConcreteDropout().eps == 1e-7
        assert ConcreteDropout(eps=self.REF_EPS).eps == self.REF_EPS
        assert abs(1e-7 - torch.finfo(torch.float32).eps) < 2e-8  # about float32's epsilon

    def test_reference_eps_jumps_where_float32_rounds_and_1e7_saturates(self):
        theta = torch.tensor([-17.0, -10.0, 10.0, 20.0])
        ref, _ = self.log_odds(theta, self.REF_EPS)
        ours, _ = self.log_odds(theta, 1e-7)
        assert abs(ref[0].item() - (-math.log(self.REF_EPS))) < 1e-3  # leaps to ≈ 36 at θ = −17
        assert abs(ref[3].item() + 20.0) < 1e-4  # the keep side follows −θ beyond 16
        cap = -math.log(1e-7)  # ≈ 16.1, both sides
        assert abs(ours[0].item() - cap) < 1e-3 and abs(ours[3].item() + cap) < 0.05
        # float32 rounds 1 − p on the drop side (5e-4 off at θ = −10); the keep side is exact.
        assert abs(ref[1].item() - 10.0) < 1e-3 and abs(ref[2].item() + 10.0) < 1e-5
        assert ((ours[1:3] + theta[1:3]).abs() > 2e-3).all() and ((ours[1:3] + theta[1:3]).abs() < 3e-3).all()

    def test_derivative_halves_at_16_and_freezes_with_either_eps(self):
        theta = torch.tensor([-17.0, -16.0, 16.0])
        _, g_ref = self.log_odds(theta, self.REF_EPS)
        _, g_ours = self.log_odds(theta, 1e-7)
        assert g_ref[0] == 0 and g_ours[0] == 0  # σ(17) rounds to 1: frozen either way
        assert torch.allclose(g_ref[1:], torch.tensor([-1.0, -1.0]))
        assert ((g_ours[1:] < -0.45) & (g_ours[1:] > -0.6)).all()

    def test_noise_capped_near_16(self):
        v = torch.tensor([2.0**-24])
        for eps, cap in ((1e-7, 15.65), (self.REF_EPS, 16.64)):
            noise = torch.log(v + eps) - torch.log(1 - v + eps)
            assert abs(noise.item() + cap) < 0.01


class TestGenerator:
    @pytest.mark.parametrize("cls", SAMPLER_CLASSES)
    def test_int_generator_is_a_seed(self, cls):
        s, theta = cls(), torch.zeros(4)
        assert torch.equal(s.sample(theta, 3, generator=0), s.sample(theta, 3, generator=torch.Generator().manual_seed(0)))
        with pytest.raises(TypeError, match="generator: expected a torch.Generator or an int seed, got str"):
            s.sample(theta, 3, generator="0")
        with pytest.raises(ValueError, match=r"generator: expected an int seed in \[0, 2\*\*64\), got -1"):
            s.sample(theta, 3, generator=-1)
