"""The one model format (scnotes._persist): every family round-trips, the committed fixtures
(format version 1 and the older per-family formats) keep loading with their recorded
outputs, and bad files give clear errors."""
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import scnotes
from scnotes import _persist

FIX = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("scnotes_fixture_build", FIX / "models" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def _cls(name):
    return _persist._resolve(name)


def _same_outputs(name, got, want, exact=True):
    for k in want:
        if exact:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}.{k}")
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-8, err_msg=f"{name}.{k}")


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    return {name: build.fit(name) for name in build.FAMILIES}


@pytest.mark.parametrize("name", build.FAMILIES)
def test_round_trip(fitted, name, tmp_path):
    m = fitted[name]
    path = tmp_path / "model.bin"
    m.save(path)
    assert path.exists() and path.stat().st_size < 200_000
    back = type(m).load(path)
    assert type(back) is type(m)
    _same_outputs(name, build.outputs(name, back), build.outputs(name, m))
    if name in build.GLMMS:
        pd.testing.assert_frame_equal(back.summary(), m.summary())
    pd.testing.assert_frame_equal(back.history_, m.history_)
    assert list(back.var_names_) == list(m.var_names_)
    assert getattr(back, "covariate_registry_", None) == getattr(m, "covariate_registry_", None)
    for k, v in m.get_params().items():
        np.testing.assert_array_equal(np.asarray(back.get_params()[k], dtype=object),
                                      np.asarray(v, dtype=object), err_msg=k)
    assert repr(back) == repr(m)
    # the generic reader gives the same class without being told
    assert type(_persist.load_model(path)) is type(m)


@pytest.mark.parametrize("name", build.FAMILIES)
def test_file_holds_the_documented_header(fitted, name, tmp_path):
    m = fitted[name]
    m.save(tmp_path / "m")
    raw = torch.load(tmp_path / "m", weights_only=True)  # no pickled objects in the file
    assert raw["format"] == "scnotes-model" and raw["format_version"] == _persist.FORMAT_VERSION
    assert raw["class"] == _persist.class_name(type(m)) and raw["class"].endswith("." + name)
    assert raw["scnotes_version"] == scnotes.__version__
    params = _persist._decode(raw["params"])
    want = {k: v for k, v in m.get_params().items() if k != "device"}
    assert sorted(params) == sorted(want)


@pytest.mark.parametrize("name", build.FAMILIES)
def test_committed_fixture_loads_with_its_recorded_outputs(name):
    """Files saved by format version 1 on the day it was introduced: every later scnotes must
    load them (keep a reader for every older version) and give these outputs."""
    path = FIX / "models" / f"{name}.pt"
    assert path.stat().st_size < 200_000
    m = _cls(name).load(path)
    want = dict(np.load(FIX / "models" / f"{name}.npz"))
    _same_outputs(name, build.outputs(name, m), want, exact=False)
    assert list(m.var_names_)[:2] == (["g0", "g1"] if name not in build.GLMMS else list(m.design_.genes)[:2])


@pytest.mark.parametrize("name", build.FAMILIES)
def test_old_per_family_files_still_load(name):
    """Files written by the per-family savers before scnotes._persist (commit aed911f)."""
    ext = ".nmf" if name in build.NMFS else ".pt"
    m = _cls(name).load(FIX / "legacy" / f"{name}{ext}")
    assert type(m).__name__ == name
    want = dict(np.load(FIX / "legacy" / f"{name}.npz"))
    _same_outputs(name, build.outputs(name, m), want, exact=False)


def test_another_class_is_a_type_error_naming_both(tmp_path):
    with pytest.raises(TypeError, match=r"holds a scnotes\.vae\.PVAE, not a NBMF"):
        _cls("NBMF").load(FIX / "models" / "PVAE.pt")
    with pytest.raises(TypeError, match="holds a scnotes.glmm.NBGLMMVEB, not a PoissonGLMMVEB"):
        _cls("PoissonGLMMVEB").load(FIX / "models" / "NBGLMMVEB.pt")
    with pytest.raises(TypeError, match="holds a LDVAE, not a PVAE"):  # an old file too
        _cls("PVAE").load(FIX / "legacy" / "LDVAE.pt")


def test_bad_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a model file written by scnotes"):
        _persist.load_model(text)
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a model file"):
        _persist.load_model(tmp_path / "other.pt")
    torch.save({"format": "something-else"}, tmp_path / "fmt.pt")
    with pytest.raises(ValueError, match="not a model file"):
        _persist.load_model(tmp_path / "fmt.pt")
    np.savez(tmp_path / "c.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a model file"):
        _persist.load_model(tmp_path / "c.npz")
    raw = torch.load(FIX / "models" / "PVAE.pt", weights_only=True)
    raw["format_version"] = _persist.FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer scnotes .*format version 2"):
        _cls("PVAE").load(tmp_path / "newer.pt")
    with pytest.raises(FileNotFoundError):
        _persist.load_model(tmp_path / "missing.pt")


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(_Boom.target),))


def test_a_hostile_pickle_is_refused_without_running_it(tmp_path):
    _Boom.target = str(tmp_path / "ran")
    torch.save({"cls": "PVAE", "x": _Boom()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a model file"):
        _persist.load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Boom(), f)
    with pytest.raises(ValueError, match="not a model file"):
        _persist.load_model(tmp_path / "evil.pkl")
    assert not (tmp_path / "ran").exists()


def test_only_registered_classes_save(tmp_path):
    from scnotes.vae import PVAE

    class MyPVAE(PVAE):
        pass

    with pytest.raises(TypeError, match="not a registered scnotes model class"):
        MyPVAE(4, n_latent=2, hidden_dim=4).save(tmp_path / "m")


def test_repr_shows_the_non_default_params():
    from scnotes.glmm import NBGLMMVEB, PoissonGLMMVEB
    from scnotes.nmf import NBMF, PoissonNMF
    from scnotes.vae import GMVAE, LDVAE, NBVAE, ZINBVAE, CountVAE

    assert repr(NBVAE(5)) == "NBVAE(input_dim=5)"
    assert repr(ZINBVAE(5, theta_by_gene=False, n_latent=3)) == "ZINBVAE(input_dim=5, n_latent=3, theta_by_gene=False)"
    assert repr(LDVAE(4, likelihood="poisson")) == "LDVAE(input_dim=4, likelihood='poisson')"
    assert repr(CountVAE(4, likelihood="zinb")) == "CountVAE(input_dim=4, likelihood='zinb')"
    assert repr(GMVAE(3, n_clusters=4)) == "GMVAE(input_dim=3, n_clusters=4)"
    assert repr(PoissonNMF(3)) == "PoissonNMF(n_components=3)"
    assert repr(NBMF(theta=np.ones(3))) == "NBMF(theta=array([1., 1., 1.]))"
    assert repr(NBGLMMVEB(max_epochs=7)) == "NBGLMMVEB(max_epochs=7)"
    assert repr(PoissonGLMMVEB()) == "PoissonGLMMVEB()"
    for m in (NBVAE(5), PoissonNMF(3), NBGLMMVEB(), PoissonGLMMVEB()):
        assert set(m.get_params()) >= {"seed"}
