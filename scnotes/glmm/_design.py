"""Design of the Poisson GLMM: cells, cell groups, donors, offsets, validated once.

The model (seed "Poisson GLMM for differential expression"; Svensson 2020) is,
for gene ``j`` and cell ``i``,

    y_ij ~ Poisson(s_i λ_ij),   ln λ_ij = b_{j, g(i)} + u_{j, d(i)},   u_jd ~ N(0, σ_uj²),

with ``s_i`` the cell's total count (the offset), ``g(i)`` its cell group
(one-hot ``X``), ``d(i)`` its donor (one-hot ``Z``). Because ``X`` and ``Z``
are one-hot, the likelihood depends on the data only through the per
(group, donor) sums ``Y_jgd = Σ y_ij`` and ``S_gd = Σ s_i``:

    Σ_i ln p(y_ij) = Σ_gd [Y_jgd η_jgd − S_gd exp(η_jgd)] + c_j,
    c_j = Σ_i [y_ij ln s_i − ln y_ij!],

which is what :class:`GLMMData.stats` returns and what the full-batch VEB,
NUTS and the batched fit use (Poisson sums are Poisson, so nothing is lost).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import gammaln

from .._checks import check_counts, check_genes, check_layer, check_obs_columns, check_obs_key

__all__ = ["GLMMData", "GLMMDesign", "SufficientStats", "glmm_data", "glmm_data_from_adata",
           "complete_cell_types", "code_covariates"]


@dataclass
class SufficientStats:
    """Per (group, donor) sums; the Poisson GLMM likelihood needs nothing else.

    Attributes
    ----------
    Y : ndarray (n_genes, n_groups, n_donors)   summed counts
    S : ndarray (n_groups, n_donors)            summed totals (offsets), 0 where no cells
    n : ndarray (n_groups, n_donors)            number of cells
    const : ndarray (n_genes,)                  Σ_i [y_ij ln s_i − ln y_ij!] (nats)
    """

    Y: np.ndarray
    S: np.ndarray
    n: np.ndarray
    const: np.ndarray


class _DesignSizes:
    """``n_genes``, ``n_groups`` and ``n_donors`` from the ``genes``, ``groups`` and ``donors`` lists:
    one definition for a design (:class:`GLMMDesign`) and its data (:class:`GLMMData`, whose count
    columns are checked against its genes when it is built)."""

    @property
    def n_genes(self) -> int:
        """Number of genes, ``len(genes)``."""
        return len(self.genes)

    @property
    def n_groups(self) -> int:
        """Number of cell groups, ``len(groups)``."""
        return len(self.groups)

    @property
    def n_donors(self) -> int:
        """Number of donors, ``len(donors)``."""
        return len(self.donors)


@dataclass
class GLMMDesign(_DesignSizes):
    """What a fitted model needs to know about its data besides the counts: the
    genes, cell groups (with their cell type and condition), donors and the
    ``obs`` keys they came from. Saved with a model and checked against new data.
    """

    genes: list
    groups: list
    donors: list
    group_table: pd.DataFrame
    keys: dict = field(default_factory=dict)
    covariate_names: list = field(default_factory=list)

    def registry(self):
        """Category registry ``[(obs key, [categories…]), …]`` (donor, then cell group
        or cell type and condition), as the contract's ``covariate_registry_``."""
        k = self.keys
        out = [(k.get("donor_key"), list(self.donors))]
        if k.get("group_key") is not None or k.get("cell_type_key") is None:
            out.append((k.get("group_key"), list(self.groups)))
        else:
            out.append((k["cell_type_key"], list(pd.unique(self.group_table["cell_type"]))))
            out.append((k["condition_key"], list(pd.unique(self.group_table["condition"]))))
        return out

    def to_dict(self):
        return {"genes": list(self.genes), "groups": list(self.groups), "donors": list(self.donors),
                "group_table": {"index": list(self.group_table.index),
                                "cell_type": list(self.group_table["cell_type"]),
                                "condition": list(self.group_table["condition"])},
                "keys": dict(self.keys), "covariate_names": list(self.covariate_names)}

    @classmethod
    def from_dict(cls, d):
        t = d["group_table"]
        table = pd.DataFrame({"cell_type": t["cell_type"], "condition": t["condition"]},
                             index=pd.Index(t["index"], name="cell_group"))
        return cls(list(d["genes"]), list(d["groups"]), list(d["donors"]), table, dict(d.get("keys", {})),
                   list(d.get("covariate_names", [])))

    def check(self, data, what="the model"):
        """Raise ValueError unless ``data`` has the same genes (same order), cell groups
        and donors as this design; the message names the first difference."""
        for name in ("genes", "groups", "donors", "covariate_names"):
            a, b = list(getattr(self, name)), list(getattr(data, name))
            if a != b:
                k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                got = b[k] if k < len(b) else "<none>"
                want = a[k] if k < len(a) else "<none>"
                raise ValueError(f"data {name} differ from those {what} was fitted on (position {k}: "
                                 f"{got!r} vs {want!r}; {len(b)} vs {len(a)} {name}); build the data with "
                                 f"the same {name} in the same order")


