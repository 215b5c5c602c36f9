"""Open every page of the built book in headless Chromium and check it as a reader would.

Fails (exit 1) on: a browser console error, an image that does not load, maths
left unrendered (raw ``$$`` or ``\\(`` in the rendered text), a broken internal
link (a local ``href`` whose file is missing, or a missing ``#anchor``), or
stderr noise in cell outputs (progress bars, warnings). Saves a full-page
screenshot of each page under ``_build/check/`` for review.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium``
(the ``book`` extra). Usage: ``python scripts/check_book.py [_build/html]``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

NOISE = re.compile(r"(\d+%\|[█▏▎▍▌▋▊▉ ]*\||TqdmWarning|UserWarning|FutureWarning|DeprecationWarning|"
                   r"INFO:|GPU available:|LOCAL_RANK)")


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def _page_problems(driver, page: Path, root: Path) -> list[str]:
    problems = []
    driver.get("about:blank")
    driver.get_log("browser")  # drain messages that belong to the previous page
    driver.get(page.as_uri())
    # MathJax typesets asynchronously; wait until it reports done (or 10 s).
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const t0 = Date.now();
        (function poll() {
          const mj = window.MathJax;
          if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(() => done(1)); return; }
          if (Date.now() - t0 > 10000) { done(0); return; }
          setTimeout(poll, 100);
        })();""")
    for entry in driver.get_log("browser"):
        # sphinx-book-theme 1.3 on a reader's first visit (nothing in localStorage yet) logs
        # this from pydata-sphinx-theme and falls back to "auto"; it has no option to set a
        # default mode. Not a defect of the book, and only the first page checked sees it.
        if "Got invalid theme mode: ." in entry.get("message", ""):
            continue
        if entry.get("level") == "SEVERE":
            problems.append(f"console error: {entry.get('message', '')[:200]}")
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => i.getAttribute('src'));")
    problems += [f"image does not load: {src}" for src in broken]
    text = driver.execute_script(
        "const m = document.querySelector('main') || document.body;"
        "const c = m.cloneNode(true);"
        "c.querySelectorAll('pre, code, script, style, mjx-container, .MathJax').forEach(e => e.remove());"
        "return c.innerText;")
    for raw in ("$$", "\\(", "\\[", "\\begin{"):
        if raw in text:
            i = text.index(raw)
            problems.append(f"unrendered maths {raw!r}: …{text[max(0, i - 40):i + 40]!r}…")
    stderr = driver.execute_script(
        "return Array.from(document.querySelectorAll('.output.stderr, .stderr'))"
        ".map(e => e.innerText).join('\\n');")
    if stderr.strip():
        problems.append(f"stderr output in the page: {stderr.strip()[:200]!r}")
    # Links resolve against the page the browser shows: index.html redirects to the intro.
    cur = urlparse(driver.current_url)
    here = Path(unquote(cur.path)) if cur.scheme == "file" else page
    for href in driver.execute_script("return Array.from(document.querySelectorAll('a[href]'))"
                                      ".map(a => a.getAttribute('href'));"):
        u = urlparse(href)
        if u.scheme in ("http", "https", "mailto", "javascript", "data"):
            continue
        target = (here.parent / unquote(u.path)).resolve() if u.path else here
        if u.path and not target.exists():
            problems.append(f"broken link: {href}")
            continue
        if u.fragment and target.suffix == ".html":
            html = target.read_text(errors="ignore")
            if f'id="{u.fragment}"' not in html and f"id='{u.fragment}'" not in html:
                problems.append(f"broken anchor: {href}")
    out = root.parent / "check" / (page.relative_to(root).as_posix().replace("/", "__") + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.min(document.body.scrollHeight, 16000)")
    driver.set_window_size(1280, max(1000, int(height)))
    driver.save_screenshot(str(out))
    driver.set_window_size(1280, 1000)
    return problems


def check(root: Path) -> dict[str, list[str]]:
    pages = sorted(p for p in root.rglob("*.html")
                   if not any(part.startswith("_") for part in p.relative_to(root).parts)
                   and p.name not in ("genindex.html", "search.html"))
    driver = _driver()
    try:
        return {p.relative_to(root).as_posix(): _page_problems(driver, p, root) for p in pages}
    finally:
        driver.quit()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "_build/html").resolve()
    if not (root / "index.html").is_file():
        print(f"check-book: no built book at {root}; run `make book` first", file=sys.stderr)
        return 2
    results = check(root)
    bad = {k: v for k, v in results.items() if v}
    for page, probs in results.items():
        print(f"{'FAIL' if probs else 'ok  '} {page}")
        for p in probs:
            print(f"       {p}")
    print(f"check-book: {len(results)} pages, {len(bad)} with problems; screenshots in "
          f"{root.parent / 'check'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
