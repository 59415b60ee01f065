"""Recommend with a trained model: ``python -m recbole_letter.recommend --model_file=<ckpt> --users=196,186``.

Loads a checkpoint this package saved (any model: ours or a RecBole built-in) through
:func:`recbole_letter.compat.load_data_and_model`, so nothing is refitted: the Config, weights and
(for generative models) the semantic-ID table all come from the file, and the data is rebuilt from
the files it was trained on (checked id for id).

What a recommendation is:
* ``--history=full`` (default): the model reads every interaction the data holds for the user and
  ranks what comes next; ``--history=test`` reads exactly what RecBole's test evaluation read (the
  history before each user's held-out test item), which reproduces evaluation rankings.
* Items the user already interacted with (within that history) are left out unless
  ``--keep_history``. RecBole's evaluation under this package's protocol (``repeatable: True``)
  does not leave them out, so ``--history=test --keep_history`` equals the evaluation's top-K.
* A beam-search model (TIGER) scores only the items its beam found; fewer than ``--topk``
  scored items (e.g. after leaving out the history) are reported, and ``--beam_size`` widens it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import numpy as np
import torch

from recbole_letter import compat

LOGGER = logging.getLogger("recbole_letter")
HISTORY_MODES = ("full", "test")
FORMATS = ("table", "json", "csv")
_TITLE_WIDTH = 40


class RecommendError(ValueError):
    """Bad input to the recommender (unknown user, too large k...): reported with the fix."""


@dataclass
class Recommendations:
    """Top-K for a batch of users: ``items``/``scores`` are ``[users, k]``; ``-inf`` marks no item."""

    users: list[str]
    items: np.ndarray
    scores: np.ndarray


@dataclass
class Recommender:
    """A loaded checkpoint plus what ranking needs: the data splits and each user's history."""

    config: Any
    model: Any
    dataset: Any
    test_data: Any
    model_file: str
    _history: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoint(
        cls, model_file: str | Path, data_path: str | Path | None = None, trust: bool = False
    ) -> "Recommender":
        """Load ``model_file`` (no stage is refitted); ``data_path`` overrides where the data lives."""
        config, model, dataset, _train, _valid, test_data = compat.load_data_and_model(
            model_file, data_path=data_path, trust=trust or None, log=False
        )
        model.eval()
        return cls(config, model, dataset, test_data, str(model_file))

    # ------------------------------------------------------------------ users and items
    @property
    def sequential(self) -> bool:
        return bool(self.test_data.is_sequential)

    @property
    def n_items(self) -> int:
        return int(self.dataset.item_num)

    def user_ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Internal ids of user tokens; unknown tokens are one error naming them."""
        token2id = self.dataset.field2token_id[self.dataset.uid_field]
        unknown = [t for t in tokens if t not in token2id or t == "[PAD]"]
        if unknown:
            known = [str(t) for t in self.dataset.field2id_token[self.dataset.uid_field][1:4]]
            shown = ", ".join(repr(t) for t in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise RecommendError(
                f"unknown user(s) {shown}: not in dataset '{self.config['dataset']}' "
                f"({self.dataset.user_num - 1} users, e.g. {', '.join(known)}). Fix: pass user tokens as they "
                f"appear in the .inter file's {self.dataset.uid_field} column."
            )
        return np.asarray([token2id[t] for t in tokens], dtype=np.int64)

    def item_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.dataset.field2id_token[self.dataset.iid_field][ids]

    # ------------------------------------------------------------------ model input
    def _last_rows(self, data: Any) -> np.ndarray:
        """Per internal user id, the index of its last row in ``data.inter_feat`` (-1: none).

        RecBole sorts interactions by time before splitting, so the last row is the latest.
        """
        uids = data.inter_feat[data.uid_field].numpy()
        last = np.full(self.dataset.user_num, -1, dtype=np.int64)
        np.maximum.at(last, uids, np.arange(len(uids)))
        return last

    def _rows_for(self, uids: np.ndarray, history: str) -> Any:
        """The users' input rows: their test rows, or (``full``) their last rows with the target appended."""
        source = self.test_data._dataset if history == "test" else self.dataset
        key = f"last_rows_{history}"
        if key not in self._history:
            self._history[key] = self._last_rows(source)
        rows = self._history[key][uids]
        if (rows < 0).any():
            missing = self.dataset.field2id_token[self.dataset.uid_field][uids[rows < 0]]
            where = "a test interaction" if history == "test" else "two interactions"
            raise RecommendError(
                f"user(s) {', '.join(map(repr, missing[:5].tolist()))} have no sequence to read: a sequential "
                f"model needs {where} per user. Fix: leave them out"
                + (" or use --history=full." if history == "test" else ".")
            )
        interaction = source.inter_feat[torch.as_tensor(rows)]
        return interaction if history == "test" else self._append_targets(interaction)

    def _append_targets(self, interaction: Any) -> Any:
        """Shift each row's target into its history lists: 'what comes after everything seen'.

        RecBole's sequential rows hold ``<field>_list`` = the previous ``MAX_ITEM_LIST_LENGTH``
        values and ``<field>`` = the target; appending the target (dropping the oldest entry when
        the list is full) gives the history that ends with the user's latest interaction.
        """
        length_field = self.dataset.item_list_length_field
        lengths = interaction[length_field]
        capacity = interaction[self.dataset.item_id_list_field].shape[1]
        suffix = self.config["LIST_SUFFIX"]
        rows = torch.arange(len(lengths))
        full = lengths >= capacity
        updates = {length_field: torch.clamp(lengths + 1, max=capacity)}
        for name in list(interaction.columns):
            list_name = name + suffix
            if name == self.dataset.uid_field or list_name not in interaction.columns:
                continue
            lists = interaction[list_name]
            padded = torch.cat([lists, torch.zeros_like(lists[:, :1])], dim=1)
            padded[rows, lengths] = interaction[name].to(lists.dtype)
            shifted = full.view(-1, *([1] * (lists.dim() - 1)))
            updates[list_name] = torch.where(shifted, padded[:, 1:], padded[:, :capacity])
        interaction.update(type(interaction)(updates))
        return interaction

    def _score(self, uids: np.ndarray, history: str) -> torch.Tensor:
        """``[users, n_items]`` scores; padding item -inf (as RecBole's evaluator and case study do)."""
        from recbole.data.interaction import Interaction

        device = self.config["device"]
        if self.sequential:
            interaction = self._rows_for(uids, history)
        else:
            interaction = self.dataset.join(Interaction({self.dataset.uid_field: torch.as_tensor(uids)}))
        interaction = interaction.to(device)
        with torch.no_grad():
            try:
                scores = self.model.full_sort_predict(interaction)
            except NotImplementedError:  # RecBole's case study falls back to pointwise scores too
                interaction = interaction.repeat_interleave(self.n_items)
                interaction.update(self.dataset.get_item_feature().to(device).repeat(len(uids)))
                scores = self.model.predict(interaction)
        scores = scores.view(-1, self.n_items).float().cpu()
        scores[:, 0] = -torch.inf
        return scores

    # ------------------------------------------------------------------ history to leave out
    def _seen(self, history: str) -> Any:
        """Sparse ``[users, items]`` of the items each user interacted with within ``history``.

        ``full``: every interaction in the data; ``test``: those before the user's test item (the
        train and validation parts; what RecBole masks for general models when ``repeatable`` is off).
        """
        key = f"seen_{history}"
        if key in self._history:
            return self._history[key]
        import scipy.sparse as sp

        data = self.dataset.inter_feat
        uid_field, iid_field = self.dataset.uid_field, self.dataset.iid_field
        users = data[uid_field].numpy()
        items = data[iid_field].numpy()
        keep = np.ones(len(users), dtype=bool)
        if history == "test":  # drop each user's test targets
            test = self.test_data._dataset.inter_feat
            test_pairs = set(zip(test[uid_field].numpy().tolist(), test[iid_field].numpy().tolist()))
            if self.sequential:  # only the final occurrence: earlier ones are history
                last = self._last_rows(self.dataset)
                keep[last[last >= 0]] = False
            else:
                keep = np.asarray([(u, i) not in test_pairs for u, i in zip(users.tolist(), items.tolist())])
        pairs_u, pairs_i = [users[keep]], [items[keep]]
        if self.sequential:  # each user's first item is never a target: take it from the first row's list
            first = np.full(self.dataset.user_num, len(users), dtype=np.int64)
            np.minimum.at(first, users, np.arange(len(users)))
            first = first[first < len(users)]
            lists = data[self.dataset.item_id_list_field][torch.as_tensor(first)].numpy()
            lengths = data[self.dataset.item_list_length_field][torch.as_tensor(first)].numpy()
            for col in range(lists.shape[1]):
                has = lengths > col
                pairs_u.append(users[first][has])
                pairs_i.append(lists[has, col])
        u, i = np.concatenate(pairs_u), np.concatenate(pairs_i)
        matrix = sp.csr_matrix(
            (np.ones(len(u), dtype=bool), (u, i)), shape=(self.dataset.user_num, self.n_items)
        )
        self._history[key] = matrix
        return matrix

    # ------------------------------------------------------------------ ranking
    def recommend(
        self, user_tokens: Sequence[str], k: int, history: str = "full", exclude_history: bool = True
    ) -> Recommendations:
        """Top-``k`` items for each user (see the module docstring for ``history``)."""
        if history not in HISTORY_MODES:
            raise RecommendError(f"history={history!r}: use one of {HISTORY_MODES}")
        uids = self.user_ids(user_tokens)
        scores = self._score(uids, history)
        if exclude_history:
            seen = self._seen(history)[uids].tocoo()
            scores[torch.as_tensor(seen.row, dtype=torch.long), torch.as_tensor(seen.col, dtype=torch.long)] = -torch.inf
        top_scores, top_items = torch.topk(scores, min(k, self.n_items - 1), dim=1)
        return Recommendations(list(user_tokens), top_items.numpy(), top_scores.numpy())


