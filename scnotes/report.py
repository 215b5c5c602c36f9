"""What a chapter's closing cell prints: the versions of the packages it ran with."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

__all__ = ["package_versions"]

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
