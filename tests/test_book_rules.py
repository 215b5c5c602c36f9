"""Rules every chapter follows, checked on the chapter sources (no execution).

- No cell reaches into a private module (a copied cell must run on the public API).
- No computed number is typed into the prose: a decimal number in a markdown cell
  outside maths, inline code, citations, glue roles and links fails (it must be
  glued from the executed run), unless it is on the short allow-list below.
- Every parameter of the ``parameters`` cell is documented; the last code cell
  prints the package versions; every chapter is in the table of contents.
"""
import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

from scnotes._params import parse_parameters  # noqa: E402  (tests may use private modules)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md")
                  if p.stem not in ("intro", "bibliography"))

# Decimal strings that are not computed results: software versions, DOIs, the
# parametrisations of the seed's simulation (settings, not findings).
ALLOWED = {
    "0.0.10", "1.0.4", "2.7.0", "0.1", "0.5", "1.0",
}

_STRIP = [
    (re.compile(r"```.*?```", re.S), " "),                   # fenced blocks (directives, code)
    (re.compile(r"\$\$.*?\$\$", re.S), " "),                 # display maths
    (re.compile(r"\\\[.*?\\\]", re.S), " "),
    (re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S), " "),
    (re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"), " "),         # inline maths
    (re.compile(r"\\\(.*?\\\)", re.S), " "),
    (re.compile(r"\{[a-z:]+\}`[^`]*`"), " "),                 # roles: {glue:text}`…`, {cite:p}`…`, {doc}`…`
    (re.compile(r"`[^`\n]*`"), " "),                           # inline code
    (re.compile(r"\]\([^)]*\)"), "]"),                         # link targets
    (re.compile(r"https?://\S+"), " "),
    (re.compile(r"10\.\d{4,}/\S+"), " "),                      # DOIs
    (re.compile(r"\b\d{1,3}:\d+\b"), " "),                     # journal volume:page
]
_DECIMAL = re.compile(r"(?<![\w.])[-−]?\d+\.\d+(?:\.\d+)*(?![\w.])")


def decimals_in_prose(text: str) -> list[str]:
    for pat, rep in _STRIP:
        text = pat.sub(rep, text)
    return [m for m in _DECIMAL.findall(text) if m.lstrip("-−") not in ALLOWED]


def _cells(path):
    return jupytext.read(path).cells


def test_the_prose_checker_catches_typed_numbers():
    assert decimals_in_prose("the ELBO was −4.7 against −5.05") == ["−4.7", "−5.05"]
    assert decimals_in_prose("held-out {glue:text}`ll:.3f` nats and $x = 0.5$ and `lr=1e-2`") == []
    assert decimals_in_prose("see Tian et al. 2019 and {cite:p}`tian2019`, doi 10.1038/s41592-019-0425-8") == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_typed_numbers_in_prose(path):
    bad = {}
    for i, c in enumerate(_cells(path)):
        if c.cell_type == "markdown":
            found = decimals_in_prose(c.source)
            if found:
                bad[i] = found
    assert not bad, (f"{path.name}: decimal numbers typed in markdown cells (glue them from the run): "
                     f"{bad}")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_private_imports(path):
    pat = re.compile(r"(?:from|import)\s+scnotes(?:\.\w+)*\._\w+|scnotes(?:\.\w+)*\._[a-z]\w*")
    for c in _cells(path):
        if c.cell_type == "code":
            assert not pat.search(c.source), f"{path.name} reaches into a private module: {pat.search(c.source)[0]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_documented_and_versions_last(path):
    cells = [c for c in _cells(path) if c.cell_type == "code"]
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one parameters cell"
    undocumented = [p.name for p in parse_parameters(params[0].source) if not p.description]
    assert not undocumented, f"{path.name}: parameters without a description: {undocumented}"
    assert "package_versions" in cells[-1].source, f"{path.name}: last cell must print package versions"


# Chapters written but not yet executed at their defaults: kept out of the book (and so out
# of `make book`) until they are; each still has its small-parameter test.
DRAFTS: set[str] = set()


def test_every_chapter_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for p in CHAPTERS:
        if p.stem in DRAFTS:
            assert f"book/{p.stem}" not in toc, f"{p.name} is in _toc.yml: remove it from DRAFTS"
            continue
        assert f"book/{p.stem}" in toc, f"{p.name} is not in _toc.yml"


def test_report_glue_stores_numpy_scalars_as_python_numbers(monkeypatch):
    """myst-nb reads a glued number back from its text form; numpy 2 writes np.float64(…)."""
    import myst_nb
    import numpy as np

    import scnotes.report

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update({name: (value, display)}))
    scnotes.report.glue("a", np.float64(0.25))
    scnotes.report.glue("b", np.int64(3), display=True)
    scnotes.report.glue("c", "text")
    assert repr(seen["a"][0]) == "0.25" and seen["a"][1] is False
    assert type(seen["b"][0]) is int and seen["b"][1] is True
    assert seen["c"] == ("text", False)


def test_compare_word_is_two_sided_and_refuses_nan():
    from scnotes.report import compare_word

    assert compare_word(2, 1) == "higher" and compare_word(1, 2) == "lower"
    assert compare_word(1.01, 1.0, tol=0.02) == "about equal"
    assert compare_word(1.05, 1.0, more="faster", less="slower", tol=0.02) == "faster"
    with pytest.raises(ValueError, match="NaN"):
        compare_word(float("nan"), 1.0)


def test_stopwatch_measures_the_block_even_when_it_raises():
    import time

    from scnotes.report import stopwatch

    with stopwatch() as t:
        time.sleep(0.05)
    assert 0.04 < t.seconds < 5
    with pytest.raises(RuntimeError):
        with stopwatch() as t2:
            raise RuntimeError("x")
    assert t2.seconds >= 0


def test_report_table_keeps_integer_columns_integer_when_one_is_missing():
    import numpy as np
    import pandas as pd

    from scnotes.report import table

    df = pd.DataFrame({"K": pd.array([1, 20, None], dtype="Int64"), "x": [0.5, np.nan, np.inf],
                       "name": ["a", "b", None]})
    out = table(df, decimals=2)
    assert out["K"].tolist() == [1, 20, "–"]
    assert out["x"].tolist() == ["0.50", "–", "∞"]
    assert out["name"].tolist() == ["a", "b", "–"]
    assert df["K"].dtype == "Int64"  # the input is not changed
    assert table(df["x"]).tolist() == ["0.500", "–", "∞"]
