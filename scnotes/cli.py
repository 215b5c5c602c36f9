"""Rerun a chapter of the book with papermill on other parameters or data.

Command line::

    scnotes list                                   # chapters and their parameters
    scnotes run count_vaes -p seed 1               # -> runs/count_vaes.ipynb
    scnotes run pbmc_count_models -p dataset /path/to/mine.h5ad -o mine.ipynb

Chapters are jupytext (MyST) text files in ``book/``; papermill cannot read
those directly, so the chapter is converted to a notebook in memory and its
``parameters`` cell is overridden. Parameter values are parsed as YAML
(``-p latent_dims "[3, 10]"``, ``-p seed 1``), strings stay strings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["book_dir", "chapters", "chapter_parameters", "run_chapter", "main"]


def book_dir() -> Path:
    """The ``book/`` folder of the repository."""
    return Path(__file__).resolve().parents[1] / "book"


def chapters() -> list[str]:
    """Names of the chapters that have a ``parameters`` cell (i.e. can be rerun)."""
    import jupytext

    out = []
    for p in sorted(book_dir().glob("*.md")):
        nb = jupytext.read(p)
        if any("parameters" in c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"):
            out.append(p.stem)
    return out


def _chapter_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".md" and p.is_file():
        return p
    p = book_dir() / f"{name}.md"
    if not p.is_file():
        raise KeyError(f"unknown chapter {name!r}; available: {chapters()}")
    return p


def chapter_parameters(name: str) -> str:
    """Source of a chapter's ``parameters`` cell (its documented defaults)."""
    import jupytext

    nb = jupytext.read(_chapter_path(name))
    for c in nb.cells:
        if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []):
            return c.source
    raise ValueError(f"chapter {name!r} has no parameters cell")


def run_chapter(name: str, parameters: dict | None = None, output: str | Path | None = None,
                cwd: str | Path | None = None, progress: bool = False, kernel: str = "python3"):
    """Execute a chapter with papermill and write the executed notebook.

    Parameters
    ----------
    name : str
        Chapter name (file stem in ``book/``) or a path to a jupytext ``.md``.
    parameters : dict
        Overrides for the chapter's ``parameters`` cell.
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
        Unknown chapter. papermill's ``PapermillExecutionError`` if a cell raises.
    """
    import jupytext
    import papermill as pm

    src = _chapter_path(name)
    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": kernel, "display_name": "Python 3", "language": "python"})
    out = Path(output) if output else Path("runs") / f"{src.stem}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.resolve() == src.resolve():
        raise ValueError("output would overwrite the chapter source")
    pm.execute_notebook(nb, str(out), parameters=parameters or {}, kernel_name=kernel,
                        cwd=str(cwd or src.parent), progress_bar=progress)
    return out


def _parse_value(v: str):
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scnotes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list chapters and their parameters")
    r = sub.add_parser("run", help="execute a chapter with papermill")
    r.add_argument("chapter")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    r.add_argument("-o", "--output", default=None, help="executed notebook (default runs/CHAPTER.ipynb)")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for c in chapters():
            print(f"== {c}\n{chapter_parameters(c)}\n")
        return 0
    params = {k: _parse_value(v) for k, v in args.parameter}
    out = run_chapter(args.chapter, params, args.output, progress=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
