"""Registry of the real datasets the book uses, and one loader.

The files live in one data directory, never in the repository and never
downloaded at run time. The directory is ``$SCNOTES_DATA_DIR`` if set,
otherwise ``../shared/data`` beside the repository root.

Each entry records the file, its sha256 (checked on load, so a truncated or
edited file is caught), the shape, the label columns, the citation and the
original public location (see ``SOURCES.md`` in the data directory).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DATA_ENV", "Dataset", "REGISTRY", "data_dir", "path", "load", "load_table", "list_datasets"]

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
    """A pandas DataFrame of the registry (name, file, shape, labels, citation, url)."""
    import pandas as pd

    return pd.DataFrame([
        {"name": d.name, "file": d.file, "shape": d.shape, "labels": ", ".join(d.labels),
         "citation": d.citation, "url": d.url} for d in REGISTRY.values()
    ]).set_index("name")


def _entry(name: str) -> Dataset:
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {sorted(REGISTRY)} "
                       "(or pass a path to your own .h5ad)")
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


def load(name_or_path: str, verify: bool = True):
    """Load a dataset as AnnData with raw counts in ``X`` (and a copy in ``layers['counts']``).

    Parameters
    ----------
    name_or_path : str
        A registered name (see :func:`list_datasets`) or a path to a user's
        ``.h5ad`` (not checked against the registry).
    verify : bool
        Check the registered file's sha256 (once per process).

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
    import anndata as ad
    import scipy.sparse as sp

    if str(name_or_path).endswith(".h5ad") or os.sep in str(name_or_path):
        p = Path(name_or_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no .h5ad file at {p}")
        name = p.stem
    else:
        d = _entry(name_or_path)
        if d.kind != "h5ad":
            raise ValueError(f"dataset {d.name!r} is a table; use scnotes.datasets.load_table")
        p, name = path(name_or_path, verify=verify), d.name
    adata = ad.read_h5ad(p)
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
