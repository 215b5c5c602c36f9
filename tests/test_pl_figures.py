"""The imputation and reference-mapping figures draw what they are given: each line's, bar's
and image's data equal the input table's, labels and titles are set, bad input raises a clear
error (pl only draws)."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import to_hex

from scnotes import pl


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


# --- reference mapping (scnotes.pl._map) ---

@pytest.fixture
def programs():
    """Three matched programs and the 3 × 3 loadings correlations they were matched on."""
    ref, new = ["Z_0", "Z_1", "Z_2"], ["N_0", "N_1", "N_2"]
    r = pd.DataFrame([[0.9, -0.1, 0.2], [0.0, 0.3, -0.8], [0.1, 0.6, 0.1]], index=ref, columns=new)
    pairs = pd.DataFrame({"de novo program": ["N_0", "N_2", "N_1"], "loadings r": [0.9, 0.8, 0.6],
                          "activities r": [0.5, 0.95, -0.3]}, index=pd.Index(ref, name="reference program"))
    return pairs, r


def test_program_agreement_draws_the_pairs_and_the_matrix(programs):
    pairs, r = programs
    left, right = pl.program_agreement(pairs, r)
    order = ["Z_1", "Z_0", "Z_2"]  # by activities r, highest first
    bars = left.patches
    np.testing.assert_allclose([b.get_height() for b in bars[:3]], pairs.loc[order, "loadings r"])
    np.testing.assert_allclose([b.get_height() for b in bars[3:]], pairs.loc[order, "activities r"])
    assert [t.get_text() for t in left.get_xticklabels()] == order
    assert left.get_xlabel() == "reference program (matched to a de novo program)"
    assert left.get_ylim()[0] == pytest.approx(-0.35)  # below the lowest correlation
    np.testing.assert_array_equal(right.images[0].get_array(), np.abs(r.to_numpy()))
    circles = right.collections[0].get_offsets()  # (column, row) of each match
    np.testing.assert_array_equal(np.asarray(circles), [[0, 0], [2, 1], [1, 2]])
    assert [t.get_text() for t in right.get_yticklabels()] == list(r.index)
    assert [t.get_text() for t in right.get_xticklabels()] == list(r.columns)
    assert right.get_title() == "|r| of centred loadings"


def test_program_agreement_errors(programs):
    pairs, r = programs
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['activities r'\]"):
        pl.program_agreement(pairs.drop(columns="activities r"), r)
    with pytest.raises(KeyError, match="not labels of correlations"):
        pl.program_agreement(pairs, r.rename(columns={"N_2": "other"}))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="two panels but 1 axes"):
        pl.program_agreement(pairs, r, axes=ax)


def test_program_marks_draws_the_table_clipped_at_the_limit():
    marks = pd.DataFrame([[0.5, -3.0], [2.5, 0.0], [-1.0, 1.0]], index=["B", "T", "NK"], columns=["Z_0", "Z_1"])
    ax = pl.program_marks(marks, ylabel="query annotation (cell_type)")
    im = ax.images[0]
    np.testing.assert_array_equal(im.get_array(), marks.to_numpy())
    assert im.get_clim() == (-2.0, 2.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B", "T", "NK"]
    assert ax.get_ylabel() == "query annotation (cell_type)" and ax.get_xlabel()
    with pytest.raises(ValueError, match="empty"):
        pl.program_marks(marks.iloc[:0])
    with pytest.raises(ValueError, match="positive"):
        pl.program_marks(marks, limit=0)


def test_label_tables_shade_row_shares_and_write_counts():
    counts = pd.DataFrame([[8, 2, 0], [1, 1, 6]], index=["A", "B"], columns=["A", "B", "unknown"])
    axes = pl.label_tables([counts, None], ["all", "without"], xlabel="called", ylabel="true", annotate=True,
                           notes="control skipped", xrotation=30)
    shares = counts.to_numpy() / counts.to_numpy().sum(axis=1, keepdims=True)
    np.testing.assert_allclose(axes[0].images[0].get_array(), shares)
    texts = {(t.get_position(), t.get_text(), t.get_color()) for t in axes[0].texts}
    assert ((0, 0), "8", "w") in texts and ((2, 1), "6", "w") in texts and ((1, 0), "2", "k") in texts
    assert len(axes[0].texts) == counts.size
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["A", "B", "unknown"]
    assert axes[0].get_xticklabels()[0].get_rotation() == 30
    assert axes[0].get_ylabel() == "true" and axes[0].get_title() == "all"
    assert not axes[1].axison and [t.get_text() for t in axes[1].texts] == ["control skipped"]


def test_label_tables_shared_axis_and_colorbar():
    counts = pd.DataFrame([[3, 1], [0, 4]], index=["x", "y"], columns=["0", "1"])
    axes = pl.label_tables([counts, counts * 2], ["a", "b"], xlabel="cluster", ylabel="cell type", sharey=True,
                           colorbar_label="share")
    assert axes[0].get_ylabel() == "cell type" and axes[1].get_ylabel() == ""
    assert not axes[0].texts  # no counts written
    cbar = [a for a in axes[0].figure.axes if a not in axes]
    assert len(cbar) == 1 and cbar[0].get_ylabel() == "share"
    np.testing.assert_allclose(axes[1].images[0].get_array(), axes[0].images[0].get_array())


def test_label_tables_errors():
    counts = pd.DataFrame([[3, 1], [0, 0]], index=["x", "y"], columns=["0", "1"])
    with pytest.raises(ValueError, match=r"rows without cells: \['y'\]"):
        pl.label_tables([counts], ["a"], xlabel="", ylabel="")
    with pytest.raises(ValueError, match="2 tables but 1 titles"):
        pl.label_tables([None, None], ["a"], xlabel="", ylabel="")


def test_mapping_cost_draws_times_and_gaps():
    costs = pd.DataFrame({"model": ["LDVAE", "NBVAE"], "map s": [2.0, 0.5], "de novo s": [20.0, 4.0],
                          "relative gap": [-0.02, 0.03]}, index=pd.Index(["programs", "protocols"], name="section"))
    left, right = pl.mapping_cost(costs, target=0.05)
    np.testing.assert_allclose([b.get_width() for b in left.patches], [2.0, 0.5, 20.0, 4.0])
    assert left.get_xscale() == "log"
    assert [t.get_text() for t in left.get_yticklabels()] == ["programs (LDVAE)", "protocols (NBVAE)"]
    np.testing.assert_allclose([b.get_width() for b in right.patches], [-2.0, 3.0])  # in %
    target = [ln for ln in right.get_lines() if ln.get_linestyle() == "--"]
    assert target[0].get_xdata()[0] == pytest.approx(-5) and target[0].get_label() == "target: within 5 %"
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['map s'\]"):
        pl.mapping_cost(costs.drop(columns="map s"))
    with pytest.raises(ValueError, match="no rows"):
        pl.mapping_cost(costs.iloc[:0])


def test_skipped_says_why():
    ax = pl.skipped("section skipped (x = None)")
    assert not ax.axison and [t.get_text() for t in ax.texts] == ["section skipped (x = None)"]


# --- the table pl.program_marks draws: scnotes.tl.program_marks computes it ---

@pytest.fixture
def marked():
    rng = np.random.default_rng(1)
    n, k, g = 60, 3, 8
    labels = pd.Categorical(rng.choice(["T", "B", "NK"], n), categories=["T", "NK", "B"])  # not sorted
    act = rng.normal(size=(n, k)).astype(np.float32)
    load = pd.DataFrame(rng.normal(size=(g, k)), index=[f"g{j}" for j in range(g)], columns=["Z_0", "Z_1", "Z_2"])
    return act, labels, load


def test_program_marks_equals_a_brute_force(marked):
    from scnotes import tl

    act, labels, load = marked
    marks, table = tl.program_marks(act, labels, load, n_programs=2, n_genes=3)
    assert list(marks.index) == ["T", "NK", "B"] == list(table.index)  # the categories' order
    assert list(marks.columns) == list(load.columns)
    sd = act.std(axis=0, ddof=1)
    for lab in marks.index:
        cells = np.asarray(labels) == lab
        dev = act[cells].mean(axis=0) - act.mean(axis=0)
        np.testing.assert_allclose(marks.loc[lab].to_numpy(), dev / sd, rtol=1e-4)
        assert table.loc[lab, "cells"] == cells.sum()
        top = np.argsort(-np.abs(dev / sd))[:2]
        assert table.loc[lab, "programs that move most (sd)"].split(", ")[0].startswith(load.columns[top[0]])
        raised = load.to_numpy() @ dev
        assert table.loc[lab, "genes they raise most"] == ", ".join(load.index[np.argsort(-raised)[:3]])


def test_program_marks_genes_ignore_a_shift_per_program(marked):
    from scnotes import tl

    act, labels, load = marked
    _, table = tl.program_marks(act, labels, load)
    _, shifted = tl.program_marks(act, labels, load + np.array([5.0, -3.0, 0.5]))
    pd.testing.assert_series_equal(table["genes they raise most"], shifted["genes they raise most"])


def test_program_marks_errors(marked):
    from scnotes import tl

    act, labels, load = marked
    with pytest.raises(ValueError, match="labels has 59 entries but activities 60 cells"):
        tl.program_marks(act, labels[:-1], load)
    with pytest.raises(ValueError, match="cells × 3 programs"):
        tl.program_marks(act[:, :2], labels, load)
