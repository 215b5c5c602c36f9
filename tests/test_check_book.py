"""The rendered-book check (scripts/check_book.py, `make check-book`) in headless Chromium."""
import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("chromedriver") is None,
                                 reason="needs Debian's chromium and chromium-driver")]


def _checker():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checker_flags_what_a_reader_would_see(tmp_path):
    site = tmp_path / "html"
    site.mkdir()
    (site / "ok.html").write_text("<html><body><main><p>fine</p></main></body></html>")
    (site / "index.html").write_text(
        "<html><body><main><p>raw $$x^2$$ maths</p><img src='missing.png'>"
        "<a href='nope.html'>x</a><a href='ok.html#gone'>y</a>"
        "<div class='output stderr'>100%|████| 10/10</div>"
        "<script>console.error('boom')</script></main></body></html>")
    res = _checker().check(site)
    probs = " ".join(res["index.html"])
    for what in ("console error", "image does not load", "unrendered maths", "broken link",
                 "broken anchor", "stderr"):
        assert what in probs, (what, res)
    assert res["ok.html"] == []
    assert (tmp_path / "check" / "index.html.png").stat().st_size > 0


def test_built_book_passes():
    built = ROOT / "_build" / "html"
    if not (built / "index.html").is_file():
        pytest.skip("book not built: run `make book` first")
    assert _checker().main([str(built)]) == 0
