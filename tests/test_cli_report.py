"""What a rerun hands the reader: figures in the notebook, the rendered report, the report
check, one-line failures with their exit status, and the thread policy."""
import base64
import json
import re
import struct
import zlib

import pytest

from scnotes import cli
from scnotes._render import check_report, drop_glued_copies, render_report, report_dir_for
from scnotes.report import GLUED_COPY_KEY

HEADER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
"""

FIGURE_CHAPTER = HEADER + """# Toy report

```{code-cell} ipython3
:tags: [parameters]
label = "cells"       # [required] obs column
n = 12                # number of things
```

```{code-cell} ipython3
import matplotlib.pyplot as plt
from scnotes.report import glue, glues
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [0, n])
glue("fig_toy", fig, display=False)
glues(score=0.5, n_things=n)
plt.close(fig)
```

The score is {glue:text}`score:.2f` on {glue:text}`n_things` things.

```{glue:figure} fig_toy
:name: fig-toy

A toy figure.
```
"""

FAILING_CHAPTER = HEADER + """# Toy failure

```{code-cell} ipython3
:tags: [parameters]
label_key = "cell_type"   # [required] obs column of labels
n = 3                     # size
```

```{code-cell} ipython3
x = n + 1
raise KeyError(f"obs column {label_key!r} not found; set label_key")
```
"""


def _outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def test_rerun_shows_figures_and_writes_a_clean_report(tmp_path, capsys):
    src = tmp_path / "toy.md"
    src.write_text(FIGURE_CHAPTER)
    out = tmp_path / "out" / "toy.ipynb"
    assert cli.main(["run", str(src), "-p", "n", "7", "-o", str(out)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    page = report_dir_for(out) / "toy.html"
    assert f"report: {page}" in printed and page.is_file()
    outputs = _outputs(out)
    # Stored for the prose and displayed for the notebook's reader.
    assert any("application/papermill.record/image/png" in o.get("data", {}) for o in outputs)
    shown = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(shown) == 1 and shown[0]["metadata"][GLUED_COPY_KEY] == "fig_toy"
    html = page.read_text()
    assert re.search(r'<span class="pasted-text">0\.50</span>', html)
    assert re.search(r'<span class="pasted-text">7</span>', html)
    assert html.count("<img") == 1  # pasted by {glue:figure}; the notebook's copy dropped
    assert "{glue" not in html
    assert check_report(page) == []


def test_glue_without_the_switch_displays_nothing(monkeypatch):
    import myst_nb

    import scnotes.report

    seen = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.append(name))
    monkeypatch.setattr(scnotes.report, "_display_copy", lambda name, value: seen.append(("copy", name)))
    monkeypatch.delenv(scnotes.report.SHOW_GLUED_ENV, raising=False)
    scnotes.report.glue("a", 1.0)
    monkeypatch.setenv(scnotes.report.SHOW_GLUED_ENV, "1")
    scnotes.report.glue("b", 2.0)
    scnotes.report.glue("c", 3.0, display=True)  # myst-nb displays it itself
    assert seen == ["a", "b", ("copy", "b"), "c"]


def _png() -> str:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0\0"))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw + chunk(b"IEND", b"")).decode()


def _executed_notebook(path, prose, table_html="<table><tr><td>1.0</td></tr></table>"):
    """An executed notebook as papermill writes one, built without a kernel."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    rec = "application/papermill.record/"

    def glued(name, data, copy=False):
        outs = [new_output("display_data", data={rec + k: v for k, v in data.items()},
                           metadata={"scrapbook": {"name": name, "mime_prefix": rec}})]
        if copy:
            outs.append(new_output("display_data", data=data, metadata={GLUED_COPY_KEY: name}))
        return outs

    nb = new_notebook(cells=[
        new_markdown_cell("# Synthetic\n\n" + prose),
        new_code_cell("x = np.nan  # code may say nan", outputs=[
            new_output("stream", name="stdout", text="dropped 0 cells without a label; n/a\n"),
            *glued("score", {"text/plain": "0.5"}), *glued("n", {"text/plain": "12"}),
            *glued("empty", {"text/plain": "''"}),
            *glued("fig", {"image/png": _png(), "text/plain": "<Figure>"}, copy=True),
            *glued("unused_fig", {"image/png": _png(), "text/plain": "<Figure>"}, copy=True)]),
        new_code_cell("df", outputs=[new_output("execute_result", execution_count=2,
                                                data={"text/html": table_html, "text/plain": "df"})]),
        new_markdown_cell("```{glue:figure} fig\n:name: fig-x\n\nA figure.\n```"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_check_report_finds_what_a_reader_should_not_see(tmp_path):
    bad = _executed_notebook(
        tmp_path / "bad.ipynb",
        "Score {glue:text}`score:.2f` on {glue:text}`n` cells; missing {glue:text}`gone`, "
        "empty {glue:text}`empty`. A NaN here, 0 cells there.",
        table_html="<table><tr><th>ARI</th><td>nan</td><td>n/a</td></tr></table>")
    page = render_report(bad)
    found = sorted((f.kind, f.where, f.match) for f in check_report(page))
    assert found == [("glue", "prose", "(empty)"), ("glue", "prose", "gone"), ("text", "prose", "0 cells"), ("text", "prose", "NaN"),
                     ("text", "table", "n/a"), ("text", "table", "nan")]
    # The copy of a pasted figure is dropped, the copy of a figure nobody pastes stays.
    assert page.read_text().count("<img") == 2


def test_check_report_passes_a_clean_report_and_reads_html_text(tmp_path):
    good = _executed_notebook(tmp_path / "good.ipynb",
                              "Score {glue:text}`score:.2f` on {glue:text}`n` cells, 10 cells kept; "
                              "nanoparticles and Nanog are words; maths $x = \\mathrm{nan}$ is not prose.")
    page = render_report(good, tmp_path / "elsewhere")
    assert page == tmp_path / "elsewhere" / "good.html" and (page.parent / "build.log").is_file()
    assert check_report(page) == []
    raw = check_report("<html><body><p>raw {glue:text}`x:.2f` left</p><pre>nan</pre></body></html>")
    assert [(f.kind, f.match) for f in raw] == [("glue", "x")]


def test_drop_glued_copies_keeps_unpasted_figures():
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook(cells=[
        new_code_cell("", outputs=[new_output("display_data", data={"image/png": "x"}, metadata={GLUED_COPY_KEY: k})
                                   for k in ("a", "b")]),
        new_markdown_cell(":::{glue:figure} a\nA.\n:::")])
    assert drop_glued_copies(nb) == 1
    assert [o.metadata[GLUED_COPY_KEY] for o in nb.cells[0].outputs] == ["b"]
    assert isinstance(nb, nbformat.NotebookNode)


def test_failing_cell_gives_one_line_a_log_and_exit_3(tmp_path, capsys):
    src = tmp_path / "toy.md"
    src.write_text(FAILING_CHAPTER)
    out = tmp_path / "toy.ipynb"
    (report_dir_for(out) / "old").mkdir(parents=True)  # an earlier run's report must not survive
    assert cli.main(["run", str(src), "-p", "n", "4", "-o", str(out)]) == cli.EXIT_CELL_FAILED
    err = capsys.readouterr().err
    mine = err[err.index("scnotes run toy:"):].splitlines()
    line = FAILING_CHAPTER.splitlines().index("raise KeyError(f\"obs column {label_key!r} not found; set label_key\")") + 1
    assert mine[0] == (f"scnotes run toy: toy.md:{line} (cell In [3]) raised KeyError: "
                       "\"obs column 'cell_type' not found; set label_key\" [parameter: label_key]")
    assert "Traceback" not in err and "-----" not in err
    log = out.with_suffix(".log")
    assert str(log) in err and out.is_file() and not report_dir_for(out).exists()
    text = log.read_text()
    assert "KeyError" in text and "raise KeyError" in text and "\x1b[" not in text


def test_kernel_failure_exits_4(tmp_path, capsys, monkeypatch):
    src = tmp_path / "toy.md"
    src.write_text(FAILING_CHAPTER)

    def dead(*a, **k):
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(cli, "run_chapter", dead)
    out = tmp_path / "toy.ipynb"
    assert cli.main(["run", str(src), "-o", str(out)]) == cli.EXIT_KERNEL_FAILED
    assert "the run stopped outside a cell (kernel or papermill): RuntimeError: Kernel died" in capsys.readouterr().err
    assert "Kernel died" in out.with_suffix(".log").read_text()


def test_run_help_documents_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    for code, words in [(1, "book extra"), (2, "wrong type"), (3, "a cell raised"), (4, "kernel died"),
                        (5, "report could not be built")]:
        assert re.search(rf"^\s+{code}\s+.*{words}", text, flags=re.M), (code, text)
    assert "_report" in text


def test_configure_threads_policy(monkeypatch):
    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    import scnotes.pp as pp

    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        with threadpool_limits(limits=None):  # restores the BLAS / OpenMP pools on exit
            monkeypatch.setattr(pp, "_available_cpus", lambda: 2)
            assert pp.configure_threads() == 1  # shared 2-core machine: one thread
            assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
            assert all(i["num_threads"] == 1 for i in threadpool_info())
            assert pp.configure_threads(2) == 2 and torch.get_num_threads() == 2  # the argument wins
            monkeypatch.setattr(pp, "_available_cpus", lambda: 16)
            monkeypatch.delenv("OMP_NUM_THREADS")
            assert pp.configure_threads() == 8
            monkeypatch.setenv("OMP_NUM_THREADS", "3")
            assert pp.configure_threads() == 3  # the environment beats the default
            assert pp.configure_threads(1) == 1 and torch.get_num_threads() == 1
            import os
            assert os.environ["OMP_NUM_THREADS"] == "1"  # for processes the chapter starts
            monkeypatch.setenv("OMP_NUM_THREADS", "many")
            with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
                pp.configure_threads()
            for bad in (0, -1, 1.5, True):
                with pytest.raises(ValueError, match=r"configure_threads\(n\)"):
                    pp.configure_threads(bad)
    finally:
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)
