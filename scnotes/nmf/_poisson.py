"""Poisson NMF with optional weights: log-likelihood, MU (= EM) and extrapolated SCD.

Model (Lee & Seung 2001; Cemgil 2009; Carbonetto et al. 2021):

    x_ij ~ Poisson(μ_ij),   μ = L Fᵀ,   L ≥ 0 (n_cells × k),  F ≥ 0 (n_genes × k).

With weights w_ij ∈ [0, 1] (1 = observed, 0 = missing) the fit maximises
the weighted log-likelihood

    ℓ(L, F) = Σ_ij w_ij [x_ij log μ_ij − μ_ij − log x_ij!].

Sparse path. Only entries with w_ij x_ij > 0 need μ_ij: the linear term is
Σ_ij w_ij μ_ij = Σ_ik L_ik (W F)_ik, which without weights is
colsums(L) · colsums(F). So for sparse counts and no mask nothing of size
n_cells × n_genes is ever formed (cost O(k · nnz) per iteration). Dense
counts without a mask are converted to CSR and follow the same path (so
sparse and dense input give identical fits). With a mask, W F and Wᵀ L are
products with the mask itself (dense O(n p k) per iteration if the mask is
a dense array; pass a scipy sparse mask to stay sparse).

Algorithms
----------
``method="mu"``
    Multiplicative updates, L then F, each a full EM step of the Poisson
    (equivalently multinomial topic) model; ℓ never decreases.
``method="scd"``
    Sequential coordinate descent: every column of L (then of F) is
    updated by a few safeguarded Newton steps on its 1-d concave problem
    (Hsieh & Dhillon 2011; fastTopics' ``"scd"``; see
    :func:`scnotes.nmf._kernels.scd_rows`), combined with the adaptive
    extrapolation of Ang & Gillis (2019): after each block update the
    iterate is pushed along its last change by a factor β that grows
    while ℓ improves and shrinks (with a restart from the best iterate)
    when it does not. ``extrapolate=False`` gives plain SCD, whose ℓ
    never decreases.

Training record (the contract of ``DEVELOPING.md``): ``history_`` is a
DataFrame with one row per sweep (an update of L and one of F), as every
family's record has one row per pass over the data: ``epoch`` (the sweep's
index, from 0, as the VAEs' and the VEBs' epochs), ``loss`` (−ℓ / n_cells,
nats per cell, what the fit minimises), ``loglik`` (ℓ, nats, including the
−Σ w log x! constant, so it is the actual weighted Poisson log-likelihood),
``time`` (seconds since ``fit`` was called) and ``beta`` (the extrapolation
weight), measured after the sweep; ``n_epochs_ == len(history_)``. For the
extrapolated method ``loglik`` is the best value so far, i.e. that of the
iterate the fit would return if stopped there. The start is not a row (ℓ at
the start is ``loglik_init_``). Older names, kept for one release with a
DeprecationWarning: ``trace_`` (this record as ``iter`` = sweeps done,
``loglik``, ``time``, the extra column) and ``n_iter_`` (= ``n_epochs_``).

Randomness: the random start draws from ``numpy.random.default_rng(seed)``
only; the caller's global NumPy and torch states are never touched.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammaln

from .._checks import check_counts, check_mask, check_var_names
from . import _kernels
from ._topics import TopicModel, poisson_to_topics
from .._persist import Persistent

__all__ = ["PoissonNMF", "poisson_nmf", "poisson_loglik"]

_METHODS = ("mu", "scd")


def _sum_gammaln1(v, chunk=1 << 22):
    """Σ log Γ(v + 1) in chunks (no temporaries the size of the data)."""
    return float(sum(gammaln(v[i:i + chunk] + 1.0).sum() for i in range(0, v.size, chunk)))


class _Problem:
    """The data of one (weighted) fit in the layout the kernels want."""

    def __init__(self, x, w=None):
        x = check_counts(x, allow_empty_cells=True, allow_empty_genes=True)
        w = check_mask(w, x.shape)
        self.shape = x.shape
        xs = x if sp.issparse(x) else sp.csr_matrix(x)
        xs.sum_duplicates()
        xs.eliminate_zeros()
        if w is None:
            self.w = None
            d = xs
            self.const = -_sum_gammaln1(xs.data)
        else:
            self.w = w
            d = sp.csr_matrix(xs.multiply(w))
            d.eliminate_zeros()
            lg = xs.copy()
            lg.data = gammaln(lg.data + 1.0)
            self.const = -float(lg.multiply(w).sum())
        d.sort_indices()
        self.d = d
        self.dt = sp.csr_matrix(d.T)
        self.dt.sort_indices()
        self.total = float(d.sum())

    def lin_rows(self, F):
        """B (n × k) with B_ik = Σ_j w_ij F_jk: the linear term's coefficients for L."""
        if self.w is None:
            return np.tile(F.sum(axis=0), (self.shape[0], 1))
        return np.ascontiguousarray(np.asarray(self.w @ F), dtype=np.float64)

    def lin_cols(self, L):
        """Bᵀ (p × k) with (Bᵀ)_jk = Σ_i w_ij L_ik: the linear term's coefficients for F."""
        if self.w is None:
            return np.tile(L.sum(axis=0), (self.shape[1], 1))
        return np.ascontiguousarray(np.asarray(self.w.T @ L), dtype=np.float64)

    def loglik(self, L, F):
        out = np.empty(self.shape[1])
        _kernels.loglik_rows(self.dt.indptr, self.dt.indices, self.dt.data, F, L,
                             self.lin_cols(L), out)
        return float(out.sum()) + self.const


