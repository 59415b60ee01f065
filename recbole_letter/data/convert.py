"""Convert published recommendation data into RecBole atomic files.

Two sources are supported, both producing ``<out>/<NAME>/<NAME>.inter`` and, when item text is
available, ``<out>/<NAME>/<NAME>.item``::

    python -m recbole_letter.data.convert letter <dir> --dataset <NAME> --out <data_path>
    python -m recbole_letter.data.convert amazon --reviews <file> --meta <file> \\
        --dataset <NAME> --out <data_path> --kcore 5

Options: ``letter --letter-name <ds>`` when the files in ``<dir>`` are not named after it;
``amazon --min-rating 4`` to keep only positive reviews; ``--meta`` may be omitted (no ``.item``).
Python API: :func:`convert_letter`, :func:`convert_amazon` (both return a
:class:`ConversionSummary`), :func:`main`.

Why these choices
-----------------
* **LETTER / LC-Rec JSON** (``<ds>.inter.json`` = ``{user: [items, chronological]}``) carries no
  timestamps, only order. We write a *global strictly increasing counter* over (user, position)
  as ``timestamp``: RecBole's time-ordered leave-one-out split (``LS``/``TO``/``group_by: user``)
  then puts each user's last item in test and the second-last in valid, exactly the paper's split,
  and ties are impossible. User and item ids are kept as their original string tokens ("0",
  "17"), so a published ``<ds>.index.json`` keyed by item id still matches; it is validated and
  copied next to the atomic files as ``<NAME>.index.json``; an LC-Rec ``<ds>.user.json`` (per-user
  preference text, used by LCRec's itemsearch / preferenceobtain tasks) is copied likewise.
* **Raw Amazon reviews** (2014 and 2018 dumps, gzip or plain): optional rating threshold, exact
  (user, item) duplicates removed keeping the earliest, iterative k-core, then each user's
  interactions sorted by time (stable: ties keep file order). The written ``timestamp`` is the
  original ``unixReviewTime`` plus a tie-breaking fraction ``k / n`` for the k-th of n
  interactions a user has in the same second: ``floor(timestamp)`` is still the real time, and
  the order inside a tie is explicit instead of depending on the stability of whoever sorts next.
* **Item text columns**: ``title:token_seq``, ``description:token_seq``, ``brand:token``,
  ``categories:token_seq``. RecBole splits ``token_seq`` on spaces, which is harmless for loading
  (item-text consumers read the raw file). Each category becomes one token (its inner spaces
  replaced by ``_``) so models using categories as item attributes see whole categories. Only
  columns with at least one non-empty value are written. Text is cleaned so that every reader
  (RecBole's pandas parser, the csv module, ``line.split("\\t")``) sees the same fields: HTML tags
  stripped, entities unescaped, all whitespace (tabs, newlines) collapsed to single spaces, and
  ``"`` replaced by ``''`` (pandas would otherwise treat a field starting with ``"`` as quoted).
* Outputs are written to temporary files in the target directory and moved into place with
  ``os.replace`` only after everything succeeded, so a failure never leaves half-written files.
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import html
import json
import os
import re
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd

from recbole_letter.atomic import StagedFiles

PathLike = Union[str, "os.PathLike[str]"]

#: Item text columns written to ``.item`` (name, RecBole type), in file order.
ITEM_FIELDS: tuple[tuple[str, str], ...] = (
    ("title", "token_seq"),
    ("description", "token_seq"),
    ("brand", "token"),
    ("categories", "token_seq"),
)

_TAG_RE = re.compile(r"<[^<>]*>")
_BAD_ID_RE = re.compile(r'[\t\r\n"]')
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ConversionSummary:
    """What a conversion produced; ``line()`` is the one-line report printed by the CLI."""

    dataset: str
    n_users: int
    n_items: int
    n_interactions: int
    inter_path: Path
    item_path: Optional[Path] = None
    index_path: Optional[Path] = None
    #: LETTER/LC-Rec: copied per-user preference file (LCRec's itemsearch / preferenceobtain tasks).
    user_path: Optional[Path] = None
    #: Items written without any metadata (absent from item.json / the meta file).
    items_without_text: int = 0
    #: LETTER: interactions whose item equals the same user's previous item (kept, not dropped).
    consecutive_repeats: Optional[int] = None
    #: LETTER: interactions whose (user, item) pair already occurred earlier (kept).
    repeated_pairs: Optional[int] = None
    #: LETTER: items of the interactions that have no entry in the copied index.json.
    items_without_semantic_id: int = 0
    #: Amazon: reviews dropped by ``min_rating``.
    below_min_rating: int = 0
    #: Amazon: exact (user, item) duplicates dropped (the earliest review is kept).
    duplicates_removed: int = 0
    #: Amazon: interactions removed by k-core filtering and the number of filtering rounds.
    kcore_removed: int = 0
    kcore_rounds: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human-readable line: counts, then output paths, then anything worth noticing."""
        outputs = (self.inter_path, self.item_path, self.index_path, self.user_path)
        paths = [str(p) for p in outputs if p is not None]
        extra = []
        if self.consecutive_repeats is not None:
            extra.append(
                f"{self.consecutive_repeats} consecutive repeats and "
                f"{self.repeated_pairs} repeated (user, item) pairs kept"
            )
        if self.below_min_rating:
            extra.append(f"{self.below_min_rating} reviews below min rating dropped")
        if self.duplicates_removed:
            extra.append(f"{self.duplicates_removed} duplicate (user, item) reviews dropped")
        if self.kcore_rounds:
            extra.append(
                f"k-core removed {self.kcore_removed} interactions in {self.kcore_rounds} rounds"
            )
        if self.item_path is not None or self.items_without_text:
            extra.append(f"{self.items_without_text} items without text")
        if self.index_path is not None:
            extra.append(f"{self.items_without_semantic_id} items without semantic id")
        extra.extend(self.notes)
        text = (
            f"{self.dataset}: {self.n_users} users, {self.n_items} items, "
            f"{self.n_interactions} interactions -> {', '.join(paths)}"
        )
        return text + (f" ({'; '.join(extra)})" if extra else "")


