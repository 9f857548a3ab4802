"""Fréchet distance and polynomial-kernel MMD against closed forms and reference computations."""
import numpy as np
import pytest
from scipy import linalg

from vidiff.eval.frechet import (frechet_distance, frechet_from_features, gaussian_stats, min_clips_for_fd,
                                 polynomial_mmd, trace_sqrt_product)


def _random_rotation(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_closed_form_for_gaussians_with_shared_eigenvectors():
    # S_a = Q diag(a) Q^T, S_b = Q diag(b) Q^T commute, so tr((S_a S_b)^1/2) = sum sqrt(a_i b_i)
    # and the distance is |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    q = _random_rotation(5, rng)
    a, b = np.array([4.0, 1.0, 0.25, 9.0, 2.0]), np.array([1.0, 1.0, 1.0, 4.0, 8.0])
    mu_a, mu_b = np.array([1.0, 2.0, 0.0, -1.0, 3.0]), np.array([0.0, 2.0, 1.0, 1.0, 3.0])
    expected = 1 + 0 + 1 + 4 + 0 + (2 - 1) ** 2 + 0 + (0.5 - 1) ** 2 + (3 - 2) ** 2 + (np.sqrt(2) - np.sqrt(8)) ** 2
    got = frechet_distance(mu_a, q @ np.diag(a) @ q.T, mu_b, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # one dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2
    assert frechet_distance([1.0], [[9.0]], [-1.0], [[4.0]]) == pytest.approx(4 + 1, rel=1e-12)


def test_matches_scipy_sqrtm_on_random_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) + 0.5
    mu_a, s_a = gaussian_stats(x)
    mu_b, s_b = gaussian_stats(y)
    assert np.allclose(s_a, np.cov(x, rowvar=False)) and np.allclose(mu_b, y.mean(0))
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(reference, rel=1e-8)
    assert frechet_from_features(x, y) == pytest.approx(reference, rel=1e-8)
    assert trace_sqrt_product(s_a, s_b) == pytest.approx(np.trace(linalg.sqrtm(s_a @ s_b).real), rel=1e-8)


def test_stable_for_singular_and_near_singular_covariances():
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(3, 40))          # rank 3 in 40 dimensions
    s = basis.T @ basis
    shift = rng.normal(size=40)
    # the same (singular) covariance: the distance is exactly the squared mean difference
    assert frechet_distance(np.zeros(40), s, shift, s) == pytest.approx(shift @ shift, rel=1e-6)
    # near-singular: eigenvalues down to 1e-12, both covariances commuting, closed form known
    q = _random_rotation(40, rng)
    a, b = np.logspace(-12, 1, 40), np.logspace(1, -12, 40)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(np.zeros(40), q @ np.diag(a) @ q.T, np.zeros(40), q @ np.diag(b) @ q.T)
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(np.zeros(40), s, np.zeros(40), s) >= 0.0  # rounding never goes negative


def test_polynomial_mmd_equals_direct_double_sum():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(5, 4)) + 0.3
    k = lambda u, v: (u @ v / 4 + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert polynomial_mmd(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # unbiased: near zero for two samples of one distribution, clearly positive for shifted ones
    same = polynomial_mmd(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)))
    shifted = polynomial_mmd(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)) + 1.0)
    assert abs(same) < 0.05 < shifted


def test_too_few_clips_and_bad_shapes_are_clear_errors():
    rng = np.random.default_rng(4)
    assert min_clips_for_fd(8) == 9
    with pytest.raises(ValueError, match="at least 9 clips.*got 8 real"):
        frechet_from_features(rng.normal(size=(8, 8)), rng.normal(size=(20, 8)))
    with pytest.raises(ValueError, match="differ in dimension: 3 vs 4"):
        frechet_from_features(rng.normal(size=(10, 3)), rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="at least 2 clips per set, got 1"):
        polynomial_mmd(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        polynomial_mmd(np.full((3, 2), np.nan), rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match="sigma_b has shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
