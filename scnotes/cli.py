"""Rerun a chapter of the book with papermill on other parameters or data.

Command line::

    scnotes list                                   # every chapter: its parameter table
    scnotes list count_vaes                        # one chapter
    scnotes run count_vaes -p seed 1               # -> runs/count_vaes.ipynb
    scnotes run pbmc_count_models -p dataset /path/to/mine.h5ad -o mine.ipynb

Chapters are jupytext (MyST) text files in ``book/``; papermill cannot read
those directly, so the chapter is converted to a notebook in memory and its
``parameters`` cell is overridden. Parameter values are parsed as YAML
(``-p n_latent_grid "[3, 10]"``, ``-p seed 1``, ``-p label_key None``), strings stay
strings, and a number given for a text parameter stays text.

The ``parameters`` cell is the chapter's contract (see :mod:`scnotes._params`): one
assignment per parameter with a trailing ``# description``; a description that
starts with ``[required]`` marks a parameter to set for your own file. Overrides are
checked against it (names and types) before anything runs; a bad one exits with
status 2 and a message on stderr.

Next to the executed notebook ``scnotes run`` writes a rendered report, one HTML
page built with the book's own rendering (``runs/CHAPTER_report/CHAPTER.html``:
glued numbers filled in, figures shown; see :mod:`scnotes._render`), and prints its
path. In the notebook itself each glued figure is also displayed.

Exit status of ``scnotes run`` (also in ``scnotes run --help``)::

    0  the chapter ran; notebook and report written
    1  the book extra (jupytext, papermill, myst-nb, jupyter-book) is not installed
    2  unknown chapter, unknown parameter or a value of the wrong type (nothing ran)
    3  a cell of the chapter raised: one line on stderr names the cell (chapter line),
       the exception and the parameter it names; the traceback is in the .log beside
       OUTPUT (runs/CHAPTER.log), the notebook executed up to that cell in OUTPUT
    4  the kernel died or a cell timed out (traceback in the .log beside OUTPUT)
    5  the chapter ran but the report could not be built (see its build.log)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from scnotes._params import Parameter, check_parameters, parse_parameters

__all__ = ["book_dir", "chapters", "chapter_parameters", "describe_parameters", "validate_parameters",
           "format_parameters", "run_chapter", "describe_failure", "write_failure_log", "main",
           "BookExtraMissing", "EXIT_OK", "EXIT_BOOK_EXTRA", "EXIT_BAD_PARAMETER", "EXIT_CELL_FAILED",
           "EXIT_KERNEL_FAILED", "EXIT_REPORT_FAILED"]

BOOK_EXTRA_HINT = "install the book extra: pip install 'scnotes[book]'"

EXIT_OK = 0
EXIT_BOOK_EXTRA = 1
EXIT_BAD_PARAMETER = 2
EXIT_CELL_FAILED = 3
EXIT_KERNEL_FAILED = 4
EXIT_REPORT_FAILED = 5

_EXIT_HELP = f"""exit status:
  {EXIT_OK}  the chapter ran; notebook and report written
  {EXIT_BOOK_EXTRA}  the book extra is missing: pip install 'scnotes[book]'
  {EXIT_BAD_PARAMETER}  unknown chapter, unknown parameter or wrong type (nothing ran)
  {EXIT_CELL_FAILED}  a cell raised: the first line on stderr names the chapter line, the
     exception and the parameter it names; the full traceback is in the .log
     beside OUTPUT (runs/CHAPTER.log), the notebook executed up to that cell in OUTPUT
  {EXIT_KERNEL_FAILED}  the kernel died or a cell timed out (details in the .log beside OUTPUT)
  {EXIT_REPORT_FAILED}  the chapter ran but its HTML report could not be built
     (see runs/CHAPTER_report/build.log; the notebook is written)