def poisson_loglik(x, L, F, w=None) -> float:
    """Weighted Poisson log-likelihood Σ_ij w_ij log Poisson(x_ij; (L Fᵀ)_ij), in nats.

    Parameters
    ----------
    x : array or scipy.sparse matrix (n_cells, n_genes), counts.
    L : array (n_cells, k), F : array (n_genes, k), nonnegative.
    w : None or array/sparse (n_cells, n_genes), weights in [0, 1].

    Returns
    -------
    float
        Includes the −log x! constant; −inf if a weighted positive count has
        zero mean. Never forms the n × p mean for sparse x and no mask.

    Raises
    ------
    ValueError
        Bad counts or mask (see :mod:`scnotes._checks`), bad factor shapes.
    """
    prob = _Problem(x, w)
    L, F = _check_factors(L, F, prob.shape, None)
    with np.errstate(divide="ignore"):
        return prob.loglik(L, F)


def _initial_factors(init, prob, k, seed, shape):
    """Starting (L, F): random (seeded) for ``init="random"``, else the given pair, checked."""
    if isinstance(init, str):
        if init != "random":
            raise ValueError(f"init must be 'random' or a tuple (L0, F0), got {init!r}")
        return _random_init(prob, k, np.random.default_rng(seed))
    try:
        L0, F0 = init
    except (TypeError, ValueError):
        raise ValueError("init must be 'random' or a tuple (L0, F0)") from None
    return _check_factors(L0, F0, shape, k)


def _check_factors(L, F, shape, k):
    L = np.array(L, dtype=np.float64, order="C")
    F = np.array(F, dtype=np.float64, order="C")
    n, p = shape
    if L.ndim != 2 or F.ndim != 2 or L.shape[0] != n or F.shape[0] != p or L.shape[1] != F.shape[1]:
        raise ValueError(f"initial factors must have shapes ({n}, k) and ({p}, k); "
                         f"got {L.shape} and {F.shape}")
    if k is not None and L.shape[1] != k:
        raise ValueError(f"initial factors have {L.shape[1]} columns but n_components={k}")
    for a, name in ((L, "L"), (F, "F")):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"initial {name} must be finite and nonnegative")
    return L, F


def _random_init(prob, k, rng):
    """L_ik ∝ r_i e_ik, F_jk ∝ c_j e'_jk with e ~ U(0.1, 1): the rank-1 MLE's scale, perturbed.

    r, c, T are row sums, column sums and total of the effective counts
    w∘x; the result is rescaled so that Σ w μ = T, as at any stationary
    point of ℓ.
    """
    n, p = prob.shape
    r = np.asarray(prob.d.sum(axis=1)).ravel()
    c = np.asarray(prob.d.sum(axis=0)).ravel()
    L = r[:, None] * rng.uniform(0.1, 1.0, size=(n, k))
    F = c[:, None] * rng.uniform(0.1, 1.0, size=(p, k))
    lin = float((L * prob.lin_rows(F)).sum())
    if lin > 0 and prob.total > 0:
        a = np.sqrt(prob.total / lin)
        L *= a
        F *= a
    return np.ascontiguousarray(L), np.ascontiguousarray(F)


