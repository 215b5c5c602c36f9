"""Checks shared by the count-model chapter tests: an executed notebook is clean, a
chapter source follows the book's rules (public API only, no typed computed numbers)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

BOOK = Path(__file__).resolve().parents[1] / "book"

# Markdown may contain decimals only inside maths, code, glue roles, citations or these.
ALLOWED_DECIMALS: set[str] = set()


def markdown_cells(chapter: str) -> list[str]:
    import jupytext

    nb = jupytext.read(BOOK / f"{chapter}.md")
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def code_cells(chapter: str) -> list[str]:
    import jupytext

    nb = jupytext.read(BOOK / f"{chapter}.md")
    return [c.source for c in nb.cells if c.cell_type == "code"]


def typed_decimals(text: str) -> list[str]:
    """Decimal numbers in markdown outside maths, code spans, roles and (Author year) citations."""
    t = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    t = re.sub(r"\$[^$]*\$", " ", t)
    t = re.sub(r"```.*?```", " ", t, flags=re.S)
    t = re.sub(r"\{[^}]*\}`[^`]*`", " ", t)       # roles: {glue:text}`x:.3f`, {doc}`...`
    t = re.sub(r"`[^`]*`", " ", t)
    t = re.sub(r"\([^()]*\d{4}[^()]*\)", " ", t)   # (Author et al. 2018)
    found = re.findall(r"(?<![\w.])[-−]?\d+\.\d+", t)
    return [f for f in found if f not in ALLOWED_DECIMALS]


def check_source(chapter: str) -> None:
    src = "\n".join(code_cells(chapter))
    assert not re.search(r"^\s*(from|import)\s+scnotes\._", src, flags=re.M), "private scnotes import"
    assert not re.search(r"scnotes\._\w", src), "private scnotes module used"
    bad = [d for md in markdown_cells(chapter) for d in typed_decimals(md)]
    assert not bad, f"typed decimal numbers in the markdown of {chapter}: {bad}"


def outputs(path) -> list[dict]:
    nb = json.loads(Path(path).read_text())
    return nb["cells"]


def check_executed(path, chapter: str | None = None) -> dict:
    """Every code cell ran without error or stderr; every glue key the markdown uses was
    glued. Returns {glue key: text/plain value}."""
    cells = outputs(path)
    glued, used = {}, set()
    for c in cells:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown":
            used |= set(re.findall(r"\{glue:(?:text|any|md)\}`([^`:]+)", src))
            used |= set(re.findall(r"```\{glue:(?:figure|md)\}\s+(\S+)", src))
            continue
        if src.strip():
            assert c.get("execution_count"), f"cell not executed: {src[:60]}"
        for o in c.get("outputs", []):
            assert o.get("output_type") != "error", f"{o.get('ename')}: {o.get('evalue')}"
            if o.get("output_type") == "stream":
                assert o["name"] != "stderr", f"stderr output: {''.join(o['text'])[:300]}"
            sb = o.get("metadata", {}).get("scrapbook")
            if sb:
                d = o.get("data", {})
                txt = [v for k, v in d.items() if k.endswith("text/plain")]
                glued[sb["name"]] = "".join(txt[0]) if txt else None
    missing = sorted(used - set(glued))
    assert not missing, f"glue keys used but never glued: {missing}"
    # numpy 2 writes a numpy scalar as "np.float64(…)", which myst-nb cannot format
    # ({glue:text}`key:.3f` then fails the -W build): glue Python numbers.
    numpy_text = sorted(k for k, v in glued.items() if v and v.startswith("np."))
    assert not numpy_text, f"numpy scalars glued (use scnotes.report.glue): {numpy_text}"
    return glued


def text_outputs(path) -> str:
    out = []
    for c in outputs(path):
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append("".join(o["text"]))
            d = o.get("data", {})
            if "text/plain" in d:
                out.append("".join(d["text/plain"]))
    return "\n".join(out)


def foreign_h5ad(path, n_types=25, per_type=12, n_genes=300, n_missing=5, n_batches=1, seed=0):
    """A file unlike ours: counts in layers["umi"] (X holds log-normalised values), labels in
    obs["annot"] with 25 categories (more than a 20-colour palette) and a few missing, no
    totals column, no gene-symbol column, 300 cells; ``n_batches`` > 1 adds obs["tech"]
    (alternating levels "plate0", "plate1", ...) with a multiplicative gene effect per level."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_types), per_type)
    profiles = rng.gamma(0.4, 1.0, (n_types, n_genes))
    profiles /= profiles.sum(axis=1, keepdims=True)
    lib = rng.lognormal(np.log(900), 0.4, codes.size)
    mu = lib[:, None] * profiles[codes]
    tech = np.arange(codes.size) % n_batches
    if n_batches > 1:
        mu = mu * rng.lognormal(0.0, 0.5, (n_batches, n_genes))[tech]
    counts = sp.csr_matrix(rng.poisson(rng.gamma(4.0, mu / 4.0)).astype(np.float32))
    labels = pd.Series([f"type {c:02d}" for c in codes], dtype=object)
    labels.iloc[rng.choice(codes.size, n_missing, replace=False)] = None
    obs = pd.DataFrame({"annot": labels.to_numpy(), "sample_id": "s1", "tech": [f"plate{t}" for t in tech]},
                       index=[f"bc{i:04d}" for i in range(codes.size)])
    norm = counts.multiply(1e4 / np.asarray(counts.sum(axis=1))).log1p().tocsr()
    a = ad.AnnData(X=norm, obs=obs, var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
                   layers={"umi": counts})
    a.write_h5ad(path)
    return path


