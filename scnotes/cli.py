"""Rerun a chapter of the book with papermill on other parameters or data.

Command line::

    scnotes list                                   # every chapter: its parameter table
    scnotes list count_vaes                        # one chapter
    scnotes run count_vaes -p seed 1               # -> runs/count_vaes.ipynb
    scnotes run pbmc_count_models -p dataset /path/to/mine.h5ad -o mine.ipynb

Chapters are jupytext (MyST) text files in ``book/``; papermill cannot read
those directly, so the chapter is converted to a notebook in memory and its
``parameters`` cell is overridden. Parameter values are parsed as YAML
(``-p latent_dims "[3, 10]"``, ``-p seed 1``, ``-p label_key None``), strings stay
strings, and a number given for a text parameter stays text.

The ``parameters`` cell is the chapter's contract (see :mod:`scnotes._params`): one
assignment per parameter with a trailing ``# description``; a description that
starts with ``[required]`` marks a parameter to set for your own file. Overrides are
checked against it (names and types) before anything runs; a bad one exits with
status 2 and a message on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from scnotes._params import Parameter, check_parameters, parse_parameters

__all__ = ["book_dir", "chapters", "chapter_parameters", "describe_parameters", "validate_parameters",
           "format_parameters", "run_chapter", "main", "BookExtraMissing"]

BOOK_EXTRA_HINT = "install the book extra: pip install 'scnotes[book]'"


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
        A cell raises.
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
    with _quiet_papermill():
        pm.execute_notebook(nb, str(out), parameters=parameters, kernel_name=kernel,
                            cwd=str(cwd or src.parent), progress_bar=progress)
    return out


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
    """``scnotes`` command line; returns the exit status (2: bad chapter or parameter,
    1: the book extra is missing)."""
    parser = argparse.ArgumentParser(prog="scnotes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list chapters and their parameters ('*': set it for your own file)")
    ls.add_argument("chapter", nargs="?", help="only this chapter")
    r = sub.add_parser("run", help="execute a chapter with papermill")
    r.add_argument("chapter")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    r.add_argument("-o", "--output", default=None, help="executed notebook (default runs/CHAPTER.ipynb)")
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
        return 1
    except (KeyError, ValueError) as e:
        print(f"scnotes: {e.args[0]}", file=sys.stderr)
        return 2
    out = run_chapter(args.chapter, params, args.output, progress=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