@dataclass
class GLMMData(_DesignSizes):
    """Validated data for the Poisson GLMM (build with :func:`glmm_data`).

    Attributes
    ----------
    counts : ndarray (n_cells, n_genes), float64, non-negative integers
    total : ndarray (n_cells,)      per-cell total count s_i (> 0), the offset is ln s_i
    group : ndarray (n_cells,) int  cell-group code in ``0..n_groups-1`` (columns of X)
    donor : ndarray (n_cells,) int  donor code in ``0..n_donors-1`` (columns of Z)
    groups, donors, genes : list of str
    group_table : DataFrame indexed by group name with columns ``cell_type`` and
        ``condition`` (``None`` entries when the groups were given directly).
    covariates : ndarray (n_cells, n_covariates) or None
        Sample-level fixed-effect covariates, coded by :func:`glmm_data` (numeric columns
        centred; categorical ones as treatment-coded indicators, first level dropped).
    covariate_names : list of str, one per column of ``covariates``
    n_cells, n_genes, n_groups, n_donors : int
        Sizes (``n_genes`` = ``len(genes)``, as :class:`GLMMDesign`'s).

    Raises
    ------
    ValueError : ``counts`` is not 2-d with one column per gene name.
    """

    counts: np.ndarray
    total: np.ndarray
    group: np.ndarray
    donor: np.ndarray
    groups: list
    donors: list
    genes: list
    group_table: pd.DataFrame
    _stats: SufficientStats | None = field(default=None, repr=False)
    keys: dict = field(default_factory=dict)
    covariates: np.ndarray | None = None
    covariate_names: list = field(default_factory=list)

    def __post_init__(self):
        # n_genes is read off the gene names (one definition with GLMMDesign), so the counts must match them
        shape = np.shape(self.counts)
        if len(shape) != 2 or shape[1] != len(self.genes):
            raise ValueError(f"counts of shape {shape} for {len(self.genes)} gene names; GLMMData needs "
                             "n_cells × n_genes counts, one column per gene (build it with glmm_data)")

    @property
    def n_cells(self):
        return self.counts.shape[0]

    def design(self) -> GLMMDesign:
        """Genes, groups, donors and keys without the counts (what a fitted model keeps)."""
        return GLMMDesign(list(self.genes), list(self.groups), list(self.donors), self.group_table.copy(),
                          dict(self.keys), list(self.covariate_names))

    def X(self):
        """One-hot cell-group design, ndarray (n_cells, n_groups)."""
        return np.eye(self.n_groups)[self.group]

    def Z(self):
        """One-hot donor design, ndarray (n_cells, n_donors)."""
        return np.eye(self.n_donors)[self.donor]

    def stats(self) -> SufficientStats:
        """The per (group, donor) sufficient statistics (cached)."""
        if self._stats is None:
            G, D, J = self.n_groups, self.n_donors, self.n_genes
            cell = self.group * D + self.donor
            Y = np.zeros((G * D, J))
            np.add.at(Y, cell, self.counts)
            S = np.bincount(cell, weights=self.total, minlength=G * D).reshape(G, D)
            n = np.bincount(cell, minlength=G * D).reshape(G, D)
            const = (self.counts * np.log(self.total)[:, None] - gammaln(self.counts + 1)).sum(0)
            self._stats = SufficientStats(Y.T.reshape(J, G, D), S, n, const)
        return self._stats

    def subset_genes(self, genes) -> "GLMMData":
        """The same design with only ``genes`` (names or integer positions)."""
        genes = [genes] if isinstance(genes, (str, int, np.integer)) else list(genes)
        idx = [self.genes.index(g) if isinstance(g, str) else int(g) for g in genes]
        for g, i in zip(genes, idx):
            if not 0 <= i < self.n_genes:
                raise IndexError(f"gene {g!r} out of range (n_genes={self.n_genes})")
        return GLMMData(self.counts[:, idx], self.total, self.group, self.donor, self.groups,
                        self.donors, [self.genes[i] for i in idx], self.group_table, keys=dict(self.keys),
                        covariates=self.covariates, covariate_names=list(self.covariate_names))

    def naive_estimates(self, pseudo: float = 0.5):
        """Point-mass (no donor effect) estimates ln(Σy / Σs) per group, ndarray (n_genes, n_groups).

        The seed's "point mass expression model"; ``pseudo`` counts keep groups
        with no counts finite. Their standard errors are 1/sqrt(Σy) (delta method).
        """
        st = self.stats()
        return np.log(st.Y.sum(2) + pseudo) - np.log(st.S.sum(1))[None, :]

    def to_frame(self, gene) -> pd.DataFrame:
        """Per-cell long table for one gene: y, total, cell_group, donor (as used by lme4)."""
        j = self.genes.index(gene) if isinstance(gene, str) else int(gene)
        return pd.DataFrame({"y": self.counts[:, j], "total": self.total,
                             "cell_group": np.asarray(self.groups, dtype=object)[self.group],
                             "donor": np.asarray(self.donors, dtype=object)[self.donor]})


