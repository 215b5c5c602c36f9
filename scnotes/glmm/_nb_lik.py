"""The expected NB log-likelihood of the NB GLMM under a Gaussian q, and a starting θ.

Under q the linear predictor of a (group, donor) block is Gaussian, η ~ N(m, v), and

    ln NB(y; s e^η, θ) = A(y, θ) + y (ln s + η) − ln y! − (θ + y) softplus(z),
    z = ln s + η − ln θ,  A(y, θ) = lnΓ(y + θ) − lnΓ(θ) − y ln θ,

so only the softplus needs a one-dimensional Gauss–Hermite quadrature per cell; the terms
linear in η reduce to block sums of the counts, and A is evaluated on the non-zero counts.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..likelihoods import _log_gamma_ratio64_dense
from ._design import GLMMData

__all__ = ["ExpectedNBLogLik", "BlockDerivatives", "moment_theta"]


class _ExpectedSoftplus(torch.autograd.Function):
    """E softplus(z_m + sd ε), ε ~ N(0, 1), by Gauss–Hermite nodes ``x`` and weights ``w`` (any
    shape of ``z_m`` = shape of ``sd``). The gradients in z_m and sd, Σ w σ(z) and Σ w x σ(z)
    (σ = softplus'), are computed in the forward pass, so the backward pass multiplies two
    tensors of z_m's shape instead of going back through the nodes (measured: about a third
    of an NB GLMM VEB step on one thread)."""

    @staticmethod
    def forward(ctx, z_m, sd, x, w):
        z = z_m[..., None] + sd[..., None] * x
        sig = torch.sigmoid(z)
        ctx.save_for_backward(sig @ w, sig @ (w * x))
        return F.softplus(z) @ w

    @staticmethod
    def backward(ctx, grad):
        d_m, d_sd = ctx.saved_tensors
        return grad * d_m, grad * d_sd, None, None


class ExpectedNBLogLik:
    """Σ_i E_q ln NB(y_ij; s_i e^η, θ_j) per gene j, η ~ N(m_jb, v_jb) for the cells i of block b.

    ln NB(y; μ, θ) = A(y, θ) + y ln μ − ln y! − (θ + y) softplus(ln μ − ln θ), with
    A(y, θ) = lnΓ(y + θ) − lnΓ(θ) − y ln θ (:mod:`scnotes.likelihoods`' stable form, zero at
    y = 0). With ln μ = ln s + η only the softplus term is not linear in η, so

        Σ_i E ln NB = Σ_{y>0} A(y, θ) + Σ_b Y_b m_b + Σ_i (y ln s − ln y!) − Σ_i (θ + y_i) E softplus(z_i),

    z_i = ln s_i + η − ln θ, Y_b the counts summed over block b: the terms linear in η use
    block sums computed once, A runs on the non-zero counts only, and one Gauss–Hermite
    quadrature of the softplus (``n_quad`` nodes) per cell is the only cells × nodes work.
    Equal to summing :func:`scnotes.likelihoods.nb_log_pmf` at every draw (tested).

    Shapes: ``y`` (J, N) counts, ``logs`` (N,) log totals, ``cblock`` (N,) block of each cell
    (long), ``m``, ``v`` (J, B), ``log_theta`` (J, 1); returns (J,) nats.
    """

    def __init__(self, y, logs, cblock, n_blocks, n_quad):
        J = y.shape[0]
        self.y, self.logs, self.cblock = y, logs, cblock
        self.Yb = torch.zeros(J, n_blocks, dtype=y.dtype, device=y.device).index_add_(1, cblock, y)
        self.const = (y * logs).sum(1) - torch.lgamma(y + 1).sum(1)
        self.g_nz, i_nz = torch.nonzero(y > 0, as_tuple=True)
        self.y_nz = y[self.g_nz, i_nz]
        xq, wq = np.polynomial.hermite.hermgauss(int(n_quad))
        self.xq = torch.as_tensor(xq * math.sqrt(2.0), dtype=y.dtype, device=y.device)
        self.wq = torch.as_tensor(wq / math.sqrt(math.pi), dtype=y.dtype, device=y.device)

    def subset(self, idx):
        """The same likelihood for genes ``idx`` only (a new object; the cells are shared)."""
        out = object.__new__(type(self))
        out.logs, out.cblock, out.xq, out.wq = self.logs, self.cblock, self.xq, self.wq
        out.y, out.Yb, out.const = self.y[idx], self.Yb[idx], self.const[idx]
        out.g_nz, i_nz = torch.nonzero(out.y > 0, as_tuple=True)
        out.y_nz = out.y[out.g_nz, i_nz]
        return out

    def __call__(self, m, v, log_theta):
        th = torch.exp(log_theta)
        z_m = self.logs + (m - log_theta)[:, self.cblock]  # (J, N)
        soft = _ExpectedSoftplus.apply(z_m, torch.sqrt(v)[:, self.cblock], self.xq, self.wq)  # (J, N)
        weighted = th[:, 0] * soft.sum(1) + (self.y * soft).sum(1)
        a = _log_gamma_ratio64_dense(self.y_nz.double(), th[self.g_nz, 0].double()).to(m.dtype)
        a_sum = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device).index_add(0, self.g_nz, a)
        return self.const + (self.Yb * m).sum(1) + a_sum - weighted


def moment_theta(data: GLMMData, t0):
    """Method-of-moments θ per gene from the naive means (a starting value, clipped to [0.05, 1e4])."""
    mu = data.total[:, None] * np.exp(t0[:, data.group].T)  # (N, J)
    excess = ((data.counts - mu) ** 2 - mu).sum(0)
    th = (mu ** 2).sum(0) / np.maximum(excess, 1e-8)
    return np.clip(th, 0.05, 1e4)



class BlockDerivatives:
    """What one pass over the cells gives the Newton-type VEB updates (:mod:`._nb_newton`), per gene j.

    ``value`` (J,): Σ_i E_q ln NB(y_ij; s_i e^η, θ_j) in nats (as :class:`ExpectedNBLogLik`);
    ``grad_m`` (J, B): ∂value/∂m_b = Σ_{i∈b} (y_i − (θ + y_i) E σ(z_i));
    ``curv`` (J, B): h_b = −2 ∂value/∂v_b = Σ_{i∈b} (θ + y_i) E σ'(z_i) ≥ 0 (Price's theorem:
    ∂E f/∂v = ½ E f''), the expected negative curvature of block b's log-likelihood in η_b;
    ``grad_t``, ``hess_t`` (J,): first and second derivatives of value in t = ln θ_j (None for a
    fixed θ).
    """

    __slots__ = ("value", "grad_m", "curv", "grad_t", "hess_t")

    def __init__(self, value, grad_m, curv, grad_t=None, hess_t=None):
        self.value, self.grad_m, self.curv, self.grad_t, self.hess_t = value, grad_m, curv, grad_t, hess_t


def _nb_block_derivatives(lik: ExpectedNBLogLik, m, v, log_theta, learn_theta: bool) -> BlockDerivatives:
    """One pass of :class:`ExpectedNBLogLik` ``lik`` returning :class:`BlockDerivatives` (no autograd).

    With z = ln s + η − t and A(y, θ) = lnΓ(y + θ) − lnΓ(θ) − y ln θ:
    ∂A/∂t = θ(ψ(y+θ) − ψ(θ)) − y, ∂²A/∂t² = θ(ψ(y+θ) − ψ(θ)) + θ²(ψ'(y+θ) − ψ'(θ)) (zero at y = 0),
    and the softplus term S = −(θ + y) E sp(z) has ∂S/∂t = −θ E sp + (θ + y) E σ and
    ∂²S/∂t² = −θ E sp + 2θ E σ − (θ + y) E σ'.
    """
    J, B = m.shape
    th = torch.exp(log_theta)  # (J, 1)
    e_sig, e_dsig, e_sp = (torch.empty_like(lik.y) for _ in range(3))
    # genes in chunks of about 2²⁴ (cell, node) pairs: the nodes' temporaries stay ~0.5 GB whatever J
    step = max(1, (1 << 24) // max(1, lik.y.shape[1] * lik.xq.numel()))
    sd = torch.sqrt(v)
    for lo in range(0, J, step):
        sl = slice(lo, lo + step)
        z = ((lik.logs + (m[sl] - log_theta[sl])[:, lik.cblock])[..., None]
             + sd[sl][:, lik.cblock][..., None] * lik.xq)
        sig = torch.sigmoid(z)
        e_sig[sl] = sig @ lik.wq
        e_dsig[sl] = (sig * (1.0 - sig)) @ lik.wq
        e_sp[sl] = F.softplus(z) @ lik.wq
        del z, sig
    wt = th + lik.y  # (J, N)
    zeros = torch.zeros(J, B, dtype=m.dtype, device=m.device)
    grad_m = lik.Yb - zeros.index_add(1, lik.cblock, wt * e_sig)
    curv = zeros.index_add(1, lik.cblock, wt * e_dsig)
    th_nz = th[lik.g_nz, 0].double()
    a = _log_gamma_ratio64_dense(lik.y_nz.double(), th_nz).to(m.dtype)
    a_sum = torch.zeros(J, dtype=m.dtype, device=m.device).index_add(0, lik.g_nz, a)
    value = lik.const + (lik.Yb * m).sum(1) + a_sum - (wt * e_sp).sum(1)
    if not learn_theta:
        return BlockDerivatives(value, grad_m, curv)
    yp = lik.y_nz.double()
    dpsi = torch.digamma(yp + th_nz) - torch.digamma(th_nz)
    dpsi1 = torch.polygamma(1, yp + th_nz) - torch.polygamma(1, th_nz)
    da = (th_nz * dpsi - yp).to(m.dtype)
    d2a = (th_nz * dpsi + th_nz ** 2 * dpsi1).to(m.dtype)
    zj = torch.zeros(J, dtype=m.dtype, device=m.device)
    th1 = th[:, 0]
    grad_t = zj.index_add(0, lik.g_nz, da) - th1 * e_sp.sum(1) + (wt * e_sig).sum(1)
    hess_t = (zj.index_add(0, lik.g_nz, d2a) - th1 * e_sp.sum(1) + 2.0 * th1 * e_sig.sum(1)
              - (wt * e_dsig).sum(1))
    return BlockDerivatives(value, grad_m, curv, grad_t, hess_t)


def _poisson_block_derivatives(lik: ExpectedNBLogLik, m, v) -> BlockDerivatives:
    """The θ = ∞ case (Poisson GLMM), in closed form: E e^η = e^{m + v/2}."""
    B = m.shape[1]
    s_b = torch.zeros(B, dtype=m.dtype, device=m.device).index_add(0, lik.cblock, torch.exp(lik.logs))
    mu_b = torch.exp(m + 0.5 * v) * s_b  # (J, B) expected block totals
    value = lik.const + (lik.Yb * m).sum(1) - mu_b.sum(1)
    return BlockDerivatives(value, lik.Yb - mu_b, mu_b)
