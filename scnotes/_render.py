"""The rendered report of a rerun: the executed notebook through the book's own myst-nb
rendering, as one HTML page, and a check of what a reader would see in it.

:func:`render_report` builds a one-page Jupyter Book (jupyter-book 1.x: Sphinx +
myst-nb + the book theme, with the book's ``_config.yml`` settings) from an executed
notebook, without executing it again: ``{glue:text}`` roles are filled from the run's
glued values and ``{glue:figure}`` directives show its figures, exactly as on the book's
pages. :func:`check_report` reads the HTML back and lists what a reader should not see:
glue roles left unresolved, and "nan", "n/a" or "0 cells" in the prose or a table.

Why a Jupyter Book and not nbconvert: nbconvert knows nothing of MyST roles, so the
``{glue:text}`` roles would stay raw text and ``{glue:figure}`` would show nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["render_report", "report_dir_for", "check_report", "Finding", "ReportError", "drop_glued_copies"]

GLUED_COPY_KEY = "scnotes_glued_copy"  # = scnotes.report.GLUED_COPY_KEY (no import: report needs myst-nb)

# A directive that pastes a glued output as a block: ```{glue:figure} key  /  ```{glue} key
_GLUE_BLOCK = re.compile(r"^\s*(?:```+|:::+)\s*\{glue(?::figure|:any|:md|:math)?\}\s*([^\s`]+)", re.M)


class ReportError(RuntimeError):
    """The report could not be built (the message names the build log)."""


def report_dir_for(notebook: str | Path) -> Path:
    """Folder of the rendered report of ``notebook``: ``<stem>_report`` beside it."""
    nb = Path(notebook)
    return nb.with_name(f"{nb.stem}_report")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def drop_glued_copies(nb) -> int:
    """Remove the displayed copies of glued figures that a ``{glue:figure}`` directive of
    ``nb`` pastes (``nb`` is changed in place); returns how many were removed.

    :func:`scnotes.report.glue` displays a glued figure as well as storing it when
    ``scnotes run`` executes a chapter, so that the notebook shows it; in the rendered
    page the directive already shows it where the prose refers to it, and a second copy
    under the code cell would repeat it. Copies of figures that no directive pastes stay.
    """
    pasted = set()
    for c in nb.cells:
        if c.cell_type == "markdown":
            pasted.update(_GLUE_BLOCK.findall(c.source))
    n = 0
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        keep = [o for o in c.get("outputs", [])
                if o.get("metadata", {}).get(GLUED_COPY_KEY) not in pasted]
        n += len(c.get("outputs", [])) - len(keep)
        c.outputs = keep
    return n


def _book_config(title: str) -> dict:
    """The book's ``_config.yml`` adapted to one page: no execution, the repository's
    bibliography, warnings kept in the page (a missing glued value is then visible
    where it belongs, and :func:`check_report` can find it)."""
    import yaml

    path = _repo_root() / "_config.yml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else {}
    cfg = dict(cfg or {})
    cfg["title"] = title
    cfg["only_build_toc_files"] = True
    cfg["exclude_patterns"] = ["_build/*", "**.ipynb_checkpoints"]
    cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "off"}
    cfg["bibtex_bibfiles"] = ["references.bib"]
    sphinx = dict(cfg.get("sphinx") or {})
    # The download extension links the book's own executed chapters: not part of a report.
    local = {k: str(_repo_root() / v) for k, v in (sphinx.get("local_extensions") or {}).items()
             if k != "scnotes_downloads" and (_repo_root() / v).is_dir()}
    sphinx["local_extensions"] = local or None
    if not local:
        sphinx.pop("local_extensions")
    conf = dict(sphinx.get("config") or {})
    conf["keep_warnings"] = True
    sphinx["config"] = conf
    cfg["sphinx"] = sphinx
    return cfg


def render_report(notebook: str | Path, report_dir: str | Path | None = None, *, title: str | None = None,
                  timeout: float = 900) -> Path:
    """Render an executed notebook as a one-page HTML report with the book's rendering.

    Parameters
    ----------
    notebook : path
        Executed notebook (``scnotes run``'s output); it is only read.
    report_dir : path, optional
        Folder of the report (replaced if it exists); default :func:`report_dir_for`.
        It holds the page, its images, the theme's static files and ``build.log``
        (Sphinx's output, every warning included).
    title : str, optional
        Title of the report's site (default: ``"scnotes rerun: <notebook stem>"``).
    timeout : float
        Seconds the build may take.

    Returns
    -------
    pathlib.Path
        The HTML page (``<report_dir>/<notebook stem>.html``).

    Raises
    ------
    FileNotFoundError
        ``notebook`` does not exist.
    BookExtraMissing
        jupyter-book or nbformat (the ``book`` extra) is not installed.
    ReportError
        The build failed or timed out; the message names ``build.log``.
    """
    try:
        import nbformat
        import jupyter_book  # noqa: F401 - only to fail early, naming the extra
    except ImportError as e:
        from scnotes.cli import BOOK_EXTRA_HINT, BookExtraMissing

        raise BookExtraMissing(f"{BOOK_EXTRA_HINT} ({e})") from e
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no executed notebook at {notebook}")
    stem = re.sub(r"[^\w.-]", "_", notebook.stem)
    out = Path(report_dir) if report_dir else report_dir_for(notebook)
    nb = nbformat.read(notebook, as_version=4)
    drop_glued_copies(nb)
    bib = _repo_root() / "book" / "references.bib"
    cites = any(c.cell_type == "markdown" and "{cite" in c.source for c in nb.cells)
    if cites and bib.is_file():
        nb.cells.append(nbformat.v4.new_markdown_cell("## References\n\n```{bibliography}\n```"))
    import yaml

    with tempfile.TemporaryDirectory(prefix="scnotes-report-") as tmp:
        src = Path(tmp)
        nbformat.write(nb, src / f"{stem}.ipynb")
        if bib.is_file():
            shutil.copyfile(bib, src / "references.bib")
        else:
            (src / "references.bib").write_text("")
        (src / "_config.yml").write_text(yaml.safe_dump(_book_config(title or f"scnotes rerun: {notebook.stem}"),
                                                        sort_keys=False, allow_unicode=True))
        (src / "_toc.yml").write_text(f"format: jb-book\nroot: {stem}\n")
        cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
               "build", str(src), "--builder", "html", "--path-output", str(src)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=src)
            log, ok = f"{proc.stdout}{proc.stderr}\nexit status {proc.returncode}\n", proc.returncode == 0
        except subprocess.TimeoutExpired as e:
            log, ok = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout:.0f} s", False
        ok = ok and (src / "_build" / "html" / f"{stem}.html").is_file()
        if out.exists():
            shutil.rmtree(out)
        if ok:
            shutil.copytree(src / "_build" / "html", out)
        else:
            out.mkdir(parents=True)
        (out / "build.log").write_text(log)
    if not ok:
        raise ReportError(f"the report could not be built; see {out / 'build.log'}")
    return out / f"{stem}.html"


@dataclass(frozen=True)
class Finding:
    """One thing a reader should not see in a report: ``kind`` is ``"glue"`` (a glue
    role left unresolved) or ``"text"`` (a forbidden string), ``where`` is ``"prose"``
    or ``"table"``, ``match`` what was found (the glue key, or the string as written),
    ``context`` the text around it."""

    kind: str
    where: str
    match: str
    context: str

    def __str__(self):
        what = f"glue key {self.match!r} not filled" if self.kind == "glue" else repr(self.match)
        return f"{what} in {self.where}: {self.context}"


# Whole words only: "nan" in "nanoparticle" or "Nanog" is fine; "n/a" and "0 cells" not
# after a digit ("10 cells" is fine). Case-insensitive: "NaN" and "N/A" are the same problem.
_FORBIDDEN = re.compile(r"(?<![\w.])(?:nan|n/a)(?![\w/])|(?<![\d.,])0 cells\b", re.I)
_GLUE_LITERAL = re.compile(r"\{glue(?::\w+)?\}")
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
         "track", "wbr"}


class _ReportText(HTMLParser):
    """Splits a rendered page into prose text, table text, and the warnings Sphinx kept
    in the page. Code (cell inputs, printed streams, literal blocks), maths, scripts and the
    site's navigation are skipped: "nan" in ``np.nan`` or in a log line is not prose."""

    SKIP_CLASSES = ("cell_input", "highlight", "math", "output stream", "stderr", "bd-sidebar", "bd-header",
                    "bd-footer", "header-article", "prev-next", "bd-toc", "headerlink")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []  # (tag, role): "skip", "table", "warning", "pasted", ""
        self.pasted: list[str] = []  # the text of each value a glue role pasted
        self.prose: list[str] = []
        self.tables: list[str] = []
        self.warnings: list[str] = []

    def _role(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in ("script", "style", "pre", "code", "nav", "head", "title", "button"):
            return "skip"
        if "system-message" in cls:
            return "warning"
        classes = set(cls.split())
        if any(set(k.split()) <= classes for k in self.SKIP_CLASSES):  # whole class names
            return "skip"
        if "pasted-text" in classes:
            return "pasted"
        if tag == "table":
            return "table"
        return ""

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        role = self._role(tag, attrs)
        if role == "pasted":
            self.pasted.append("")
        self.stack.append((tag, role))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        roles = [r for _, r in self.stack]
        if "pasted" in roles:
            self.pasted[-1] += data
        if "warning" in roles:
            self.warnings.append(data)
        elif "skip" in roles or not any(t == "body" for t, _ in self.stack):
            return
        elif "table" in roles:
            self.tables.append(data)
        else:
            self.prose.append(data)


def check_report(report: str | Path) -> list[Finding]:
    """What a reader should not see in a rendered report.

    Parameters
    ----------
    report : path or str
        The HTML page (:func:`render_report`'s result), or its HTML text.

    Returns
    -------
    list of Finding
        Empty for a clean report. ``kind="glue"``: a glue role the rendering could not
        fill (its key was never glued in this run: the page holds Sphinx's "No key …
        found in glue data" warning) or a role left as raw text (``{glue:text}`…```);
        ``kind="text"``: "nan", "n/a" or "0 cells" (whole words, any case) in the prose
        or in a table. Code, printed output, maths and the site's navigation are not checked.

    Raises
    ------
    FileNotFoundError
        ``report`` is a path that does not exist.
    """
    text = str(report)
    if isinstance(report, Path) or (not text.lstrip().startswith("<") and len(text) < 4096):
        text = Path(report).read_text(encoding="utf-8")
    p = _ReportText()
    p.feed(text)
    p.close()
    out: list[Finding] = []
    warnings = " ".join(" ".join(p.warnings).split())
    # Sphinx's smart quotes turn the key's quotes into ‘…’.
    for m in re.finditer(r"No key ['‘]([^'’]+)['’] found in glue data", warnings):
        out.append(Finding("glue", "prose", m.group(1), "the run glued no value under this key"))
    n_empty = sum(not t.strip() for t in p.pasted)
    if n_empty:
        out.append(Finding("glue", "prose", "(empty)", f"{n_empty} glued value(s) pasted as empty text"))
    for where, chunks in (("prose", p.prose), ("table", p.tables)):
        joined = " ".join(" ".join(chunks).split())
        for m in _GLUE_LITERAL.finditer(joined):
            key = re.match(r"`([^`:]+)", joined[m.end():])
            out.append(Finding("glue", where, key.group(1) if key else m.group(0), _snippet(joined, m)))
        for m in _FORBIDDEN.finditer(joined):
            out.append(Finding("text", where, m.group(0), _snippet(joined, m)))
    return out


def _snippet(text: str, m: re.Match, width: int = 40) -> str:
    a, b = max(0, m.start() - width), min(len(text), m.end() + width)
    return ("…" if a else "") + text[a:b] + ("…" if b < len(text) else "")