_KEY_PARAMS = {"donor": "donor_key", "cell group": "group_key", "cell type": "cell_type_key",
               "condition": "condition_key"}


def _categorical(obs, key, what):
    """obs[key] as a categorical; raises on a missing column, missing values or empty levels."""
    col = check_obs_key(obs, key, param=_KEY_PARAMS.get(what))
    raw = obs[key]
    if isinstance(raw.dtype, pd.CategoricalDtype):
        empty = [str(c) for c in raw.cat.categories if (raw == c).sum() == 0]
        if empty:
            raise ValueError(
                f"{what} column {key!r} declares level(s) with no cells: {empty}; a cell group "
                "or donor without cells has no likelihood. Drop them first, e.g. "
                f"obs[{key!r}] = obs[{key!r}].cat.remove_unused_categories()")
    return col


_UNSET = object()


def _size_factor_key(size_factor_key, total_key, func: str):
    """``total_key`` is the older name of ``size_factor_key`` (the contract's word for the
    column of per-cell library sizes): accepted for one release with a DeprecationWarning."""
    if total_key is _UNSET:
        return size_factor_key
    import warnings

    warnings.warn(f"{func}(total_key=...) is renamed size_factor_key=; total_key will be removed",
                  DeprecationWarning, stacklevel=3)
    return total_key


