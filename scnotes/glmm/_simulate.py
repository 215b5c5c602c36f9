"""Simulations for DE calibration: the NB GLMM, semi-synthetic DE by thinning, fake conditions.

Three kinds of data with a known answer:

* :func:`simulate_nb_glmm`: counts drawn from the NB GLMM itself (donor, sample and,
  optionally, a donor-level covariate), per-cell-type sample sd allowed (the
  heterogeneous-σ_w null).
* :func:`thin_de`: real counts with DE planted by binomial thinning (Gerard 2020,
  "seqgendiff", Ann Appl Stat 14:1542; as muscat (Crowell et al. 2020) and Squair et al.
  2021 do): if y ~ Poisson(λ) (or any mixed Poisson), Binomial(y, p) is the same
  mixture with rate pλ, so every other feature of the real data (donor, sample and
  cell-to-cell variation, zeros, library sizes) is kept and only the planted
  fold change is new.
* :func:`split_donors`, :func:`split_donor_designs`, :func:`paired_fake_conditions`:
  fake conditions on real control cells, the real-data nulls: donors split between
  two fake conditions (unpaired), or every donor's cells split between them (paired).

Every draw comes from ``numpy.random.default_rng(seed)``; the caller's global NumPy state
is never touched.
"""
from __future__ import annotations

import itertools
import math
from numbers import Integral

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._checks import check_counts, check_genes, check_layer, check_obs_key, is_backed

__all__ = ["simulate_nb_glmm", "thin_de", "split_donors", "split_donor_designs", "paired_fake_conditions"]


def _sigma_w_per_type(sigma_w, n_cell_types: int) -> np.ndarray:
    """σ_w as an array (n_cell_types,), validated."""
    s = np.asarray(sigma_w, dtype=float)
    if s.ndim == 0:
        s = np.full(n_cell_types, float(s))
    elif s.ndim != 1 or s.size != n_cell_types:
        raise ValueError(f"sigma_w must be a number or a sequence of n_cell_types = {n_cell_types} sds "
                         f"(one per cell type), got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigma_w must be finite and >= 0, got {sigma_w!r}")
    return s


def _check_covariate(sample_covariate, reserved):
    if sample_covariate is None:
        return None
    if not isinstance(sample_covariate, dict) or set(sample_covariate) != {"name", "effect"}:
        raise ValueError("sample_covariate must be None or a dict with exactly the keys 'name' and 'effect', "
                         f"e.g. {{'name': 'sex', 'effect': 0.5}}; got {sample_covariate!r}")
    name, effect = sample_covariate["name"], sample_covariate["effect"]
    if not isinstance(name, str) or not name or name in reserved:
        raise ValueError(f"sample_covariate['name'] must be a new obs column name (not one of {sorted(reserved)}), "
                         f"got {name!r}")
    effect = float(effect)
    if not (np.isfinite(effect) and effect >= 0):
        raise ValueError(f"sample_covariate['effect'] (the sd of the per-gene log effect) must be >= 0, got {effect!r}")
    return {"name": name, "effect": effect}


