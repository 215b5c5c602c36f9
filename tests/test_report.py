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


def test_glue_md_stores_a_markdown_passage_or_an_empty_one(monkeypatch):
    import myst_nb
    import pytest
    from IPython.display import Markdown

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update({name: (value, display)}))
    scnotes.report.glue_md("para", "On {glue:text}`n` cells, *as computed*.")
    scnotes.report.glue_md("gone", None)
    scnotes.report.glue_md("also_gone", "")
    assert isinstance(seen["para"][0], Markdown) and seen["para"][1] is False
    assert seen["para"][0].data == "On {glue:text}`n` cells, *as computed*."
    assert seen["gone"][0].data == "" and seen["also_gone"][0].data == ""
    with pytest.raises(TypeError, match="str or None"):
        scnotes.report.glue_md("bad", 0.5)


def test_glue_md_passage_renders_with_its_roles_and_an_empty_one_leaves_nothing(tmp_path):
    """Through the book's rendering: the passage's own glue roles are filled, an empty
    passage adds no text, and the report check finds nothing."""
    import pytest

    pytest.importorskip("jupyter_book")
    from scnotes._render import check_report, render_report
    from scnotes.cli import run_chapter

    src = tmp_path / "toy.md"
    src.write_text("""---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
# Toy

```{code-cell} ipython3
:tags: [parameters]
n = 12  # number of things
```

```{code-cell} ipython3
import scnotes.report
scnotes.report.glue("score", 0.5)
scnotes.report.glue_md("para", "Score {glue:text}`score:.2f` on *these* data.\\n\\nSecond paragraph.")
scnotes.report.glue_md("gone", None)
```

Before.

```{glue:md} para
:format: myst
```

```{glue:md} gone
:format: myst
```

After.
""")
    page = render_report(run_chapter(str(src), {"n": 3}, output=tmp_path / "out" / "toy.ipynb"))
    html = page.read_text()
    assert '<span class="pasted-text">0.50</span>' in html and "<em>these</em>" in html
    assert "Second paragraph." in html
    assert check_report(page) == []
    body = html[html.index("Before."):html.index("After.")]
    # the passage's two paragraphs and the opening of "After.": nothing for the empty one
    assert body.count("<p>") == 3
