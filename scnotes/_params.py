"""The parameter contract of a chapter: parse its ``parameters`` cell, check overrides.

A chapter's ``parameters`` cell is plain Python, one assignment per parameter, each
with a trailing comment that documents it::

    dataset = "pbmc_facs_zheng2017"   # registered name or path to an .h5ad
    label_key = "cell_type"           # [required] obs column of cell-type labels
    genes = ["ISG15", "MX2",          # genes shown in detail
             "IL1B"]

A comment that starts with ``[required]`` marks a parameter that a reader must set
for their own file (an ``obs`` column name, say); the default only fits our data.
Comments anywhere on the lines of a multi-line assignment are joined into one
description. Needs only the standard library, so it works without the ``book`` extra.
"""
from __future__ import annotations

import ast
import difflib
import io
import numbers
import tokenize
from dataclasses import dataclass
from typing import Any

__all__ = ["Parameter", "parse_parameters", "check_parameters", "REQUIRED_MARK"]

REQUIRED_MARK = "[required]"

# Defaults such as ``list(range(1, 31))`` are not literals; these builtins are enough
# for the cells we write, and the chapter source is trusted (papermill runs it anyway).
_SAFE_BUILTINS = {f.__name__: f for f in (range, list, tuple, dict, set, int, float, str, bool,
                                          len, sorted, min, max, abs, round)}


@dataclass(frozen=True)
class Parameter:
    """One assignment of a ``parameters`` cell.

    ``default`` is the evaluated value, ``source`` its Python text and ``type`` the
    name of the default's type (``"any"`` for a ``None`` default or a default that
    cannot be evaluated without running the chapter; such parameters accept anything).
    """

    name: str
    default: Any
    type: str
    description: str
    required: bool
    source: str


def _comments_by_line(source: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.setdefault(tok.start[0], []).append(tok.string.lstrip("#").strip())
    return out


def _evaluate(node: ast.expr) -> tuple[Any, bool]:
    try:
        return ast.literal_eval(node), True
    except Exception:  # ValueError for calls and names; a few others for odd literals
        pass
    try:
        return eval(compile(ast.Expression(node), "<parameters>", "eval"), {"__builtins__": _SAFE_BUILTINS}), True
    except Exception:  # any name or construct we do not evaluate: leave the value unchecked
        return None, False


def parse_parameters(source: str) -> list[Parameter]:
    """Parameters of a ``parameters`` cell, in order.

    Parameters
    ----------
    source : str
        Python source of the cell.

    Returns
    -------
    list of Parameter
        One per top-level assignment to a single name (``x = ...`` or ``x: T = ...``);
        other statements are ignored. A later assignment to the same name replaces the
        earlier one, as it would when the cell runs.

    Raises
    ------
    SyntaxError
        The cell is not valid Python.
    """
    tree = ast.parse(source)
    comments = _comments_by_line(source)
    found: dict[str, Parameter] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, value = stmt.target.id, stmt.value
        else:
            continue
        text = ast.get_source_segment(source, value) or ast.unparse(value)
        default, known = _evaluate(value)
        words = " ".join(c for line in range(stmt.lineno, stmt.end_lineno + 1)
                         for c in comments.get(line, []) if c)
        required = words.startswith(REQUIRED_MARK)
        if required:
            words = words[len(REQUIRED_MARK):].strip()
        typ = type(default).__name__ if known and default is not None else "any"
        found.pop(name, None)
        found[name] = Parameter(name, default, typ, words, required, text)
    return list(found.values())


def _convert(p: Parameter, value: Any, raw: str | None) -> Any:
    """``value`` made to fit ``p``'s type, or raise ``TypeError`` with the expected type."""
    d = p.default
    if value is None or p.type == "any":
        return value  # None is every chapter's "off / not given" value
    if isinstance(d, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(d, int):
        # numbers.Integral: numpy integers from the Python API count as int too
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif isinstance(d, float):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif isinstance(d, str):
        if isinstance(value, str):
            return value
        # YAML reads "-p smillie_cluster 3" as 3 (or "yes" as True); the user meant the text.
        if raw is not None and isinstance(value, (numbers.Number, bool)):
            return raw
    elif isinstance(d, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(d)(value)
    elif isinstance(d, dict):
        if isinstance(value, dict):
            return value
    else:
        return value  # a type we have no rule for (set, ...): papermill passes it as is
    raise TypeError(p.type)


def check_parameters(params: list[Parameter], values: dict[str, Any], chapter: str = "",
                     raw: dict[str, str] | None = None) -> dict[str, Any]:
    """Check overrides against a chapter's parameters and convert them to the defaults' types.

    Rules: a name must be one of ``params``; ``None`` is accepted for every parameter; a
    ``None`` (or unevaluable) default accepts anything; bool needs bool; int needs int;
    float accepts int (converted); str needs str, except that a number or bool that YAML
    parsed from command-line text (given in ``raw``) goes back to that text; list/tuple
    defaults need a list or tuple; dict needs dict.

    Parameters
    ----------
    params : list of Parameter
        From :func:`parse_parameters`.
    values : dict
        Overrides, name -> value.
    chapter : str
        Chapter name for the messages.
    raw : dict, optional
        Command-line text of each value, before YAML parsing.

    Returns
    -------
    dict
        The overrides, converted.

    Raises
    ------
    ValueError
        An unknown name (the message suggests the closest valid name and lists them all)
        or a value of the wrong type (the message names the parameter).
    """
    by_name = {p.name: p for p in params}
    out = {}
    for name, value in values.items():
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise ValueError(f"unknown parameter {name!r} for chapter {chapter}{hint} "
                             f"valid: {', '.join(by_name)}")
        p = by_name[name]
        try:
            out[name] = _convert(p, value, (raw or {}).get(name))
        except TypeError:
            raise ValueError(f"parameter {name!r} of chapter {chapter} expects {p.type} "
                             f"(default {p.source}), got {type(value).__name__} {value!r}") from None
    return out
