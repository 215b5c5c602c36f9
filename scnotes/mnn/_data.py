"""The older loader of the chapter ``mnn_topics``'s sets, now :func:`scnotes.datasets.load`.

The curation (doublets dropped, the joined PBMC set, batch and label columns) lives in
the dataset registry (:data:`scnotes.datasets.CURATED`); :data:`BOOK_DATASETS` and
:data:`PBMC_LABELS` are the registry's, re-exported under their older home.
"""
from __future__ import annotations

import warnings

from ..datasets import BOOK_DATASETS, PBMC_LABELS, load

__all__ = ["BOOK_DATASETS", "PBMC_LABELS", "load_data"]


def load_data(name: str):
    """Deprecated: ``scnotes.datasets.load(name, curated=True)``, which returns the same cells,
    genes and counts (see it for parameters, returns and errors).

    Warns
    -----
    DeprecationWarning
        Always; the name goes in the next release.
    """
    # stacklevel=1: attributed to scnotes.mnn, not to the caller's __main__ (a chapter's cells),
    # so it never shows on an executed page; pytest and -W error see it
    # (the pattern of scnotes.tl._front._caller_stacklevel).
    warnings.warn("scnotes.mnn.load_data is the older name of scnotes.datasets.load(name, curated=True); "
                  "it goes in the next release", DeprecationWarning, stacklevel=1)
    return load(name, curated=True)