def glmm_data(obs: pd.DataFrame, counts, *, donor_key: str, size_factor_key: str | None = None,
              group_key: str | None = None, cell_type_key: str | None = None,
              condition_key: str | None = None, genes=None, reference: str | None = None,
              total=None, covariate_keys=None, total_key=_UNSET) -> GLMMData:
    """Validate and code the inputs of the Poisson GLMM.

    Parameters
    ----------
    obs : DataFrame, n_cells rows
        Per-cell annotations.
    counts : array-like or sparse, (n_cells, n_genes), or (n_cells,) for one gene
        Raw integer counts of the genes to test.
    donor_key : str
        Column of ``obs`` with the donor (random effect, at least 2 levels).
    size_factor_key : str
        Column with the cell's library size ``s_i`` (its total count; offset ``ln s_i``), > 0.
        ``total_key`` is its older name (DeprecationWarning).
    total : array (n_cells,), optional
        The library sizes themselves, instead of ``size_factor_key`` (give exactly one).
    group_key : str, optional
        Column with the cell group (fixed effect). Alternatively give
        ``cell_type_key`` and ``condition_key``: the cell group is then
        ``"<cell type>|<condition>"`` and contrasts between conditions within
        each cell type become available.
    genes : list of str, optional
        Gene names (default ``gene0, gene1, ...`` or the counts' columns).
    reference : str, optional
        Reference condition for contrasts (default: the first level).
    covariate_keys : list of str, optional
        ``obs`` columns of sample-level covariates to adjust for as fixed effects (sex, batch,
        age: :func:`code_covariates`). Each must be constant within a donor × cell group (the
        NB GLMM puts them on the (group, donor) blocks).

    Returns
    -------
    GLMMData

    Raises
    ------
    KeyError
        A key is not a column of ``obs``.
    ValueError
        Missing, zero or negative totals; missing labels; a cell group or donor
        level with no cells; fewer than two donors; counts that are negative,
        non-integer or not finite; a gene with no counts at all; mismatched lengths; a
        covariate with missing values or one that varies within a donor × cell group.
    """
    if not isinstance(obs, pd.DataFrame):
        raise TypeError(f"obs must be a pandas DataFrame, got {type(obs).__name__}")
    if genes is None and isinstance(counts, pd.DataFrame):
        genes = [str(c) for c in counts.columns]
    if isinstance(counts, (pd.DataFrame, pd.Series)):
        counts = counts.to_numpy()
    if hasattr(counts, "ndim") and counts.ndim == 1:
        counts = np.asarray(counts).reshape(-1, 1)
    counts = check_counts(counts, name="counts", allow_empty_cells=True, allow_empty_genes=False)
    if hasattr(counts, "toarray"):
        counts = counts.toarray()
    if counts.shape[0] != len(obs):
        raise ValueError(f"counts have {counts.shape[0]} rows but obs has {len(obs)} cells")

    size_factor_key = _size_factor_key(size_factor_key, total_key, "glmm_data")
    if (size_factor_key is None) == (total is None):
        raise ValueError("give exactly one of size_factor_key (an obs column of per-cell library sizes) "
                         "and total (an array)")
    if total is None:
        check_obs_columns(obs, size_factor_key, "size_factor_key")
        total = pd.to_numeric(obs[size_factor_key], errors="coerce").to_numpy(dtype=float)
        where = f"obs[{size_factor_key!r}]"
    else:
        total = np.asarray(total, dtype=float).ravel()
        where = "total"
        if total.shape[0] != len(obs):
            raise ValueError(f"total has {total.shape[0]} entries but obs has {len(obs)} cells")
    if np.isnan(total).any():
        raise ValueError(f"{where} has {int(np.isnan(total).sum())} missing or non-numeric "
                         "totals; the offset ln(total) needs every cell's total count")
    bad = ~np.isfinite(total) | (total <= 0)
    if bad.any():
        raise ValueError(f"{where} has {int(bad.sum())} zero, negative or infinite totals; "
                         "the offset ln(total) is undefined there. Drop those cells "
                         "(e.g. obs[obs[size_factor_key] > 0]) before fitting")

    donor = _categorical(obs, donor_key, "donor")
    if len(donor.cat.categories) < 2:
        raise ValueError(f"donor column {donor_key!r} has {len(donor.cat.categories)} level; a donor "
                         "random effect needs at least 2 donors (σ_u is not identifiable otherwise)")

    if group_key is not None:
        if cell_type_key is not None or condition_key is not None:
            raise ValueError("give either group_key or (cell_type_key, condition_key), not both")
        grp = _categorical(obs, group_key, "cell group")
        groups = [str(c) for c in grp.cat.categories]
        gcode = grp.cat.codes.to_numpy()
        table = pd.DataFrame({"cell_type": [None] * len(groups), "condition": [None] * len(groups)},
                             index=pd.Index(groups, name="cell_group"))
    else:
        if cell_type_key is None or condition_key is None:
            raise ValueError("give group_key, or both cell_type_key and condition_key")
        ct = _categorical(obs, cell_type_key, "cell type")
        cond = _categorical(obs, condition_key, "condition")
        cts = [str(c) for c in ct.cat.categories]
        conds = [str(c) for c in cond.cat.categories]
        if reference is not None:
            if reference not in conds:
                raise ValueError(f"reference {reference!r} is not a level of {condition_key!r}: {conds}")
            conds = [reference] + [c for c in conds if c != reference]
        cond_code = np.array([conds.index(str(c)) for c in cond.cat.categories])[cond.cat.codes.to_numpy()]
        full = ct.cat.codes.to_numpy() * len(conds) + cond_code
        present = np.bincount(full, minlength=len(cts) * len(conds))
        if (present == 0).any():
            empty = [f"{cts[k // len(conds)]}|{conds[k % len(conds)]}" for k in np.flatnonzero(present == 0)]
            raise ValueError(f"cell group(s) with no cells: {empty}. Each cell type needs cells in every "
                             "condition; drop those cell types (and remove unused categories) first")
        groups = [f"{c}|{k}" for c in cts for k in conds]
        gcode = full
        table = pd.DataFrame({"cell_type": [c for c in cts for _ in conds],
                              "condition": [k for _ in cts for k in conds]},
                             index=pd.Index(groups, name="cell_group"))

    if genes is None:
        genes = [f"gene{j}" for j in range(counts.shape[1])]
    genes = [str(g) for g in genes]
    if len(genes) != counts.shape[1]:
        raise ValueError(f"{len(genes)} gene names for {counts.shape[1]} count columns")
    keys = {"donor_key": donor_key, "group_key": group_key, "cell_type_key": cell_type_key,
            "condition_key": condition_key, "size_factor_key": size_factor_key}
    dcode = donor.cat.codes.to_numpy().astype(int)
    cov, cov_names = None, []
    if covariate_keys:
        cov, cov_names = code_covariates(obs, covariate_keys)
        block = np.asarray(gcode, dtype=np.int64) * len(donor.cat.categories) + dcode
        for q, name in enumerate(cov_names):
            col = pd.Series(cov[:, q])
            spread = col.groupby(block).agg(lambda v: v.max() - v.min())
            if (spread > 1e-12).any():
                raise ValueError(f"covariate {name!r} varies within a donor × cell group; covariate_keys take "
                                 "sample-level covariates only (one value per donor, or per donor × condition)")
        keys["covariate_keys"] = list(covariate_keys)
    return GLMMData(np.asarray(counts, dtype=float), total, np.asarray(gcode, dtype=int), dcode, groups,
                    [str(d) for d in donor.cat.categories], genes, table,
                    keys={k: v for k, v in keys.items() if v is not None}, covariates=cov,
                    covariate_names=cov_names)


