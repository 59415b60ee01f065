"""Semantic-ID tables: collision resolution, cold-start assignment and index JSON import/export.

A *code table* is an int64 array ``[n_items, n_levels]`` holding one code tuple per real item
(no padding row); level ``l`` codes lie in ``[0, size_l)``. A quantiser does not guarantee that
tuples are distinct, yet a generative recommender needs a one-to-one map from tuples to items
(otherwise a decoded tuple is ambiguous). This module turns any table into a collision-free one
the way LETTER/TIGER do, and reads/writes the ``{"item": ["<a_1>", "<b_7>", ...]}`` index JSON
used by the LETTER and LC-Rec code so published indices can be evaluated and ours reused.

Resolution rule (``make_unique``):

1. If distances from every item to every last-level code are given, items whose full tuple is
   shared are moved, on the last level only, to the nearest *free* code under the same prefix
   (prefix = first ``L-1`` codes). The item closest to the contested code keeps it; the others
   are matched to free codes greedily by ascending distance. Moving only the last level keeps
   the coarse semantic levels intact, which is what makes the tuple a meaningful ID.
2. Items that still collide (identical inputs without distances, or a prefix whose last level is
   full) get one extra disambiguation level ``0, 1, 2, ...`` within each group of identical
   tuples (ordered by item index, so the output is deterministic); all other items get ``0``.
   The level is added only when some item needs it.
"""
from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_letter.atomic import write_text_atomic

__all__ = [
    "LEVEL_LETTERS",
    "SemanticIDTable",
    "assign_new_items",
    "code_token",
    "count_collisions",
    "export_index_json",
    "load_index_json",
    "make_unique",
]

#: Level ``l`` of a code tuple is written ``<{LEVEL_LETTERS[l]}_{code}>`` (LETTER/LC-Rec format).
LEVEL_LETTERS = string.ascii_lowercase

# At most 9 digits keeps every parsed code inside int64 with no overflow check needed.
_TOKEN_RE = re.compile(r"<([a-z])_([0-9]{1,9})>")
_ALL_TOKENS_RE = re.compile(r"(?:<[a-z]_[0-9]{1,9}>\n)*<[a-z]_[0-9]{1,9}>")
_N_EXAMPLES = 5


# --------------------------------------------------------------------------- validation helpers
def _as_code_table(codes: Any, name: str = "codes") -> np.ndarray:
    """Return ``codes`` as a validated int64 ``[n, L]`` array (no copy when already int64)."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must be a 2-D [n_items, n_levels] integer table with >= 1 level, got shape "
            f"{arr.shape}; pass one row of codes per item"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}; cast with .astype(np.int64)")
    if arr.size and arr.min() < 0:
        row = int(np.flatnonzero((arr < 0).any(axis=1))[0])
        raise ValueError(
            f"{name} has negative codes (first at row {row}); drop the padding row (row 0 = -1) "
            "and pass only real items"
        )
    return arr.astype(np.int64, copy=False)


def _check_sizes(codes: np.ndarray, sizes: Sequence[int], name: str = "codebook_sizes") -> list[int]:
    """Check that ``sizes`` has one positive entry per level and bounds every code."""
    sizes = [int(s) for s in sizes]
    if len(sizes) != codes.shape[1]:
        raise ValueError(
            f"{name} has {len(sizes)} entries but the code table has {codes.shape[1]} levels; "
            "give one codebook size per level"
        )
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be positive, got {sizes}")
    if codes.size:
        too_big = codes.max(axis=0) >= np.asarray(sizes)
        if too_big.any():
            lvl = int(np.flatnonzero(too_big)[0])
            raise ValueError(
                f"level {lvl + 1} has code {int(codes[:, lvl].max())} but its codebook size is "
                f"{sizes[lvl]}; pass the sizes the tokenizer was fitted with"
            )
    return sizes


def _tuple_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group identical rows: returns ``(group id per row, size of each group)``."""
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if codes.shape[1] == 0:  # empty prefix of a one-level table: everybody shares it
        return np.zeros(codes.shape[0], dtype=np.int64), np.array([codes.shape[0]], dtype=np.int64)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    # numpy 2.0.0 returned the inverse with an extra axis for axis=0; flatten for every version.
    return inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group id, in order of row index (stable => deterministic)."""
    n = groups.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


def _sorted_slices(keys: np.ndarray) -> tuple[np.ndarray, dict[int, slice]]:
    """Return ``order`` sorting ``keys`` stably and, per key, the slice of ``order`` holding it."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.r_[0, np.flatnonzero(sk[1:] != sk[:-1]) + 1] if sk.size else np.zeros(0, int)
    ends = np.r_[starts[1:], sk.size] if sk.size else np.zeros(0, int)
    return order, {int(sk[s]): slice(int(s), int(e)) for s, e in zip(starts, ends)}


