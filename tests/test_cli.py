import json
import re
import sys

import pytest

from scnotes import cli
from scnotes._params import check_parameters, parse_parameters

TOY_PARAMETERS = '''\
n = 2                 # multiplier (0 = none): papermill cannot parse a second "="
label = "a"           # [required] printed before the result
genes = ["A", "B",    # genes to show,
         "C"]         # one per line
max_epochs = 3        # training length
'''


def _write_chapter(path, parameters=TOY_PARAMETERS):
    path.write_text(f"""---
jupytext:
  text_representation: {{extension: .md, format_name: myst, format_version: 0.13}}
kernelspec: {{display_name: Python 3, language: python, name: python3}}
---
# Toy

```{{code-cell}} ipython3
:tags: [parameters]
{parameters}```

```{{code-cell}} ipython3
result = n * 10
print(label, result, len(genes))
```
""")
    return path


def _streams(out):
    nb = json.loads(out.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))


def test_parse_parameters_multiline():
    src = TOY_PARAMETERS + 'ranks = list(range(1, 4))   # WNMF ranks\nlr: float = 1e-2\nopts = {"a": None}  # extra\n'
    ps = {p.name: p for p in parse_parameters(src)}
    assert list(ps) == ["n", "label", "genes", "max_epochs", "ranks", "lr", "opts"]
    assert (ps["n"].default, ps["n"].type, ps["n"].description, ps["n"].required) == (
        2, "int", 'multiplier (0 = none): papermill cannot parse a second "="', False)
    assert ps["label"].required and ps["label"].description == "printed before the result"
    assert ps["label"].default == "a" and ps["label"].type == "str"
    assert ps["genes"].default == ["A", "B", "C"] and ps["genes"].type == "list"
    assert ps["genes"].description == "genes to show, one per line"
    assert ps["ranks"].default == [1, 2, 3] and ps["ranks"].source == "list(range(1, 4))"
    assert (ps["lr"].default, ps["lr"].type, ps["lr"].description) == (0.01, "float", "")
    assert ps["opts"].default == {"a": None} and ps["opts"].type == "dict"


def test_check_parameters_type_rules():
    ps = parse_parameters('x = 1.5\nk = 3\nname = "a"\nopt = None\nflag = True\nl = [1]\n')
    got = check_parameters(ps, {"x": 2, "k": None, "name": 7, "opt": [1], "flag": False, "l": (2, 3)},
                           "toy", raw={"name": "007"})
    assert got == {"x": 2.0, "k": None, "name": "007", "opt": [1], "flag": False, "l": [2, 3]}
    assert isinstance(got["x"], float)


def test_unknown_parameter_suggests_closest(tmp_path):
    src = _write_chapter(tmp_path / "toy.md")
    out = tmp_path / "out.ipynb"
    with pytest.raises(ValueError, match=r"unknown parameter 'max_epoch' for chapter toy; "
                                         r"did you mean 'max_epochs'\? valid: n, label, genes, max_epochs"):
        cli.run_chapter(str(src), {"max_epoch": 200}, output=out)
    assert not out.exists()  # validated before anything ran


@pytest.mark.parametrize("name, value", [("max_epochs", 2.5), ("max_epochs", True), ("label", 3),
                                         ("genes", "A"), ("n", "two")])
def test_wrong_type_names_parameter(tmp_path, name, value):
    src = _write_chapter(tmp_path / "toy.md")
    with pytest.raises(ValueError, match=rf"parameter '{name}' of chapter toy expects"):
        cli.run_chapter(str(src), {name: value}, output=tmp_path / "out.ipynb")


def test_cli_bad_parameter_exits_2(tmp_path, capsys):
    src = _write_chapter(tmp_path / "toy.md")
    assert cli.main(["run", str(src), "-p", "max_epoch", "200"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'max_epochs'?" in err and "Traceback" not in err
    assert cli.main(["run", str(src), "-p", "genes", "A"]) == 2
    assert "parameter 'genes'" in capsys.readouterr().err
    assert cli.main(["run", "no_such_chapter"]) == 2
    assert "unknown chapter" in capsys.readouterr().err


def test_book_extra_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jupytext", None)
    assert cli.main(["list"]) == 1
    assert "install the book extra: pip install 'scnotes[book]'" in capsys.readouterr().err
    assert cli.main(["run", "count_vaes", "-p", "seed", "1"]) == 1
    assert "scnotes[book]" in capsys.readouterr().err
    with pytest.raises(cli.BookExtraMissing, match=re.escape("pip install 'scnotes[book]'")):
        cli.run_chapter("count_vaes")


def test_list_shows_documented_parameters(capsys):
    chapter = "pbmc_count_models"
    source = cli.chapter_parameters(chapter)
    assert cli.main(["list", chapter]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # Independent of the parser: every "name = value  # description" line of the cell.
    documented = re.findall(r"^(\w+)\s*=[^#\n]*#\s*(.+)$", source, flags=re.M)
    assert documented
    for name, description in documented:
        description = description.strip()
        required = description.startswith("[required]")
        description = description.removeprefix("[required]").strip()
        assert name in rows and description in rows[name]
        assert (" * " in rows[name]) == required, rows[name]
    assert not re.search(r"^\w+\s*=", out, flags=re.M)  # a table, not the raw code
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"== {c}\n" in out for c in cli.chapters())


def test_run_chapter_overrides_parameters(tmp_path):
    src = _write_chapter(tmp_path / "toy.md")
    before = src.read_text()
    out = cli.run_chapter(str(src), {"n": 5, "label": "zz"}, output=tmp_path / "out.ipynb")
    assert "zz 50 3" in _streams(out)
    assert src.read_text() == before


def test_cli_run_converts_and_is_quiet(tmp_path, caplog):
    src = _write_chapter(tmp_path / "toy.md")
    out = tmp_path / "cli.ipynb"
    # "007" is a number to YAML; the str parameter gets the text back.
    assert cli.main(["run", str(src), "-p", "label", "007", "-p", "genes", "[X]", "-o", str(out)]) == 0
    assert "007 20 1" in _streams(out)
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("papermill")
             and r.getMessage().startswith(("Unable to parse line", "Passed unknown parameter"))]
    assert not noise


def test_unknown_chapter():
    with pytest.raises(KeyError, match="unknown chapter"):
        cli.run_chapter("no_such_chapter")


def test_parse_value():
    assert cli._parse_value("3") == 3
    assert cli._parse_value("[3, 10]") == [3, 10]
    assert cli._parse_value("pbmc_facs_zheng2017") == "pbmc_facs_zheng2017"
    assert cli._parse_value("/tmp/x.h5ad") == "/tmp/x.h5ad"
    assert cli._parse_value("None") is None