def _history(rows, n_cells, extra):
    """The training record (module docstring) from the fit's rows (sweeps done, ℓ, time, extra),
    whose first row is the start: one row per sweep, ``epoch`` counted from 0."""
    h = pd.DataFrame(rows[1:], columns=["epoch", "loglik", "time", extra])
    h["epoch"] = np.arange(len(h), dtype=np.int64)
    h.insert(1, "loss", -h["loglik"] / max(int(n_cells), 1))
    return h


def _older_name(old, new):
    """One DeprecationWarning for an older attribute name. ``stacklevel=2`` attributes it to the
    property that calls this (scnotes code), the pattern of ``scnotes.tl._front._caller_stacklevel``:
    Python shows a DeprecationWarning by default only when attributed to ``__main__``, where a
    chapter's cells run, so it never lands on an executed page; pytest and ``-W error`` see it."""
    warnings.warn(f"`{old}` is the older name of `{new}` (it goes in the next release)",
                  DeprecationWarning, stacklevel=2)


def _saved_record(history, n_iter):
    """The record of a saved model in today's layout. Files written before the start row was
    dropped hold ``n_iter`` + 1 rows, the first the start; its ℓ becomes ``loglik_init_``."""
    start = None
    if history is not None and len(history) == int(n_iter) + 1:
        start = float(history["loglik"].iloc[0])
        history = history.iloc[1:].reset_index(drop=True)
        history["epoch"] = np.arange(len(history), dtype=np.int64)
    return history, start


def _sweeps(n, progress, desc):
    """range(1, n + 1), with a tqdm bar when ``progress`` (imported only then; None:
    ``scnotes.settings.progress``)."""
    from .._settings import resolve_progress

    if not resolve_progress(progress):
        return range(1, n + 1)
    from tqdm.auto import tqdm

    return tqdm(range(1, n + 1), desc=desc, leave=False)


