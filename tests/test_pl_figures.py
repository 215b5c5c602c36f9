"""The imputation and reference-mapping figures draw what they are given: each line's, bar's
and image's data equal the input table's, labels and titles are set, bad input raises a clear
error (pl only draws)."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from scnotes import pl  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture
def ranks():
    """Two methods' scores by rank, rows of one method not sorted by rank (drawn as given)."""
    rng = np.random.default_rng(0)
    rows = [{"method": m, "rank": k, "validation": rng.normal(), "train": rng.normal()}
            for k in (3, 1, 2, 4) for m in ("WNMF", "WNBMF")]
    return pd.DataFrame(rows)


def _lines(ax):
    """The method lines (labelled), not the vertical marks."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_selection_curve_draws_each_methods_scores(ranks):
    axes = pl.selection_curve(ranks, "rank", titles=["val", "tr"], order=["WNBMF", "WNMF"], marker=".")
    assert len(axes) == 2
    for ax, col, title in zip(axes, ("validation", "train"), ("val", "tr")):
        lines = _lines(ax)
        assert [ln.get_label() for ln in lines] == ["WNBMF", "WNMF"]  # the order asked, colours C0, C1
        assert [to_hex(ln.get_color()) for ln in lines] == [to_hex("C0"), to_hex("C1")]
        for ln in lines:
            d = ranks[ranks["method"] == ln.get_label()]
            np.testing.assert_array_equal(ln.get_xdata(), d["rank"])
            np.testing.assert_array_equal(ln.get_ydata(), d[col])
            assert ln.get_marker() == "."
        assert ax.get_xlabel() == "rank" and ax.get_ylabel() == "Poisson log-likelihood per entry"
        assert ax.get_title() == title
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["WNBMF", "WNMF"]
        assert ax.get_xscale() == "linear"


def test_selection_curve_default_order_is_first_appearance(ranks):
    axes = pl.selection_curve(ranks, "rank")
    assert [ln.get_label() for ln in _lines(axes[0])] == ["WNMF", "WNBMF"]
    assert [ax.get_title() for ax in axes] == ["validation", "train"]


def test_selection_curve_marks_the_choice_and_the_truth(ranks):
    chosen = pd.Series({"WNBMF": 2, "WNMF": 4})
    axes = pl.selection_curve(ranks, "rank", order=["WNBMF", "WNMF"], chosen=chosen, truth=3)
    colour = {ln.get_label(): to_hex(ln.get_color()) for ln in _lines(axes[0])}
    marks = [ln for ln in axes[0].get_lines() if ln.get_label().startswith("_")]
    dashed = [ln for ln in marks if ln.get_linestyle() == "--"]
    assert sorted((ln.get_xdata()[0], to_hex(ln.get_color())) for ln in dashed) == \
        sorted((k, colour[m]) for m, k in chosen.items())  # each choice in its method's colour
    for ax in axes:  # the truth on both panels, the choice only on the first
        dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert [ln.get_xdata()[0] for ln in dotted] == [3]
    assert not [ln for ln in axes[1].get_lines() if ln.get_linestyle() == "--"]


def test_selection_curve_log_axis_and_labels(ranks):
    t = ranks.rename(columns={"rank": "epochs"})
    axes = pl.selection_curve(t, "epochs", xlabel="training epochs", ylabel="nats", logx=True)
    assert all(ax.get_xscale() == "log" and ax.get_xlabel() == "training epochs" and ax.get_ylabel() == "nats"
               for ax in axes)


def test_selection_curve_errors(ranks):
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['validation'\]"):
        pl.selection_curve(ranks.drop(columns="validation"), "rank")
    with pytest.raises(KeyError, match="chosen names method.*'PVAE'"):
        pl.selection_curve(ranks, "rank", chosen={"PVAE": 3})
    with pytest.raises(KeyError, match="order names method.*'NMF'"):
        pl.selection_curve(ranks, "rank", order=["NMF"])
    with pytest.raises(ValueError, match="no rows"):
        pl.selection_curve(ranks.iloc[:0], "rank")
    with pytest.raises(ValueError, match="2 columns but 1 titles"):
        pl.selection_curve(ranks, "rank", titles=["one"])
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="2 panels to draw but 1 axes"):
        pl.selection_curve(ranks, "rank", axes=ax)


def test_score_bars_draws_the_scores_in_order():
    idx = pd.MultiIndex.from_tuples([("PVAE", "plug-in"), ("WNMF", "L F"), ("true μ", "Poisson")])
    s = pd.Series([-1.5, -1.2, -1.0], index=idx)
    ax = pl.score_bars(s, reference=-1.0, reference_label="true μ", xlabel="test", title="T")
    widths = [p.get_width() for p in ax.patches]
    np.testing.assert_array_equal(widths, s.to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["PVAE · plug-in", "WNMF · L F", "true μ · Poisson"]
    assert ax.yaxis_inverted()  # the first row on top
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(-1.55) and hi == pytest.approx(-0.95)  # padded by a tenth of the range
    (ref,) = ax.get_lines()
    assert ref.get_xdata()[0] == -1.0 and ref.get_label() == "true μ"
    assert ax.get_xlabel() == "test" and ax.get_title() == "T"


def test_score_bars_errors():
    with pytest.raises(ValueError, match="finite"):
        pl.score_bars(pd.Series([-1.0, -np.inf], index=["a", "b"]))
    with pytest.raises(ValueError, match="finite"):
        pl.score_bars(pd.Series([], dtype=float))
