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
