"""Comparing two loading matrices: principal cosines against a brute-force QR + SVD and
against subspaces with known angles, their invariances, the Hungarian factor matching
against exhaustive search, gene alignment by name, and the errors."""
import itertools

import numpy as np
import pandas as pd
import pytest

import scnotes
from scnotes.tl import loading_agreement, loading_correlations, principal_cosines


def _brute_cosines(a, b):
    """Björck–Golub: singular values of Q1ᵀQ2 for orthonormal bases of the centred columns."""
    q1, _ = np.linalg.qr(a - a.mean(0))
    q2, _ = np.linalg.qr(b - b.mean(0))
    return np.linalg.svd(q1.T @ q2, compute_uv=False)


def _rotation(k, rng):
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    return q


def test_exported_from_tl():
    assert scnotes.tl.principal_cosines is principal_cosines
    assert scnotes.tl.loading_agreement is loading_agreement


def test_cosines_agree_with_qr_svd():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 3))
    b[:, 0] += a[:, 1]  # one shared direction, partly
    np.testing.assert_allclose(principal_cosines(a, b), _brute_cosines(a, b), atol=1e-12)
    np.testing.assert_allclose(principal_cosines(a, b, centre=False)[:1],
                               np.linalg.svd(np.linalg.qr(a)[0].T @ np.linalg.qr(b)[0], compute_uv=False)[:1],
                               atol=1e-12)


def test_cosines_of_planes_with_known_angles():
    # In R^6 (centring off): e1, e2 against cos(t1) e1 + sin(t1) e3 and cos(t2) e2 + sin(t2) e4.
    t1, t2 = 0.3, 1.1
    e = np.eye(6)
    a = e[:, :2]
    b = np.column_stack([np.cos(t1) * e[:, 0] + np.sin(t1) * e[:, 2],
                         np.cos(t2) * e[:, 1] + np.sin(t2) * e[:, 3]])
    np.testing.assert_allclose(principal_cosines(a, b, centre=False), [np.cos(t1), np.cos(t2)], atol=1e-12)
    # orthogonal subspaces: all cosines 0; identical ones: all 1
    np.testing.assert_allclose(principal_cosines(a, e[:, 2:4], centre=False), [0, 0], atol=1e-12)
    np.testing.assert_allclose(principal_cosines(a, a[:, ::-1], centre=False), [1, 1], atol=1e-12)


def test_cosines_ignore_rotation_scale_order_and_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(150, 3)), rng.normal(size=(150, 3)) + 0.5 * rng.normal(size=(150, 3))
    b[:, :2] += a[:, :2]
    ref = principal_cosines(a, b)
    moved = b @ _rotation(3, rng) * np.array([3.0, 0.2, -7.0]) + np.array([5.0, -2.0, 1.0])
    np.testing.assert_allclose(principal_cosines(a, moved), ref, atol=1e-10)
    np.testing.assert_allclose(principal_cosines(a[:, ::-1] * 4, b), ref, atol=1e-10)
    assert np.all(np.diff(ref) <= 0) and np.all((ref >= 0) & (ref <= 1))
    # a constant shift of a factor across genes is invisible after centring, not before
    shifted = a + np.array([10.0, 0, 0])
    np.testing.assert_allclose(principal_cosines(shifted, b), ref, atol=1e-10)
    assert not np.allclose(principal_cosines(shifted, b, centre=False), principal_cosines(a, b, centre=False))


def test_genes_matched_by_name():
    rng = np.random.default_rng(2)
    genes = [f"g{i}" for i in range(80)]
    l1 = pd.DataFrame(rng.normal(size=(80, 3)), index=genes)
    l2 = pd.DataFrame(rng.normal(size=(80, 3)), index=genes)
    shuffled = l2.sample(frac=1.0, random_state=0)
    extra = pd.concat([shuffled, pd.DataFrame(rng.normal(size=(5, 3)), index=[f"x{i}" for i in range(5)])])
    np.testing.assert_allclose(principal_cosines(l1, extra), principal_cosines(l1.to_numpy(), l2.to_numpy()),
                               atol=1e-12)
    pd.testing.assert_frame_equal(loading_correlations(l1, extra), loading_correlations(l1, l2))
    with pytest.raises(ValueError, match="lacks 2 gene"):
        principal_cosines(l1, l2.drop(["g3", "g7"]))
    with pytest.raises(ValueError, match="80 genes and loadings2 79"):
        principal_cosines(l1.to_numpy(), l2.to_numpy()[:79])


def test_correlations_are_pearson_over_genes():
    rng = np.random.default_rng(3)
    l1 = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"])
    l2 = pd.DataFrame(rng.normal(size=(60, 3)), columns=["x", "y", "z"])
    r = loading_correlations(l1, l2)
    assert r.shape == (2, 3) and list(r.index) == ["a", "b"] and list(r.columns) == ["x", "y", "z"]
    for i, j in itertools.product(r.index, r.columns):
        assert r.loc[i, j] == pytest.approx(pd.Series(l1[i]).corr(pd.Series(l2[j])), abs=1e-12)


def test_agreement_recovers_a_permutation_with_flipped_signs():
    rng = np.random.default_rng(4)
    l1 = pd.DataFrame(rng.normal(size=(300, 4)), columns=[f"Z_{k}" for k in range(4)])
    perm, signs = [2, 0, 3, 1], np.array([1, -1, -1, 1])
    l2 = pd.DataFrame(l1.to_numpy()[:, perm] * signs * 2 + 0.1 * rng.normal(size=(300, 4)) + 3,
                      columns=[f"W_{k}" for k in range(4)])
    match = loading_agreement(l1, l2, names=("ours", "theirs"))
    assert list(match.columns) == ["ours factor", "theirs factor", "r", "|r|"]
    # l2 column j is l1 column perm[j], so l1's factor perm[j] pairs with W_j
    expected = {f"Z_{perm[j]}": f"W_{j}" for j in range(4)}
    assert dict(zip(match["ours factor"], match["theirs factor"])) == expected
    assert list(match["ours factor"]) == list(l1.columns)
    sign_of = {f"Z_{perm[j]}": signs[j] for j in range(4)}
    assert all(np.sign(r) == sign_of[f] for f, r in zip(match["ours factor"], match["r"]))
    assert match["|r|"].min() > 0.95


def test_agreement_maximises_the_summed_abs_r():
    rng = np.random.default_rng(5)
    l1, l2 = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    l2[:, 0] += l1[:, 1]
    absr = np.abs(loading_correlations(l1, l2).to_numpy())
    best = max(sum(absr[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    assert loading_agreement(l1, l2)["|r|"].sum() == pytest.approx(best, abs=1e-12)
    # fewer factors on one side: min(k1, k2) pairs
    assert len(loading_agreement(l1, l2[:, :2])) == 2


def test_errors_name_the_problem():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(30, 2))
    with pytest.raises(ValueError, match="2-D"):
        principal_cosines(a[:, 0], a)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loading_agreement(bad, a)
    flat = a.copy()
    flat[:, 1] = 2.0
    with pytest.raises(ValueError, match="constant over genes"):
        loading_correlations(a, flat)
    with pytest.raises(ValueError, match="spans no subspace"):
        principal_cosines(np.ones((30, 2)), a)
    with pytest.raises(ValueError, match="two different labels"):
        loading_agreement(a, a, names=("x", "x"))