def report_prose(page) -> str:
    """The prose and table text of a rendered report, inline code spans (`` `name` ``)
    included: what a reader reads, without code cells, printed output, maths or navigation."""
    from scnotes._render import _ReportText

    class _WithInlineCode(_ReportText):
        def _role(self, tag, attrs):
            if tag == "code" and "literal" in (dict(attrs).get("class") or "").split():
                return ""  # an inline `name` in a sentence is prose; code blocks stay skipped
            return super()._role(tag, attrs)

    p = _WithInlineCode()
    p.feed(Path(page).read_text(encoding="utf-8"))
    p.close()
    return " ".join(" ".join(p.prose + p.tables).split())


def check_rendered(notebook, book_only: list[str] | tuple[str, ...] = ()) -> Path:
    """Issue 27's check of a rerun: the report a reader gets (the executed notebook through
    the book's rendering) has every glued value filled and no "nan", "n/a" or "0 cells" in
    its prose or tables; and none of ``book_only`` (the book's own data sets' names and
    facts, e.g. ``"pbmc4k_10x_soupx"``, ``"eight donors"``; any case) in its prose, tables
    or inline code: a foreign rerun's sentences speak of the reader's data. Returns the page."""
    from scnotes._render import check_report, render_report

    page = render_report(notebook)
    problems = [str(f) for f in check_report(page)]
    if book_only:
        text = report_prose(page)
        low = text.lower()
        for s in book_only:
            i = low.find(s.lower())
            if i >= 0:
                problems.append(f"book-only text {s!r} in the prose: …{text[max(0, i - 80):i + len(s) + 80]}…")
    assert problems == [], f"{len(problems)} finding(s) in {page}:\n" + "\n".join(problems)
    return page


def run_checked(chapter: str, params: dict, tmp_path, expect_text=(), rendered: bool = True,
                book_only=()) -> dict:
    """Execute ``chapter`` with ``params`` (small sizes) into ``tmp_path`` and check it: every
    cell clean and every used glue key glued (:func:`check_executed`), each string of
    ``expect_text`` in the printed or displayed outputs, and (``rendered``) the rerun's report
    (:func:`check_rendered` with ``book_only``). Returns {glue key: text/plain value}."""
    from scnotes.cli import run_chapter

    out = run_chapter(chapter, params, output=Path(tmp_path) / f"{chapter}.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    missing = [s for s in expect_text if s not in text]
    assert not missing, f"not in the outputs of {chapter}: {missing}"
    if rendered:
        check_rendered(out, book_only=book_only)
    return glued


def check_misspelt_parameter(chapter: str, wrong: str, right: str, value=1) -> None:
    """``scnotes run`` refuses the misspelt parameter ``wrong`` before running anything and
    suggests ``right``."""
    import pytest

    from scnotes.cli import run_chapter

    with pytest.raises(ValueError, match=f"{re.escape(wrong)}.*did you mean '{re.escape(right)}'"):
        run_chapter(chapter, {wrong: value})
