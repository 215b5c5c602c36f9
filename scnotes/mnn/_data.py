"""The datasets of the chapter ``mnn_topics``, curated in one place.

:func:`load_data` returns raw counts with the batch and label columns the chapter
names; anything that is not one of the book's sets is loaded unchanged
(:func:`scnotes.datasets.load`), so a reader's own ``.h5ad`` goes straight to
:func:`scnotes.pp.prepare`.

- ``cellbench_3cl_celseq2_dropseq``, ``cellbench_5cl_celseq2_plates`` (Tian et al.
  2019): demuxlet doublets (``demuxlet_cls == "DBL"``) removed; batch ``batch``,
  label ``cell_line``.
- ``pbmc_joined``: ``pbmc_facs_zheng2017`` (10x v1, FACS-sorted populations) and
  ``pbmc4k_10x_soupx`` (10x v2, cluster annotation) joined on gene symbols
  (symbols that occur twice in either set dropped), coarse labels harmonised to
  B, NK, CD4 T, CD8 T and Monocyte (:data:`PBMC_LABELS`; CD34+ and unannotated
  "?" cells dropped); batch ``batch`` (``zheng2017_10xv1`` / ``pbmc4k_10xv2``),
  label ``label``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["load_data", "BOOK_DATASETS", "PBMC_LABELS"]

#: Coarse labels of the two PBMC sets. ``MNP`` (mononuclear phagocytes) of the 4k
#: annotation is mostly CD14+ monocytes. Unmapped labels (CD34+, "?") are dropped.
PBMC_LABELS = {
    "pbmc_facs_zheng2017": ("cell_type", "zheng2017_10xv1", {
        "CD19+ B": "B", "CD56+ NK": "NK", "CD14+ Monocyte": "Monocyte",
        "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
        "CD4+ T Helper2": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
        "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T"}),
    "pbmc4k_10x_soupx": ("annotation", "pbmc4k_10xv2", {
        "B": "B", "NK": "NK", "MNP": "Monocyte", "T_CD4": "CD4 T", "T_CD8": "CD8 T"}),
}

#: name → (batch column, label column) of the sets :func:`load_data` curates.
BOOK_DATASETS = {
    "cellbench_3cl_celseq2_dropseq": ("batch", "cell_line"),
    "cellbench_5cl_celseq2_plates": ("batch", "cell_line"),
    "pbmc_joined": ("batch", "label"),
}


def _by_symbol(a):
    a = a[:, ~a.var["gene_symbol"].duplicated(keep=False).to_numpy()].copy()
    a.var_names = a.var["gene_symbol"].astype(str).to_numpy()
    return a


def _pbmc_joined():
    import anndata as ad

    from ..datasets import load

    parts = {}
    for name, (col, batch, mapping) in PBMC_LABELS.items():
        a = _by_symbol(load(name))
        a.obs["label"] = a.obs[col].astype(str).map(mapping)
        parts[batch] = a[a.obs["label"].notna().to_numpy()]
    genes = None
    for a in parts.values():
        genes = a.var_names if genes is None else genes.intersection(a.var_names)
    out = []
    for batch, a in parts.items():
        out.append(ad.AnnData(
            X=sp.csr_matrix(a[:, genes].X, dtype=np.float32),
            obs=pd.DataFrame({"batch": batch, "label": a.obs["label"].to_numpy()},
                             index=[f"{batch}:{i}" for i in a.obs_names]),
            var=pd.DataFrame(index=genes)))
    return ad.concat(out)


def load_data(name: str):
    """Raw counts of a dataset of the chapter (curated) or of any other name or path.

    Parameters
    ----------
    name : str
        One of :data:`BOOK_DATASETS`, another registered name, or a path to an ``.h5ad``.

    Returns
    -------
    anndata.AnnData, n_cells × n_genes, counts in ``X`` (CSR float32). For the
    book's sets the batch and label columns are those of :data:`BOOK_DATASETS`;
    other data are returned as :func:`scnotes.datasets.load` reads them.

    Raises
    ------
    KeyError, FileNotFoundError, ValueError : as :func:`scnotes.datasets.load`.
    """
    from ..datasets import load

    if name == "pbmc_joined":
        return _pbmc_joined()
    a = load(name)
    if name in BOOK_DATASETS and "demuxlet_cls" in a.obs:
        a = a[(a.obs["demuxlet_cls"] != "DBL").to_numpy()].copy()
    return a
