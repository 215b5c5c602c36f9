"""Sphinx extension: each script at most once per page.

Under jupyter-book 1.0.4 with sphinx-thebe 0.3.1 and sphinx-togglebutton, the
inline configuration scripts of both are added to every page twice. The second
``const THEBE_JS_URL = …`` is a SyntaxError in the browser console
(``make check-book`` fails on it). This keeps the first of identical scripts
(same file, same inline body, same attributes; an inline script's file is
``None`` or ``""`` depending on who added it).
"""
from __future__ import annotations


def _key(js):
    attrs = tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items()))
    # An inline script is registered once with filename None and once with "".
    return (getattr(js, "filename", str(js)) or "", attrs)


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, keep = set(), []
    for js in scripts:
        k = _key(js)
        if k in seen:
            continue
        seen.add(k)
        keep.append(js)
    scripts[:] = keep  # in place: the builder's list is the one later handlers append to


def setup(app):
    # Late: MathJax and others add their scripts in html-page-context too.
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "0.1"}
