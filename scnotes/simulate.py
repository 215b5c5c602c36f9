"""Simulation helpers: the seed's low-rank Gamma-Poisson model, thinning, masks.

The seed page ("Variational autoencoders for scRNA-seq data") simulates

    l_ik ~ LogNormal(0, 0.5²),  f_jk ~ LogNormal(0, 0.5²),  μ = L Fᵀ,
    u_ij ~ Gamma(shape=a, scale=1/a)  (mean 1),  λ_ij = μ_ij u_ij,
    x_ij ~ Poisson(λ_ij),

with a = 0.1 in the thinning example and a = 1/Var(μ) in the imputation
example, and draws a second, independent x_val from the same λ (thinning)
or a mask of missing entries (imputation: ``np.random.uniform(size) < 0.9``
marks the observed ones), continuing the same legacy random stream so that
``seed=0`` reproduces the seed page draw for draw.

Given μ, each count is marginally negative binomial with mean μ and inverse
dispersion a (Var = μ + μ²/a): the best any model that does not know the
entry's own u can do, which is the reachable oracle (``LowRankSim.mu`` with
``gamma_shape``); the realised rate λ = μ u includes u and is not reachable
for a held-out entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._checks import check_counts

__all__ = ["LowRankSim", "simulate_low_rank", "binomial_thin", "random_mask", "split_entries"]


@dataclass
class LowRankSim:
    """A simulated data set: counts ``x`` and an independent replicate ``x_val``.

    Shapes: ``x``, ``x_val``, ``mu``, ``lam``, ``w``: n_cells × n_genes; ``l``: n × k;
    ``f``: p × k. ``mu = l @ f.T`` is the low-rank mean, ``lam = mu * u`` the
    realised rate, ``gamma_shape`` the shape a of u (so x | μ ~ NB(μ, a)), ``w``
    the seed's imputation mask (1 = observed, 0 = missing) or None.
    """

    x: np.ndarray
    x_val: np.ndarray | None
    l: np.ndarray
    f: np.ndarray
    mu: np.ndarray
    lam: np.ndarray
    gamma_shape: float = float("nan")
    w: np.ndarray | None = None


def simulate_low_rank(n_cells: int = 500, n_genes: int = 100, rank: int = 3,
                      gamma_shape: float | str = 0.1, sigma: float = 0.5,
                      replicate: bool = True, frac_missing: float | None = None,
                      seed: int = 0) -> LowRankSim:
    """Simulate the seed's rank-``rank`` Gamma-Poisson model (see module docstring).

    Parameters
    ----------
    gamma_shape : float or ``"inverse_var"``
        Shape a of u ~ Gamma(a, 1/a). The seed's thinning example uses a = 0.1
        (``np.random.gamma(shape=.1, scale=10)``); ``"inverse_var"`` gives the
        imputation example's a = 1 / Var(μ).
    replicate : bool
        Draw the independent replicate ``x_val`` (else ``x_val`` is None).
    frac_missing : float in [0, 1), optional
        Also draw the seed's imputation mask ``w`` (entry missing when a uniform
        draw is ≥ 1 − frac_missing; the seed used 0.1), after ``x`` (and
        ``x_val``) from the same stream.
    seed : int
        With ``seed=0`` and the defaults this reproduces the seed's draws
        exactly (same NumPy legacy RNG calls in the same order). The stream is
        a private ``numpy.random.RandomState(seed)``: the global NumPy state is
        not touched.

    Returns
    -------
    LowRankSim

    Raises
    ------
    ValueError : non-positive sizes or shape, ``frac_missing`` outside [0, 1).
    """
    if n_cells < 1 or n_genes < 1 or rank < 1:
        raise ValueError("n_cells, n_genes and rank must be positive")
    if frac_missing is not None and not 0 <= frac_missing < 1:
        raise ValueError(f"frac_missing must be in [0, 1), got {frac_missing}")
    rng = np.random.RandomState(seed)
    l = rng.lognormal(sigma=sigma, size=(n_cells, rank))
    f = rng.lognormal(sigma=sigma, size=(n_genes, rank))
    mu = l @ f.T
    if gamma_shape == "inverse_var":
        a = 1.0 / mu.var()
    else:
        a = float(gamma_shape)
        if a <= 0:
            raise ValueError(f"gamma_shape must be positive, got {a}")
    u = rng.gamma(shape=a, scale=1.0 / a, size=(n_cells, n_genes))
    lam = mu * u
    x = rng.poisson(lam=lam)
    x_val = rng.poisson(lam=lam) if replicate else None
    w = None
    if frac_missing is not None:
        w = (rng.uniform(size=x.shape) < 1 - frac_missing).astype(np.float64)
    return LowRankSim(x=x, x_val=x_val, l=l, f=f, mu=mu, lam=lam, gamma_shape=float(a), w=w)


def binomial_thin(x, p: float = 0.5, seed: int = 0):
    """Split counts into two independent parts by binomial (Poisson) thinning.

    If x ~ Poisson(λ), then x_train ~ Binomial(x, p) and x_test = x − x_train
    are independent Poisson(pλ) and Poisson((1−p)λ): held-out data for the
    same cells without a second experiment.

    Parameters
    ----------
    x : ndarray or sparse matrix, n_cells × n_genes, counts
    p : float in (0, 1)
        Share of each count kept for training.

    Returns
    -------
    (x_train, x_test)
        Same type as ``x`` (sparse stays sparse with the same pattern).

    Raises
    ------
    ValueError
        Bad counts (see :func:`scnotes._checks.check_counts`) or p outside (0, 1).
    """
    if not 0 < p < 1:
        raise ValueError(f"thinning probability p must be in (0, 1), got {p}")
    x = check_counts(x, allow_empty_cells=True, allow_empty_genes=True)
    rng = np.random.default_rng(seed)
    if sp.issparse(x):
        train = x.copy()
        train.data = rng.binomial(x.data.astype(np.int64), p).astype(np.float64)
        test = x.copy()
        test.data = x.data - train.data
        return train, test
    train = rng.binomial(x.astype(np.int64), p).astype(np.float64)
    return train, x - train


def random_mask(shape, frac_missing: float = 0.1, seed: int = 0) -> np.ndarray:
    """A float mask of ``shape``: 1 = observed, 0 = missing, each entry missing with prob. ``frac_missing``."""
    if not 0 <= frac_missing < 1:
        raise ValueError(f"frac_missing must be in [0, 1), got {frac_missing}")
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=shape) >= frac_missing).astype(np.float64)


def split_entries(w, frac: float = 0.1, seed: int = 0):
    """Move a random share ``frac`` of the observed entries of mask ``w`` to a second mask.

    For choosing a rank or a training length without touching the test entries:
    ``w`` marks the entries a model may use (1) and the test entries (0); the
    result ``(w_train, w_val)`` splits the former into training and validation
    entries, each observed entry going to validation with probability ``frac``.

    Parameters
    ----------
    w : array (n_cells, n_genes) of 0/1 (1 = observed)
    frac : float in (0, 1)
    seed : int, seeds a private ``numpy.random.default_rng``

    Returns
    -------
    (w_train, w_val) : float arrays of 0/1 with w_train + w_val = w.

    Raises
    ------
    ValueError : ``w`` not 0/1, or ``frac`` outside (0, 1).
    """
    w = np.asarray(w, dtype=np.float64)
    if not np.all((w == 0) | (w == 1)):
        raise ValueError("w must hold only 0 (missing) and 1 (observed)")
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    val = (np.random.default_rng(seed).uniform(size=w.shape) < frac) & (w == 1)
    return np.where(val, 0.0, w), val.astype(np.float64)
