"""Library-wide settings (scanpy's ``sc.settings`` in small): ``scnotes.settings``.

``scnotes.settings.progress`` decides whether long fits draw a progress bar when a call
does not say (``progress=None``, the default of every ``scnotes.tl`` front and of the
estimators' ``fit``). Unset, it is True only in an interactive session: a terminal
(``python`` / IPython with stderr on a TTY) or a notebook kernel started by a Jupyter
server (which sets ``JPY_SESSION_NAME``). An executed page (jupyter-book, ``scnotes run``,
papermill: a kernel without a server), a CI log, pytest's captured output and worker
processes get no bars. ``SCNOTES_PROGRESS=0`` / ``1`` in the environment overrides the
detection; ``scnotes.settings.progress = True`` / ``False`` overrides both, ``None`` goes
back to the detection.
"""
from __future__ import annotations

import os
import sys

__all__ = ["settings", "resolve_progress"]


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def interactive() -> bool:
    """True in an interactive session (module docstring), False in executed pages and logs."""
    env = os.environ.get("SCNOTES_PROGRESS", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    if os.environ.get("CI"):
        return False
    shell = None
    ipython = sys.modules.get("IPython")
    if ipython is not None:
        try:
            shell = ipython.get_ipython()
        except Exception:  # pragma: no cover - a broken IPython install
            shell = None
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        # A kernel: interactive when a Jupyter server started it (it names the session);
        # nbclient (jupyter-book, papermill, scnotes run) starts kernels without one.
        return bool(os.environ.get("JPY_SESSION_NAME"))
    return _stderr_is_tty()


class Settings:
    """Settings of :mod:`scnotes` (one instance: ``scnotes.settings``).

    Attributes
    ----------
    progress : bool
        Draw progress bars in fits called with ``progress=None``. Reading it gives the
        value in force (the detection of :func:`interactive` unless set); set ``True`` /
        ``False`` to force, ``None`` to go back to the detection.
    """

    def __init__(self):
        self._progress = None

    @property
    def progress(self) -> bool:
        return interactive() if self._progress is None else self._progress

    @progress.setter
    def progress(self, value):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"scnotes.settings.progress must be True, False or None, got {value!r}")
        self._progress = value

    def __repr__(self):
        how = "detected" if self._progress is None else "set"
        return f"scnotes.settings(progress={self.progress} ({how}))"


settings = Settings()


def resolve_progress(progress) -> bool:
    """``progress`` as a bool: None → ``scnotes.settings.progress``."""
    return settings.progress if progress is None else bool(progress)
