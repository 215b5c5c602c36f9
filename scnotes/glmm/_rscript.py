"""One way to run R: find ``Rscript``, ask whether a package loads, run a script on CSV files.

Every live R reference (lme4, glmmTMB, edgeR, DESeq2) writes its inputs to a
temporary directory, runs one ``Rscript --vanilla fit.R DIR ARGS…`` process and
reads the CSV files the script wrote back; the errors (R missing, package
missing, time-out, script failure) are the same for all of them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

__all__ = ["rscript_path", "r_package_available", "run_r_script"]


def rscript_path(rscript: str | None = None) -> str | None:
    """Absolute path of ``rscript`` (default ``$RSCRIPT`` or ``Rscript``) on the PATH, or None."""
    return shutil.which(rscript or os.environ.get("RSCRIPT", "Rscript"))


def r_package_available(package: str, rscript: str | None = None) -> bool:
    """Whether ``Rscript`` is on the PATH and can load the R ``package``."""
    exe = rscript_path(rscript)
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "-e", f'quit(status = !requireNamespace("{package}", quietly = TRUE))'],
                           capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def run_r_script(script: str, package: str, files: dict, missing_hint: str, args=(), rscript=None,
                 timeout: float = 3600.0, workdir=None):
    """Write ``files`` (name → DataFrame, written as CSV without index, or text) and
    ``script`` as ``fit.R`` to a new temporary directory and run
    ``Rscript --vanilla fit.R DIR *args`` there.

    Returns ``(tmp, path)``: the :class:`tempfile.TemporaryDirectory` (use it as a
    context manager to remove the directory once the outputs are read) and its path.

    Raises
    ------
    RuntimeError
        ``Rscript`` is not on the PATH or ``package`` is not installed (the message is
        ``missing_hint``, which says how to install it), the script ran past ``timeout``
        seconds, or it failed (the end of its stderr is included).
    """
    exe = rscript_path(rscript)
    if exe is None:
        raise RuntimeError(f"Rscript not found on the PATH; {missing_hint}")
    tmp_obj = tempfile.TemporaryDirectory(dir=workdir)
    tmp = Path(tmp_obj.name)
    for name, obj in files.items():
        if isinstance(obj, pd.DataFrame):
            obj.to_csv(tmp / name, index=False)
        else:
            (tmp / name).write_text(str(obj))
    (tmp / "fit.R").write_text(script)
    try:
        r = subprocess.run([exe, "--vanilla", str(tmp / "fit.R"), str(tmp), *map(str, args)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tmp_obj.cleanup()
        raise RuntimeError(f"{package} timed out after {timeout} s") from e
    if r.returncode != 0:
        tmp_obj.cleanup()
        if "there is no package" in r.stderr or "no package called" in r.stderr:
            raise RuntimeError(missing_hint)
        raise RuntimeError(f"Rscript ({package}) failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return tmp_obj, tmp
