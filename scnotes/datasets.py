"""Registry of the real datasets the book uses, and one loader.

The files live in one data directory, never in the repository and never
downloaded at run time. The directory is ``$SCNOTES_DATA_DIR`` if set,
otherwise ``../shared/data`` beside the repository root.

Each entry records the file, its sha256 (checked on load, so a truncated or
edited file is caught), the shape, the label columns, the citation and the
original public location (see ``SOURCES.md`` in the data directory).

Curated sets (:data:`CURATED`) are the book's versions of registered files, made
by one named step and given a batch and a label column: ``load(name, curated=True)``
(and ``load("pbmc_joined")``, which exists only curated). They are the sets of the
chapter ``mnn_topics``:

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

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BOOK_DATASETS",
    "CURATED",
    "DATA_ENV",
    "PBMC_LABELS",
    "REGISTRY",
    "Curated",
    "Dataset",
    "data_dir",
    "list_datasets",
    "load",
    "load_table",
    "path",
]

DATA_ENV = "SCNOTES_DATA_DIR"


@dataclass(frozen=True)
class Dataset:
    """One registered dataset (metadata only; :func:`load` reads it)."""

    name: str
    file: str
    sha256: str
    shape: tuple
    labels: tuple
    citation: str
    url: str
    description: str = ""
    kind: str = "h5ad"
    extra: dict = field(default_factory=dict)


_SC_MIXOLOGY = "https://github.com/LuyiTian/sc_mixology/tree/7d00ffb0bd043467f365a9358d7312f294f13c9f/data/csv"

REGISTRY: dict[str, Dataset] = {d.name: d for d in [
    Dataset(
        "cellbench_3cl_celseq2_dropseq", "cellbench_3cl_celseq2_dropseq.h5ad",
        "ca73a64564bd025f0243b5384dece4e4077a9c63cdc366ec161b63956e45ba13", (499, 15073),
        ("cell_line", "demuxlet_cls", "technology", "batch"),
        "Tian et al. 2019 Nat Methods 16:479 (GEO GSE118767)", _SC_MIXOLOGY,
        "Three lung adenocarcinoma cell lines by CEL-seq2 and Drop-seq; labels from demuxlet."),
    Dataset(
        "cellbench_5cl_celseq2_plates", "cellbench_5cl_celseq2_plates.h5ad",
        "628c7c48aba56240fc08e76ee196fb1123d4fd93bc1c1ffcefa4b6d717f0fce9", (909, 12627),
        ("cell_line", "demuxlet_cls", "batch", "cell_number"),
        "Tian et al. 2019 Nat Methods 16:479 (GEO GSE118767)", _SC_MIXOLOGY,
        "Five cell lines on three CEL-seq2 plates (plate = batch)."),
    Dataset(
        "pbmc_facs_zheng2017", "pbmc_facs_zheng2017.h5ad",
        "c482cae47785d1d5b101c7f22e3fdfe2fc264cbdcac47e02f05a07c3c5508ede", (3874, 16791),
        ("cell_type", "subpop", "split"),
        "Zheng et al. 2017 Nat Commun 8:14049",
        "https://github.com/stephenslab/fastTopics/blob/8406f5f4de379e7ff8b43ecfee93cca42a8e7a57/data/pbmc_facs.RData",
        "10 FACS-purified PBMC populations (10x v1, donor A), as curated in fastTopics."),
    Dataset(
        "pbmc4k_10x_soupx", "pbmc4k_10x_soupx.h5ad",
        "50b4184b48acc79cc93a0175490dd180419f3e872a10846c71e75c68d7a30a7f", (2170, 33694),
        ("annotation", "cluster"),
        "10x Genomics PBMC 4k (Chromium v2), as shipped with SoupX (Young & Behjati 2020)",
        "https://github.com/cran/SoupX/tree/8aec1a10f487b8af781cca454b2a2eb636a1a62c/data",
        "PBMC 4k, cells subsampled 2x by the SoupX authors; labels are cluster annotations, not ground truth."),
    Dataset(
        "kang2018_ifnb_3donors_100genes", "kang2018_ifnb_3donors_100genes.h5ad",
        "cf24e39d7ff4d065c82aa26015459897e450815c316d856f0d3f3d4c99331446", (9517, 100),
        ("donor", "condition", "cell_type", "sample_id"),
        "Kang et al. 2018 Nat Biotechnol 36:89 (GEO GSE96583)",
        "https://github.com/SimoneTiberi/distinct/blob/1482bcf3e5b0b20123ccbf41cf7216ddbe1de937/data/Kang_subset.RData",
        "IFN-beta stimulated vs control PBMC, 3 donors, 100 genes; obs.total_counts is the exact per-cell UMI total."),
    Dataset(
        "kang2018_ctrl_8donors", "kang2018_ctrl_8donors.h5ad",
        "f456573d49869da7be4a5bb9b0a7cfae011c60e11106036f3ca9f1db4a9fa282", (12261, 1287),
        ("donor", "cell_type", "condition"),
        "Kang et al. 2018 Nat Biotechnol 36:89 (GEO GSE96583)",
        "https://github.com/HelenaLC/muscat/blob/d5acab66a2468bb51368f527b6cd617de8253a67/data/kang_se.rda",
        "Control PBMC from 8 donors, 1,287 genes, authors' cell-type labels."),
    Dataset(
        "smillie2019_celltype_counts", "smillie2019_celltype_counts.csv.gz",
        "66427a7a22519c852635f6a4aeae1a134339caaffcc65b3701ef4546835be255", (27540, 8),
        ("Health", "Location", "Subject", "Cluster"),
        "Smillie et al. 2019 Cell 178:714",
        "https://github.com/vals/Blog/blob/36cdc13501cbeb870ab532521458f29392c99152/201127-cell-count-glm/cell_type_counts.csv",
        "Cell-type counts per sample (30 subjects, 51 clusters); a table, not a matrix.",
        kind="csv"),
]}


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data directory: ``$SCNOTES_DATA_DIR`` or ``<repo>/../shared/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (_repo_root().parent / "shared" / "data").resolve()


def list_datasets():
    """A pandas DataFrame of the registry (name, file, shape, labels, citation, url) and of the
    curated sets (``curated``: the step of ``load(name, curated=True)``; a set that exists only
    curated has no file of its own and names its sources)."""
    import pandas as pd

    rows = [{"name": d.name, "file": d.file, "shape": d.shape, "labels": ", ".join(d.labels),
             "citation": d.citation, "url": d.url, "curated": CURATED[d.name].step if d.name in CURATED else ""}
            for d in REGISTRY.values()]
    rows += [{"name": c.name, "file": "", "shape": None, "labels": f"{c.batch_key}, {c.label_key}",
              "citation": "made from " + ", ".join(c.sources), "url": "", "curated": c.step}
             for c in CURATED.values() if c.name not in REGISTRY]
    return pd.DataFrame(rows).set_index("name")


def _entry(name: str) -> Dataset:
    if name not in REGISTRY:
        curated = sorted(set(CURATED) - set(REGISTRY))
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {sorted(REGISTRY)}, curated sets: "
                       f"{curated} (or pass a path to your own .h5ad)")
    return REGISTRY[name]


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_VERIFIED: set = set()


def path(name: str, verify: bool = True) -> Path:
    """Path of a registered dataset's file, checked to exist and match its sha256.

    Raises
    ------
    KeyError
        Unknown dataset name.
    FileNotFoundError
        The file is not in :func:`data_dir` (the message says where it looked,
        how to point elsewhere and where the data come from).
    ValueError
        The file's sha256 differs from the registry (corrupt or edited copy).
    """
    d = _entry(name)
    p = data_dir() / d.file
    if not p.is_file():
        raise FileNotFoundError(
            f"dataset {name!r}: file {p} not found. Looked in data directory {data_dir()} "
            f"(set ${DATA_ENV} to change it). The data come from {d.url} ({d.citation}); "
            "see SOURCES.md in the shared data directory. Nothing is downloaded at run time.")
    if verify and p not in _VERIFIED:
        digest = _sha256(p)
        if digest != d.sha256:
            raise ValueError(
                f"dataset {name!r}: {p} has sha256 {digest}, expected {d.sha256}; the file is "
                f"corrupt or not the registered version (source: {d.url})")
        _VERIFIED.add(p)
    return p


def load(name_or_path: str, verify: bool = True, curated: bool = False):
    """Load a dataset as AnnData with raw counts in ``X`` (and a copy in ``layers['counts']``).

    Parameters
    ----------
    name_or_path : str
        A registered name (see :func:`list_datasets`), a curated set's name
        (:data:`CURATED`) or a path to a user's ``.h5ad`` (not checked against
        the registry).
    verify : bool
        Check the registered files' sha256 (once per process).
    curated : bool
        Return the book's curated version where :data:`CURATED` has one (doublets
        dropped, a batch and a label column; see the module docstring); other names
        and paths load as they are. A set that exists only curated
        (``"pbmc_joined"``) is curated either way.

    Returns
    -------
    anndata.AnnData, n_cells × n_genes
        ``X`` is CSR float32 counts; ``uns['scnotes_dataset']`` names the source.
        The file on disk is only read, never written.

    Raises
    ------
    KeyError, FileNotFoundError, ValueError
        As :func:`path`; ``ValueError`` also for a registered table (use
        :func:`load_table`).
    """
    name = str(name_or_path)
    if name in CURATED and (curated or name not in REGISTRY):
        return _with_counts(CURATED[name].make(CURATED[name], verify), name)
    import anndata as ad

    p, name = _h5ad_file(name_or_path, verify)
    return _with_counts(ad.read_h5ad(p), name)


def _h5ad_file(name_or_path: str, verify: bool) -> tuple[Path, str]:
    """(file, name) of a user's ``.h5ad`` path (its stem names it) or of a registered AnnData."""
    if str(name_or_path).endswith(".h5ad") or os.sep in str(name_or_path):
        p = Path(name_or_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no .h5ad file at {p}")
        return p, p.stem
    d = _entry(name_or_path)
    if d.kind != "h5ad":
        raise ValueError(f"dataset {d.name!r} is a table; use scnotes.datasets.load_table")
    return path(name_or_path, verify=verify), d.name


def _with_counts(adata, name: str):
    """The loader's contract: CSR counts in ``X``, a copy in ``layers['counts']`` unless the
    file has one, the source's name in ``uns['scnotes_dataset']``."""
    import scipy.sparse as sp

    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy()
    adata.uns["scnotes_dataset"] = name
    return adata


def load_table(name: str = "smillie2019_celltype_counts", verify: bool = True):
    """Load a registered table dataset as a pandas DataFrame (see :func:`path` for errors)."""
    import pandas as pd

    d = _entry(name)
    if d.kind != "csv":
        raise ValueError(f"dataset {name!r} is an AnnData; use scnotes.datasets.load")
    return pd.read_csv(path(name, verify=verify))


# ---------------------------------------------------------------- curated sets (the book's versions)

#: Coarse labels of the two PBMC sets joined as ``pbmc_joined``: registered name → (label
#: column, batch name, label → coarse label). ``MNP`` (mononuclear phagocytes) of the 4k
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


@dataclass(frozen=True)
class Curated:
    """One curated set: registered files (``sources``) made into the book's version by ``make``
    (called as ``make(entry, verify)``, returns an AnnData of raw counts), with its batch and
    label columns in ``obs``."""

    name: str
    sources: tuple
    batch_key: str
    label_key: str
    step: str
    make: Callable = field(repr=False, compare=False)


def _without_doublets(entry: Curated, verify: bool):
    """The registered file without demuxlet's doublets (``demuxlet_cls == "DBL"``)."""
    a = load(entry.sources[0], verify=verify)
    return a[(a.obs["demuxlet_cls"] != "DBL").to_numpy()].copy()


def _by_symbol(a):
    """Genes named by ``var['gene_symbol']``, symbols that occur twice dropped (no guess which is meant)."""
    a = a[:, ~a.var["gene_symbol"].duplicated(keep=False).to_numpy()].copy()
    a.var_names = a.var["gene_symbol"].astype(str).to_numpy()
    return a


def _coarse_labelled(name: str, verify: bool):
    """(batch name, cells of ``name`` with a coarse label in ``obs['label']``, genes by symbol)."""
    col, batch, mapping = PBMC_LABELS[name]
    a = _by_symbol(load(name, verify=verify))
    a.obs["label"] = a.obs[col].astype(str).map(mapping)
    return batch, a[a.obs["label"].notna().to_numpy()]


def _pbmc_joined(entry: Curated, verify: bool):
    """The PBMC sets of :data:`PBMC_LABELS` on their shared gene symbols, one batch each,
    cells named ``<batch>:<barcode>``, obs ``batch`` and ``label`` only."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    parts = dict(_coarse_labelled(name, verify) for name in entry.sources)
    genes = None
    for a in parts.values():
        genes = a.var_names if genes is None else genes.intersection(a.var_names)
    return ad.concat([ad.AnnData(
        X=sp.csr_matrix(a[:, genes].X, dtype=np.float32),
        obs=pd.DataFrame({"batch": batch, "label": a.obs["label"].to_numpy()},
                         index=[f"{batch}:{i}" for i in a.obs_names]),
        var=pd.DataFrame(index=genes)) for batch, a in parts.items()])


#: The curated sets by name (the sets of the chapter ``mnn_topics``).
CURATED: dict[str, Curated] = {c.name: c for c in [
    Curated("cellbench_3cl_celseq2_dropseq", ("cellbench_3cl_celseq2_dropseq",), "batch", "cell_line",
            "demuxlet doublets removed", _without_doublets),
    Curated("cellbench_5cl_celseq2_plates", ("cellbench_5cl_celseq2_plates",), "batch", "cell_line",
            "demuxlet doublets removed", _without_doublets),
    Curated("pbmc_joined", tuple(PBMC_LABELS), "batch", "label",
            "two PBMC sets joined on gene symbols, coarse labels harmonised", _pbmc_joined),
]}

#: name → (batch column, label column) of the curated sets.
BOOK_DATASETS = {name: (c.batch_key, c.label_key) for name, c in CURATED.items()}