def simulate_nb_glmm(n_donors: int = 4, n_cells: int = 150, n_genes: int = 200, n_cell_types: int = 1,
                     sigma_u: float = 0.3, sigma_w=0.15, theta: float = 2.0,
                     mean_range=(0.1, 5.0), log_fold_change=None, paired: bool = True,
                     total_mean: float = 2000.0, seed: int = 0, sample_covariate: dict | None = None):
    """Counts from the NB GLMM with donor and sample (donor × condition) effects, as AnnData.

    Each donor contributes ``n_cells`` cells of each cell type to each condition
    (``ctrl``, ``stim``) when ``paired``; otherwise the first ``n_donors // 2`` donors are
    ``ctrl`` and the others ``stim``, with ``2 n_cells`` cells of each cell type each.
    Per gene j, cell type c, donor d, sample k (donor × condition × cell type)::

        ln λ = b_{jc} + δ_{jc} [stim] + u_jd + w_{jk} + γ_j x_d,
        u ~ N(0, σ_u²),  w ~ N(0, σ_{w,c}²),  γ_j ~ N(0, effect²),
        y ~ NB(s_i λ, θ),  s_i ~ total_mean · LogNormal(0, 0.3²)

    with b chosen so that the mean count per cell is log-uniform on ``mean_range``, and
    x_d ∈ {0, 1} the optional binary donor covariate (term absent without it).

    Parameters
    ----------
    n_donors, n_cells, n_genes, n_cell_types : int
        Design sizes (``n_cells`` per donor × condition × cell type when paired).
    sigma_u : float
        Donor sd (log scale).
    sigma_w : float or sequence of n_cell_types floats
        Sample sd (log scale), one for all cell types or one per cell type (e.g.
        ``(0.05, 0.15, 0.35)``: the heterogeneous-σ_w null).
    theta : float
        NB inverse dispersion (``np.inf``: Poisson).
    mean_range : (low, high)
        Range of the log-uniform mean count per cell (at the mean library size).
    log_fold_change : array (n_genes,) or (n_genes, n_cell_types), optional
        True δ (natural log, stim vs ctrl); default 0 (the null).
    paired : bool
        Every donor in both conditions (True) or donors split between them (False).
    total_mean : float
        Mean library size.
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched). With
        ``sample_covariate=None`` and a scalar ``sigma_w`` the draws are exactly those of
        the earlier ``scnotes.glmm._nb.simulate_nb_glmm`` (same counts for the same seed).
    sample_covariate : dict, optional
        ``{"name": "sex", "effect": 0.5}``: a binary donor-level covariate, 1 for the
        donors ``d1, d3, d5, …`` (every second donor, so ``n_donors // 2`` of them; in the
        unpaired design the two conditions' counts of covariate-1 donors differ by at most
        one, so the covariate is as balanced as it can be, never confounded with the condition), with a per-gene log
        effect γ_j ~ N(0, effect²) shared by the cell types. Its draws come from a second
        stream (``SeedSequence(seed).spawn(1)``), so b and u are those of the same call
        without it (the later draws differ: the counts consume the stream).

    Returns
    -------
    AnnData, cells × genes integer counts (float32 CSR) in ``X`` and ``layers["counts"]``;
    ``obs``: donor, condition, cell_type, sample_id (``<condition>_<donor>``), total_counts
    (the size factor s_i) and, with a covariate, ``obs[name]`` (categorical 0 / 1);
    ``var``: per cell type ``lfc_<cell type>`` (true δ), ``base_mean`` (mean over cell
    types of the mean count per cell) and, with a covariate, ``<name>_effect`` (γ_j);
    ``varm["donor_effect"]`` (genes × donors, u) and ``varm["sample_effect"]`` (genes ×
    samples, w; columns ``<condition>_<donor>|<cell type>``), both DataFrames;
    ``uns["simulation"]``: every argument (``sigma_w`` as a float or a list,
    ``mean_range`` as a list, ``sample_covariate`` as given or None).

    Raises
    ------
    ValueError : fewer than 2 donors (4 when not paired), non-positive sizes, sds < 0,
        ``theta <= 0``, ``sigma_w`` of the wrong length, a malformed ``sample_covariate``.
    """
    import anndata as ad

    if n_donors < (2 if paired else 4) or n_cells < 1 or n_genes < 1 or n_cell_types < 1:
        raise ValueError("need n_donors >= 2 (>= 4 unpaired), n_cells, n_genes, n_cell_types >= 1")
    J, C = int(n_genes), int(n_cell_types)
    sw = _sigma_w_per_type(sigma_w, C)
    if sigma_u < 0 or not theta > 0:
        raise ValueError("sigma_u, sigma_w must be >= 0 and theta > 0")
    cov = _check_covariate(sample_covariate, {"donor", "condition", "cell_type", "sample_id", "total_counts"})
    rng = np.random.default_rng(seed)
    lfc = np.zeros((J, C)) if log_fold_change is None else np.broadcast_to(
        np.asarray(log_fold_change, float).reshape(J, -1), (J, C)).copy()
    base = np.exp(rng.uniform(np.log(mean_range[0]), np.log(mean_range[1]), size=(J, C)))
    b = np.log(base / total_mean)
    u = rng.normal(0, sigma_u, size=(J, n_donors))
    donors = [f"d{k}" for k in range(n_donors)]
    x_donor = np.arange(n_donors) % 2  # the covariate (used only when given)
    if cov is not None:
        rng_cov = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        gamma = rng_cov.normal(0, cov["effect"], size=J)
    else:
        gamma = np.zeros(J)
    if paired:
        plan = [(d, k) for d in range(n_donors) for k in (0, 1)]
        per = int(n_cells)
    else:
        plan = [(d, int(d >= n_donors // 2)) for d in range(n_donors)]
        per = 2 * int(n_cells)
    obs_rows, blocks, w_cols, w_all = [], [], [], []
    for d, k in plan:
        for c in range(C):
            w = rng.normal(0, sw[c], size=J)
            s = total_mean * np.exp(rng.normal(0, 0.3, size=per))
            eta = b[:, c] + lfc[:, c] * k + u[:, d] + w
            if cov is not None:
                eta = eta + gamma * x_donor[d]
            mu = s[:, None] * np.exp(eta)[None, :]
            if np.isfinite(theta):
                y = rng.poisson(rng.gamma(theta, mu / theta))
            else:
                y = rng.poisson(mu)
            blocks.append(y)
            cond = ("ctrl", "stim")[k]
            obs_rows += [(donors[d], cond, f"type{c}", f"{cond}_{donors[d]}", float(si)) for si in s]
            w_cols.append(f"{cond}_{donors[d]}|type{c}")
            w_all.append(w)
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    obs = pd.DataFrame(obs_rows, columns=["donor", "condition", "cell_type", "sample_id", "total_counts"])
    for col in ("donor", "condition", "cell_type", "sample_id"):
        obs[col] = pd.Categorical(obs[col])
    if cov is not None:
        x_of = dict(zip(donors, x_donor.tolist()))
        obs[cov["name"]] = pd.Categorical(obs["donor"].astype(str).map(x_of).to_numpy(), categories=[0, 1])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    var = pd.DataFrame(index=[f"gene{j}" for j in range(J)])
    for c in range(C):
        var[f"lfc_type{c}"] = lfc[:, c]
    var["base_mean"] = base.mean(1)
    if cov is not None:
        var[f"{cov['name']}_effect"] = gamma
    a = ad.AnnData(x, obs=obs, var=var)
    a.layers["counts"] = x.copy()
    a.varm["donor_effect"] = pd.DataFrame(u, index=a.var_names, columns=donors)
    a.varm["sample_effect"] = pd.DataFrame(np.column_stack(w_all), index=a.var_names, columns=w_cols)
    sigma_w_rec = float(sw[0]) if np.ndim(sigma_w) == 0 else [float(v) for v in sw]
    a.uns["simulation"] = dict(n_donors=n_donors, n_cells=n_cells, n_genes=J, n_cell_types=C, sigma_u=sigma_u,
                               sigma_w=sigma_w_rec, theta=float(theta), paired=paired, seed=seed,
                               mean_range=[float(mean_range[0]), float(mean_range[1])],
                               total_mean=float(total_mean), log_fold_change_given=log_fold_change is not None,
                               sample_covariate=None if cov is None else dict(cov, donors_with_1=[
                                   donors[d] for d in range(n_donors) if x_donor[d] == 1]))
    return a


# --------------------------------------------------------------------------------------------
# Semi-synthetic DE by binomial thinning


def _bool_mask(group_mask, adata, name="group_mask") -> np.ndarray:
    if isinstance(group_mask, pd.Series):
        if not group_mask.index.equals(adata.obs_names):
            raise ValueError(f"{name} is a Series whose index is not adata.obs_names; pass "
                             f"mask.reindex(adata.obs_names) or a boolean array in the cells' order")
        group_mask = group_mask.to_numpy()
    m = np.asarray(group_mask)
    if m.dtype != bool:
        raise TypeError(f"{name} must be a boolean array (one True/False per cell), got dtype {m.dtype}; "
                        "e.g. (adata.obs['condition'] == 'stim').to_numpy()")
    if m.ndim != 1 or m.size != adata.n_obs:
        raise ValueError(f"{name} must have one entry per cell ({adata.n_obs}), got shape {m.shape}")
    if m.all() or not m.any():
        raise ValueError(f"{name} must mark some cells and leave some unmarked "
                         f"({int(m.sum())} of {m.size} marked): thinning plants a difference between two groups")
    return m


def thin_de(adata, de_genes, log_fold_change, group_mask, layer: str | None = None, seed: int = 0):
    """Plant differential expression in real counts by binomial thinning.

    For each gene j of ``de_genes`` with log fold change δ_j (natural log, the masked
    cells vs the rest):

    * δ_j < 0: each count of gene j in the masked cells is replaced by
      Binomial(y, exp(−|δ_j|)) (downregulated in the masked group);
    * δ_j > 0: the counts of gene j in the *other* cells are thinned the same way, so the
      masked group is relatively up by δ_j;
    * δ_j = 0: nothing changes (the gene is then not DE).

    Thinning a mixed Poisson count keeps it mixed Poisson with the rate scaled by the
    thinning probability, so the expected count of every thinned cell is multiplied by
    exp(−|δ_j|) exactly and every other property of the data is kept. If the two groups
    were a null (e.g. fake conditions, :func:`split_donors`), the true log fold change of
    gene j, masked vs rest, is then δ_j (for rates per unit of library size, see below).

    Library sizes are *not* recomputed: ``obs["total_counts"]`` keeps the real totals
    (written from the unthinned counts if the column is missing). Thinning a few genes
    barely changes a cell's total, and keeping the real totals means the offset a
    method uses is not itself changed by the planted effect, so δ_j is the truth on the
    scale of the rate per unit of (real) library size. A method that recomputes totals
    from the thinned matrix sees a slightly smaller library in the thinned cells, a
    bias of order (share of the total in DE genes) × (1 − exp(−|δ|)).

    Parameters
    ----------
    adata : AnnData, cells × genes, raw integer counts in ``X`` or ``layers[layer]``
        Not modified. Must be in memory (not backed).
    de_genes : sequence of str
        Names in ``adata.var_names`` (no duplicates).
    log_fold_change : float or array (len(de_genes),)
        δ_j, natural log.
    group_mask : boolean array (n_cells,) or boolean Series indexed by ``obs_names``
        The group that δ refers to (e.g. the cells of one fake condition).
    layer : str, optional
        Layer with the counts (None: ``X``).
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched). Draws are made for
        the nonzero entries that are thinned, in row-major order, so dense and sparse
        input give the same counts.

    Returns
    -------
    AnnData (a copy): the thinned counts, same type and dtype as the input (sparse
    stays sparse, explicit zeros removed), in ``X`` and, when ``layer`` is given, in
    ``layers[layer]``; other layers are dropped (they were computed from the unthinned
    counts). ``var["true_lfc"]`` (δ_j, 0 for the other genes), ``var["is_de"]``
    (δ_j ≠ 0), ``uns["thin_de"]`` (seed, layer, number of DE genes and masked cells).

    Raises
    ------
    KeyError : unknown gene names (listed) or a missing layer.
    TypeError : a non-boolean mask, or a backed AnnData.
    ValueError : a mask of the wrong length or marking all / no cells, duplicate genes,
        a log fold change of the wrong length or not finite, counts that are not
        non-negative integers (:func:`scnotes._checks.check_counts`).
    """
    if getattr(adata, "isbacked", False):
        raise TypeError("thin_de needs the counts in memory: pass adata.to_memory()")
    x = check_layer(adata, layer)
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if x is None or is_backed(x):
        raise TypeError(f"{name} must be an in-memory count matrix")
    check_counts(x, name=name, allow_empty_cells=True, allow_empty_genes=True)
    mask = _bool_mask(group_mask, adata)
    genes = [de_genes] if isinstance(de_genes, str) else list(de_genes)
    if len(set(genes)) != len(genes):
        raise ValueError("de_genes has duplicate names")
    check_genes(adata, genes, "de_genes")
    pos = adata.var_names.get_indexer(pd.Index(genes))
    lfc = np.asarray(log_fold_change, dtype=float)
    lfc = np.full(len(genes), float(lfc)) if lfc.ndim == 0 else lfc.ravel()
    if lfc.size != len(genes):
        raise ValueError(f"log_fold_change must be a number or one value per DE gene ({len(genes)}), "
                         f"got {lfc.size}")
    if not np.all(np.isfinite(lfc)):
        raise ValueError("log_fold_change must be finite")

    n_genes = adata.n_vars
    gene_lfc = np.zeros(n_genes)
    gene_lfc[pos] = lfc
    keep_prob = np.exp(-np.abs(gene_lfc))       # per gene, 1 for genes left alone
    thin_in_mask = gene_lfc < 0                 # down: thin the masked cells; up: thin the others
    thinned_gene = gene_lfc != 0
    rng = np.random.default_rng(seed)

    if sp.issparse(x):
        fmt = x.format
        out = sp.csr_matrix(x, copy=True)
        out.sum_duplicates()
        out.sort_indices()
        rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
        cols = out.indices
        vals = out.data
    else:
        out = np.array(x, copy=True)
        rows, cols = np.nonzero(out)              # row-major, as CSR with sorted indices
        vals = out[rows, cols]
    sel = thinned_gene[cols] & (mask[rows] == thin_in_mask[cols]) & (vals != 0)
    idx = np.flatnonzero(sel)
    n = np.rint(vals[idx]).astype(np.int64)
    new = rng.binomial(n, keep_prob[cols[idx]]).astype(vals.dtype)
    if sp.issparse(x):
        out.data[idx] = new
        out.eliminate_zeros()
        if fmt != "csr":
            out = out.asformat(fmt)
    else:
        out[rows[idx], cols[idx]] = new

    res = adata.copy()
    for k in list(res.layers.keys()):
        del res.layers[k]
    res.X = out
    if layer is not None:
        res.layers[layer] = out.copy()
    if "total_counts" not in res.obs.columns:
        res.obs["total_counts"] = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    res.var["true_lfc"] = gene_lfc
    res.var["is_de"] = thinned_gene
    res.uns["thin_de"] = dict(seed=seed, layer=layer, n_de=int(thinned_gene.sum()),
                              n_masked_cells=int(mask.sum()), total_counts="unthinned (real) totals")
    return res


# --------------------------------------------------------------------------------------------
# Fake conditions on real control cells


def split_donor_designs(donors, n_splits: int | None, n_per_group: int | None = None, seed: int = 0):
    """Distinct random splits of donors into two groups of equal size.

    Parameters
    ----------
    donors : sequence of donor names (unique)
        Their order does not matter (they are sorted first).
    n_splits : int or None
        Number of splits; None: every distinct split (in random order).
    n_per_group : int, optional
        Donors in each group (e.g. 3 of 8 donors: 3 vs 3, two donors unused); default
        ``len(donors) // 2``.
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched).

    Returns
    -------
    list of ``(group_0, group_1)`` pairs of tuples of donor names (each sorted). No two
    splits are identical or mirror images of each other (the same two groups swapped);
    which group comes first is itself random. There are
    C(n, k) C(n − k, k) / 2 distinct splits of n donors into two groups of k (35 for
    4 vs 4 of 8 donors, 280 for 3 vs 3).

    Raises
    ------
    ValueError : duplicate donors, fewer than 2 donors, ``n_per_group`` < 1 or more than
        half the donors, ``n_splits`` < 1 or more than the number of distinct splits.
    """
    donors = list(donors)
    if len(set(donors)) != len(donors):
        raise ValueError("donors has duplicates; pass each donor once (e.g. adata.obs[donor_key].unique())")
    n = len(donors)
    if n < 2:
        raise ValueError(f"need at least 2 donors to split, got {n}")
    k = n // 2 if n_per_group is None else n_per_group
    if not isinstance(k, Integral) or k < 1 or 2 * k > n:
        raise ValueError(f"n_per_group must be an integer in [1, {n // 2}] for {n} donors, got {n_per_group!r}")
    k = int(k)
    donors = sorted(donors, key=str)
    total = math.comb(n, k) * math.comb(n - k, k) // 2
    if n_splits is None:
        n_splits = total
    if not isinstance(n_splits, Integral) or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer or None, got {n_splits!r}")
    if n_splits > total:
        raise ValueError(f"only {total} distinct splits of {n} donors into two groups of {k} exist; "
                         f"asked for {n_splits}")
    rng = np.random.default_rng(seed)
    if total <= 200_000:
        allsplits = []
        for a in itertools.combinations(range(n), k):
            rest = [i for i in range(n) if i not in a]
            for b in itertools.combinations(rest, k):
                if a < b:  # each unordered pair once
                    allsplits.append((a, b))
        pick = rng.choice(len(allsplits), size=n_splits, replace=False)
        chosen = [allsplits[i] for i in pick]
    else:
        seen, chosen = set(), []
        while len(chosen) < n_splits:
            perm = rng.permutation(n)
            a, b = tuple(sorted(perm[:k])), tuple(sorted(perm[k:2 * k]))
            key = min(a, b), max(a, b)
            if key not in seen:
                seen.add(key)
                chosen.append(key)
    flips = rng.random(len(chosen)) < 0.5
    out = []
    for (a, b), f in zip(chosen, flips):
        ga, gb = tuple(donors[i] for i in a), tuple(donors[i] for i in b)
        out.append((gb, ga) if f else (ga, gb))
    return out


def split_donors(adata, donor_key: str, n_per_group: int | None = None, seed: int = 0,
                 condition_key: str = "condition", labels=("ctrl", "stim"), split=None):
    """Assign donors at random to two fake conditions (the unpaired real-data null).

    Parameters
    ----------
    adata : AnnData
        Not modified.
    donor_key : str
        ``obs`` column of the donor.
    n_per_group : int, optional
        Donors per fake condition; donors left over are dropped with their cells. Default:
        all donors, ``n // 2`` in ``labels[0]`` and the rest in ``labels[1]`` (half/half).
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched); with
        ``n_per_group`` given the split is ``split_donor_designs(donors, 1, n_per_group,
        seed)[0]``.
    condition_key : str
        ``obs`` column to write (overwritten if present).
    labels : (str, str)
        Names of the two fake conditions; the categories in this order.
    split : (sequence, sequence), optional
        The two donor groups to use (e.g. one element of :func:`split_donor_designs`);
        then ``n_per_group`` and ``seed`` are ignored.

    Returns
    -------
    AnnData, a copy (only the cells of the assigned donors; unused categories of
    ``obs[donor_key]`` removed), with ``obs[condition_key]`` categorical (categories ``labels``) and ``uns["split_donors"]``
    (the two groups, key, seed).

    Raises
    ------
    KeyError : ``donor_key`` not in ``obs``.
    ValueError : as :func:`split_donor_designs`; a ``split`` naming unknown or repeated
        donors; ``labels`` not two distinct strings.
    """
    labels = tuple(labels)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"labels must be two distinct names, got {labels!r}")
    don = check_obs_key(adata, donor_key, min_levels=2 if split is None else 1)
    names = list(don.cat.categories)
    if split is None:
        if n_per_group is None:
            rng = np.random.default_rng(seed)
            donors = sorted(names, key=str)
            perm = rng.permutation(len(donors))
            h = len(donors) // 2
            split = ([donors[i] for i in perm[:h]], [donors[i] for i in perm[h:]])
        else:
            split = split_donor_designs(names, 1, n_per_group, seed)[0]
    g0, g1 = list(split[0]), list(split[1])
    known = {str(v): v for v in names}
    for g in (g0, g1):
        bad = [v for v in g if str(v) not in known]
        if bad:
            raise ValueError(f"split names donors not in adata.obs[{donor_key!r}]: {bad}")
    if not g0 or not g1 or len({str(v) for v in g0 + g1}) != len(g0) + len(g1):
        raise ValueError("split must be two non-empty groups of distinct donors")
    d = don.astype(str).to_numpy()
    in0, in1 = np.isin(d, [str(v) for v in g0]), np.isin(d, [str(v) for v in g1])
    out = adata[in0 | in1].copy()
    if isinstance(out.obs[donor_key].dtype, pd.CategoricalDtype):
        out.obs[donor_key] = out.obs[donor_key].cat.remove_unused_categories()
    cond = np.where(in0[in0 | in1], labels[0], labels[1])
    out.obs[condition_key] = pd.Categorical(cond, categories=list(labels))
    out.uns["split_donors"] = {"donor_key": donor_key, "condition_key": condition_key, "seed": seed,
                               labels[0]: [str(v) for v in g0], labels[1]: [str(v) for v in g1]}
    return out


def paired_fake_conditions(adata, donor_key: str, seed: int = 0, condition_key: str = "condition",
                           labels=("ctrl", "stim"), cell_type_key: str | None = None):
    """The paired real-data null: each donor's cells split at random between two fake conditions.

    Every donor (and, with ``cell_type_key``, every donor × cell type) gives half its
    cells to each fake condition (an odd cell goes to either at random), so every donor
    is in both conditions and there is no condition effect. Unlike a real paired design
    the two "samples" of a donor are the same sample, so there is no sample-to-sample
    variation either: a model with a sample effect should find σ_w ≈ 0 and be at or below
    the nominal level.

    Parameters
    ----------
    adata : AnnData
        Not modified.
    donor_key : str
        ``obs`` column of the donor.
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched).
    condition_key : str
        ``obs`` column to write (overwritten if present).
    labels : (str, str)
        Names of the two fake conditions (categories in this order).
    cell_type_key : str, optional
        Split within each donor × cell type (balanced per sample) instead of per donor.

    Returns
    -------
    AnnData, a copy with ``obs[condition_key]`` categorical and
    ``uns["paired_fake_conditions"]`` (keys, seed).

    Raises
    ------
    KeyError : a key not in ``obs``. ValueError : missing donor / cell-type labels,
        ``labels`` not two distinct names.
    """
    labels = tuple(labels)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"labels must be two distinct names, got {labels!r}")
    don = check_obs_key(adata, donor_key).astype(str).to_numpy()
    strata = pd.Series(don)
    if cell_type_key is not None:
        ct = check_obs_key(adata, cell_type_key).astype(str).to_numpy()
        strata = strata + "\x00" + pd.Series(ct)
    rng = np.random.default_rng(seed)
    cond = np.zeros(adata.n_obs, dtype=np.int64)
    codes, uniques = pd.factorize(strata, sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(uniques)))]
    for g in range(len(uniques)):
        idx = order[bounds[g]:bounds[g + 1]]
        n = idx.size
        h = n // 2 + (int(rng.random() < 0.5) if n % 2 else 0)
        perm = rng.permutation(n)
        cond[idx[perm[h:]]] = 1
    out = adata.copy()
    out.obs[condition_key] = pd.Categorical(np.asarray(labels, dtype=object)[cond], categories=list(labels))
    out.uns["paired_fake_conditions"] = {"donor_key": donor_key, "cell_type_key": cell_type_key,
                                         "condition_key": condition_key, "seed": seed}
    return out
