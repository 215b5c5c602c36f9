"""Pieces every GLMM fit shares: one optimiser step, a zero-sum basis, the variance floor,
and a guard that keeps pyro's global seeding away from the caller's random state."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["VAR_FLOOR", "descend", "helmert", "isolated_global_rng"]

# Smallest prior variance (sd 1e-3 on the log scale): keeps ln σ² finite when the data
# support no donor or sample variation at all (σ → 0, the boundary lme4 calls singular).
VAR_FLOOR = 1e-6


def descend(loss, opt, sched=None):
    """One optimiser step on ``loss``; a NaN/inf loss stops the fit instead of corrupting it.

    Raises
    ------
    RuntimeError : the loss is NaN or infinite (lower the learning rate).
    """
    opt.zero_grad()
    loss.backward()
    if not torch.isfinite(loss):
        raise RuntimeError("NaN/inf loss in VEB; lower lr")
    opt.step()
    if sched is not None:
        sched.step()


def helmert(D):
    """Orthonormal (D, D-1) basis of the vectors of length D that sum to zero (Helmert contrasts)."""
    H = np.zeros((D, D - 1))
    for k in range(1, D):
        H[:k, k - 1] = 1.0
        H[k, k - 1] = -k
        H[:, k - 1] /= np.sqrt(k * (k + 1))
    return H


@contextlib.contextmanager
def isolated_global_rng():
    """Run a block that seeds the global torch / numpy / ``random`` RNGs (pyro does)
    and restore all three afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
