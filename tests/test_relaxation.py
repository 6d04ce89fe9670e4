import math

import pytest
import torch

from fidobook.relaxation import (
    GradientMoments,
    NaiveSimplifiedConcreteDropout,
    binary_concrete_log_density,
    gradient_moments_mc,
    keep_gradient,
    keep_gradient_exact,
    mean_gradient_variance,
    pathwise_gradient_moments,
    sample_pathwise_gradients,
)
from fidobook.samplers import ConcreteDropout, SimplifiedConcreteDropout, open_uniform


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


class TestBinaryConcreteLogDensity:
    @pytest.mark.parametrize("theta", [-2.0, 0.0, 1.5])
    @pytest.mark.parametrize("t", [0.3, 1.0, 2.0])
    def test_matches_torch_relaxed_bernoulli(self, theta, t):
        z = torch.linspace(0.001, 0.999, 101, dtype=torch.float64)
        ref = torch.distributions.RelaxedBernoulli(torch.tensor(t, dtype=torch.float64),
                                                   logits=torch.tensor(theta, dtype=torch.float64))
        torch.testing.assert_close(binary_concrete_log_density(z, theta, t), ref.log_prob(z))

    def test_integrates_to_one(self):
        z = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
        p = binary_concrete_log_density(z, 0.7, 1.5).exp()
        assert float(torch.trapezoid(p, z)) == pytest.approx(1.0, abs=1e-4)

    def test_uniform_at_theta0_t1(self):
        z = torch.linspace(0.01, 0.99, 11, dtype=torch.float64)
        torch.testing.assert_close(binary_concrete_log_density(z, 0.0, 1.0), torch.zeros_like(z))

    def test_rejects_out_of_range(self):
        with pytest.raises(ValueError, match="open interval"):
            binary_concrete_log_density(torch.tensor([0.0, 0.5]), 0.0, 1.0)
        with pytest.raises(ValueError, match="temperature"):
            binary_concrete_log_density(torch.tensor([0.5]), 0.0, 0.0)


class TestKeepGradient:
    def test_elementwise_and_matches_exact_away_from_saturation(self, gen):
        theta = torch.linspace(-5, 5, 11, dtype=torch.float64)
        u = open_uniform((4, 11), generator=gen, dtype=torch.float64)
        for sampler in (ConcreteDropout(0.5, eps=0.0), SimplifiedConcreteDropout(0.5),
                        NaiveSimplifiedConcreteDropout(0.5)):
            z, g = keep_gradient(sampler, theta, u)
            assert z.shape == g.shape == (4, 11)
            torch.testing.assert_close(g, keep_gradient_exact(theta, u, 0.5))

    def test_float32_freeze_sides(self):
        theta = torch.linspace(-40, 40, 801)
        u = torch.full_like(theta, 0.5)
        _, g_cd = keep_gradient(ConcreteDropout(1.0), theta, u)
        _, g_naive = keep_gradient(NaiveSimplifiedConcreteDropout(1.0), theta, u)
        _, g_scd = keep_gradient(SimplifiedConcreteDropout(1.0), theta, u)
        assert bool((g_cd[theta <= -17] == 0).all()) and bool((g_cd[theta >= -16] > 0).all())
        assert bool((g_naive[theta >= 17] == 0).all()) and bool((g_naive[theta <= 16] > 0).all())
        exact = keep_gradient_exact(theta, u, 1.0)
        torch.testing.assert_close(g_scd.double(), exact, rtol=1e-5, atol=0)

    def test_gradcheck_exact_formula(self):
        theta = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
        u = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
        z = SimplifiedConcreteDropout(0.7).relax(theta, u)
        (g,) = torch.autograd.grad(z.sum(), theta)
        torch.testing.assert_close(g, keep_gradient_exact(theta.detach(), u, 0.7))

    def test_rejects_bad_input(self):
        with pytest.raises(TypeError, match="MaskSampler"):
            keep_gradient("scd", torch.zeros(2), torch.full((2,), 0.5))
        with pytest.raises(TypeError, match="floating-point"):
            keep_gradient(SimplifiedConcreteDropout(), torch.zeros(2, dtype=torch.long),
                          torch.full((2,), 0.5))