# --------------------------------------------------------------------------------------------
# text helpers


def clean_text(value: Any) -> str:
    """Return ``value`` as one clean line of text safe for a tab-separated atomic file.

    Strips HTML tags (twice: entity-escaped tags such as ``&lt;br&gt;`` become tags after
    unescaping), unescapes entities, collapses every run of whitespace (including tabs and
    newlines, which would break the row structure) to one space, and replaces ``"`` by ``''``
    because pandas' CSV parser treats a field starting with ``"`` as quoted. Lists (Amazon 2018
    descriptions) are joined with spaces; ``None`` gives ``""``.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return clean_text(" ".join(clean_text(v) for v in value))
    if not isinstance(value, str):
        value = str(value)
    text = _TAG_RE.sub(" ", value)
    text = html.unescape(text)
    text = _TAG_RE.sub(" ", text)
    text = text.replace('"', "''")
    return " ".join(text.split())


def _category_list(value: Any) -> list[str]:
    """Flatten categories (str "a,b", list, or Amazon 2014 list of lists) keeping first order."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = []
        for v in value:
            parts.extend(_category_list(v) if isinstance(v, (list, tuple)) else [v])
    else:
        raise ValueError(f"categories must be a string or a list, got {type(value).__name__}")
    seen: dict[str, None] = {}
    for p in parts:
        c = clean_text(p)
        if c:
            seen.setdefault(c, None)
    return list(seen)


def _categories_field(value: Any) -> str:
    """Categories as a space-separated token_seq, one token per category (spaces -> ``_``)."""
    return " ".join(c.replace(" ", "_") for c in _category_list(value))


