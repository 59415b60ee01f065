"""Item text from a RecBole ``.item`` atomic file.

RecBole itself parses ``token_seq`` columns (e.g. ml-100k ``movie_title``) into word-token ids,
which loses the original text; the text encoder needs the raw string.  So the ``.item`` file is
read again here as plain strings (tab separated, header ``name:type``), independent of RecBole's
feature loading and of its internal item renumbering.

Text format (chosen so a sentence encoder sees what each value *is*):
    ``"movie title: Toy Story; release year: 1995; class: Animation Children's Comedy"``
i.e. ``"<field name with '_' as spaces>: <value>"`` for each requested field in the configured
order, joined by ``"; "``; empty values are skipped, whitespace is collapsed.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

logger = logging.getLogger("recbole_letter")

_WS = re.compile(r"\s+")
TEXT_FIELD_TYPES = ("token", "token_seq")  # used when ``item_text_fields`` is not configured


def item_file_for(config: Any) -> Path:
    """``<data_path>/<dataset>.item`` (RecBole's ``data_path`` already ends in the dataset folder)."""
    return Path(config["data_path"]) / f"{config['dataset']}.item"


def read_item_table(item_file: str | os.PathLike[str], sep: str = "\t") -> tuple[pd.DataFrame, dict[str, str]]:
    """Read an ``.item`` file with every column as ``str``.

    Returns the table with columns renamed to the bare field names (``movie_title``), and a
    mapping field name -> declared RecBole type (``token_seq``).  Missing values become ``""``.
    """
    path = Path(item_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"item file {path} not found: item text needs <data_path>/<dataset>.item "
            "(or set item_embedding_file to a precomputed .npy)"
        )
    table = pd.read_csv(
        path,
        sep=sep,
        dtype=str,
        keep_default_na=False,  # "NA"/"null" are legitimate titles, not missing values
        quoting=csv.QUOTE_NONE,  # RecBole does not quote; a stray '"' is part of the text
        encoding="utf-8",
        engine="c",
    )
    table = table.fillna("")  # short rows: trailing fields absent
    names: list[str] = []
    types: dict[str, str] = {}
    for header in table.columns:
        name, _, ftype = str(header).strip().partition(":")
        if name in types:
            raise ValueError(f"item file {path} has the column {name!r} twice: remove the duplicate column")
        names.append(name)
        types[name] = ftype
    table.columns = names
    return table, types


def _clean(value: str) -> str:
    return _WS.sub(" ", value).strip()


def _label(field: str) -> str:
    return field.replace("_", " ")


def default_text_fields(types: dict[str, str], id_field: str) -> list[str]:
    """All ``token``/``token_seq`` columns except the id, in file order (numeric columns are skipped)."""
    return [name for name, ftype in types.items() if name != id_field and ftype in TEXT_FIELD_TYPES]


def texts_from_table(
    table: pd.DataFrame,
    types: dict[str, str],
    item_tokens: Sequence[str],
    fields: Sequence[str],
    max_chars: int | None,
    id_field: str = "item_id",
    source: str = "item file",
) -> tuple[list[str], int]:
    """Build the texts of :func:`item_texts` from an already-read table (lets callers read once)."""
    if id_field not in types:
        raise ValueError(
            f"{source} has no {id_field!r} column (available: {', '.join(types)}): "
            "set ITEM_ID_FIELD to the item id column"
        )
    missing = [f for f in fields if f not in types]
    if missing:
        raise ValueError(
            f"item_text_fields {missing} not in {source} (available: {', '.join(n for n in types if n != id_field)}): "
            "fix item_text_fields"
        )
    if not fields:
        raise ValueError(f"item_text_fields is empty: list at least one column of {source}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0):
        raise ValueError(f"item_text_max_chars must be a positive int or None, got {max_chars!r}")

    ids = table[id_field].map(str.strip)
    dup = ids.duplicated(keep="first")
    if dup.any():
        logger.warning("%s: %d duplicate item ids, keeping the first row of each", source, int(dup.sum()))
    joined = pd.Series([""] * len(table), index=table.index, dtype=object)
    for name in fields:  # vectorised over items; the loop is over the few configured fields
        values = table[name].map(_clean)
        part = values.where(values == "", _label(name) + ": " + values)
        glue = pd.Series("", index=table.index, dtype=object).where((joined == "") | (part == ""), "; ")
        joined = joined + glue + part
    by_token = dict(zip(ids[~dup], joined[~dup].astype(str)))

    texts: list[str] = []
    n_empty = 0
    for token in item_tokens:
        text = by_token.get(str(token), "")
        if max_chars is not None:
            text = text[:max_chars].rstrip()
        if not text:
            n_empty += 1
        texts.append(text)
    return texts, n_empty


def item_texts(
    item_file: str | os.PathLike[str],
    item_tokens: Sequence[str],
    fields: Sequence[str] | None,
    max_chars: int | None,
    *,
    id_field: str = "item_id",
    sep: str = "\t",
) -> tuple[list[str], int]:
    """One text per requested item token (aligned with ``item_tokens``) and the number of empty ones.

    ``fields`` are column names without type, in the order they appear in the text; ``None``
    means every ``token``/``token_seq`` column except the id.  Items absent from the file get an
    empty text (counted, not an error: RecBole keeps items that only appear in ``.inter``).
    ``max_chars`` truncates each joined text (``None``: no limit).
    """
    table, types = read_item_table(item_file, sep=sep)
    if fields is None:
        fields = default_text_fields(types, id_field)
        logger.info("item_text_fields not set: using %s from %s", fields, item_file)
    return texts_from_table(table, types, item_tokens, list(fields), max_chars, id_field=id_field, source=str(item_file))