def code_covariates(obs: pd.DataFrame, covariate_keys):
    """Fixed-effect columns for ``obs[covariate_keys]``: numeric columns centred at their mean,
    categorical / string columns as treatment-coded indicators (first level dropped, as R's
    ``model.matrix``), constant columns dropped.

    Returns
    -------
    (ndarray (n_cells, n_columns), list of column names ``key`` or ``key[level]``)

    Raises
    ------
    KeyError : a key is not a column of ``obs``. ValueError : missing values in a covariate.
    """
    keys = [covariate_keys] if isinstance(covariate_keys, str) else list(covariate_keys)
    cols, names = [], []
    for key in keys:
        check_obs_columns(obs, key, "covariate_keys")
        v = obs[key]
        if v.isna().any():
            raise ValueError(f"covariate {key!r} has {int(v.isna().sum())} missing values; drop those cells "
                             "or fill them")
        if pd.api.types.is_numeric_dtype(v) and not isinstance(v.dtype, pd.CategoricalDtype):
            x = v.to_numpy(dtype=float)
            if np.ptp(x) > 0:
                cols.append(x - x.mean())
                names.append(str(key))
        else:
            levels = list(pd.unique(v.astype(str))) if not isinstance(v.dtype, pd.CategoricalDtype) else [
                str(c) for c in v.cat.categories if (v == c).any()]
            for lv in levels[1:]:
                cols.append((v.astype(str) == lv).to_numpy(dtype=float))
                names.append(f"{key}[{lv}]")
    if not cols:
        return np.zeros((len(obs), 0)), []
    return np.column_stack(cols), names