# --------------------------------------------------------------------------------------------
# file helpers


def _open_text(path: Path) -> IO[str]:
    """Open ``path`` for reading text, gunzipping when its first bytes are the gzip magic.

    Detection by content, not extension, because Amazon dumps are often renamed after download.
    """
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}; check the path you passed")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def _parse_record(line: str, path: Path, lineno: int) -> dict:
    """Parse one JSON-lines record; Amazon 2014 metadata lines are Python literals instead."""
    try:
        rec = json.loads(line)
    except ValueError:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"{path}:{lineno}: line is neither JSON nor a Python dict literal; "
                "pass an Amazon reviews/metadata file with one record per line"
            ) from None
    if not isinstance(rec, dict):
        raise ValueError(
            f"{path}:{lineno}: record is a {type(rec).__name__}, not an object; "
            "pass an Amazon reviews/metadata file with one JSON object per line"
        )
    return rec


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, stripped line) for the non-blank lines of ``path``."""
    with _open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if line:
                    yield lineno, line
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path}: cannot be read as UTF-8 text ({exc}); pass an uncorrupted plain or "
                "gzip file"
            ) from None


def _load_json(path: Path, what: str) -> Any:
    """Load a whole JSON file, turning a parse failure into a one-line error naming ``what``."""
    try:
        with _open_text(path) as fh:
            return json.load(fh)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {what}") from None


def _check_ids(values: pd.Series, what: str, source: Path) -> None:
    """Reject ids that would break a tab-separated row or be read back as quoted."""
    bad = values[values.str.contains(_BAD_ID_RE)]
    if len(bad):
        raise ValueError(
            f"{source}: {what} id {bad.iloc[0]!r} contains a tab, newline or double quote; "
            "rename such ids before converting"
        )
    empty = values[values == ""]
    if len(empty):
        raise ValueError(f"{source}: empty {what} id found; remove records without a {what} id")


def _frame_writer(header: Sequence[str], frame: pd.DataFrame) -> Callable[[IO[str]], None]:
    """Writer for a tab-separated atomic file with RecBole's ``name:type`` header.

    ``QUOTE_NONE`` without an escape character makes pandas raise instead of silently quoting if
    a value still contained a tab or quote, i.e. it doubles as a check that cleaning worked.
    """

    def write(fh: IO[str]) -> None:
        fh.write("\t".join(header) + "\n")
        frame.to_csv(
            fh, sep="\t", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n"
        )

    return write


def _dataset_dir(out: PathLike, dataset: str) -> Path:
    """Validate the dataset name (it becomes a directory and file prefix) and return its dir."""
    if not dataset or dataset in {".", ".."} or any(c in dataset for c in "/\\\t\n"):
        raise ValueError(
            f"invalid dataset name {dataset!r}; use a plain name such as 'Instruments'"
        )
    if dataset == "ml-100k":
        raise ValueError(
            "dataset name 'ml-100k' is reserved by RecBole (it always loads its bundled copy); "
            "choose another --dataset name"
        )
    return Path(out) / dataset


def _item_frame(
    items: Sequence[str], text: dict[str, dict[str, str]]
) -> tuple[Optional[pd.DataFrame], list[str], int]:
    """Build the ``.item`` frame for ``items`` from cleaned per-item text.

    Returns (frame or None when no column has any text, header, number of items without text).
    """
    missing = sum(1 for i in items if i not in text)
    columns: dict[str, list[str]] = {"item_id": list(items)}
    header = ["item_id:token"]
    for name, ftype in ITEM_FIELDS:
        values = [text.get(i, {}).get(name, "") for i in items]
        if any(values):
            columns[name] = values
            header.append(f"{name}:{ftype}")
    if len(header) == 1:
        return None, header, missing
    return pd.DataFrame(columns), header, missing


# --------------------------------------------------------------------------------------------
# LETTER / LC-Rec JSON


def _letter_item_text(raw: Any, path: Path) -> dict[str, dict[str, str]]:
    """Validate ``<ds>.item.json`` and return cleaned text per item id."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a JSON object {{item: {{title, description, ...}}}}, got "
            f"{type(raw).__name__}; pass a LETTER/LC-Rec item.json"
        )
    out: dict[str, dict[str, str]] = {}
    for item, info in raw.items():
        if not isinstance(info, dict):
            raise ValueError(
                f"{path}: item {item!r} maps to a {type(info).__name__}, not an object; "
                "each item must map to {title, description, brand, categories}"
            )
        try:
            out[str(item)] = {
                "title": clean_text(info.get("title")),
                "description": clean_text(info.get("description")),
                "brand": clean_text(info.get("brand")),
                "categories": _categories_field(info.get("categories")),
            }
        except ValueError as exc:
            raise ValueError(f"{path}: item {item!r}: {exc}; fix that entry") from None
    return out


