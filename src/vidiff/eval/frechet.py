"""Distances between two sets of feature vectors: Fréchet distance and polynomial-kernel MMD.

Both compare the distribution of features of real clips with that of generated clips (FVD
and KVD when the features come from I3D).

- **Fréchet distance** between the Gaussians fitted to each set,
  ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The trace of the matrix square
  root is computed as ``sum(sqrt(eig(R S_b R)))`` with ``R = S_a^(1/2)`` (both symmetric
  eigendecompositions, tiny negative eigenvalues from rounding clipped to 0): ``S_a S_b`` is
  similar to ``R S_b R``, which is symmetric positive semi-definite, so no complex numbers
  and no ``sqrtm`` iterations appear and singular or near-singular covariances are fine.
- **MMD with the polynomial kernel** ``k(x, y) = (x.y / d + 1)^3`` (``d`` the feature
  dimension), unbiased estimator (the KID/KVD kernel). It needs no covariance, so it is
  usable with fewer samples than the feature dimension.
"""
from __future__ import annotations

import numpy as np


def _as_features(x, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} features must be a non-empty (N, D) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} features contain NaN or infinite values")
    return array


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``(N, D)`` features."""
    x = _as_features(features, "the")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``tr((S_a S_b)^(1/2))`` for symmetric PSD ``S_a``, ``S_b`` (see the module docstring)."""
    root = _psd_sqrt(np.asarray(sigma_a, np.float64))
    inner = root @ np.asarray(sigma_b, np.float64) @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet (2-Wasserstein) distance squared between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``.

    Args: means ``(D,)`` and covariances ``(D, D)``. Returns a float >= 0 (squared units of
    the features), clipped at 0 against rounding.
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(sigma_a).astype(np.float64), np.atleast_2d(sigma_b).astype(np.float64)
    d = mu_a.shape[0]
    for name, value, shape in (("mu_b", mu_b, (d,)), ("sigma_a", sigma_a, (d, d)), ("sigma_b", sigma_b, (d, d))):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}, expected {shape} to match mu_a")
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt_product(sigma_a, sigma_b)
    return float(max(distance, 0.0))


def min_clips_for_fd(dim: int) -> int:
    """Clips per set a ``dim``-dimensional sample covariance needs to be full rank: ``dim + 1``."""
    return int(dim) + 1


def frechet_from_features(real, fake) -> float:
    """Fréchet distance between the Gaussians fitted to ``(N, D)`` and ``(M, D)`` features.

    Each set needs at least ``D + 1`` rows (:func:`min_clips_for_fd`): with fewer, its sample
    covariance is singular and the distance is dominated by the sample size, not the model.
    """
    real, fake = _as_features(real, "real"), _as_features(fake, "generated")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and generated features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    need = min_clips_for_fd(real.shape[1])
    for name, x in (("real", real), ("generated", fake)):
        if x.shape[0] < need:
            raise ValueError(f"the Fréchet distance with {real.shape[1]}-dimensional features needs at least "
                             f"{need} clips per set for a full-rank covariance, got {x.shape[0]} {name} "
                             "clips; use more clips, or the kernel distance (works from 2 clips)")
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def polynomial_mmd(real, fake, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD² with the kernel ``k(x, y) = (x.y / D + coef0)^degree``.

    Args:
        real, fake: ``(N, D)`` and ``(M, D)`` features, ``N, M >= 2``.
    Returns the estimate (a float, may be slightly negative when the sets match).
    """
    x, y = _as_features(real, "real"), _as_features(fake, "generated")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real and generated features differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    for name, z in (("real", x), ("generated", y)):
        if z.shape[0] < 2:
            raise ValueError(f"the kernel distance needs at least 2 clips per set, got {z.shape[0]} {name}")
    d = x.shape[1]
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    n, m = x.shape[0], y.shape[0]
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())