def glmm_data_from_adata(adata, genes=None, *, layer: str | None = None, donor_key: str = "donor",
                         size_factor_key: str | None = "total_counts", cell_type_key: str | None = "cell_type",
                         condition_key: str | None = "condition", group_key: str | None = None,
                         reference: str | None = None, covariate_keys=None, total_key=_UNSET) -> GLMMData:
    """:func:`glmm_data` from an AnnData (cells × genes), for the named ``genes`` (default all).

    The offset is ``adata.obs[size_factor_key]`` — ideally the exact per-cell total over
    all genes of the experiment, not the sum over the (possibly few) genes stored
    in ``adata``. ``size_factor_key=None`` computes the totals from the counts of every
    gene of ``adata`` (``layer``), which is only the library size if ``adata``
    holds all genes.

    Raises
    ------
    KeyError
        A gene, layer or obs key is missing.
    ValueError
        ``group_key`` together with a ``cell_type_key`` or ``condition_key`` other than the
        defaults (a cell-group design has neither). Otherwise as :func:`glmm_data`.
    """
    if genes is None:
        genes = list(adata.var_names)
    genes = check_genes(adata, genes)
    check_layer(adata, layer)
    sub = adata[:, genes]
    x = sub.X if layer is None else sub.layers[layer]
    size_factor_key = _size_factor_key(size_factor_key, total_key, "glmm_data_from_adata")
    total = None
    if size_factor_key is None:
        full = adata.X if layer is None else adata.layers[layer]
        total = np.asarray(full.sum(axis=1), dtype=float).ravel()
    if group_key is not None:
        # A design of cell groups has no cell type or condition; a condition asked for by name
        # would otherwise be dropped without a word and the fit would test no contrast.
        if (cell_type_key, condition_key) not in (("cell_type", "condition"), (None, None)):
            raise ValueError(
                f"group_key={group_key!r} fits cell groups without a condition, but cell_type_key="
                f"{cell_type_key!r} and condition_key={condition_key!r} were given; pass either group_key "
                "alone or cell_type_key with condition_key")
        cell_type_key = condition_key = None
    return glmm_data(adata.obs, x, donor_key=donor_key, size_factor_key=size_factor_key, group_key=group_key,
                     cell_type_key=cell_type_key, condition_key=condition_key, genes=genes,
                     reference=reference, total=total, covariate_keys=covariate_keys)


def complete_cell_types(obs: pd.DataFrame, cell_type_key: str, condition_key: str, min_cells: int = 1,
                        donor_key: str | None = None):
    """Cell types that can be tested, and the others.

    A cell type is kept when it has at least ``min_cells`` cells in every condition (a cell group
    without cells has no likelihood) and, with ``donor_key``, when its condition contrast has
    sample-level residual degrees of freedom: the (donor, condition) samples with at least
    ``min_cells`` cells, against [condition, donor in both conditions] indicators, leave n − rank ≥ 1
    (a paired design needs ≥ 2 donors in both conditions, donors split between conditions ≥ 3).

    Returns
    -------
    (keep, dropped): a boolean array over the cells (True for cells of a kept
    cell type) and the list of dropped cell types.

    Raises
    ------
    KeyError : a key is not a column of ``obs``.
    """
    check_obs_columns(obs, {cell_type_key: "cell_type_key", condition_key: "condition_key", donor_key: "donor_key"})
    ct = obs[cell_type_key].astype(str)
    tab = pd.crosstab(ct, obs[condition_key].astype(str))
    dropped = [str(t) for t in tab.index[(tab < int(min_cells)).any(axis=1)]]
    if donor_key is not None:
        cnt = pd.crosstab([ct, obs[donor_key].astype(str)], obs[condition_key].astype(str))
        for t in tab.index:
            if t in dropped or t not in cnt.index.get_level_values(0):
                continue
            sub = cnt.loc[t] >= max(int(min_cells), 1)
            pairs = [(d, c) for d in sub.index for c in sub.columns if sub.loc[d, c]]
            conds = sorted({c for _, c in pairs})
            both = [d for d in sub.index if sub.loc[d].sum() >= 2]
            X = np.array([[c == lv for lv in conds] + [d == b for b in both] for d, c in pairs], float)
            if len(conds) < 2 or len(pairs) - np.linalg.matrix_rank(X) < 1:
                dropped.append(str(t))
    return ~ct.isin(dropped).to_numpy(), dropped