# ---------------------------------------------------------------------------- titles and output


def item_titles(config: Any, title_field: str | None = None) -> dict[str, str] | None:
    """Item token -> title from the raw ``.item`` file, or None when it has no title column.

    RecBole splits ``token_seq`` titles into words, so the file is read again as text. The title
    column is ``title_field`` if given, else the first column named ``title`` or ``*_title``.
    """
    from recbole_letter.data.item_text import item_file_for, read_item_table

    path = item_file_for(config)
    if not path.is_file():
        if title_field:
            raise RecommendError(f"--title_field={title_field} but {path} does not exist. Fix: drop --title_field.")
        return None
    table, types = read_item_table(path, sep=config["field_separator"] or "\t")
    if title_field is None:
        title_field = next((n for n in types if n == "title" or n.endswith("_title")), None)
        if title_field is None:
            return None
    elif title_field not in types:
        raise RecommendError(f"--title_field={title_field}: {path} has columns {list(types)}. Fix: pick one of those.")
    id_field = config["ITEM_ID_FIELD"]
    return dict(zip(table[id_field].astype(str), table[title_field].astype(str)))


class Writer:
    """Streams recommendations as an aligned table, CSV or one JSON array, batch after batch."""

    def __init__(self, out: TextIO, fmt: str, titles: dict[str, str] | None, user_width: int, item_width: int) -> None:
        self.out, self.fmt, self.titles = out, fmt, titles
        self.user_width, self.item_width = user_width, item_width
        self.title_width = min(_TITLE_WIDTH, max((len(t) for t in titles.values()), default=5)) if titles else 0
        self._first = True
        self._csv = csv.writer(out) if fmt == "csv" else None

    def _title(self, item: str) -> str:
        return self.titles.get(item, "") if self.titles else ""

    def start(self) -> None:
        columns = ["user", "rank", "item"] + (["title"] if self.titles is not None else []) + ["score"]
        if self.fmt == "csv":
            self._csv.writerow(columns)
        elif self.fmt == "json":
            self.out.write("[")
        else:
            cells = [f"{'user':<{self.user_width}}", f"{'rank':>4}", f"{'item':<{self.item_width}}"]
            if self.titles is not None:
                cells.append(f"{'title':<{self.title_width}}")
            cells.append(f"{'score':>10}")
            self.out.write("  ".join(cells).rstrip() + "\n")

    def write(self, recs: Recommendations, item_tokens: np.ndarray) -> None:
        for row, user in enumerate(recs.users):
            ranked = [
                (rank, str(item_tokens[row][col]), float(recs.scores[row][col]))
                for rank, col in enumerate(range(recs.items.shape[1]), start=1)
                if np.isfinite(recs.scores[row][col])
            ]
            if self.fmt == "json":
                entries = []
                for rank, item, score in ranked:
                    entry: dict[str, Any] = {"rank": rank, "item": item}
                    if self.titles is not None:
                        entry["title"] = self._title(item)
                    entry["score"] = score
                    entries.append(entry)
                self.out.write(("\n" if self._first else ",\n") + json.dumps({"user": user, "items": entries}))
                self._first = False
                continue
            for rank, item, score in ranked:
                if self.fmt == "csv":
                    self._csv.writerow([user, rank, item] + ([self._title(item)] if self.titles is not None else []) + [f"{score:.6g}"])
                else:
                    cells = [f"{user:<{self.user_width}}", f"{rank:>4}", f"{item:<{self.item_width}}"]
                    if self.titles is not None:
                        title = self._title(item)
                        title = title if len(title) <= self.title_width else title[: self.title_width - 3] + "..."
                        cells.append(f"{title:<{self.title_width}}")
                    cells.append(f"{score:>10.4f}")
                    self.out.write("  ".join(cells) + "\n")

    def finish(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n")
        self.out.flush()


# ---------------------------------------------------------------------------- command line


def read_users(users: str | None, users_file: str | None) -> list[str]:
    """User tokens from ``--users=a,b`` or a file (one per line or comma separated; '#' comments)."""
    if users is not None:
        tokens = [t.strip() for t in users.split(",") if t.strip()]
        source = "--users"
    else:
        path = Path(users_file)
        if not path.is_file():
            raise RecommendError(f"--users_file={users_file} does not exist. Fix: pass a file with one user token per line.")
        tokens = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0]
            tokens.extend(t.strip() for t in line.split(",") if t.strip())
        source = f"--users_file={users_file}"
    if not tokens:
        raise RecommendError(f"{source} holds no user tokens. Fix: e.g. --users=196,186.")
    return tokens


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_letter.recommend",
        description="Top-K recommendations from a checkpoint saved by recbole_letter (any model).",
    )
    parser.add_argument("--model_file", required=True, help="the .pth checkpoint a training run saved (under saved/)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated user tokens as in the .inter file, e.g. 196,186")
    who.add_argument("--users_file", help="file of user tokens, one per line (or comma separated)")
    parser.add_argument("--topk", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument(
        "--history", choices=HISTORY_MODES, default="full",
        help="full: read every interaction of the user (default); test: read what RecBole's test evaluation read",
    )
    parser.add_argument("--keep_history", action="store_true", help="also list items the user already interacted with")
    parser.add_argument("--batch_size", type=int, default=256, help="users scored per batch (default 256)")
    parser.add_argument("--beam_size", type=int, default=None, help="beam-search models: beam width (default: the checkpoint's)")
    parser.add_argument("--data_path", default=None, help="folder containing '<dataset>/' if the data moved since training")
    parser.add_argument("--title_field", default=None, help=".item column with titles (default: 'title' or '*_title')")
    parser.add_argument("--output", default=None, help="write here instead of stdout")
    parser.add_argument(
        "--trust_checkpoint", action="store_true",
        help="load a checkpoint recbole_letter did not write (full unpickling: only for files you trust)",
    )
    return parser


def _resolve_data_path(model_file: str, data_path: str | None) -> str | None:
    """``--data_path`` is a parent folder (as in training); our resolver finds '<dataset>/' in it."""
    if data_path is None:
        return None
    from recbole_letter.data.bundled import resolve_dataset_dir

    marker = compat.read_checkpoint_marker(model_file) or {}
    dataset = (marker.get("data") or {}).get("dataset")
    if dataset is None:
        raise RecommendError(f"{model_file} does not record its dataset name; --data_path needs it. Fix: drop --data_path.")
    return str(resolve_dataset_dir(dataset, data_path, "saved"))


def _check_args(args: argparse.Namespace) -> None:
    for name in ("topk", "batch_size", "beam_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RecommendError(f"--{name}={value} must be a positive integer.")


def _apply_beam_size(model: Any, beam_size: int | None, topk: int) -> None:
    current = getattr(model, "beam_size", None)
    if beam_size is not None:
        if current is None:
            raise RecommendError(f"--beam_size: {type(model).__name__} does not decode with a beam. Fix: drop --beam_size.")
        model.beam_size = beam_size
    elif current is not None and current < topk:
        raise RecommendError(
            f"--topk={topk} exceeds the beam of {type(model).__name__} (beam_size={current}): a beam search "
            f"returns at most beam_size items. Fix: --beam_size={topk} (or larger) or a smaller --topk."
        )


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Load, rank in batches (progress bar on a terminal), stream the output; returns the exit code."""
    from tqdm import tqdm

    _check_args(args)
    users = read_users(args.users, args.users_file)
    rec = Recommender.from_checkpoint(
        args.model_file, data_path=_resolve_data_path(args.model_file, args.data_path), trust=args.trust_checkpoint
    )
    rec.user_ids(users)  # every unknown user is reported before any output
    if args.topk >= rec.n_items:
        raise RecommendError(f"--topk={args.topk} but the dataset has {rec.n_items - 1} items. Fix: a smaller --topk.")
    _apply_beam_size(rec.model, args.beam_size, args.topk)
    titles = item_titles(rec.config, args.title_field)
    all_items = rec.dataset.field2id_token[rec.dataset.iid_field]
    writer = Writer(out, args.format, titles, max(4, *map(len, users)), max(4, *(len(str(t)) for t in all_items[1:])))
    writer.start()
    short = 0
    progress = tqdm(total=len(users), unit="user", file=sys.stderr, disable=not sys.stderr.isatty())
    for batch in _batches(users, args.batch_size):
        recs = rec.recommend(batch, args.topk, history=args.history, exclude_history=not args.keep_history)
        short += int((~np.isfinite(recs.scores)).any(axis=1).sum())
        writer.write(recs, rec.item_tokens(recs.items))
        progress.update(len(batch))
    progress.close()
    writer.finish()
    if short:
        hint = ""
        if getattr(rec.model, "beam_size", None) is not None:
            hint = f" {type(rec.model).__name__} scores only its beam (beam_size={rec.model.beam_size}); widen it, e.g. --beam_size={2 * rec.model.beam_size}."
        print(f"warning: {short} of {len(users)} users got fewer than {args.topk} items (only items with a score are listed).{hint}",
              file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m recbole_letter.recommend``; bad input exits 2 with the fix."""
    import recbole_letter  # noqa: F401  (compat shims before RecBole loads)
    from recbole_letter.data.bundled import DatasetNotFoundError

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                return run(args, out)
        return run(args, sys.stdout)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (RecommendError, compat.UntrustedCheckpointError, compat.CheckpointMismatchError,
            FileNotFoundError, DatasetNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