def _validate_index(raw: Any, path: Path) -> set[str]:
    """Check ``<ds>.index.json`` is ``{item: [str, ...]}`` and return its item ids."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a JSON object {{item: [\"<a_1>\", ...]}}, got "
            f"{type(raw).__name__}; pass a LETTER/LC-Rec index.json"
        )
    for item, codes in raw.items():
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
            raise ValueError(
                f"{path}: item {item!r} must map to a non-empty list of code strings such as "
                f"[\"<a_1>\", \"<b_2>\"], got {codes!r:.60}; fix or regenerate the index"
            )
    return set(raw)


def convert_letter(
    src_dir: PathLike, dataset: str, out: PathLike, name: Optional[str] = None
) -> ConversionSummary:
    """Convert LETTER / LC-Rec JSON files in ``src_dir`` into RecBole atomic files.

    ``name`` is the file prefix inside ``src_dir`` (``<name>.inter.json`` ...) and defaults to
    the directory's basename, as in the published repositories. See the module docstring for why
    timestamps are a global counter and ids are kept as string tokens.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(
            f"LETTER data directory not found: {src}; pass an existing directory"
        )
    name = name or src.resolve().name
    inter_json = src / f"{name}.inter.json"
    if not inter_json.is_file():
        raise FileNotFoundError(
            f"{inter_json} not found; pass the directory holding <name>.inter.json "
            "or give the file prefix with --letter-name"
        )
    target = _dataset_dir(out, dataset)

    raw = _load_json(inter_json, "{user: [item, ...]}")
    if not isinstance(raw, dict):
        raise ValueError(
            f"{inter_json}: expected a JSON object {{user: [items in time order]}}, got "
            f"{type(raw).__name__}; pass a LETTER/LC-Rec inter.json"
        )
    for user, seq in raw.items():
        if not isinstance(seq, list):
            raise ValueError(
                f"{inter_json}: user {user!r} maps to a {type(seq).__name__}, not a list; "
                "each user must map to the list of their items in time order"
            )
    lengths = np.fromiter((len(s) for s in raw.values()), dtype=np.int64, count=len(raw))
    flat = list(chain.from_iterable(raw.values()))
    kinds = {type(x) for x in flat}
    if not kinds <= {int, str}:
        bad = next(x for x in flat if type(x) not in (int, str))
        raise ValueError(
            f"{inter_json}: item {bad!r} is a {type(bad).__name__}; items must be integers or "
            "strings"
        )
    if not flat:
        raise ValueError(f"{inter_json}: contains no interactions; pass a non-empty inter.json")
    users = np.repeat(np.array([str(u) for u in raw], dtype=object), lengths)
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": pd.Series(flat, dtype=object).astype(str),
            # Global counter over (user, position): preserves each user's order, no ties.
            "timestamp": np.arange(len(flat), dtype=np.int64),
        }
    )
    _check_ids(frame["user_id"], "user", inter_json)
    _check_ids(frame["item_id"], "item", inter_json)

    same_user = frame["user_id"].eq(frame["user_id"].shift())
    consecutive = int((same_user & frame["item_id"].eq(frame["item_id"].shift())).sum())
    repeated = int(frame.duplicated(["user_id", "item_id"]).sum())
    items = frame["item_id"].drop_duplicates().tolist()

    summary = ConversionSummary(
        dataset=dataset,
        n_users=int((lengths > 0).sum()),
        n_items=len(items),
        n_interactions=len(frame),
        inter_path=target / f"{dataset}.inter",
        consecutive_repeats=consecutive,
        repeated_pairs=repeated,
    )
    empty_users = int((lengths == 0).sum())
    if empty_users:
        summary.notes.append(f"{empty_users} users with no items skipped")

    staged = StagedFiles()
    try:
        staged.write(
            summary.inter_path,
            _frame_writer(["user_id:token", "item_id:token", "timestamp:float"], frame),
        )
        item_json = src / f"{name}.item.json"
        if item_json.is_file():
            text = _letter_item_text(_load_json(item_json, "{item: {title, ...}}"), item_json)
            item_frame, header, missing = _item_frame(items, text)
            summary.items_without_text = missing
            if item_frame is not None:
                summary.item_path = target / f"{dataset}.item"
                staged.write(summary.item_path, _frame_writer(header, item_frame))
            else:
                summary.notes.append(f"{item_json.name} has no text for these items")
        index_json = src / f"{name}.index.json"
        if index_json.is_file():
            indexed = _validate_index(_load_json(index_json, "{item: [codes]}"), index_json)
            summary.items_without_semantic_id = sum(1 for i in items if i not in indexed)
            summary.index_path = target / f"{dataset}.index.json"
            staged.copy_bytes(index_json, summary.index_path)
        user_json = src / f"{name}.user.json"
        if user_json.is_file():
            prefs = _load_json(user_json, "{user_explicit_preference: {user: [text]}}")
            if not isinstance(prefs, dict) or "user_explicit_preference" not in prefs:
                raise ValueError(
                    f"{user_json}: expected LC-Rec's user.json with a 'user_explicit_preference' "
                    "object; fix the file or move it out of the directory"
                )
            summary.user_path = target / f"{dataset}.user.json"
            staged.copy_bytes(user_json, summary.user_path)
        staged.commit()
    finally:
        staged.discard()
    return summary