"""


class BookExtraMissing(ImportError):
    """jupytext or papermill (the ``book`` extra) is not installed."""


def _book():
    """``(jupytext, papermill)``; raises :class:`BookExtraMissing` naming the extra to install."""
    try:
        import jupytext
        import papermill
    except ImportError as e:  # also a module set to None in sys.modules
        raise BookExtraMissing(f"{BOOK_EXTRA_HINT} ({e})") from e
    return jupytext, papermill


def book_dir() -> Path:
    """The ``book/`` folder of the repository."""
    return Path(__file__).resolve().parents[1] / "book"


def _parameters_cell(nb):
    for c in nb.cells:
        if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []):
            return c
    return None


def chapters() -> list[str]:
    """Names of the chapters that have a ``parameters`` cell (i.e. can be rerun).

    Raises :class:`BookExtraMissing` without jupytext.
    """
    jupytext, _ = _book()
    return [p.stem for p in sorted(book_dir().glob("*.md")) if _parameters_cell(jupytext.read(p)) is not None]


def _chapter_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".md" and p.is_file():
        return p
    p = book_dir() / f"{name}.md"
    if not p.is_file():
        raise KeyError(f"unknown chapter {name!r}; available: {chapters()}")
    return p


def chapter_parameters(name: str) -> str:
    """Source of a chapter's ``parameters`` cell (its documented defaults).

    Raises ``KeyError`` (unknown chapter), ``ValueError`` (no parameters cell),
    :class:`BookExtraMissing`.
    """
    jupytext, _ = _book()
    cell = _parameters_cell(jupytext.read(_chapter_path(name)))
    if cell is None:
        raise ValueError(f"chapter {name!r} has no parameters cell")
    return cell.source


def describe_parameters(name: str) -> list[Parameter]:
    """The parsed ``parameters`` cell of a chapter (name or ``.md`` path): name, default,
    type, description, required flag of each parameter, in cell order.

    Raises as :func:`chapter_parameters`.
    """
    return parse_parameters(chapter_parameters(name))


def validate_parameters(name: str, parameters: dict, raw: dict | None = None) -> dict:
    """Check overrides against a chapter's parameters; returns them converted.

    ``raw`` holds the command-line text of each value (so a number given for a text
    parameter goes back to its text). Raises ``ValueError`` for an unknown name (with
    the closest valid name and the full list) or a value of the wrong type (naming the
    parameter); the type rules are those of :func:`scnotes._params.check_parameters`.
    """
    return check_parameters(describe_parameters(name), parameters, Path(name).stem, raw)


def format_parameters(params: list[Parameter], width: int = 32) -> str:
    """A text table of parameters: name, default, type, required mark (``*``), description.

    Defaults longer than ``width`` characters are cut with an ellipsis.
    """
    def cut(t):
        t = " ".join(t.split())  # a multi-line default on one row
        return t if len(t) <= width else t[:width - 1] + "…"

    rows = [("name", "default", "type", "req", "description")]
    rows += [(p.name, cut(p.source), p.type, "*" if p.required else "", p.description) for p in params]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r[:4])) + "  " + r[4] for r in rows).rstrip()


class _DropNotices(logging.Filter):
    # Papermill re-parses the parameters cell line by line to warn about unknown names;
    # a line with two "=" (a keyword argument, an "=" in a comment) gives "Unable to parse
    # line", and the names on it then come out as "Passed unknown parameter". Names were
    # already checked with the AST, so both notices are noise; other records pass.
    PREFIXES = ("Unable to parse line", "Passed unknown parameter")

    def filter(self, record):
        return not record.getMessage().startswith(self.PREFIXES)


@contextlib.contextmanager
def _environ(**values):
    """Set environment variables for the kernel papermill starts (it inherits ours)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_papermill():
    f = _DropNotices()
    loggers = [logging.getLogger("papermill"), logging.getLogger("papermill.translators")]
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def run_chapter(name: str, parameters: dict | None = None, output: str | Path | None = None,
                cwd: str | Path | None = None, progress: bool = False, kernel: str = "python3"):
    """Execute a chapter with papermill and write the executed notebook.

    Parameters
    ----------
    name : str
        Chapter name (file stem in ``book/``) or a path to a jupytext ``.md``.
    parameters : dict
        Overrides for the chapter's ``parameters`` cell, checked with
        :func:`validate_parameters` before anything runs.
    output : path, optional
        Executed notebook; default ``runs/<name>.ipynb`` in the current directory.
        The chapter source is never modified.
    cwd : path, optional
        Working directory for the kernel (default: ``book/``).

    Returns
    -------
    pathlib.Path
        The executed notebook.

    Each figure the chapter glues (:func:`scnotes.report.glue`) is displayed in the
    executed notebook as well as stored for the prose (the kernel runs with
    ``SCNOTES_SHOW_GLUED=1`` and matplotlib's inline backend, whatever ``MPLBACKEND``
    says, so that figures have an image form).

    Raises
    ------
    KeyError
        Unknown chapter.
    ValueError
        Unknown parameter name or wrong type (message names it), no parameters cell
        while overrides are given, or ``output`` is the chapter source.
    BookExtraMissing
        jupytext or papermill not installed.
    papermill.PapermillExecutionError
        A cell raises (:func:`describe_failure` turns it into one line); the notebook
        executed up to that cell is written to ``output``.
    """
    jupytext, pm = _book()
    src = _chapter_path(name)
    nb = jupytext.read(src)
    parameters = dict(parameters or {})
    if parameters:
        cell = _parameters_cell(nb)
        if cell is None:
            raise ValueError(f"chapter {src.stem!r} has no parameters cell")
        parameters = check_parameters(parse_parameters(cell.source), parameters, src.stem)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": "Python 3", "language": "python"})
    out = Path(output) if output else Path("runs") / f"{src.stem}.ipynb"
    if out.resolve() == src.resolve():
        raise ValueError("output would overwrite the chapter source")
    out.parent.mkdir(parents=True, exist_ok=True)
    from scnotes.report import SHOW_GLUED_ENV

    # Jupyter's inline backend even where MPLBACKEND says Agg (a test run, a headless
    # shell): under Agg a figure has no image form, so glue would store only its text.
    kernel_env = {SHOW_GLUED_ENV: "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    with _quiet_papermill(), _environ(**kernel_env):
        pm.execute_notebook(nb, str(out), parameters=parameters, kernel_name=kernel,
                            cwd=str(cwd or src.parent), progress_bar=progress)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _chapter_line(src: Path, cell_source: str, traceback_text: str) -> int | None:
    """Line of the chapter file where the failing statement is: the cell's first line in
    the jupytext source plus the line IPython names in the cell's frame ("Cell In[7],
    line 3"); ``None`` if the cell is not found verbatim (an injected cell)."""
    try:
        text = src.read_text()
    except OSError:
        return None
    i = text.find(cell_source.strip()) if cell_source.strip() else -1
    if i < 0:
        return None
    start = text.count("\n", 0, i) + 1
    m = re.search(r"Cell In\s*\[\d*\],\s*line (\d+)", traceback_text)
    return start + int(m.group(1)) - 1 if m else start


def describe_failure(exc, chapter: str, parameters: dict | None = None) -> tuple[str, list[str]]:
    """A failed cell as one line a reader can act on, and the lines that follow it.

    Parameters
    ----------
    exc : papermill.PapermillExecutionError
        What :func:`run_chapter` raised.
    chapter : str
        Chapter name or path of its ``.md``.
    parameters : dict, optional
        The overrides that were passed (named in the line when the message names one).

    Returns
    -------
    (str, list of str)
        The summary line: ``"<chapter>.md:<line> (cell In [n]) raised <Type>: <first line
        of the message> [parameter: <name>, ...]"``, the parameters being those of the
        chapter's ``parameters`` cell that the message names as a word; then the rest of
        a multi-line message.
    """
    src = _chapter_path(str(chapter))
    tb = _ANSI.sub("", "\n".join(getattr(exc, "traceback", []) or []))
    evalue = _ANSI.sub("", str(getattr(exc, "evalue", "") or "")).strip()
    ename = getattr(exc, "ename", type(exc).__name__)
    lines = evalue.splitlines() or [""]
    line = _chapter_line(src, getattr(exc, "source", "") or "", tb)
    try:
        names = [p.name for p in describe_parameters(str(src))]
    except Exception:  # no parameters cell: nothing to name
        names = []
    names += [n for n in (parameters or {}) if n not in names]
    hits = sorted((m.start(), n) for n in names for m in [re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", evalue)] if m)
    named = list(dict.fromkeys(n for _, n in hits))
    where = f"{src.name}:{line}" if line else src.name
    head = f"{where} (cell In [{getattr(exc, 'exec_count', '?')}]) raised {ename}: {lines[0]}"
    if named:
        head += f" [parameter: {', '.join(named)}]"
    return head, [ln for ln in lines[1:] if ln.strip()]


def write_failure_log(exc, path: str | Path, chapter: str, parameters: dict | None = None) -> Path:
    """Write what failed to ``path``: chapter, parameters, the failing cell's source and the
    full traceback (colour codes removed). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"chapter: {chapter}", f"parameters: {parameters or {}}"]
    if getattr(exc, "source", None):
        parts += ["", "failing cell:", exc.source]
    tb = getattr(exc, "traceback", None)
    if tb:
        parts += ["", "traceback:", _ANSI.sub("", "\n".join(tb))]
    else:
        import traceback

        parts += ["", "traceback:", "".join(traceback.format_exception(exc))]
    path.write_text("\n".join(parts) + "\n")
    return path


def _parse_value(v: str):
    """YAML value of command-line text; ``None`` also means None (as in the chapters' docs)."""
    import yaml

    if v == "None":
        return None
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def main(argv=None):
    """``scnotes`` command line; returns the exit status (``EXIT_*``: 0 done, 1 the book
    extra is missing, 2 bad chapter or parameter, 3 a cell raised, 4 the kernel died or
    timed out, 5 the report could not be built)."""
    parser = argparse.ArgumentParser(prog="scnotes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list chapters and their parameters ('*': set it for your own file)")
    ls.add_argument("chapter", nargs="?", help="only this chapter")
    r = sub.add_parser("run", help="execute a chapter with papermill and render its report",
                       description="Execute a chapter with papermill. Writes the executed notebook\n"
                                   "(OUTPUT, default runs/CHAPTER.ipynb) and beside it a one-page HTML\n"
                                   "report (runs/CHAPTER_report/CHAPTER.html for that OUTPUT: the book's\n"
                                   "rendering, numbers filled in, figures shown), and prints its path.",
                       epilog=_EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("chapter")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    r.add_argument("-o", "--output", default=None, help="executed notebook (default runs/CHAPTER.ipynb)")
    r.add_argument("--no-report", action="store_true", help="write only the notebook, no HTML report")
    args = parser.parse_args(argv)
    try:
        _book()
        if args.cmd == "list":
            for c in [args.chapter] if args.chapter else chapters():
                print(f"== {c}\n{format_parameters(describe_parameters(c))}\n")
            print("* required: the default fits the book's data only; set it for your own file")
            return 0
        raw = dict(args.parameter)
        params = validate_parameters(args.chapter, {k: _parse_value(v) for k, v in raw.items()}, raw)
    except BookExtraMissing as e:
        print(f"scnotes: {e}", file=sys.stderr)
        return EXIT_BOOK_EXTRA
    except (KeyError, ValueError) as e:
        print(f"scnotes: {e.args[0]}", file=sys.stderr)
        return EXIT_BAD_PARAMETER
    return _run(args, params)


def _run(args, params) -> int:
    from papermill.exceptions import PapermillExecutionError

    src = _chapter_path(args.chapter)
    out = Path(args.output) if args.output else Path("runs") / f"{src.stem}.ipynb"
    log = out.with_suffix(".log")
    from scnotes._render import report_dir_for

    stale = report_dir_for(out)
    try:
        run_chapter(str(src), params, out, progress=True)
    except PapermillExecutionError as e:
        shutil.rmtree(stale, ignore_errors=True)  # an earlier run's report is not this run's
        head, rest = describe_failure(e, src, params)
        write_failure_log(e, log, src.stem, params)
        print(f"scnotes run {src.stem}: {head}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        print(f"  full traceback: {log}; notebook up to the failing cell: {out}", file=sys.stderr)
        return EXIT_CELL_FAILED
    except Exception as e:  # the kernel died, a cell timed out, nbclient failed
        shutil.rmtree(stale, ignore_errors=True)
        write_failure_log(e, log, src.stem, params)
        print(f"scnotes run {src.stem}: the run stopped outside a cell (kernel or papermill): {type(e).__name__}: "
              f"{(str(e).strip().splitlines() or [''])[0]}", file=sys.stderr)
        print(f"  details: {log}", file=sys.stderr)
        return EXIT_KERNEL_FAILED
    if log.is_file():  # an earlier failure's log would now mislead
        log.unlink()
    print(f"wrote {out}")
    if args.no_report:
        return EXIT_OK
    from scnotes._render import ReportError, check_report, render_report

    try:
        page = render_report(out)
    except (ReportError, BookExtraMissing) as e:
        print(f"scnotes run {src.stem}: {e}", file=sys.stderr)
        return EXIT_REPORT_FAILED
    print(f"report: {page}")
    problems = check_report(page)
    if problems:
        print(f"note: {len(problems)} place(s) in the report to read with care (a glued value not "
              f"filled, nan, n/a, 0 cells); first: {problems[0]}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
