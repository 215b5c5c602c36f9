"""The book's download/rerun line names each chapter's own data parameter."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))

from scnotes_downloads import _rerun_hint  # noqa: E402


def test_rerun_hint_uses_the_chapter_data_parameter():
    assert "-p null_dataset your.h5ad" in _rerun_hint(ROOT / "book" / "glmm_calibration.md")
    assert "-p dataset your.h5ad" in _rerun_hint(ROOT / "book" / "ldvae.md")
    # A simulation has no data parameter: point at its parameters instead of a wrong flag.
    hint = _rerun_hint(ROOT / "book" / "count_vaes.md")
    assert "scnotes list count_vaes" in hint and "-p dataset" not in hint
    assert _rerun_hint(ROOT / "book" / "intro.md") == ""
