"""Parse RecBole ``.hyper`` search-space files (the ``--params_file`` format) into plain data.

One parameter per line, as in RecBole 1.2.1's ``HyperTuning._build_space_from_file``::

    learning_rate loguniform -8,0        # exp(U(-8, 0)): natural-log exponents, 3.4e-4 .. 1
    hidden_size   choice [64,128]        # any Python literal list
    dropout_prob  uniform 0.1,0.5
    n_layers      quniform 1,3,1         # round(U(low, high) / q) * q
    n_heads       randint 1,4            # integer in [low, high): high excluded (hyperopt/Ray)

This module is independent of Ray (so it is cheap to import and to test);
``recbole_letter.tuning.search`` turns :class:`HyperParam` objects into Ray Tune domains.

Deliberate differences from RecBole's parser, each because RecBole's behaviour loses a search
silently or runs code from a text file:

* blank lines, lines starting with ``#`` and trailing ``# comments`` are skipped; any other line that does not parse is an
  error naming the file and line (RecBole skips lines with fewer than three tokens and raises a
  bare ``ValueError`` for the rest);
* ``choice`` values are read with :func:`ast.literal_eval`, not ``eval``, and keep spaces inside
  string literals (RecBole deletes every space of the value);
* ``quniform`` with integer ``low``, ``high`` and ``q`` samples ints (hyperopt gives floats such as
  ``64.0``, which torch layer sizes reject);
* ``randint`` is accepted (hyperopt's ``hp.randint``; RecBole's file parser lacks it);
* a name may appear only once (RecBole keeps the last line).
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("choice", "uniform", "loguniform", "quniform", "randint")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class HyperFileError(ValueError):
    """A ``.hyper`` file line that cannot be turned into a search dimension."""


@dataclass(frozen=True)
class HyperParam:
    """One search dimension; which fields are set depends on ``kind``.

    ``low``/``high`` are in the units the file uses: for ``loguniform`` they are natural-log
    exponents (RecBole/hyperopt semantics); :attr:`value_range` gives the sampled value range.
    """

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    q: float | None = None
    integer: bool = False

    @property
    def value_range(self) -> tuple[float, float] | None:
        """Smallest and largest value the dimension can produce (None for ``choice``)."""
        if self.kind == "choice":
            return None
        if self.kind == "loguniform":
            return math.exp(self.low), math.exp(self.high)
        if self.kind == "randint":
            return self.low, self.high - 1
        return self.low, self.high

    def describe(self) -> str:
        """Human-readable form for logs and the results JSON."""
        if self.kind == "choice":
            return f"choice {list(self.choices)!r}"
        if self.kind == "loguniform":
            lo, hi = self.value_range  # type: ignore[misc]
            return f"loguniform exp({self.low:g})..exp({self.high:g}) = {lo:.3g}..{hi:.3g}"
        if self.kind == "quniform":
            return f"quniform {self.low:g}..{self.high:g} step {self.q:g}" + (" (int)" if self.integer else "")
        if self.kind == "randint":
            return f"randint {int(self.low)}..{int(self.high) - 1}"
        return f"uniform {self.low:g}..{self.high:g}"


_INVALID = object()


def _literal_before_comment(value: str) -> Any:
    """``ast.literal_eval`` of ``value``, or of its longest prefix before a ``#`` that parses.

    A ``#`` may sit inside a string choice (``['a#b']``) or start a trailing comment; trying the
    whole text first, then each cut before a ``#``, tells the two apart without a tokenizer.
    """
    cuts = [len(value)] + [i for i in range(len(value) - 1, -1, -1) if value[i] == "#"]
    for cut in cuts:
        try:
            return ast.literal_eval(value[:cut].strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return _INVALID


def _numbers(text: str, count: tuple[int, ...], where: str, usage: str) -> list[str]:
    parts = [p for p in text.replace(" ", "").split(",")]
    if len(parts) not in count or any(p == "" for p in parts):
        raise HyperFileError(f"{where}: expected {usage}, got '{text}'. Fix: write e.g. '{usage}'.")
    return parts


def _float(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HyperFileError(f"{where}: '{text}' is not a number. Fix: use plain numbers like 0.1 or -8.") from None
    if not math.isfinite(value):
        raise HyperFileError(f"{where}: bound '{text}' is not finite. Fix: use finite numbers.")
    return value


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


def _ordered(low: float, high: float, where: str) -> None:
    if not low < high:
        raise HyperFileError(f"{where}: low {low:g} must be smaller than high {high:g}. Fix: swap or widen the bounds.")


def parse_line(line: str, where: str = "<line>") -> HyperParam | None:
    """One ``.hyper`` line -> :class:`HyperParam`; None for blank and ``#`` comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split(None, 2)
    if len(parts) < 3:
        raise HyperFileError(
            f"{where}: '{text}' needs three fields '<name> <type> <values>'. Fix: e.g. 'learning_rate loguniform -8,0'."
        )
    name, kind, value = parts
    if kind != "choice":
        value = value.split("#", 1)[0].strip()  # trailing comment; '#' cannot occur in numbers
    if not _NAME.match(name):
        raise HyperFileError(f"{where}: '{name}' is not a config key. Fix: use a RecBole key such as 'learning_rate'.")
    if kind not in KINDS:
        raise HyperFileError(f"{where}: unknown type '{kind}' for {name}. Fix: use one of {', '.join(KINDS)}.")
    if kind == "choice":
        choices = _literal_before_comment(value)
        if choices is _INVALID:
            raise HyperFileError(
                f"{where}: choice values '{value}' are not a Python literal list. Fix: e.g. [64,128] or ['a','b']."
            )
        if not isinstance(choices, (list, tuple)) or not choices:
            raise HyperFileError(f"{where}: choice needs a non-empty list, got '{value}'. Fix: e.g. [64,128].")
        return HyperParam(name, kind, choices=tuple(choices))
    if kind in ("uniform", "loguniform"):
        low, high = (_float(p, where) for p in _numbers(value, (2,), where, f"{name} {kind} low,high"))
        _ordered(low, high, where)
        return HyperParam(name, kind, low=low, high=high)
    if kind == "quniform":
        parts3 = _numbers(value, (3,), where, f"{name} quniform low,high,q")
        low, high, q = (_float(p, where) for p in parts3)
        _ordered(low, high, where)
        if q <= 0:
            raise HyperFileError(f"{where}: quniform step q={q:g} must be positive. Fix: e.g. '{name} quniform 16,128,16'.")
        return HyperParam(name, kind, low=low, high=high, q=q, integer=all(_is_int(p) for p in parts3))
    # randint: 'high' alone means [0, high), like hyperopt's hp.randint(label, upper)
    bounds = _numbers(value, (1, 2), where, f"{name} randint low,high")
    if not all(_is_int(b) for b in bounds):
        raise HyperFileError(f"{where}: randint bounds '{value}' must be integers. Fix: e.g. '{name} randint 1,4'.")
    low, high = (0, int(bounds[0])) if len(bounds) == 1 else (int(bounds[0]), int(bounds[1]))
    _ordered(low, high, where)
    return HyperParam(name, kind, low=low, high=high, integer=True)


def parse_hyper_text(text: str, source: str = "<text>") -> list[HyperParam]:
    """Parse a whole ``.hyper`` document; ``source`` names it in error messages."""
    params: list[HyperParam] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        param = parse_line(line, f"{source}:{lineno}")
        if param is None:
            continue
        if param.name in seen:
            raise HyperFileError(f"{source}:{lineno}: '{param.name}' is defined twice. Fix: keep one line per parameter.")
        seen.add(param.name)
        params.append(param)
    if not params:
        raise HyperFileError(f"{source}: no parameters found. Fix: add lines like 'learning_rate loguniform -8,0'.")
    return params


def parse_hyper_file(path: str | Path) -> list[HyperParam]:
    """Parse the ``.hyper`` file at ``path`` (see module docstring for the format)."""
    file = Path(path)
    if not file.is_file():
        raise HyperFileError(
            f"params file '{path}' not found. Fix: pass an existing .hyper file, e.g. properties/hyper/SASRec.hyper."
        )
    return parse_hyper_text(file.read_text(encoding="utf-8"), str(path))
