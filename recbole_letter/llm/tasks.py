"""Training samples of the LC-Rec tasks, drawn as (prompt, response token ids) pairs.

Rows come from RecBole, not from LC-Rec's JSON files, so LC-Rec learns from exactly the data
SASRec sees:

* ``seqrec`` rows are the batches of RecBole's train dataloader (history -> next item);
* ``fusionseqrec`` draws from the same train rows, with titles / descriptions mixed in;
* ``item2index`` / ``index2item`` use every item's text from the ``.item`` file;
* ``itemsearch`` / ``preferenceobtain`` need per-user preference text (LC-Rec's
  ``<ds>.user.json``) and are skipped, with a log line, when it is absent.

A random usable template is drawn for every training sample (as LC-Rec does); templates that need
a field an item does not have (e.g. no description) are not usable for that sample. Targets that
are items are spliced in as code-token ids, never re-tokenised from strings.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recbole_letter.llm.prompts import PromptTemplates

LOGGER = logging.getLogger("recbole_letter")

ITEM_TASKS = ("item2index", "index2item")
HISTORY_TASKS = ("seqrec", "fusionseqrec")
USER_TASKS = ("itemsearch", "preferenceobtain")
_STRIP = ".!?,;:`\"' "


@dataclass
class ItemCodes:
    """Code tokens of every internal item id, as strings and as LLM token ids."""

    strings: np.ndarray  # object [n_items] code string per internal id ("" for padding id 0)
    token_ids: np.ndarray  # int64 [n_items, L] vocabulary ids of each item's codes (row 0 unused)
    eos_id: int

    def history(self, items: Sequence[int], separator: str) -> str:
        """``<a_1><b_2>, <a_7><b_0>`` for the given internal ids (oldest first)."""
        return separator.join(self.strings[np.asarray(items, dtype=np.int64)])

    def response(self, item: int) -> list[int]:
        """Code-token ids of ``item`` followed by EOS."""
        return self.token_ids[int(item)].tolist() + [self.eos_id]


@dataclass
class ItemText:
    """Title and description of every internal item id (``""`` where unknown)."""

    titles: list[str]
    descriptions: list[str]

    def fields(self, item: int) -> dict[str, str]:
        out = {}
        if self.titles[item]:
            out["title"] = self.titles[item]
        if self.descriptions[item]:
            out["description"] = self.descriptions[item]
        return out

    def quoted_titles(self, items: Sequence[int], separator: str) -> str | None:
        titles = [self.titles[int(i)] for i in items]
        if not all(titles):
            return None
        return separator.join(f'"{t}"' for t in titles)


def clean_title(text: str, max_chars: int | None) -> str:
    text = " ".join(str(text).split()).strip(_STRIP)
    return text[:max_chars].rstrip() if max_chars else text


def item_text_from_table(
    table: Any, item_tokens: Sequence[str], title_fields: Sequence[str], description_fields: Sequence[str],
    max_chars: int | None, id_field: str = "item_id",
) -> ItemText | None:
    """Titles/descriptions aligned with ``item_tokens`` (internal ids 1..N) from an ``.item`` table.

    The first of ``title_fields`` (``description_fields``) present in the table is used; ``None``
    if neither kind is present (the text tasks are then skipped).
    """
    columns = set(table.columns)
    title = next((f for f in title_fields if f in columns), None)
    desc = next((f for f in description_fields if f in columns), None)
    if title is None and desc is None:
        return None
    by_token = table.drop_duplicates(id_field).set_index(id_field)

    def column(name: str | None) -> list[str]:
        if name is None:
            return [""] * (len(item_tokens) + 1)
        values = by_token[name].to_dict()
        return [""] + [clean_title(values.get(str(t), ""), max_chars) for t in item_tokens]

    return ItemText(column(title), column(desc))


@dataclass
class TrainRows:
    """RecBole's training rows as arrays: history (left-aligned, zero-padded), length, target, user."""

    histories: np.ndarray  # int64 [N, max_len]
    lengths: np.ndarray  # int64 [N]
    targets: np.ndarray  # int64 [N]
    users: np.ndarray  # int64 [N]

    def history(self, row: int, max_items: int) -> np.ndarray:
        items = self.histories[row, : self.lengths[row]]
        return items[-max_items:] if max_items > 0 else items

    def full_history_per_user(self) -> dict[int, np.ndarray]:
        """Each user's longest train row, history + target: every train item, in order."""
        longest: dict[int, int] = {}
        for row, (user, length) in enumerate(zip(self.users.tolist(), self.lengths.tolist())):
            if user not in longest or length > self.lengths[longest[user]]:
                longest[user] = row
        return {u: np.append(self.histories[r, : self.lengths[r]], self.targets[r]) for u, r in longest.items()}


