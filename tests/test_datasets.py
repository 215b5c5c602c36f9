import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from scnotes import datasets


def test_registry_matches_files(have_data):
    for d in datasets.REGISTRY.values():
        assert (have_data / d.file).is_file(), d.file


def test_load_returns_raw_counts(have_data):
    adata = datasets.load("cellbench_3cl_celseq2_dropseq")
    assert adata.shape == datasets.REGISTRY["cellbench_3cl_celseq2_dropseq"].shape
    assert sp.issparse(adata.X)
    v = adata.X.data
    assert np.all(v >= 0) and np.all(v == np.round(v))
    assert "counts" in adata.layers
    for col in datasets.REGISTRY["cellbench_3cl_celseq2_dropseq"].labels:
        assert col in adata.obs


def test_load_table(have_data):
    df = datasets.load_table("smillie2019_celltype_counts")
    assert df.shape == datasets.REGISTRY["smillie2019_celltype_counts"].shape
    assert {"Subject", "Cluster", "Count", "Total"} <= set(df.columns)


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        datasets.load("nope")


def test_env_override_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path))
    assert datasets.data_dir() == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="SCNOTES_DATA_DIR") as e:
        datasets.load("pbmc_facs_zheng2017")
    assert str(tmp_path) in str(e.value) and "github.com" in str(e.value)


def test_corrupt_file(tmp_path, monkeypatch, have_data):
    src = have_data / "kang2018_ifnb_3donors_100genes.h5ad"
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:  # flip one byte near the end
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path))
    datasets._VERIFIED.clear()
    with pytest.raises(ValueError, match="sha256"):
        datasets.load("kang2018_ifnb_3donors_100genes")


def test_load_user_path_does_not_modify_file(tmp_path, have_data):
    src = have_data / "cellbench_3cl_celseq2_dropseq.h5ad"
    dst = tmp_path / "mine.h5ad"
    shutil.copy(src, dst)
    before = dst.read_bytes()
    adata = datasets.load(str(dst))
    adata.obs["x"] = 1
    assert dst.read_bytes() == before
    assert adata.uns["scnotes_dataset"] == "mine"


# ---------------------------------------------------------------- curated sets (review S1-10)
def _same(a, b):
    """Equal counts, obs and var (names, order, values)."""
    assert a.shape == b.shape
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs) and a.var.equals(b.var)


def test_curated_cellbench_is_the_file_without_doublets(have_data):
    raw = datasets.load("cellbench_3cl_celseq2_dropseq")
    cur = datasets.load("cellbench_3cl_celseq2_dropseq", curated=True)
    keep = (raw.obs["demuxlet_cls"] != "DBL").to_numpy()
    assert 0 < keep.sum() < raw.n_obs  # the file has doublets, and they go
    _same(cur, raw[keep])
    assert (cur.obs["demuxlet_cls"] == "SNG").all() and cur.n_obs == 450
    assert (cur.layers["counts"] != cur.X).nnz == 0 and cur.uns["scnotes_dataset"] == raw.uns["scnotes_dataset"]
    bk, lk = datasets.BOOK_DATASETS["cellbench_3cl_celseq2_dropseq"]
    assert {bk, lk} <= set(cur.obs)


def _joined_by_hand(have_data):
    """pbmc_joined built a second way: dense tables per set, unique symbols kept, coarse labels
    by dictionary look-up, genes in the first set's order that the second has too."""
    import anndata as ad
    import pandas as pd

    tables, labels = [], []
    for name, (col, batch, mapping) in datasets.PBMC_LABELS.items():
        a = ad.read_h5ad(have_data / datasets.REGISTRY[name].file)
        sym = a.var["gene_symbol"].astype(str)
        unique = ~sym.duplicated(keep=False).to_numpy()
        lab = [mapping.get(str(v)) for v in a.obs[col]]
        rows = np.array([v is not None for v in lab])
        x = np.asarray(a.X[rows][:, unique].todense())
        tables.append(pd.DataFrame(x, index=[f"{batch}:{i}" for i in a.obs_names[rows]],
                                   columns=sym[unique].to_numpy()))
        labels.append(pd.DataFrame({"batch": batch, "label": [v for v in lab if v is not None]},
                                   index=tables[-1].index))
    genes = [g for g in tables[0].columns if g in set(tables[1].columns)]
    return pd.concat([t[genes] for t in tables]), pd.concat(labels)


def test_pbmc_joined_equals_a_join_by_hand(have_data):
    p = datasets.load("pbmc_joined")
    x, obs = _joined_by_hand(have_data)
    assert list(p.obs_names) == list(x.index) and list(p.var_names) == list(x.columns)
    np.testing.assert_array_equal(p.X.toarray(), x.to_numpy())
    assert p.X.dtype == np.float32 and p.X.format == "csr"
    assert (p.obs["batch"].astype(str) == obs["batch"]).all() and (p.obs["label"].astype(str) == obs["label"]).all()
    assert set(p.obs["label"]) == {"B", "NK", "CD4 T", "CD8 T", "Monocyte"}
    assert not p.var_names.duplicated().any() and p.uns["scnotes_dataset"] == "pbmc_joined"
    # curated is the only version of a set without a file of its own
    _same(datasets.load("pbmc_joined", curated=True), p)


def test_curated_on_a_set_without_curation_or_a_path_loads_as_is(tmp_path, have_data):
    _same(datasets.load("kang2018_ifnb_3donors_100genes", curated=True),
          datasets.load("kang2018_ifnb_3donors_100genes"))
    dst = tmp_path / "mine.h5ad"
    shutil.copy(have_data / "cellbench_3cl_celseq2_dropseq.h5ad", dst)
    assert datasets.load(str(dst), curated=True).n_obs == datasets.REGISTRY["cellbench_3cl_celseq2_dropseq"].shape[0]


def test_unknown_name_lists_the_curated_sets():
    with pytest.raises(KeyError, match="curated sets: \\['pbmc_joined'\\]"):
        datasets.load("pbmc_joind")


def test_list_datasets_names_the_curation():
    table = datasets.list_datasets()
    assert table.loc["cellbench_3cl_celseq2_dropseq", "curated"] == "demuxlet doublets removed"
    assert table.loc["kang2018_ctrl_8donors", "curated"] == ""
    assert "pbmc_facs_zheng2017" in table.loc["pbmc_joined", "citation"]


def test_mnn_load_data_is_a_deprecated_alias(have_data):
    import warnings

    from scnotes import mnn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = mnn.load_data("cellbench_3cl_celseq2_dropseq")
    (w,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert "scnotes.datasets.load" in str(w.message)
    # attributed to scnotes (never to a chapter's __main__, so never on an executed page)
    assert w.filename.replace("\\", "/").endswith("scnotes/mnn/_data.py")
    _same(old, datasets.load("cellbench_3cl_celseq2_dropseq", curated=True))
    assert mnn.BOOK_DATASETS is datasets.BOOK_DATASETS and mnn.PBMC_LABELS is datasets.PBMC_LABELS
