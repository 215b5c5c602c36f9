import json

import pytest

from scnotes import cli


def _write_chapter(path):
    path.write_text("""---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
# Toy

```{code-cell} ipython3
:tags: [parameters]
n = 2
label = "a"
```

```{code-cell} ipython3
result = n * 10
print(label, result)
```
""")


def test_run_chapter_overrides_parameters(tmp_path):
    src = tmp_path / "toy.md"
    _write_chapter(src)
    before = src.read_text()
    out = cli.run_chapter(str(src), {"n": 5, "label": "zz"}, output=tmp_path / "out.ipynb")
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    assert "zz 50" in text
    assert src.read_text() == before


def test_unknown_chapter():
    with pytest.raises(KeyError, match="unknown chapter"):
        cli.run_chapter("no_such_chapter")


def test_parse_value():
    assert cli._parse_value("3") == 3
    assert cli._parse_value("[3, 10]") == [3, 10]
    assert cli._parse_value("pbmc_facs_zheng2017") == "pbmc_facs_zheng2017"
    assert cli._parse_value("/tmp/x.h5ad") == "/tmp/x.h5ad"