# --------------------------------------------------------------------------- collisions
def count_collisions(codes: np.ndarray) -> dict[str, float]:
    """Count items whose full code tuple is shared with at least one other item.

    Returns ``n_items``, ``distinct`` (number of distinct tuples), ``colliding_items`` (items in
    a shared tuple, all of them, not just the surplus), ``colliding_groups``, ``max_group_size``
    and ``collision_rate = 1 - distinct / n_items`` (0 for an empty table), the quantity LETTER
    reports.
    """
    codes = _as_code_table(codes)
    _, counts = _tuple_groups(codes)
    n = int(codes.shape[0])
    shared = counts[counts > 1]
    return {
        "n_items": n,
        "distinct": int(counts.size),
        "colliding_items": int(shared.sum()),
        "colliding_groups": int(shared.size),
        "max_group_size": int(counts.max()) if counts.size else 0,
        "collision_rate": float(1.0 - counts.size / n) if n else 0.0,
    }


def _reassign_last_level(
    codes: np.ndarray, distances: np.ndarray, movable: np.ndarray
) -> tuple[np.ndarray, int]:
    """Step 1: move colliding movable items to the nearest free last-level code of their prefix.

    ``distances`` has one row per *movable* item (in row order) and one column per last-level
    code. Immovable rows (existing items in cold start) always keep their code and win any
    contest; among movable items the one closest to the contested code keeps it (ties: lower
    row). Returns the new table and the number of moved items.
    """
    n, n_levels = codes.shape
    groups, counts = _tuple_groups(codes)
    in_collision = counts[groups] > 1
    if not (in_collision & movable).any():
        return codes, 0
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[movable] = np.arange(int(movable.sum()))
    last = codes[:, -1]

    # Keeper per group = smallest key; immovable items get -inf so they are never displaced.
    own_dist = np.full(n, -np.inf)
    own_dist[movable] = distances[row_of[movable], last[movable]]
    order = np.lexsort((np.arange(n), own_dist, groups))
    first = np.r_[True, groups[order][1:] != groups[order][:-1]]
    is_keeper = np.zeros(n, dtype=bool)
    is_keeper[order[first]] = True
    losers = in_collision & movable & ~is_keeper

    prefix_groups, _ = _tuple_groups(codes[:, :-1])
    order_p, slices = _sorted_slices(prefix_groups)
    n_codes = distances.shape[1]
    new_codes = codes.copy()
    moved = 0
    # Loop over prefixes that contain colliding items only (a few dozen on real data), and
    # inside one prefix over its losers: each step takes the globally closest (item, free code)
    # pair, which is the greedy-by-distance rule.
    for p in np.unique(prefix_groups[losers]):
        members = order_p[slices[int(p)]]
        used = np.zeros(n_codes, dtype=bool)
        used[last[members]] = True
        free = np.flatnonzero(~used)
        lose = members[losers[members]]  # ascending row order (stable sort) => deterministic ties
        if free.size == 0:
            continue
        dist = distances[row_of[lose]][:, free].astype(np.float64, copy=True)
        for _ in range(min(lose.size, free.size)):
            i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
            new_codes[lose[i], -1] = free[j]
            dist[i, :] = np.inf
            dist[:, j] = np.inf
            moved += 1
    return new_codes, moved