# --------------------------------------------------------------------------------------------
# Amazon reviews + metadata


def _read_reviews(path: Path, need_rating: bool) -> pd.DataFrame:
    """Read Amazon review lines into (user, item, rating, time, line) columns."""
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    times: list[int] = []
    linenos: list[int] = []
    for lineno, line in _iter_lines(path):
        rec = _parse_record(line, path, lineno)
        try:
            user, item, t = rec["reviewerID"], rec["asin"], rec["unixReviewTime"]
        except KeyError as exc:
            raise ValueError(
                f"{path}:{lineno}: review has no {exc.args[0]!r}; pass an Amazon reviews file "
                "(records with reviewerID, asin, overall, unixReviewTime)"
            ) from None
        rating = rec.get("overall")
        if need_rating and rating is None:
            raise ValueError(
                f"{path}:{lineno}: review has no 'overall' rating but --min-rating was given; "
                "drop --min-rating or pass a reviews file with ratings"
            )
        try:
            times.append(int(t))
            ratings.append(float(rating) if rating is not None else np.nan)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}:{lineno}: unixReviewTime {t!r} / overall {rating!r} is not numeric; "
                "fix or remove that line"
            ) from None
        users.append(str(user))
        items.append(str(item))
        linenos.append(lineno)
    if not users:
        raise ValueError(f"{path}: contains no reviews; pass a non-empty Amazon reviews file")
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": np.asarray(ratings, dtype=np.float64),
            "time": np.asarray(times, dtype=np.int64),
            "line": np.asarray(linenos, dtype=np.int64),
        }
    )
    _check_ids(frame["user_id"], "user", path)
    _check_ids(frame["item_id"], "item", path)
    return frame


