"""What a chapter reports: numbers glued into its prose, its tables, and the package versions it ran with."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["package_versions", "glue", "glues", "glue_md", "table", "compare_word", "stopwatch",
           "SHOW_GLUED_ENV", "GLUED_COPY_KEY"]

#: Environment variable that makes :func:`glue` also display figures it stores
#: (``scnotes run`` sets it to ``"1"`` for the chapter's kernel).
SHOW_GLUED_ENV = "SCNOTES_SHOW_GLUED"
#: Output-metadata key that marks the displayed copy of a glued figure, so that a
#: renderer which pastes the figure with ``{glue:figure}`` can drop the copy.
GLUED_COPY_KEY = "scnotes_glued_copy"

_DEFAULT = ("scnotes", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn",
            "pynndescent", "pyro-ppl", "matplotlib", "umap-learn", "leidenalg")


def package_versions(extra=()):
    """A one-column pandas DataFrame of package versions (plus Python and platform).

    Packages that are not installed are listed as ``"not installed"``.
    """
    import pandas as pd

    rows = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in (*_DEFAULT, *extra):
        try:
            rows[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            rows[name] = "not installed"
    return pd.DataFrame({"version": rows})


def _show_glued() -> bool:
    return os.environ.get(SHOW_GLUED_ENV, "").strip().lower() in ("1", "true", "yes")


def glue(name: str, value, display: bool = False):
    """Store ``value`` under ``name`` for a chapter's prose (myst-nb's ``glue``, by
    default without displaying it), numpy scalars first turned into Python numbers.

    Why: under numpy ≥ 2 the text form of ``np.float64(0.5)`` is
    ``"np.float64(0.5)"``, which myst-nb cannot read back as a number, so a
    ``{glue:text}`key:.3f``` role fails the ``-W`` build.

    A figure (any value whose display form is an image) glued with
    ``display=False`` is stored only as an ``application/papermill.record/…``
    output, which Jupyter does not show; the book pastes it with
    ``{glue:figure}``. When the environment variable ``SCNOTES_SHOW_GLUED`` is
    ``1`` (``scnotes run`` sets it), the figure is also displayed as an ordinary
    output, marked in its output metadata with ``scnotes_glued_copy: name`` so
    that the rendered report (:mod:`scnotes._render`) can drop the copy where
    ``{glue:figure}`` already shows it. The book build leaves the variable unset,
    so its pages show each figure once.

    Raises
    ------
    ImportError
        ``myst-nb`` (the ``book`` extra) is not installed; the message names it.
    """
    import numpy as np

    try:
        from myst_nb import glue as _glue
    except ImportError as e:  # pragma: no cover - only without the book extra
        raise ImportError("scnotes.report.glue needs myst-nb: pip install 'scnotes[book]'") from e
    if isinstance(value, np.generic):
        value = value.item()
    _glue(name, value, display=display)
    if not display and _show_glued():
        _display_copy(name, value)


def _display_copy(name: str, value):
    """Display ``value`` if its display form holds an image; text values are not
    shown (they live in the prose), so a rerun's notebook shows exactly its figures."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    bundle, meta = format_display_data(value)
    if not any(k.startswith("image/") for k in bundle):
        return
    meta = dict(meta or {})
    meta[GLUED_COPY_KEY] = name
    ipy_display(bundle, raw=True, metadata=meta)


def glues(**values):
    """:func:`glue` each keyword (name = value) without displaying it."""
    for name, value in values.items():
        glue(name, value)


def glue_md(name: str, text: str | None = None):
    """Store a passage of MyST markdown under ``name`` for the chapter's prose: a
    ``{glue:md}`` directive (with ``:format: myst``) pastes paragraphs, the inline role
    ``{glue:md}`name:myst``` a phrase or sentence inside a paragraph. ``None`` or ``""``
    stores an empty passage, which the page then leaves out.

    Why: a passage that holds only for some data (a comparison with the book's other
    data set, a remark on the book's donors) must not appear in the report of a rerun
    where it does not apply, and a markdown cell cannot be removed at run time. The
    chapter writes the passage in a code cell and glues it, or glues nothing::

        scnotes.report.glue_md("second_para", PARAGRAPH if second is not None else None)

    and its prose pastes it with ::

        ```{glue:md} second_para
        :format: myst
        ```

    (or, inside a paragraph, ``{glue:md}`second_para:myst```).

    The passage may hold roles (``{glue:text}`key:.3f```, ``{cite:t}``), maths and
    several paragraphs; they are rendered as if written in the page, in the book and
    in a rerun's report alike.
    """
    from IPython.display import Markdown

    if text is not None and not isinstance(text, str):
        raise TypeError(f"glue_md({name!r}, text): text must be a str or None, not {type(text).__name__}")
    glue(name, Markdown(text or ""))


def table(df, decimals: int = 3, na_rep: str = "–"):
    """A results table for display: floats shown with ``decimals`` decimals, and cells
    that do not apply (NaN: the sd of a single fit, an interval a method does not
    give) shown as ``na_rep`` instead of "NaN". ±inf stays visible as ∞.

    Returns a new DataFrame of strings with the same index and columns; ``df`` is
    not changed. Only for display: compute on ``df``.
    """
    import numpy as np
    import pandas as pd

    def cell(v):
        if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)) or v is pd.NA:
            return na_rep
        if isinstance(v, (float, np.floating)):
            if np.isinf(v):
                return "∞" if v > 0 else "−∞"
            return f"{v:.{decimals}f}"
        return v

    def column(col):
        # Element-wise mapping turns a nullable integer column holding a missing value into
        # floats (1 -> "1.000"); integers are formatted as integers.
        if pd.api.types.is_integer_dtype(col.dtype):
            return col.astype(object).map(lambda v: na_rep if v is pd.NA or v is None else int(v))
        return col.astype(object).map(cell)

    if isinstance(df, pd.DataFrame):
        return df.apply(column)
    return column(df)


def compare_word(a, b, more: str = "higher", less: str = "lower", equal: str = "about equal",
                 tol: float = 0.0) -> str:
    """The word a sentence uses to compare two computed numbers ``a`` and ``b``:
    ``more`` when a > b + ``tol``, ``less`` when a < b − ``tol``, else ``equal``.

    Why: a comparison in the prose ("scnotes' ELBO is higher than scvi-tools'") must
    be computed by the run, so that a rerun on other data never states the book's
    result. ``tol`` (same units as ``a``) says how large a difference the chapter
    calls a difference (e.g. seed noise). Raises ValueError for NaN input or a
    negative ``tol``: a comparison with a missing number has no word.
    """
    import math

    a, b, tol = float(a), float(b), float(tol)
    if math.isnan(a) or math.isnan(b):
        raise ValueError(f"compare_word: cannot compare {a!r} with {b!r} (NaN)")
    if tol < 0 or math.isnan(tol):
        raise ValueError(f"compare_word: tol must be >= 0, got {tol!r}")
    if a > b + tol:
        return more
    if a < b - tol:
        return less
    return equal


class stopwatch:
    """Wall-clock seconds of a block, for the timing tables chapters report::

        with scnotes.report.stopwatch() as t:
            model = scnotes.tl.nbvae(adata)
        t.seconds  # float, set when the block ends (also if it raises)

    Uses :func:`time.perf_counter`. Timings are reported, never asserted.
    """

    def __init__(self):
        self.seconds = float("nan")

    def __enter__(self):
        import time

        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import time

        self.seconds = time.perf_counter() - self._t0
        return False