def _check_distances(distances: Any, n_rows: int, codes: np.ndarray, name: str) -> np.ndarray:
    """Validate a ``[n_rows, size_last]`` finite distance matrix covering every last-level code."""
    dist = np.asarray(distances, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != n_rows:
        raise ValueError(
            f"{name} must have shape [{n_rows}, size_last] (one row per item, one column per "
            f"last-level code), got {dist.shape}"
        )
    if not np.isfinite(dist).all():
        raise ValueError(f"{name} contains NaN or inf; pass finite distances to the last-level codes")
    if codes.size and codes[:, -1].max() >= dist.shape[1]:
        raise ValueError(
            f"last-level code {int(codes[:, -1].max())} has no column in {name} "
            f"({dist.shape[1]} columns); pass distances to every last-level codebook entry"
        )
    return dist


def make_unique(
    codes: np.ndarray,
    distances: np.ndarray | None = None,
    codebook_sizes: list[int] | None = None,
    max_extra_levels: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return a collision-free copy of ``codes`` (LETTER/TIGER-style resolution, see module doc).

    Args:
        codes: ``[n_items, L]`` base code table.
        distances: optional ``[n_items, size_last]`` distances of every item to every last-level
            code; enables step 1 (re-assignment to the nearest free last-level code).
        codebook_sizes: optional per-level sizes, only used to validate ``codes``/``distances``.
        max_extra_levels: 1 (default) allows the extra disambiguation level; 0 forbids it and
            raises if collisions remain after step 1. One unbounded extra level always suffices,
            so larger values behave like 1.

    Returns:
        ``(unique_codes, info)``; ``unique_codes`` has ``L`` or ``L + 1`` columns. ``info`` keys:
        ``collisions_before``, ``distinct_before``, ``collisions_after_step1``,
        ``reassigned_items``, ``extra_level_items`` (items with a nonzero extra code),
        ``extra_level_added``, ``extra_level_size`` (0 when not added).
    """
    codes = _as_code_table(codes)
    if max_extra_levels < 0:
        raise ValueError(f"max_extra_levels must be >= 0, got {max_extra_levels}")
    if codebook_sizes is not None:
        sizes = _check_sizes(codes, codebook_sizes)
        if distances is not None and np.shape(distances)[-1] != sizes[-1]:
            raise ValueError(
                f"distances have {np.shape(distances)[-1]} columns but the last codebook has "
                f"{sizes[-1]} entries; pass distances to every last-level code"
            )
    before = count_collisions(codes)
    out, moved = codes.copy(), 0
    if distances is not None and before["colliding_items"]:
        dist = _check_distances(distances, codes.shape[0], codes, "distances")
        out, moved = _reassign_last_level(codes, dist, np.ones(codes.shape[0], dtype=bool))
    after1 = count_collisions(out)
    info: dict[str, Any] = {
        "collisions_before": before["colliding_items"],
        "distinct_before": before["distinct"],
        "collisions_after_step1": after1["colliding_items"],
        "reassigned_items": moved,
        "extra_level_items": 0,
        "extra_level_added": False,
        "extra_level_size": 0,
    }
    if after1["colliding_items"] == 0:
        return out, info
    if max_extra_levels == 0:
        raise ValueError(
            f"{after1['colliding_items']} items still share a code tuple and max_extra_levels=0; "
            "allow an extra level (max_extra_levels=1), pass distances, or refit with larger codebooks"
        )
    groups, _ = _tuple_groups(out)
    extra = _rank_within_groups(groups)
    info.update(
        extra_level_items=int((extra > 0).sum()),
        extra_level_added=True,
        extra_level_size=int(extra.max()) + 1,
    )
    return np.concatenate([out, extra[:, None]], axis=1), info


# --------------------------------------------------------------------------- cold start
def assign_new_items(
    existing: np.ndarray,
    new_codes: np.ndarray,
    distances_new: np.ndarray | None = None,
    extra_level_size: int | None = None,
) -> np.ndarray:
    """Give new (cold-start) items code tuples unique against ``existing`` and among themselves.

    Existing rows never change: a trained generator has learnt them. Rules, in order:

    1. If ``distances_new`` ``[n_new, size_last]`` is given, a new item whose base tuple is taken
       moves to the nearest free last-level code of its prefix. Existing items always keep their
       code; among new items sharing a tuple the closest keeps it (as in :func:`make_unique`).
    2. Remaining collisions:

       * ``existing`` has an extra level (``L + 1`` columns for ``L``-column ``new_codes``): a
         new item that still shares its base tuple takes the smallest extra value not yet used
         for that tuple (new items in row order); others get 0. The value must be below
         ``extra_level_size`` (default: the existing extra level's size, i.e. what the trained
         generator can emit), otherwise a ``ValueError`` asks to refit or enlarge it.
       * ``existing`` has no extra level: a ``ValueError`` — adding a column would change every
         existing row. Pass ``distances_new`` so the item can take a free last-level code, or
         rebuild the table with :func:`make_unique` allowing an extra level and refit.

    Returns:
        ``[n_new, existing.shape[1]]`` int64 codes for the new items.
    """
    existing = _as_code_table(existing, "existing")
    new_codes = _as_code_table(new_codes, "new_codes")
    n_base = new_codes.shape[1]
    has_extra = existing.shape[1] == n_base + 1
    if existing.shape[1] not in (n_base, n_base + 1):
        raise ValueError(
            f"existing has {existing.shape[1]} levels and new_codes {n_base}; existing must have "
            "the same levels, plus at most one extra disambiguation level"
        )
    existing_stats = count_collisions(existing)
    if existing_stats["colliding_items"]:
        raise ValueError(
            f"existing table has {existing_stats['colliding_items']} colliding items; "
            "make it unique with make_unique() before adding new items"
        )
    n_old, n_new = existing.shape[0], new_codes.shape[0]
    if n_new == 0:
        return np.zeros((0, existing.shape[1]), dtype=np.int64)

    base = np.concatenate([existing[:, :n_base], new_codes], axis=0)
    movable = np.r_[np.zeros(n_old, dtype=bool), np.ones(n_new, dtype=bool)]
    if distances_new is not None:
        dist = _check_distances(distances_new, n_new, base, "distances_new")
        base, _ = _reassign_last_level(base, dist, movable)
    groups, counts = _tuple_groups(base)
    new_groups = groups[n_old:]
    colliding_new = counts[new_groups] > 1
    new_base = base[n_old:]
    if not has_extra:
        if colliding_new.any():
            first = int(np.flatnonzero(colliding_new)[0])
            hint = (
                "pass distances_new so it can take a free last-level code, or"
                if distances_new is None
                else "its prefix has no free last-level code;"
            )
            raise ValueError(
                f"{int(colliding_new.sum())} new items (first: row {first}, codes "
                f"{new_base[first].tolist()}) collide and the existing table has no extra level; "
                f"{hint} refit the tokenizer with make_unique(..., max_extra_levels=1) on all items"
            )
        return new_base.copy()

    old_extra = existing[:, -1]
    if extra_level_size is not None:
        limit = int(extra_level_size)
    else:  # what the trained generator can emit; an empty table constrains nothing
        limit = int(old_extra.max()) + 1 if old_extra.size else np.iinfo(np.int64).max
    new_extra = np.zeros(n_new, dtype=np.int64)
    if colliding_new.any():
        order_g, slices = _sorted_slices(groups)
        # Loop over colliding groups only: each needs the complement of its used extra values.
        for g in np.unique(new_groups[colliding_new]):
            members = order_g[slices[int(g)]]
            used = old_extra[members[members < n_old]]
            new_rows = members[members >= n_old] - n_old
            candidates = np.setdiff1d(np.arange(used.size + new_rows.size), used)
            new_extra[new_rows] = candidates[: new_rows.size]
    if new_extra.size and new_extra.max() >= limit:
        first = int(np.argmax(new_extra))
        raise ValueError(
            f"new item at row {first} needs extra-level code {int(new_extra[first])} but the extra "
            f"level has only {limit} codes (the generator cannot emit more); refit with the new "
            "items or pass a larger extra_level_size if the generator's vocabulary allows it"
        )
    return np.concatenate([new_base, new_extra[:, None]], axis=1)


# --------------------------------------------------------------------------- index JSON
def code_token(level: int, code: int) -> str:
    """The LETTER/LC-Rec token of ``code`` at 0-based ``level``, e.g. ``code_token(1, 7) == '<b_7>'``."""
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def _token_strings(codes: np.ndarray) -> np.ndarray:
    """``[n, L]`` array of ``<letter_code>`` strings, built per level with numpy string ops."""
    if codes.shape[1] > len(LEVEL_LETTERS):
        raise ValueError(
            f"{codes.shape[1]} levels cannot be written with letters a..z; use at most "
            f"{len(LEVEL_LETTERS)} levels"
        )
    cols = [
        np.char.add(np.char.add(f"<{LEVEL_LETTERS[lvl]}_", codes[:, lvl].astype(str)), ">")
        for lvl in range(codes.shape[1])
    ]
    return np.stack(cols, axis=1) if codes.shape[0] else np.zeros((0, codes.shape[1]), dtype=str)


def _check_item_tokens(item_tokens: Sequence[Any]) -> np.ndarray:
    """Dataset item tokens as a str array; duplicates would make the item -> codes map ambiguous."""
    toks = np.asarray([str(t) for t in item_tokens], dtype=str) if len(item_tokens) else np.zeros(0, str)
    uniq, counts = np.unique(toks, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:_N_EXAMPLES].tolist()
        raise ValueError(f"item_tokens contain duplicates (e.g. {dup}); pass each item token once")
    return toks


def export_index_json(codes: np.ndarray, item_tokens: Sequence[str], path: str | os.PathLike) -> Path:
    """Write ``{"<item token>": ["<a_12>", "<b_3>", ...]}`` (LETTER/LC-Rec format) atomically.

    ``codes[i]`` belongs to ``item_tokens[i]``; the padding item must not be included.
    Returns the written path.
    """
    codes = _as_code_table(codes)
    toks = _check_item_tokens(item_tokens)
    if toks.shape[0] != codes.shape[0]:
        raise ValueError(
            f"{codes.shape[0]} code rows but {toks.shape[0]} item tokens; pass one token per row "
            "(without the padding item)"
        )
    strings = _token_strings(codes).tolist()
    path = Path(path)
    write_text_atomic(path, json.dumps(dict(zip(toks.tolist(), strings))))
    return path


def load_index_json(
    path: str | os.PathLike, item_tokens: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a LETTER/LC-Rec index JSON and return codes aligned with ``item_tokens``.

    Args:
        path: ``{"<item token>": ["<a_12>", "<b_3>", ...]}`` file.
        item_tokens: the dataset's item tokens (original ids, without the padding token), in
            the order the returned rows should follow (e.g. RecBole internal ids 1..N).

    Returns:
        ``(codes [len(item_tokens), L] int64, info)``. The codes are returned as published:
        they may collide (LETTER's own indices do); check ``info['colliding_items']`` and use
        :func:`make_unique` if needed. ``info``: ``n_index_items``, ``n_items``, ``n_levels``,
        ``level_sizes`` (max code + 1 per level over the whole index), ``ignored_items`` and
        ``ignored_examples`` (index items absent from the dataset), and the
        :func:`count_collisions` keys for the dataset's items.

    Raises:
        FileNotFoundError / ValueError with a one-line message naming the problem and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"semantic-ID index {path} not found; pass the path of a LETTER/LC-Rec "
            "'<dataset>.index.json' or let the tokenizer fit one"
        )
    expected = 'expected {"item": ["<a_1>", "<b_7>", ...]}'
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); {expected}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path} must hold a non-empty JSON object of item -> token list; {expected}")
    keys = list(raw.keys())
    values = list(raw.values())
    bad = next((k for k, v in zip(keys, values) if not isinstance(v, list) or not v), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} is not a non-empty list of code tokens; {expected}")
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    n_levels = int(lengths[0])
    if n_levels > len(LEVEL_LETTERS):
        raise ValueError(f"{path}: {n_levels} levels exceed the {len(LEVEL_LETTERS)} letters a..z")
    if (lengths != n_levels).any():
        odd = int(np.flatnonzero(lengths != n_levels)[0])
        raise ValueError(
            f"{path}: item {keys[odd]!r} has {lengths[odd]} code tokens but {keys[0]!r} has "
            f"{n_levels}; every item needs the same number of levels"
        )
    flat = [t for v in values for t in v]  # flattening parsed JSON lists: no numpy equivalent
    if not all(isinstance(t, str) for t in flat):
        raise ValueError(f"{path}: code tokens must be strings like '<a_12>'; {expected}")
    # One C-level regex pass over all tokens; a token containing the separator cannot match.
    joined = "\n".join(flat)
    parsed = _TOKEN_RE.findall(joined)
    if len(parsed) != len(flat) or _ALL_TOKENS_RE.fullmatch(joined) is None:
        first_bad = next(i for i, t in enumerate(flat) if _TOKEN_RE.fullmatch(t) is None)
        raise ValueError(
            f"{path}: malformed code token {flat[first_bad]!r} for item "
            f"{keys[first_bad // n_levels]!r}; tokens must look like '<a_12>' (level letter, code)"
        )
    pairs = np.asarray(parsed, dtype=str).reshape(len(keys), n_levels, 2)
    letters = pairs[..., 0]
    want = np.asarray(list(LEVEL_LETTERS[:n_levels]))
    wrong = letters != want[None, :]
    if wrong.any():
        row, lvl = (int(x[0]) for x in np.nonzero(wrong))
        raise ValueError(
            f"{path}: item {keys[row]!r} has level letter {str(letters[row, lvl])!r} at position "
            f"{lvl + 1}; tokens must use letters {','.join(want)} in level order"
        )
    all_codes = pairs[..., 1].astype(np.int64)

    toks = _check_item_tokens(item_tokens)
    index_keys = np.asarray(keys, dtype=str)
    order = np.argsort(index_keys)
    sorted_keys = index_keys[order]
    pos = np.searchsorted(sorted_keys, toks)
    pos_c = np.minimum(pos, max(sorted_keys.size - 1, 0))
    found = sorted_keys[pos_c] == toks if toks.size else np.zeros(0, dtype=bool)
    if not found.all():
        missing = toks[~found]
        hint = " (drop the '[PAD]' padding token from item_tokens)" if "[PAD]" in missing else ""
        raise ValueError(
            f"{path} does not cover the dataset: {missing.size} of {toks.size} items missing "
            f"(e.g. {missing[:_N_EXAMPLES].tolist()}){hint}; use an index built for this dataset "
            "or fit the tokenizer on it"
        )
    rows = order[pos_c]
    codes = all_codes[rows]
    used = np.zeros(index_keys.size, dtype=bool)
    used[rows] = True
    ignored = index_keys[~used]
    info: dict[str, Any] = {
        "n_index_items": int(index_keys.size),
        "n_levels": n_levels,
        "level_sizes": (all_codes.max(axis=0) + 1).astype(int).tolist(),
        "ignored_items": int(ignored.size),
        "ignored_examples": ignored[:_N_EXAMPLES].tolist(),
    }
    info.update(count_collisions(codes))
    return codes, info


# --------------------------------------------------------------------------- padded table
class SemanticIDTable:
    """Collision-free code table aligned with RecBole internal item ids (row 0 = padding = -1).

    Generators index it directly with internal item ids, so a history tensor maps to codes with
    one gather. Level sizes fix each level's vocabulary; ``level_offsets`` place the levels side
    by side in one flat token vocabulary (level ``l`` code ``c`` -> ``level_offsets[l] + c``).
    This class is the one owner of that layout: a generator whose code tokens start at vocabulary
    id ``first`` (after its special tokens, or after an LLM's text vocabulary) asks
    :meth:`token_offsets` / :meth:`item_token_table` instead of recomputing it.

    The runner hands a table to a generator as ``config["semantic_id_table"]``; RecBole pickles
    the config into every checkpoint, so the short :meth:`__repr__` keeps logs readable and the
    checkpoint carries the IDs it was trained with.
    """

    def __init__(
        self, codes: np.ndarray, level_sizes: Sequence[int] | None = None, allow_unassigned: bool = False
    ) -> None:
        """Build from ``codes`` ``[N, L]`` for internal ids ``1..N`` (no padding row).

        ``level_sizes`` defaults to ``max code + 1`` per level. When the table carries an extra
        disambiguation level, the base codebook sizes alone (``L - 1`` entries) may be given;
        the extra level's size is then ``max extra code + 1``.

        With ``allow_unassigned``, rows that are all ``-1`` are items of the dataset that have
        no code yet (cold-start items the tokenizer never saw): they cannot be generated until
        :meth:`with_new_items` gives them codes.
        """
        codes = np.asarray(codes)
        if codes.ndim != 2:
            _as_code_table(codes)  # raises the error that names the expected shape
        unassigned = np.zeros(codes.shape[0], dtype=bool)
        if allow_unassigned and codes.size:
            unassigned = (codes == -1).all(axis=1)
        assigned = _as_code_table(codes[~unassigned], "codes")
        stats = count_collisions(assigned)
        if stats["colliding_items"]:
            raise ValueError(
                f"{stats['colliding_items']} items share a code tuple; resolve them with "
                "make_unique() before building a SemanticIDTable"
            )
        observed = (assigned.max(axis=0) + 1).tolist() if assigned.size else [1] * assigned.shape[1]
        if level_sizes is None:
            sizes = [int(s) for s in observed]
        else:
            sizes = [int(s) for s in level_sizes]
            if len(sizes) == assigned.shape[1] - 1:
                sizes.append(int(observed[-1]))
            sizes = _check_sizes(assigned, sizes, "level_sizes")
        table = np.full((codes.shape[0] + 1, assigned.shape[1]), -1, dtype=np.int64)
        table[1:][~unassigned] = assigned
        table.setflags(write=False)  # shared by models/generators: accidental edits would corrupt IDs
        self._table = table
        self._sizes = tuple(sizes)

    @classmethod
    def from_padded(
        cls, table: np.ndarray, level_sizes: Sequence[int] | None = None, allow_unassigned: bool = False
    ) -> "SemanticIDTable":
        """Build from an internal-id-aligned ``[N + 1, L]`` table whose row 0 (padding) is all ``-1``."""
        table = np.asarray(table)
        if table.ndim != 2 or table.shape[0] < 1:
            raise ValueError(
                f"semantic-ID table has shape {table.shape}; expected [n_items + 1, n_levels] with row 0 = padding"
            )
        if (table[0] != -1).any():
            raise ValueError("semantic-ID table row 0 (padding item) must be all -1; rebuild the table")
        return cls(table[1:], level_sizes, allow_unassigned)

    @property
    def assigned(self) -> np.ndarray:
        """``[N + 1]`` bool: which internal ids have a code tuple (row 0, padding: False)."""
        return (self._table >= 0).all(axis=1)

    def with_new_items(self, codes: np.ndarray, item_ids: np.ndarray | Sequence[int] | None = None) -> "SemanticIDTable":
        """A new table in which new items have ``codes``; this table is left as it is.

        ``item_ids`` are unassigned rows of this table (cold-start items of the dataset) to fill;
        ``None`` appends the items after the last id (items the dataset does not know). Existing
        codes never change, the level sizes (the generator's code vocabulary) stay, and the new
        tuples must be distinct from every existing one and from each other.
        """
        codes = _as_code_table(codes, "codes")
        if codes.shape[1] != self.n_levels:
            raise ValueError(f"new codes have {codes.shape[1]} levels, the table has {self.n_levels}")
        outside = codes >= np.asarray(self._sizes)
        if outside.any():
            row, level = (int(x[0]) for x in np.nonzero(outside))
            raise ValueError(
                f"new item row {row} has level-{level + 1} code {int(codes[row, level])} outside the table's level "
                f"sizes {list(self._sizes)} (the generator has no token for it); generate codes within them"
            )
        table = np.array(self._table)
        if item_ids is None:
            table = np.concatenate([table, codes], axis=0)
        else:
            ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
            if ids.size != codes.shape[0] or np.unique(ids).size != ids.size:
                raise ValueError(f"give one distinct item id per code row ({ids.size} ids for {codes.shape[0]} rows)")
            if ids.size and (ids.min() < 1 or ids.max() > self.n_items):
                raise ValueError(f"item ids must lie in [1, {self.n_items}]; use item_ids=None to append new items")
            already = ids[self.assigned[ids]]
            if already.size:
                raise ValueError(
                    f"items {already[:_N_EXAMPLES].tolist()} already have codes; existing codes never change"
                )
            table[ids] = codes
        valid = (table[1:] >= 0).all(axis=1)
        stats = count_collisions(table[1:][valid])
        if stats["colliding_items"]:
            raise ValueError(f"{stats['colliding_items']} items would share a code tuple; give new items free tuples")
        return SemanticIDTable.from_padded(table, self._sizes, allow_unassigned=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self._table, "sizes": self._sizes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        table = np.array(state["table"], dtype=np.int64)
        table.setflags(write=False)  # unpickled arrays come back writable
        self._table = table
        self._sizes = tuple(int(s) for s in state["sizes"])

    @property
    def table(self) -> np.ndarray:
        """Read-only ``[N + 1, L]`` int64 table; row 0 (padding) is all ``-1``."""
        return self._table

    @property
    def n_items(self) -> int:
        """Number of real items ``N`` (excluding padding)."""
        return self._table.shape[0] - 1

    @property
    def n_levels(self) -> int:
        """Number of code levels ``L`` (including an extra disambiguation level, if any)."""
        return self._table.shape[1]

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Vocabulary size of every level."""
        return self._sizes

    @property
    def level_offsets(self) -> np.ndarray:
        """Start of each level in a flat vocabulary of all levels' codes, shape ``[L]``."""
        return np.r_[0, np.cumsum(self._sizes)[:-1]].astype(np.int64)

    def token_offsets(self, first_token: int) -> list[int]:
        """Vocabulary id of code 0 of each level when the code tokens start at ``first_token``."""
        return [int(first_token) + int(o) for o in self.level_offsets]

    def item_token_table(self, first_token: int, pad_token: int) -> np.ndarray:
        """``[N + 1, L]`` vocabulary ids of every item's codes (padding and unassigned rows: ``pad_token``)."""
        tokens = self._table + np.asarray(self.token_offsets(first_token), dtype=np.int64)
        tokens[~self.assigned] = pad_token
        return tokens

    def code_token_strings(self) -> list[str]:
        """All code tokens in flat-vocabulary order: ``<a_0>.. <a_{s0-1}>, <b_0>, ...``.

        These are the new tokens an LLM tokenizer needs (LC-Rec) and match ``level_offsets``.
        """
        return [code_token(lvl, c) for lvl, size in enumerate(self._sizes) for c in range(size)]

    def item_token_strings(self, item_ids: np.ndarray | Sequence[int]) -> list[list[str]]:
        """Code tokens of internal ``item_ids`` (each ``>= 1``), e.g. ``[["<a_3>", "<b_0>"]]``."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 1 or ids.max() > self.n_items):
            raise ValueError(f"item ids must lie in [1, {self.n_items}] (0 is padding)")
        if not self.assigned[ids].all():
            raise ValueError(f"items {ids[~self.assigned[ids]][:_N_EXAMPLES].tolist()} have no code yet")
        return _token_strings(self._table[ids]).tolist()

    def export_index_json(self, item_tokens: Sequence[str], path: str | os.PathLike) -> Path:
        """Export rows ``1..N`` with their dataset ``item_tokens`` (see :func:`export_index_json`);
        items without a code yet are left out."""
        if len(item_tokens) != self.n_items:
            raise ValueError(f"{len(item_tokens)} item tokens for {self.n_items} items; give one per internal id 1..N")
        keep = self.assigned[1:]
        return export_index_json(self._table[1:][keep], [t for t, k in zip(item_tokens, keep) if k], path)

    def __repr__(self) -> str:
        missing = int((~self.assigned[1:]).sum())
        extra = f", unassigned={missing}" if missing else ""
        return f"SemanticIDTable(n_items={self.n_items}, level_sizes={list(self._sizes)}{extra})"