def kcore_filter(frame: pd.DataFrame, k: int, user: str = "user_id", item: str = "item_id"
                 ) -> tuple[pd.DataFrame, int]:
    """Keep the largest subset where every user and every item has at least ``k`` rows.

    Removing a sparse item can push a user below ``k`` (and vice versa), so filtering repeats
    until nothing changes. Each round is vectorised counts + a boolean mask. Returns the
    filtered frame and the number of rounds that removed something.
    """
    rounds = 0
    while len(frame):
        user_n = frame.groupby(user, sort=False)[user].transform("size")
        item_n = frame.groupby(item, sort=False)[item].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if bool(keep.all()):
            break
        frame = frame[keep.to_numpy()]
        rounds += 1
    return frame, rounds


def _tie_free_time(frame: pd.DataFrame) -> np.ndarray:
    """Original time + k/n for the k-th of n rows sharing (user, time); frame is sorted."""
    group = frame.groupby(["user_id", "time"], sort=False)
    k = group.cumcount().to_numpy(dtype=np.float64)
    n = group["time"].transform("size").to_numpy(dtype=np.float64)
    return frame["time"].to_numpy(dtype=np.float64) + k / n


def _read_meta(path: Path, wanted: set[str]) -> dict[str, dict[str, str]]:
    """Cleaned text for the ``wanted`` asins from an Amazon 2014 or 2018 metadata file.

    A cheap regex peek at the asin skips lines for other items without parsing them: 2014
    metadata lines are Python literals and ``ast.literal_eval`` is the slow part.
    """
    out: dict[str, dict[str, str]] = {}
    for lineno, line in _iter_lines(path):
        peek = _ASIN_RE.search(line)
        if peek is not None and peek.group(1) not in wanted:
            continue
        rec = _parse_record(line, path, lineno)
        if "asin" not in rec:
            raise ValueError(
                f"{path}:{lineno}: metadata record has no 'asin'; pass an Amazon metadata file"
            )
        asin = str(rec["asin"])
        if asin not in wanted or asin in out:
            continue
        try:
            cats = rec.get("categories", rec.get("category"))
            out[asin] = {
                "title": clean_text(rec.get("title")),
                "description": clean_text(rec.get("description")),
                "brand": clean_text(rec.get("brand")),
                "categories": _categories_field(cats),
            }
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}; fix that record") from None
    return out