class _FactorResults(Persistent):
    """Shared read-outs, aliases and persistence of a fitted L (n_cells × k), F (n_genes × k).

    Subclasses set ``_param_names`` (constructor arguments, in order), ``_array_params``
    (those that may hold arrays), ``_extra`` (the record's per-sweep extra column) and
    ``_trace_names`` (its name in the older ``trace_``).
    """

    _param_names: tuple = ()
    _array_params: tuple = ("init",)
    _extra = "beta"
    _trace_extra = "beta"
    _fitted_arrays: tuple = ("L_", "F_")

    def _check_fitted(self):
        if not hasattr(self, "L_"):
            raise RuntimeError("this model is not fitted yet; call fit(x) first")

    # --- older names (aliases; chapters use the contract's names) -------------------
    @property
    def max_iter(self):
        """Older name of ``max_epochs``."""
        return self.max_epochs

    @max_iter.setter
    def max_iter(self, value):
        self.max_epochs = value

    @property
    def trace_(self) -> pd.DataFrame:
        """Older layout of ``history_`` (deprecated): ``iter`` (sweeps done, ``epoch`` + 1),
        ``loglik``, ``time`` and the extra column under its older name."""
        self._check_fitted()
        _older_name("trace_", "history_")
        h = self.history_.rename(columns={self._extra: self._trace_extra})
        h.insert(0, "iter", h.pop("epoch") + 1)
        return h[["iter", "loglik", "time", self._trace_extra]]

    @property
    def n_iter_(self) -> int:
        """Older name of ``n_epochs_`` (deprecated): sweeps run."""
        self._check_fitted()
        _older_name("n_iter_", "n_epochs_")
        return self.n_epochs_

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn style), used by :meth:`save` and ``repr``."""
        return {name: getattr(self, name) for name in self._param_names}

    # --- read-outs ------------------------------------------------------------------
    @property
    def mean_(self) -> np.ndarray:
        """Fitted mean L Fᵀ, dense (n_cells × n_genes) — mind the memory on large data."""
        self._check_fitted()
        return self.L_ @ self.F_.T

    def predict(self) -> np.ndarray:
        """Expected counts L Fᵀ (n_cells × n_genes, dense); also the imputation of masked entries."""
        return self.mean_

    def topics(self) -> TopicModel:
        """The fit in topic-model form (proportions, topics, scale); see :func:`poisson_to_topics`."""
        self._check_fitted()
        return poisson_to_topics(self.L_, self.F_)

    def _finish(self, prob, L, F, rows, conv, var_names=None):
        self.L_, self.F_ = L, F
        self.history_ = _history(rows, prob.shape[0], self._extra)
        self.loglik_init_ = float(rows[0][1])
        self.loglik_ = float(rows[-1][1])
        self.n_epochs_ = len(self.history_)
        self.converged_ = bool(conv)
        self.n_cells_, self.n_genes_ = prob.shape
        self.var_names_ = var_names  # None for an array fit without gene names

    # --- persistence ----------------------------------------------------------------
    def save(self, path):
        """Write the fitted model to ``path`` (exactly that file; the one scnotes format, see
        :mod:`scnotes._persist`, read back without unpickling): ``get_params()``, factors,
        fitted θ (NBMF), the training record, the fit's scalars and the genes it was fitted
        on (``var_names_``, from ``fit(..., var_names=)``; None for array fits without names).

        Raises RuntimeError if the model is not fitted.
        """
        from .._persist import save_model

        self._check_fitted()
        save_model(self, path)

    # Saved-state keys: the sweep count keeps its older key "n_iter_" (files stay readable by
    # older scnotes); mapped to n_epochs_ on load.
    _SCALARS = ("loglik_", "n_iter_", "converged_", "n_cells_", "n_genes_", "loglik_init_")
    _STATE_NAMES = {"history": "history_", "n_iter_": "n_epochs_"}

    def _get_state(self):
        out = {name: np.asarray(getattr(self, name)) for name in self._fitted_arrays}
        out.update({k: getattr(self, self._STATE_NAMES.get(k, k)) for k in self._SCALARS}, history=self.history_)
        return out

    def _set_loaded(self, name, value):
        setattr(self, self._STATE_NAMES.get(name, name), value)

    def _loaded_record(self):
        self.history_, start = _saved_record(self.history_, self.n_epochs_)
        if start is not None:
            self.loglik_init_ = start
        if "loss" not in self.history_:
            self.history_.insert(1, "loss", -self.history_["loglik"] / max(int(self.n_cells_), 1))
        return self

    @classmethod
    def _from_state(cls, params, state, device=None):
        model = cls(**params)
        for k, v in state.items():
            model._set_loaded(k, v)
        return model._loaded_record()

    @classmethod
    def _load_legacy(cls, meta, arrays, device=None):
        """The NMF format written before :mod:`scnotes._persist` (``.npz`` + JSON meta)."""
        params = {}
        for name, value in meta["params"].items():
            if isinstance(value, dict) and "arrays" in value:
                got = [arrays[k] for k in value["arrays"]]
                value = tuple(got) if name == "init" else got[0]
            params[name] = value
        model = cls(**params)
        for name in cls._fitted_arrays:
            setattr(model, name, arrays[f"fitted__{name}"])
        model.history_ = pd.DataFrame({c: arrays[f"history__{c}"] for c in meta["history_columns"]})
        for k, v in meta["scalars"].items():
            model._set_loaded(k, v)
        model.var_names_ = None if meta["var_names"] is None else np.asarray(meta["var_names"], dtype=object)
        return model._loaded_record()


class PoissonNMF(_FactorResults):
    """Poisson NMF x_ij ~ Poisson((L Fᵀ)_ij) fitted by maximum likelihood (see module docstring).

    Parameters
    ----------
    n_components : int
        Rank k.
    method : {"scd", "mu"}
        ``"scd"``: sequential coordinate descent with extrapolation (fast);
        ``"mu"``: multiplicative updates = EM (monotone, slow).
    max_epochs : int
        Maximum number of sweeps (one update of L and one of F). ``max_iter``
        is accepted as its older name.
    tol : float
        Stop when an (accepted) sweep improves ℓ by less than
        ``tol · |ℓ|``. ``tol=0`` runs ``max_epochs`` sweeps.
    init : "random" or (L0, F0)
        Random start L_ik ∝ r_i e_ik, F_jk ∝ c_j e'_jk with e, e' ~ U(0.1, 1)
        and r, c the row and column sums of w∘x, scaled so that the fitted
        total equals the observed one (reproducible with ``seed``); or
        given factors of shapes (n_cells, k), (n_genes, k) (copied). Every
        entry of the random start is positive, so EM (``"mu"``) keeps every
        mean positive (it can only approach zero); SCD can set factors, and
        so means, to exactly zero.
    seed : int
        Seed of the random start (``numpy.random.default_rng``); same seed ⇒
        identical fit; the global NumPy / torch random states are not used.
    extrapolate : bool
        For ``"scd"``: use Ang & Gillis (2019) extrapolation.
    n_inner : int
        Newton steps per coordinate in ``"scd"``.
    beta_init, beta_grow, beta_max_grow, beta_shrink : float
        Extrapolation weight schedule: start at ``beta_init``; after an
        improving sweep β ← min(β̄, β·beta_grow), β̄ ← min(1, β̄·beta_max_grow);
        after a worse one β̄ ← β, β ← β·beta_shrink and restart from the best iterate.
    progress : bool
        Show a progress bar over the sweeps (None: ``scnotes.settings.progress``, on only in
        an interactive session).
    verbose : bool
        Print ℓ after every sweep.
    max_iter : int, optional
        Older name of ``max_epochs`` (overrides it when given).

    Attributes
    ----------
    L_ : ndarray (n_cells, k), F_ : ndarray (n_genes, k)
        Fitted factors (the best iterate seen).
    loglik_ : float
        Weighted Poisson log-likelihood at (L_, F_), nats, incl. −Σ w log x!.
    history_ : pandas.DataFrame
        One row per sweep (row 0: the start): ``epoch``, ``loss`` (−ℓ per cell,
        nats), ``loglik`` (ℓ, nats), ``time`` (s since ``fit`` was called,
        including data preparation), ``beta`` (the extrapolation weight after
        the sweep; 0 without extrapolation); ``epoch`` from 0, the start is not a row.
        ``trace_``: the older layout (deprecated).
    n_epochs_ : int
        Sweeps run (``len(history_)``); ``n_iter_`` is its older name (deprecated).
    loglik_init_ : float
        ℓ at the start (nats).
    converged_ : bool
    var_names_ : genes the model was fitted on (``fit(..., var_names=)``), or None.

    Examples
    --------
    >>> m = PoissonNMF(5, seed=1).fit(counts)          # doctest: +SKIP
    >>> props, topics, scale = m.topics()              # doctest: +SKIP
    >>> m.save("nmf.npz"); PoissonNMF.load("nmf.npz")  # doctest: +SKIP
    """

    _param_names = ("n_components", "method", "max_epochs", "tol", "init", "seed", "extrapolate",
                    "n_inner", "beta_init", "beta_grow", "beta_max_grow", "beta_shrink", "progress",
                    "verbose")

    def __init__(self, n_components: int = 10, method: str = "scd", max_epochs: int = 300,
                 tol: float = 1e-8, init="random", seed: int = 0, extrapolate: bool = True,
                 n_inner: int = 2, beta_init: float = 0.5, beta_grow: float = 1.1,
                 beta_max_grow: float = 1.05, beta_shrink: float = 0.75, progress: bool | None = None,
                 verbose: bool = False, max_iter: int | None = None):
        self.n_components = n_components
        self.method = method
        self.max_epochs = max_epochs if max_iter is None else max_iter
        self.tol = tol
        self.init = init
        self.seed = seed
        self.extrapolate = extrapolate
        self.n_inner = n_inner
        self.beta_init = beta_init
        self.beta_grow = beta_grow
        self.beta_max_grow = beta_max_grow
        self.beta_shrink = beta_shrink
        self.progress = progress
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _validate_params(self):
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if int(self.max_epochs) != self.max_epochs or int(self.max_epochs) < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {self.max_epochs!r}")
        if self.tol < 0 or int(self.n_inner) < 1:
            raise ValueError("tol must be >= 0 and n_inner >= 1")

    def fit(self, x, w=None, *, var_names=None):
        """Fit to counts ``x`` (n_cells × n_genes, dense or scipy sparse), optional weights ``w``;
        ``var_names`` (one per gene) become ``var_names_`` (:func:`scnotes.tl.nmf` passes
        ``adata.var_names``).

        Returns ``self``.

        Raises
        ------
        ValueError
            Bad counts (negative, non-integer, NaN), mask of the wrong shape
            or outside [0, 1], bad ``init`` factors, bad hyperparameters.
        """
        t0 = time.perf_counter()
        self._validate_params()
        prob = _Problem(x, w)
        genes = check_var_names(var_names, prob.shape[1])
        k = int(self.n_components)
        L, F = _initial_factors(self.init, prob, k, self.seed, prob.shape)
        with np.errstate(divide="ignore", invalid="ignore"), _kernels.threads_for(prob.d.nnz):
            if self.method == "mu":
                L, F, rows, conv = self._fit_mu(prob, L, F, t0)
            elif self.extrapolate:
                L, F, rows, conv = self._fit_scd_extrapolated(prob, L, F, t0)
            else:
                L, F, rows, conv = self._fit_scd(prob, L, F, t0)
        self._finish(prob, L, F, rows, conv, genes)
        return self

    def _done(self, old, new):
        return self.tol > 0 and np.isfinite(new) and 0 <= new - old < self.tol * abs(new)

    def _log(self, it, ll):
        if self.verbose:
            print(f"epoch {it:5d}  loglik {ll:.6f}")

    def _sweeps(self):
        return _sweeps(int(self.max_epochs), self.progress, f"{type(self).__name__}-{self.method}")

    def _mu_sweep(self, prob, L, F):
        """One EM / multiplicative update of L then F in place; return ℓ at the result."""
        d, dt = prob.d, prob.dt
        _kernels.mu_rows(d.indptr, d.indices, d.data, L, F, prob.lin_rows(F))
        _kernels.mu_rows(dt.indptr, dt.indices, dt.data, F, L, prob.lin_cols(L))
        return prob.loglik(L, F)

    def _scd_sweep(self, prob, L, F):
        """Update L then F in place; return ℓ at the result."""
        d, dt = prob.d, prob.dt
        outL = np.empty(prob.shape[0])
        outF = np.empty(prob.shape[1])
        _kernels.scd_rows(d.indptr, d.indices, d.data, L, F, prob.lin_rows(F),
                          int(self.n_inner), False, outL)
        _kernels.scd_rows(dt.indptr, dt.indices, dt.data, F, L, prob.lin_cols(L),
                          int(self.n_inner), True, outF)
        return float(outF.sum()) + prob.const

    def _fit_sweeps(self, prob, L, F, t0, sweep):
        """Repeat ``sweep`` until the relative change of ℓ falls below tol (no extrapolation)."""
        ll = prob.loglik(L, F)
        rows = [(0, ll, time.perf_counter() - t0, 0.0)]
        conv = False
        for it in self._sweeps():
            new = sweep(prob, L, F)
            rows.append((it, new, time.perf_counter() - t0, 0.0))
            self._log(it, new)
            if self._done(ll, new):
                conv = True
                break
            ll = new
        return L, F, rows, conv

    def _fit_mu(self, prob, L, F, t0):
        return self._fit_sweeps(prob, L, F, t0, self._mu_sweep)

    def _fit_scd(self, prob, L, F, t0):
        return self._fit_sweeps(prob, L, F, t0, self._scd_sweep)

    def _fit_scd_extrapolated(self, prob, L, F, t0):
        """SCD with the adaptive extrapolation of Ang & Gillis (2019, Neural Comput. 31:417).

        Non-extrapolated iterates (Ln, Fn) are produced by SCD started from
        the extrapolated pair (Ly, Fy); then Ly = Ln + β(Ln − Ln_prev),
        projected to ≥ ρ·Ln (ρ = 1e-3, which keeps every mean that was
        positive positive, so log μ stays finite). ℓ is evaluated at the
        pair (Ly, Fn) that the F-update sees, for free inside the kernel.
        """
        d, dt = prob.d, prob.dt
        rho = 1e-3
        n, p = prob.shape
        outL = np.empty(n)
        outF = np.empty(p)
        best = prob.loglik(L, F)
        bestL, bestF = L.copy(), F.copy()
        rows = [(0, best, time.perf_counter() - t0, 0.0)]
        Ly, Fy = L.copy(), F.copy()
        Lp, Fp = L.copy(), F.copy()
        beta, beta_max = float(self.beta_init), 1.0
        conv = False
        for it in self._sweeps():
            Ln = Ly.copy()
            _kernels.scd_rows(d.indptr, d.indices, d.data, Ln, Fy, prob.lin_rows(Fy),
                              int(self.n_inner), False, outL)
            Ly = np.maximum(Ln + beta * (Ln - Lp), rho * Ln)
            Fn = Fy.copy()
            _kernels.scd_rows(dt.indptr, dt.indices, dt.data, Fn, Ly, prob.lin_cols(Ly),
                              int(self.n_inner), True, outF)
            ll = float(outF.sum()) + prob.const
            if ll >= best:
                old = best
                best = ll
                bestL, bestF = Ly.copy(), Fn.copy()
                Fy = np.maximum(Fn + beta * (Fn - Fp), rho * Fn)
                Lp, Fp = Ln, Fn
                beta = min(beta_max, beta * self.beta_grow)
                beta_max = min(1.0, beta_max * self.beta_max_grow)
                rows.append((it, best, time.perf_counter() - t0, beta))
                self._log(it, best)
                if self._done(old, best):
                    conv = True
                    break
            else:
                # Worse: forget the momentum and restart from the best iterate.
                beta_max = beta
                beta = beta * self.beta_shrink
                Ly, Fy = bestL.copy(), bestF.copy()
                Lp, Fp = bestL.copy(), bestF.copy()
                rows.append((it, best, time.perf_counter() - t0, beta))
                self._log(it, best)
        return bestL, bestF, rows, conv

    def loglik(self, x, w=None) -> float:
        """Weighted Poisson log-likelihood of new counts ``x`` (same shape) under the fitted mean."""
        self._check_fitted()
        return poisson_loglik(x, self.L_, self.F_, w)

    def transform(self, x, w=None, max_epochs: int = 100, tol: float = 1e-8):
        """Loadings of new cells with the fitted factors F_ held fixed.

        Maximises the (weighted) Poisson log-likelihood of ``x`` over L alone by EM
        (multiplicative updates, monotone), started from L_ik = r_i / Σ_jk F_jk
        (r_i the cell's weighted total), for at most ``max_epochs`` sweeps or until ℓ
        improves by less than ``tol · |ℓ|``.

        Parameters
        ----------
        x : array or sparse (n_new_cells, n_genes), counts over the genes of the fit,
            in the same order.
        w : optional weights, as in :meth:`fit`.

        Returns
        -------
        ndarray (n_new_cells, k).

        Raises
        ------
        ValueError : bad counts or mask, or a gene count different from the fit's.
        """
        self._check_fitted()
        prob = _Problem(x, w)
        if prob.shape[1] != self.F_.shape[0]:
            raise ValueError(f"x has {prob.shape[1]} genes but the model was fitted on {self.F_.shape[0]}")
        F = np.ascontiguousarray(self.F_)
        r = np.asarray(prob.d.sum(axis=1)).ravel()
        L = np.ascontiguousarray(np.outer(r / max(F.sum(), 1e-300), np.ones(F.shape[1])))
        d = prob.d
        B = prob.lin_rows(F)
        with np.errstate(divide="ignore", invalid="ignore"), _kernels.threads_for(d.nnz):
            ll = prob.loglik(L, F)
            for _ in range(int(max_epochs)):
                _kernels.mu_rows(d.indptr, d.indices, d.data, L, F, B)
                new = prob.loglik(L, F)
                if tol > 0 and np.isfinite(new) and 0 <= new - ll < tol * abs(new):
                    break
                ll = new
        return L


def poisson_nmf(x, n_components: int = 10, w=None, **kwargs) -> PoissonNMF:
    """Fit :class:`PoissonNMF` (``kwargs`` go to its constructor) and return the fitted estimator."""
    return PoissonNMF(n_components, **kwargs).fit(x, w=w)
