"""Sphinx extension: offer each chapter's *executed* notebook (.ipynb) for download.

myst-nb writes the executed notebook of every chapter to ``_build/jupyter_execute``,
which is not part of the HTML site. For each page that has one, this copies it to
``_build/html/_notebooks/`` and puts a download link at the top of the page, next
to the source (.md) that the theme's download button already offers.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def _rerun_hint(source: Path) -> str:
    """The rerun command with the chapter's own data parameter (``dataset``, or the first
    ``[required]`` ``*_dataset``); a simulation chapter has none, so point at its parameters."""
    chapter = source.stem
    try:
        from scnotes.cli import describe_parameters

        params = describe_parameters(str(source))
    except Exception:  # no parameters cell: no hint
        return ""
    data = [p for p in params if p.name == "dataset" or p.name.endswith("_dataset")]
    data = [p for p in data if p.required] or data
    if data:
        return (f"rerun it on your data: <code>scnotes run {chapter} -p {data[0].name} your.h5ad</code>")
    return f"rerun it with other settings: <code>scnotes list {chapter}</code> lists its parameters"


def _inject(app, pagename, templatename, context, doctree):
    if app.builder.format != "html" or "body" not in context:
        return
    src = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not src.is_file():
        return
    dest = Path(app.outdir) / "_notebooks" / f"{pagename}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    rel = os.path.relpath(dest, Path(app.outdir) / os.path.dirname(pagename)).replace(os.sep, "/")
    link = (f'<p class="scnotes-download"><a href="{rel}" download>Download the executed notebook '
            f'(.ipynb)</a> · {_rerun_hint(Path(app.srcdir) / f"{pagename}.md")}</p>\n')
    context["body"] = link + context["body"]


def setup(app):
    app.connect("html-page-context", _inject)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "0.1"}
