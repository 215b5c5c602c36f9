"""The comparison study of the chapter ``mnn_topics``: two integration baselines called the
way the chapter calls them, and the numbers and words its discussion quotes, read from the
tables of :func:`scnotes.mnn.score_methods` and :func:`scnotes.mnn.pair_summary`.

Why here: the chapter keeps only its story (issue 24); what it computes is tested here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._checks import check_key, check_obs_columns

__all__ = ["harmony_embedding", "bbknn_graph", "method_story", "discussion_numbers", "STORY_WORDS"]

#: Keys of :func:`method_story` that hold words ("n/a" where a dataset did not run).
STORY_WORDS = ("best", "best_mnn", "worst_space", "harmony-word", "topics-word", "k-word")
_STORY_NUMBERS = ("best_mix", "best_lab", "unc_mix", "unc_lab", "best_mnn_mix", "best_mnn_lab",
                  "harmony_mix", "harmony_ilisi", "harmony_unc", "worst_same", "topics_lift")


def harmony_embedding(x, batch, seed: int = 0, **kwargs):
    """Harmony (Korsunsky et al. 2019, Nat Methods 16:1289) on an embedding, through harmonypy.

    Parameters
    ----------
    x : array, shape (n_cells, n_pcs)
        Embedding to correct (PCs of log counts, as in the paper).
    batch : array-like, shape (n_cells,)
        Batch of each cell.
    seed : int
        harmonypy's ``random_state`` (its k-means start).
    **kwargs
        Passed to ``harmonypy.run_harmony`` (e.g. ``epsilon_harmony``, its stopping tolerance).

    Returns
    -------
    z : ndarray, shape (n_cells, n_pcs)
        Corrected embedding, cells in rows (harmonypy 0.0.x returned PCs × cells; both are
        accepted, which is why scanpy's wrapper is not used).
    n_rounds : int
        Harmony rounds run before the tolerance stopped it.

    Raises
    ------
    ValueError
        ``batch`` does not have one entry per row of ``x``.
    ImportError
        harmonypy (the ``book`` extra) is not installed.
    """
    import harmonypy

    x = np.asarray(x)
    batch = np.asarray(batch)
    if batch.shape != (x.shape[0],):
        raise ValueError(f"batch has shape {batch.shape}, expected one label per cell ({x.shape[0]},)")
    meta = pd.DataFrame({"batch": batch})
    ho = harmonypy.run_harmony(x, meta, "batch", random_state=seed, verbose=False, **kwargs)
    z = np.asarray(ho.Z_corr)
    return (z if z.shape == x.shape else z.T), len(ho.objective_harmony) - 1


def bbknn_graph(adata, batch_key: str, use_rep: str = "X_pca", **kwargs):
    """BBKNN's batch-balanced neighbour graph (Polański et al. 2020, Bioinformatics 36:964):
    each cell's neighbours are taken from every batch in equal number.

    ``adata`` is left unchanged (bbknn writes into a copy). ``**kwargs`` go to ``bbknn.bbknn``
    (default here: ``computation="cKDTree"``, exact search).

    Returns
    -------
    distances, connectivities : scipy.sparse matrices, n_cells × n_cells
        To store as ``adata.obsp[...]`` (BBKNN gives a graph, not an embedding).

    Raises
    ------
    KeyError
        ``batch_key`` not in ``adata.obs`` or ``use_rep`` not in ``adata.obsm``.
    """
    import bbknn

    check_obs_columns(adata, batch_key, "batch_key")
    check_key(adata, "obsm", use_rep, "use_rep")
    g = adata.copy()
    bbknn.bbknn(g, batch_key=batch_key, use_rep=use_rep, **{"computation": "cKDTree", **kwargs})
    return g.obsp["distances"], g.obsp["connectivities"]


def _words(scores, ilisi_by_k) -> dict:
    """The comparison words of one dataset (thresholds in iLISI units, 0 to 1)."""
    from ..report import compare_word

    unc, harmony = scores.loc["Uncorrected", "ilisi"], scores.loc["Harmony", "ilisi"]
    lift = scores.loc["MNN (topics)", "ilisi"] - scores.loc["Topics", "ilisi"]
    has_k = ilisi_by_k is not None and {10, 20} <= set(ilisi_by_k.index)
    return {
        "harmony-word": compare_word(harmony - unc, 0.1, more="raises", equal="raises", less="barely moves"),
        # "raises" from +0.1, "lowers" from -0.05: the band 0.025 ± 0.075.
        "topics-word": compare_word(lift, 0.025, more="raises", less="lowers", equal="barely changes",
                                    tol=0.075),
        "k-word": (compare_word(ilisi_by_k[10], ilisi_by_k[20], more="mixes better", less="mixes no better",
                                equal="mixes no better") if has_k else "n/a"),
    }


def method_story(scores=None, pairs=None, ilisi_by_k=None) -> dict:
    """What the discussion says about one dataset, from its tables.

    Parameters
    ----------
    scores : DataFrame, index = method, optional
        One dataset's rows of :func:`scnotes.mnn.score_methods` (columns ``ilisi``,
        ``batch mixing``, ``label conservation``), with the methods ``Uncorrected``,
        ``Topics``, ``MNN (topics)``, ``Harmony`` and at least one ``MNN …``. None: a dataset
        that did not run; every key is still returned ("n/a" for a word, NaN for a number),
        so that the chapter glues the same keys on every run.
    pairs : DataFrame, index = space, optional
        One dataset's rows of :func:`scnotes.mnn.pair_summary` (column ``pairs with same label``).
    ilisi_by_k : Series, index = n_neighbors, optional
        iLISI of count-space MNN at 10 and 20 neighbours.

    Returns
    -------
    dict
        ``best`` (the best-mixing method other than Uncorrected), ``best_mix``, ``best_lab``,
        ``unc_mix``, ``unc_lab``, ``best_mnn`` (the best-mixing MNN variant), ``best_mnn_mix``,
        ``best_mnn_lab``, ``harmony_mix``, ``harmony_ilisi``, ``harmony_unc``, ``worst_space``
        (the space with the smallest share of same-label pairs; "none" without labels),
        ``worst_same`` (that share in %), ``topics_lift`` (iLISI of MNN on topics minus topics
        alone), and the words ``harmony-word``, ``topics-word``, ``k-word``.

    Raises
    ------
    KeyError
        A method named above is missing from ``scores``.
    """
    if scores is None:
        return {**dict.fromkeys(STORY_WORDS, "n/a"), **dict.fromkeys(_STORY_NUMBERS, np.nan)}
    mix, lab = scores["batch mixing"], scores["label conservation"]
    best = mix.drop("Uncorrected").idxmax()
    best_mnn = mix[[m for m in scores.index if m.startswith("MNN")]].idxmax()
    same = pairs["pairs with same label"] if pairs is not None else pd.Series(dtype=float)
    worst = same.idxmin() if same.notna().any() else None
    out = dict(best=best, best_mix=mix[best], best_lab=lab[best], unc_mix=mix["Uncorrected"],
               unc_lab=lab["Uncorrected"], best_mnn=best_mnn, best_mnn_mix=mix[best_mnn],
               best_mnn_lab=lab[best_mnn], harmony_mix=mix["Harmony"],
               harmony_ilisi=scores.loc["Harmony", "ilisi"], harmony_unc=scores.loc["Uncorrected", "ilisi"],
               worst_space=worst or "none", worst_same=100 * same[worst] if worst else np.nan,
               topics_lift=scores.loc["MNN (topics)", "ilisi"] - scores.loc["Topics", "ilisi"])
    return {**out, **_words(scores, ilisi_by_k)}


def discussion_numbers(scores, pairs, ilisi_by_k, datasets: dict, slugs: dict) -> dict:
    """Every number the discussion quotes, as glue keys; NaN where a dataset or method did not run.

    Parameters
    ----------
    scores : DataFrame, index (dataset, method)
        :func:`scnotes.mnn.score_methods` of every dataset.
    pairs : DataFrame, index (dataset, space)
        :func:`scnotes.mnn.pair_summary` of every dataset and space (shares in 0 to 1).
    ilisi_by_k : Series, index (dataset, n_neighbors)
        iLISI of count-space MNN per neighbour count.
    datasets : dict
        Tag used in the keys → dataset name (e.g. ``{"main": "cellbench_3cl_celseq2_dropseq"}``).
    slugs : dict
        Method name → its short name in the keys (e.g. ``{"MNN (topics)": "mnn_topics"}``).

    Returns
    -------
    dict
        ``{tag}-{slug}-{score}`` for the scores ``ilisi``, ``kbet``, ``clisi``, ``ari``, ``nmi``,
        ``batch_mixing``; ``{tag}-pairs-{space}-same`` / ``-inpair`` (in %, space lower-cased);
        ``{tag}-same-min`` / ``-max`` and ``{tag}-inpair-min`` / ``-max`` over the spaces (%);
        ``{tag}-k10``, ``{tag}-k20``.
    """
    spaces = list(dict.fromkeys(pairs.index.get_level_values(1)))
    out = {}
    for tag, name in datasets.items():
        for method, slug in slugs.items():
            for col in ("ilisi", "kbet", "clisi", "ari", "nmi", "batch mixing"):
                out[f"{tag}-{slug}-{col.replace(' ', '_')}"] = scores[col].get((name, method), np.nan)
        for space in spaces:
            for col, short in (("pairs with same label", "same"), ("corrected cells in a pair", "inpair")):
                out[f"{tag}-pairs-{space.lower()}-{short}"] = 100 * pairs[col].get((name, space), np.nan)
        sub = pairs.loc[name] if name in pairs.index.get_level_values(0) else pairs.iloc[:0]
        for col, short in (("pairs with same label", "same"), ("corrected cells in a pair", "inpair")):
            out[f"{tag}-{short}-min"], out[f"{tag}-{short}-max"] = 100 * sub[col].min(), 100 * sub[col].max()
        for k in (10, 20):
            out[f"{tag}-k{k}"] = ilisi_by_k.get((name, k), np.nan)
    return out
