"""scnotes.report: glued values and display tables."""
import numpy as np
import pandas as pd

import scnotes.report


def test_glues_stores_each_keyword_as_a_python_number(monkeypatch):
    import myst_nb

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update({name: (value, display)}))
    scnotes.report.glues(a=np.float32(0.5), b=np.int64(2), c="x")
    assert seen == {"a": (0.5, False), "b": (2, False), "c": ("x", False)}
    assert type(seen["b"][0]) is int


def test_table_shows_not_applicable_cells_as_a_dash_and_keeps_the_input():
    df = pd.DataFrame({"mean": [-4.23456, 0.5, -np.inf], "sd": [0.0123, np.nan, np.nan], "n": [3, 1, 1]},
                      index=["PVAE", "oracle", "EM"])
    out = scnotes.report.table(df, decimals=2)
    assert out.loc["PVAE", "mean"] == "-4.23" and out.loc["PVAE", "sd"] == "0.01"
    assert out.loc["oracle", "sd"] == "–" and out.loc["EM", "mean"] == "−∞"
    assert out.loc["oracle", "n"] == 1  # integers as they are
    assert "NaN" not in out.to_string() and "nan" not in out.to_html()
    assert np.isnan(df.loc["oracle", "sd"])  # the input is not changed
    s = scnotes.report.table(df["sd"], decimals=1)
    assert list(s) == ["0.0", "–", "–"]