@dataclass
class UserPreferences:
    """LC-Rec's ``<ds>.user.json``, keyed by internal ids.

    ``explicit``: user -> preference sentences; ``searches``: (user, history item ids, target
    item, [queries]) from ``user_vague_intention.train``.
    """

    explicit: dict[int, list[str]] = field(default_factory=dict)
    searches: list[tuple[int, list[int], int, list[str]]] = field(default_factory=list)


def load_user_preferences(path: Path, user_id: Callable[[str], int | None], item_id: Callable[[str], int | None]) -> UserPreferences:
    """Read ``<ds>.user.json``; users and items unknown to the dataset are dropped (counted in the log)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or "user_explicit_preference" not in raw:
        raise ValueError(
            f"{path}: expected LC-Rec's user.json with 'user_explicit_preference' (and optionally "
            "'user_vague_intention'); fix or remove the file"
        )
    prefs = UserPreferences()
    dropped = 0
    for token, sentences in raw["user_explicit_preference"].items():
        uid = user_id(str(token))
        texts = [clean_title(s, None) for s in (sentences if isinstance(sentences, list) else [sentences]) if str(s).strip()]
        if uid is None or not texts:
            dropped += 1
            continue
        prefs.explicit[uid] = texts
    vague = raw.get("user_vague_intention", {})
    for token, entry in (vague.get("train", {}) if isinstance(vague, dict) else {}).items():
        uid = user_id(str(token))
        target = item_id(str(entry.get("item"))) if isinstance(entry, dict) else None
        if uid is None or target is None:
            dropped += 1
            continue
        history = [i for i in (item_id(str(x)) for x in entry.get("inters", [])) if i is not None]
        queries = [clean_title(q, None) for q in entry.get("querys", []) if str(q).strip()]
        if queries:
            prefs.searches.append((uid, history, target, queries))
    if dropped:
        LOGGER.info("%s: %d entries name users/items not in the dataset and were skipped", path, dropped)
    return prefs


@dataclass
class Sample:
    """One training example: the prompt text and the response token ids (ending with EOS)."""

    task: str
    prompt: str
    response: list[int] | str  # token ids for code targets, text for text targets


class TaskSampler:
    """Draws samples of the auxiliary tasks (everything but seqrec, whose rows RecBole batches)."""

    def __init__(
        self,
        templates: PromptTemplates,
        codes: ItemCodes,
        tasks: Sequence[str],
        sample_counts: dict[str, int],
        rows: TrainRows,
        item_text: ItemText | None,
        preferences: UserPreferences | None,
        max_history: int,
        separator: str,
        seed: int,
    ) -> None:
        self.templates = templates
        self.codes = codes
        self.rows = rows
        self.text = item_text
        self.prefs = preferences
        self.max_history = max_history
        self.separator = separator
        self.rng = np.random.default_rng(seed)
        self.pools: dict[str, np.ndarray] = {}
        for task in tasks:
            if task == "seqrec":
                continue
            pool = self._pool(task)
            if pool is None:
                continue
            n = int(sample_counts.get(task, 0) or 0)
            if 0 < n < len(pool):
                pool = self.rng.choice(pool, n, replace=False)
            if len(pool):
                self.pools[task] = np.asarray(pool)
        self._order = self._new_order()
        self._cursor = 0
        self._user_history = rows.full_history_per_user() if "preferenceobtain" in self.pools else {}

    def _pool(self, task: str) -> np.ndarray | None:
        if task in ITEM_TASKS:
            if self.text is None:
                LOGGER.info("LCRec: task %s skipped: the .item file has no title/description field", task)
                return None
            return np.array([i for i in range(1, len(self.text.titles)) if self.text.fields(i)], dtype=np.int64)
        if task == "fusionseqrec":
            if self.text is None:
                LOGGER.info("LCRec: task fusionseqrec skipped: the .item file has no title/description field")
                return None
            return np.arange(len(self.rows.targets))
        if task in USER_TASKS:
            if self.prefs is None:
                LOGGER.info("LCRec: task %s skipped: no <dataset>.user.json preference file next to the data", task)
                return None
            if task == "itemsearch":
                return np.arange(len(self.prefs.searches))
            return np.array(sorted(self.prefs.explicit), dtype=np.int64)
        raise ValueError(f"unknown LC-Rec task {task!r}")

    def __len__(self) -> int:
        """Auxiliary samples per pass over the pools (one 'epoch' of them)."""
        return int(sum(len(p) for p in self.pools.values()))

    def _new_order(self) -> list[tuple[str, int]]:
        order = [(task, int(i)) for task, pool in self.pools.items() for i in pool]
        perm = self.rng.permutation(len(order))
        return [order[i] for i in perm]

    def draw(self, n: int) -> list[Sample]:
        """The next ``n`` samples of a shuffled cycle over every pool, each with a random template."""
        out: list[Sample] = []
        while len(out) < n and self._order:
            if self._cursor >= len(self._order):
                self._order, self._cursor = self._new_order(), 0
            task, ref = self._order[self._cursor]
            self._cursor += 1
            sample = self._build(task, ref)
            if sample is not None:
                out.append(sample)
        return out

    def draw_task(self, task: str, n: int) -> list[Sample]:
        """``n`` samples of one ``task``, references drawn at random from its pool (so a caller can
        set each task's share of a batch, as STORE's task weights do); ``[]`` if it has no pool."""
        pool = self.pools.get(task)
        out: list[Sample] = []
        if pool is None or n <= 0:
            return out
        for _ in range(4 * n):  # references lacking a field the templates need are skipped, boundedly
            if len(out) == n:
                break
            sample = self._build(task, int(pool[int(self.rng.integers(len(pool)))]))
            if sample is not None:
                out.append(sample)
        return out

    # -------------------------------------------------------------------------------- builders
    def _fill(self, task: str, fields: dict[str, str], target: int | None) -> Sample | None:
        usable = self.templates.usable(task, set(fields))
        if not usable:
            return None
        index = usable[int(self.rng.integers(len(usable)))]
        prompt, response = self.templates.fill(task, index, fields)
        template = self.templates.templates(task)[index]
        if template.targets_codes:
            return Sample(task, prompt, self.codes.response(target))
        return Sample(task, prompt, response)

    def _build(self, task: str, ref: int) -> Sample | None:
        sep = self.separator
        if task in ITEM_TASKS:
            return self._fill(task, {"item": self.codes.strings[ref], **self.text.fields(ref)}, ref)
        if task == "fusionseqrec":
            history = self.rows.history(ref, self.max_history)
            target = int(self.rows.targets[ref])
            fields = {"history": self.codes.history(history, sep), "item": self.codes.strings[target], **self.text.fields(target)}
            titles = self.text.quoted_titles(history, sep)
            if titles:
                fields["history_titles"] = titles
            return self._fill(task, fields, target)
        if task == "itemsearch":
            user, history, target, queries = self.prefs.searches[ref]
            fields = {
                "history": self.codes.history(history[-self.max_history:] if self.max_history > 0 else history, sep),
                "query": queries[int(self.rng.integers(len(queries)))],
                "item": self.codes.strings[target],
            }
            if user in self.prefs.explicit:
                sentences = self.prefs.explicit[user]
                fields["preference"] = sentences[int(self.rng.integers(len(sentences)))]
            return self._fill(task, fields, target)
        if task == "preferenceobtain":
            sentences = self.prefs.explicit[ref]
            history = self._user_history.get(ref)
            if history is None or not len(history):
                return None
            history = history[-self.max_history:] if self.max_history > 0 else history
            fields = {"history": self.codes.history(history, sep), "preference": sentences[int(self.rng.integers(len(sentences)))]}
            return self._fill(task, fields, None)
        raise ValueError(f"unknown LC-Rec task {task!r}")
