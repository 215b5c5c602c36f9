"""The band a calibrated share of p < 0.05 lies in (scnotes.glmm.calibration_band and its
companions split_se, calibration_check, calibration_verdict): the closed form, its binomial
coverage (exact and simulated), the cluster-robust error of shares pooled over splits, and
the words a chapter prints."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scnotes import glmm


def _exact_coverage(n, q, lo, hi):
    """P(lo <= X / n <= hi) for X ~ Binomial(n, q), by scipy's binomial cdf."""
    k_lo = np.ceil(lo * n - 1e-9)
    k_hi = np.floor(hi * n + 1e-9)
    return stats.binom.cdf(k_hi, n, q) - stats.binom.cdf(k_lo - 1, n, q)


def test_band_closed_form():
    n = np.array([20, 100, 400, 2000, 10000])
    lo, hi = glmm.calibration_band(n)
    half = 3 * np.sqrt(0.05 * 0.95 / n)
    np.testing.assert_allclose(lo, np.clip(np.minimum(0.02, 0.05 - half), 0, None))
    np.testing.assert_allclose(hi, np.maximum(0.08, 0.05 + half))
    # many tests: the fixed band; few: 0.05 ± 3 binomial sds, clipped at 0
    assert glmm.calibration_band(10000) == pytest.approx((0.02, 0.08))
    assert glmm.calibration_band(400) == pytest.approx((0.05 - 3 * np.sqrt(0.0475 / 400),
                                                         0.05 + 3 * np.sqrt(0.0475 / 400)))
    assert glmm.calibration_band(20) == pytest.approx((0.0, 0.05 + 3 * np.sqrt(0.0475 / 20)))
    # a cluster-robust error larger than the binomial one widens the band; a smaller one does not
    assert glmm.calibration_band(10000, se_split=0.02) == pytest.approx((0.0, 0.11))
    assert glmm.calibration_band(400, se_split=1e-4) == glmm.calibration_band(400)
    assert glmm.calibration_band(400, se_split=np.nan) == glmm.calibration_band(400)  # none measured
    # other levels and floors: alpha ± n_se binomial sds where wider than the floor, never above 1
    lo, hi = glmm.calibration_band(50, alpha=0.1, floor=(0.0, 0.10), n_se=2)
    assert (lo, hi) == pytest.approx((0.0, 0.1 + 2 * np.sqrt(0.09 / 50)))
    assert glmm.calibration_band(1, alpha=0.5)[1] == 1.0


def test_band_binomial_coverage_exact():
    """Under the null with independent tests the share of p < 0.05 is Binomial(n, 0.05) / n; the band
    holds it with probability >= 0.98 for every n from 20 (the binomial's skew at small n: exactly
    0.984 at n = 20) and >= 0.99 from 100 on (±3 sds: 0.997 in the normal limit)."""
    n = np.arange(20, 20001)
    lo, hi = glmm.calibration_band(n)
    exact = _exact_coverage(n, 0.05, lo, hi)
    assert exact.min() >= 0.98 and exact[n >= 100].min() >= 0.99
    assert exact[0] == pytest.approx(stats.binom.cdf(3, 20, 0.05))  # n = 20: band [0, 0.196], 0 to 3 hits
    # a test at twice the level is caught (outside its band) most of the time once n is in the thousands
    assert _exact_coverage(n, 0.10, lo, hi)[n >= 1000].max() < 0.05


@pytest.mark.parametrize("n", [20, 300, 5000])
def test_band_binomial_coverage_simulated(n):
    """The share of simulated null shares inside the band agrees with the exact coverage."""
    lo, hi = glmm.calibration_band(n)
    exact = _exact_coverage(n, 0.05, lo, hi)
    draws = np.random.default_rng(n).binomial(n, 0.05, size=40000) / n
    inside = np.mean((draws >= lo) & (draws <= hi))
    assert abs(inside - exact) < 4 * np.sqrt(exact * (1 - exact) / draws.size) + 1e-4


