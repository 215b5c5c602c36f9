"""Checks shared by the count-model chapter tests: an executed notebook is clean, a
chapter source follows the book's rules (public API only, no typed computed numbers)."""
from __future__ import annotations

import json
import re
from pathlib import Path

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
            used |= set(re.findall(r"```\{glue:figure\}\s+(\S+)", src))
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