class TestPathwiseGradientMoments:
    def test_closed_form_at_theta0_t1(self):
        m = pathwise_gradient_moments(0.0, 1.0)
        assert isinstance(m, GradientMoments)
        assert m.mean == pytest.approx(1 / 6, rel=1e-9)
        assert m.variance == pytest.approx(1 / 180, rel=1e-9)
        assert m.cv == pytest.approx(math.sqrt(0.2), rel=1e-9)

    @pytest.mark.parametrize("theta", [0.0, 2.0, 5.0])
    @pytest.mark.parametrize("t", [0.1, 1.0])
    def test_mean_is_derivative_of_keep_probability_mass(self, theta, t):
        # E[∂z/∂θ] = ∂E[z]/∂θ; E[z] by quadrature in u, central difference in θ.
        u = torch.linspace(0, 1, 2_000_001, dtype=torch.float64)[1:-1]

        def mean_keep(th):
            return float(torch.trapezoid(torch.sigmoid((th + torch.log(u) - torch.log1p(-u)) / t), u))

        h = 1e-4
        fd = (mean_keep(theta + h) - mean_keep(theta - h)) / (2 * h)
        assert pathwise_gradient_moments(theta, t).mean == pytest.approx(fd, rel=2e-3)

    def test_known_values(self):
        # REFERENCES.md: cv 2.4 / 3.8 / 15.7 (Monte Carlo) at t = 0.1; 0.45 / 0.71 / 1.9 at t = 1.
        cvs = [pathwise_gradient_moments(th, 0.1).cv for th in (0.0, 2.0, 5.0)]
        assert cvs == pytest.approx([2.4, 3.84, 15.6], abs=0.05)
        cvs = [pathwise_gradient_moments(th, 1.0).cv for th in (0.0, 2.0, 5.0)]
        assert cvs == pytest.approx([0.447, 0.71, 1.88], abs=0.01)

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="temperature"):
            pathwise_gradient_moments(0.0, -1.0)
        with pytest.raises(ValueError, match="single logit"):
            pathwise_gradient_moments(torch.zeros(2), 1.0)
        with pytest.raises(TypeError, match="finite"):
            pathwise_gradient_moments(float("nan"), 1.0)


class TestMonteCarlo:
    def test_sample_shape_dtype_and_reproducible(self):
        a = sample_pathwise_gradients(SimplifiedConcreteDropout(), 1.0, 5,
                                      generator=torch.Generator().manual_seed(3))
        b = sample_pathwise_gradients(SimplifiedConcreteDropout(), 1.0, 5,
                                      generator=torch.Generator().manual_seed(3))
        assert a.shape == (5,) and a.dtype == torch.float32
        assert torch.equal(a, b)

    @pytest.mark.parametrize("sampler", [SimplifiedConcreteDropout(1.0), ConcreteDropout(1.0)])
    def test_mc_matches_quadrature(self, sampler, gen):
        mc = gradient_moments_mc(sampler, 2.0, 200_000, generator=gen, chunk=50_000)
        ref = pathwise_gradient_moments(2.0, 1.0)
        assert mc.mean == pytest.approx(ref.mean, rel=0.01)
        assert mc.cv == pytest.approx(ref.cv, rel=0.02)

    def test_chunking_does_not_change_the_draws(self):
        a = gradient_moments_mc(SimplifiedConcreteDropout(), 0.5, 1000,
                                generator=torch.Generator().manual_seed(1), chunk=1000)
        b = gradient_moments_mc(SimplifiedConcreteDropout(), 0.5, 1000,
                                generator=torch.Generator().manual_seed(1), chunk=1000)
        assert a == b

    def test_mean_gradient_variance_falls_as_one_over_s(self, gen):
        sizes = [1, 4, 16]
        v = mean_gradient_variance(SimplifiedConcreteDropout(1.0), 0.0, sizes, 4000, generator=gen)
        assert v.shape == (3,) and v.dtype == torch.float64
        ref = pathwise_gradient_moments(0.0, 1.0).variance
        for s, vs in zip(sizes, v.tolist()):
            assert vs == pytest.approx(ref / s, rel=0.1)

    def test_mean_gradient_variance_rejects_bad_input(self):
        with pytest.raises(ValueError, match="empty"):
            mean_gradient_variance(SimplifiedConcreteDropout(), 0.0, [], 10)
        with pytest.raises(ValueError, match="replicates"):
            mean_gradient_variance(SimplifiedConcreteDropout(), 0.0, [1], 1)