def convert_amazon(
    reviews: PathLike,
    meta: Optional[PathLike],
    dataset: str,
    out: PathLike,
    kcore: int = 5,
    min_rating: Optional[float] = None,
) -> ConversionSummary:
    """Convert raw Amazon reviews (+ optional metadata) into k-core RecBole atomic files.

    Pipeline: optional ``overall >= min_rating`` filter, exact (user, item) duplicates dropped
    keeping the earliest review, iterative k-core, per-user time sort (ties keep file order).
    Writes ``rating:float`` and a tie-free ``timestamp:float`` (see module docstring).
    """
    if kcore < 1:
        raise ValueError(f"kcore must be >= 1 (1 disables filtering), got {kcore}")
    reviews_path = Path(reviews)
    meta_path = Path(meta) if meta is not None else None
    target = _dataset_dir(out, dataset)
    if meta_path is not None and not meta_path.is_file():
        raise FileNotFoundError(f"metadata file not found: {meta_path}; check --meta")

    frame = _read_reviews(reviews_path, need_rating=min_rating is not None)
    n_read = len(frame)
    below = 0
    if min_rating is not None:
        frame = frame[frame["rating"].to_numpy() >= min_rating]
        below = n_read - len(frame)
        if frame.empty:
            raise ValueError(
                f"{reviews_path}: no review has overall >= {min_rating}; lower --min-rating"
            )
    frame = frame.sort_values(["time", "line"], kind="stable")
    before = len(frame)
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    duplicates = before - len(frame)
    before = len(frame)
    frame, rounds = kcore_filter(frame, kcore)
    if frame.empty:
        raise ValueError(
            f"{reviews_path}: nothing left after {kcore}-core filtering of {before} interactions; "
            "lower --kcore or use a larger reviews file"
        )
    frame = frame.sort_values(["user_id", "time", "line"], kind="stable").reset_index(drop=True)
    inter = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "rating": frame["rating"],
            "timestamp": _tie_free_time(frame),
        }
    )
    items = inter["item_id"].drop_duplicates().tolist()
    summary = ConversionSummary(
        dataset=dataset,
        n_users=int(inter["user_id"].nunique()),
        n_items=len(items),
        n_interactions=len(inter),
        inter_path=target / f"{dataset}.inter",
        below_min_rating=below,
        duplicates_removed=duplicates,
        kcore_removed=before - len(frame),
        kcore_rounds=rounds,
    )
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    if inter["rating"].isna().all():
        inter = inter.drop(columns="rating")
        header.remove("rating:float")
    elif inter["rating"].isna().any():
        raise ValueError(
            f"{reviews_path}: {int(inter['rating'].isna().sum())} kept reviews lack 'overall' "
            "while others have it; remove those lines (the rating column needs all or none)"
        )

    item_frame = None
    if meta_path is not None:
        text = _read_meta(meta_path, set(items))
        if not text:
            raise ValueError(
                f"{meta_path}: none of the {len(items)} kept items appear in it; pass the "
                "metadata file of the same Amazon category as the reviews"
            )
        item_frame, item_header, summary.items_without_text = _item_frame(items, text)
        if item_frame is None:
            summary.notes.append("metadata has no text for the kept items")

    staged = StagedFiles()
    try:
        staged.write(summary.inter_path, _frame_writer(header, inter))
        if item_frame is not None:
            summary.item_path = target / f"{dataset}.item"
            staged.write(summary.item_path, _frame_writer(item_header, item_frame))
        staged.commit()
    finally:
        staged.discard()
    return summary


# --------------------------------------------------------------------------------------------
# command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_letter.data.convert",
        description="Convert LETTER/LC-Rec JSON or raw Amazon reviews into RecBole atomic files.",
    )
    sub = parser.add_subparsers(dest="source", required=True)

    letter = sub.add_parser("letter", help="LETTER / LC-Rec <ds>.inter.json (+ item/index json)")
    letter.add_argument("dir", help="directory holding <ds>.inter.json")
    letter.add_argument("--dataset", required=True, help="RecBole dataset name to write")
    letter.add_argument("--out", required=True, help="RecBole data_path (parent of <dataset>/)")
    letter.add_argument(
        "--letter-name", default=None,
        help="file prefix inside <dir> (default: the directory's basename)",
    )

    amazon = sub.add_parser("amazon", help="raw Amazon 2014/2018 reviews + metadata")
    amazon.add_argument("--reviews", required=True, help="reviews JSON lines (plain or gzip)")
    amazon.add_argument("--meta", default=None, help="metadata lines (plain or gzip); optional")
    amazon.add_argument("--dataset", required=True, help="RecBole dataset name to write")
    amazon.add_argument("--out", required=True, help="RecBole data_path (parent of <dataset>/)")
    amazon.add_argument("--kcore", type=int, default=5, help="min interactions per user and item")
    amazon.add_argument(
        "--min-rating", type=float, default=None, help="keep only reviews with overall >= this"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; prints the one-line summary, or a one-line error and returns 2 (bad input)."""
    args = _build_parser().parse_args(argv)
    try:
        if args.source == "letter":
            summary = convert_letter(args.dir, args.dataset, args.out, name=args.letter_name)
        else:
            summary = convert_amazon(
                args.reviews, args.meta, args.dataset, args.out,
                kcore=args.kcore, min_rating=args.min_rating,
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