def test_split_se_by_hand():
    """sd of the splits' shares (ddof = 1) over √splits, per method and group; one split: 0."""
    rows = []
    hits = {("m", "A"): [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]],  # shares 0.25, 0.5, 0
            ("m", "B"): [[1, 0, 0, 0]],
            ("w", "A"): [[1, 1, 1, 1], [0, 0, 0, 0]]}
    for (method, ct), splits in hits.items():
        for s, h in enumerate(splits):
            p = np.where(np.array(h) == 1, 0.01, 0.5)
            rows.append(pd.DataFrame({"gene": list("abcd"), "kind": "contrast", "cell_type": ct, "p": p,
                                      "method": method, "split": s}))
    tab = pd.concat(rows, ignore_index=True)
    tab = pd.concat([tab, tab.iloc[:1].assign(kind="group", p=0.0)])  # a non-contrast row is not a test
    out = glmm.split_se(tab).set_index(["method", "cell_type"])
    assert out.loc[("m", "A"), "se_split"] == pytest.approx(np.std([0.25, 0.5, 0.0], ddof=1) / np.sqrt(3))
    assert out.loc[("m", "A"), "n_splits"] == 3
    assert out.loc[("m", "B"), "se_split"] == 0.0 and out.loc[("m", "B"), "n_splits"] == 1
    assert out.loc[("w", "A"), "se_split"] == pytest.approx(np.std([1.0, 0.0], ddof=1) / np.sqrt(2))
    # a NaN p is not a test (as in null_calibration): the split's share is over the finite p
    tab2 = tab.copy()
    tab2.loc[(tab2.method == "m") & (tab2.cell_type == "A") & (tab2.split == 0) & (tab2.gene == "d"), "p"] = np.nan
    se2 = glmm.split_se(tab2).set_index(["method", "cell_type"]).loc[("m", "A"), "se_split"]
    assert se2 == pytest.approx(np.std([1 / 3, 0.5, 0.0], ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="split"):
        glmm.split_se(tab.drop(columns="split"))
    with pytest.raises(ValueError, match="cannot also group"):
        glmm.split_se(tab, by=["cell_type", "split"])


def test_split_se_estimates_the_scatter_of_a_clustered_share():
    """Splits whose tests share a split-level effect (a donor split that separates two kinds of
    donor): the pooled share scatters far more than binomially. Over many simulated experiments
    split_se's variance matches the pooled share's true variance, and the band widened by it keeps
    the share while the binomial band alone misses it often."""
    rng = np.random.default_rng(1)
    n_exp, k, m = 400, 6, 150  # experiments, splits (the calibration chapter's default), tests per split
    level = rng.beta(1.0, 19.0, (n_exp, k))  # each split's own share of p < 0.05: mean 0.05, sd 0.048
    p = np.where(rng.random((n_exp, k, m)) < level[:, :, None], 0.01, 0.5)
    e, s, _ = np.indices(p.shape)
    tab = pd.DataFrame({"p": p.ravel(), "cell_type": e.ravel(), "split": s.ravel(), "method": "m"})
    se = glmm.split_se(tab).set_index("cell_type").se_split.sort_index().to_numpy()
    pooled = (p < 0.05).mean(axis=(1, 2))
    assert np.mean(se ** 2) == pytest.approx(np.var(pooled, ddof=1), rel=0.2)
    lo, hi = glmm.calibration_band(k * m, se_split=se)
    lo0, hi0 = glmm.calibration_band(k * m)
    kept = np.mean((pooled >= lo) & (pooled <= hi))
    kept_binomial = np.mean((pooled >= lo0) & (pooled <= hi0))
    assert kept >= 0.95 and kept_binomial < kept - 0.1


def test_check_and_verdict_words():
    cal = pd.DataFrame({"method": "m", "design": ["4 vs 4", "4 vs 4", "3 vs 3", "all"],
                        "cell_type": ["B", "T", "B", "all"], "n_tests": [1000, 1000, 20, 2020],
                        "share_p": [0.05, 0.12, 0.0, 0.5], "se_split": [0.0, np.nan, 0.0, 0.0]})
    chk = glmm.calibration_check(cal)
    assert list(chk.position) == ["inside", "above", "inside", "above"]
    assert chk.band_upper.iloc[1] == pytest.approx(0.08) and chk.band_lower.iloc[2] == 0.0
    assert "position" not in cal.columns  # a copy
    words = glmm.calibration_verdict(cal, by=["design", "cell_type"])
    assert words == "outside its band in 4 vs 4 T (0.120)"  # the row over all tests is left out
    assert glmm.calibration_verdict(cal.iloc[[0, 2]], by="cell_type") == "inside its band in every cell type"
    # a measured scatter can bring a share inside its band; a missing share is no verdict
    wide = cal.assign(se_split=[0.0, 0.03, 0.0, 0.0])
    assert glmm.calibration_check(wide).position.iloc[1] == "inside"
    low = cal.iloc[[0]].assign(share_p=0.001)
    assert glmm.calibration_verdict(low) == "outside its band in B (0.001)"
    none = cal.iloc[[0]].assign(share_p=np.nan)
    assert glmm.calibration_check(none).position.iloc[0] == "no p"
    assert glmm.calibration_verdict(none) == "inside its band in every cell type"


def test_band_and_check_errors():
    with pytest.raises(ValueError, match="n .*>= 1"):
        glmm.calibration_band(0)
    with pytest.raises(ValueError, match="n .*>= 1"):
        glmm.calibration_band([10, np.nan])
    with pytest.raises(ValueError, match="se_split"):
        glmm.calibration_band(10, se_split=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        glmm.calibration_band(10, alpha=1.0)
    with pytest.raises(ValueError, match="floor"):
        glmm.calibration_band(10, floor=(0.08, 0.02))
    with pytest.raises(ValueError, match="n_se"):
        glmm.calibration_band(10, n_se=0)
    with pytest.raises(ValueError, match="share_p"):
        glmm.calibration_check(pd.DataFrame({"n_tests": [10]}))
    with pytest.raises(TypeError, match="DataFrame"):
        glmm.calibration_check([0.05])
    with pytest.raises(ValueError, match="by"):
        glmm.calibration_verdict(pd.DataFrame({"n_tests": [10], "share_p": [0.05]}), by=None)
