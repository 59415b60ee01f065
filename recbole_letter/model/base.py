"""``SemanticIDRecommender``: what every generator over semantic IDs shares, whatever its network.

A generator (TIGER's T5, an LLM for LC-Rec...) reads a user's history and generates the code
tuple of the next item. Everything that does not depend on the network lives here, once:

* the ID table, handed over by the runner as ``config["semantic_id_table"]`` (a
  :class:`~recbole_letter.tokenization.semantic_ids.SemanticIDTable`) and checked against the
  dataset; the runner resolves the stages a class lists in ``required_stages`` *before* building
  the model, so constructing one trains nothing and tests pass a table directly;
* the token layout (the table owns it; a subclass only says where its code tokens start);
* the :class:`~recbole_letter.generation.prefix_index.PrefixIndex` of valid prefixes and the
  ``beam_size >= max(topk)`` check at start-up;
* chunked ``full_sort_predict`` through
  :func:`~recbole_letter.generation.beam_search.constrained_beam_search` and ``scatter_scores``,
  writing into the one ``[users, n_items]`` matrix RecBole's evaluator needs;
* teacher-forced ``predict`` (sampled evaluation);
* refusing a checkpoint trained on another ID table;
* :meth:`add_items`: new items (or the dataset's cold-start items, which may have no code in
  the table) become recommendable once given codes, without retraining; no existing code changes.

A subclass supplies two hooks: :meth:`make_stepper` (the network's decoding state for a batch of
interactions) and :meth:`item_log_probs` (teacher-forced log-probabilities of given items). It
calls :meth:`place_code_tokens` once it knows its vocabulary, and implements ``calculate_loss``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_letter.config import require
from recbole_letter.generation.beam_search import BeamStepper, constrained_beam_search, scatter_scores
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.trainer import GenerativeTrainer
from recbole_letter.tokenization.semantic_ids import SemanticIDTable

SEMANTIC_ID_TABLE = "semantic_id_table"
LOGGER = logging.getLogger("recbole_letter")
# Above this, RecBole's per-batch full-sort matrices are worth a start-up warning.
EVAL_MATRIX_WARN_BYTES = 2 * 2**30


class SemanticIDRecommender(SequentialRecommender):
    """Base of generative recommenders over semantic IDs (see module docstring)."""

    input_type = InputType.POINTWISE
    trainer_class = GenerativeTrainer
    # Stages the runner resolves before construction; each lands in config[<name>].
    required_stages: tuple[str, ...] = (SEMANTIC_ID_TABLE,)
    # True: beam scores renormalise each level over the codes the prefix allows (a subclass
    # trained with generation.losses.trie_log_probs sets it); False: whole-vocabulary log-probs.
    renormalize_codes: bool = False

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.id_table = self._checked_table(config[SEMANTIC_ID_TABLE])
        table = np.array(self.id_table.table)  # writable copy: torch refuses read-only arrays
        self.register_buffer("semantic_ids", torch.as_tensor(table, dtype=torch.long))
        self.prefix_layout = str(self.require(config, "prefix_index"))
        self.index = PrefixIndex(table, layout=self.prefix_layout)
        self.n_levels = self.index.n_levels

        self.beam_size = int(self.require(config, "beam_size"))
        topk = config["topk"]
        max_k = max(topk) if isinstance(topk, (list, tuple)) else int(topk or 0)
        if self.beam_size < max_k:
            raise ValueError(
                f"beam_size={self.beam_size} < max(topk)={max_k}: the beam must hold at least "
                "max(topk) items or top-K fills with -inf ties; raise beam_size"
            )
        self.decode_batch_size = int(self.require(config, "decode_batch_size"))
        if self.decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {self.decode_batch_size}")
        self.token_offsets: list[int] = []
        self._warn_on_large_eval_matrices(config)

    def _warn_on_large_eval_matrices(self, config: Any) -> None:
        """Large catalogues: say before training what RecBole's full-sort evaluation will hold.

        Per evaluation batch RecBole takes ``[eval_batch_size, n_items]`` float scores from
        ``full_sort_predict`` and builds an int32 hit matrix of the same shape: 8 bytes per
        (user, item). With 1M items and the default 2048 users per batch that is 16 GB.
        """
        users = int(config["eval_batch_size"] or 0)
        needed = 8 * users * self.n_items
        if needed > EVAL_MATRIX_WARN_BYTES:
            LOGGER.warning(
                "full-sort evaluation holds ~%.1f GB per batch (%d users x %d items x 8 bytes: scores + "
                "RecBole's hit matrix); lower eval_batch_size (e.g. to %d) if memory is short",
                needed / 2**30, users, self.n_items, max(1, EVAL_MATRIX_WARN_BYTES // (8 * self.n_items)),
            )

    def require(self, config: Any, key: str) -> Any:
        """``config[key]``; a missing key names the model's YAML that defines it."""
        return require(config, key, type(self))

    def _checked_table(self, table: Any) -> SemanticIDTable:
        name = type(self).__name__
        if table is None:
            raise ValueError(
                f"{name} needs config['{SEMANTIC_ID_TABLE}'] (a SemanticIDTable for this dataset). Fix: run it "
                f"through recbole_letter.quick_start, or call recbole_letter.stages.resolve_stages({name}, config, "
                "dataset) before constructing it."
            )
        if not isinstance(table, SemanticIDTable):
            raise TypeError(
                f"config['{SEMANTIC_ID_TABLE}'] must be a SemanticIDTable, got {type(table).__name__}. "
                "Fix: wrap a padded table with SemanticIDTable.from_padded(table)."
            )
        if table.n_items + 1 != self.n_items:
            raise ValueError(
                f"semantic-ID table has {table.n_items} items but the dataset has {self.n_items - 1}; "
                "rebuild it for this dataset (one row per internal item id)"
            )
        return table

    def place_code_tokens(self, first_token: int, pad_token: int) -> None:
        """Put the code tokens at ``first_token..`` of the vocabulary (layout from the table) and
        build ``item_tokens``: every item's code tokens, padding item -> ``pad_token``."""
        self._code_token_layout = (int(first_token), int(pad_token))
        self.token_offsets = self.id_table.token_offsets(first_token)
        item_tokens = torch.as_tensor(self.id_table.item_token_table(first_token, pad_token))
        self.register_buffer("item_tokens", item_tokens.to(self.semantic_ids.device), persistent=False)

    def add_items(self, codes: np.ndarray, item_ids: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Make items recommendable with the given ``codes`` ``[n, L]``; returns their internal ids.

        ``item_ids`` are dataset items without a code yet (cold-start rows of the table);
        ``None`` appends new items after the last id, so ``full_sort_predict`` grows by ``n``
        columns. The prefix tables and token tables are rebuilt; the network is untouched, the
        codes must lie in its code vocabulary, and no existing item's code may change (checked by
        :meth:`SemanticIDTable.with_new_items`).
        """
        table = self.id_table.with_new_items(codes, item_ids)
        ids = np.arange(self.id_table.n_items + 1, table.n_items + 1) if item_ids is None else np.asarray(item_ids)
        self.set_id_table(table)
        return ids

    def set_id_table(self, table: SemanticIDTable) -> None:
        """Switch to ``table``, an extension of the current one (same level sizes, every existing
        row unchanged), and rebuild everything derived from it."""
        old = self.id_table.table
        same = table.level_sizes == self.id_table.level_sizes and table.n_items >= self.id_table.n_items
        kept = old[self.id_table.assigned]
        if not same or not np.array_equal(table.table[: len(old)][self.id_table.assigned], kept):
            raise ValueError(
                "the new semantic-ID table must extend the current one: same level sizes and every "
                "existing item's code unchanged (use add_items)"
            )
        device = self.semantic_ids.device
        self.id_table = table
        self.semantic_ids = torch.as_tensor(np.array(table.table), dtype=torch.long, device=device)
        self.index = PrefixIndex(np.array(table.table), layout=self.prefix_layout).to(device)
        self.n_items = table.n_items + 1
        if self.token_offsets:
            self.place_code_tokens(*self._code_token_layout)
        self.on_id_table_changed()

    def on_id_table_changed(self) -> None:
        """Hook: a subclass rebuilds what it derived from the ID table (e.g. prompt code strings)."""

    @property
    def n_code_tokens(self) -> int:
        """Size of the code vocabulary (all levels)."""
        return sum(self.id_table.level_sizes)

    # ----------------------------------------------------------------- subclass hooks
    def make_stepper(self, interaction: Any, **options: Any) -> BeamStepper:
        """The network's decoding state for the users of ``interaction`` (model in eval mode)."""
        raise NotImplementedError

    def item_log_probs(self, interaction: Any, items: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probability ``[B]`` of generating ``items`` after each history."""
        raise NotImplementedError

    # ----------------------------------------------------------------- RecBole API
    def predict(self, interaction: Any) -> torch.Tensor:
        """Teacher-forced log-probability ``[B]`` of ``interaction[item_id]`` (sampled evaluation)."""
        return self.item_log_probs(interaction, interaction[self.ITEM_ID])

    @torch.no_grad()
    def beam_search(self, interaction: Any, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``beam_size`` items ``[B, K]`` and their log-probs, best first (no chunking);
        ``options`` go to :meth:`make_stepper`."""
        stepper = self.make_stepper(interaction, **options)
        return constrained_beam_search(
            stepper, self.index, self.token_offsets, self.beam_size, renormalize=self.renormalize_codes
        )

    @torch.no_grad()
    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        """``[B, n_items]``: beam log-probs for the beam's items, ``-inf`` for all others.

        RecBole's full-sort evaluator takes this dense matrix per evaluation batch; it is
        allocated once and each chunk of ``decode_batch_size`` users (which bounds the decoder's
        per-user state) fills its rows in place, so no second copy is made by concatenation.
        """
        out = None
        for start in range(0, len(interaction), self.decode_batch_size):
            part = interaction[start : start + self.decode_batch_size]
            items, scores = self.beam_search(part)
            if out is None:
                out = torch.empty(len(interaction), self.n_items, dtype=scores.dtype, device=scores.device)
            scatter_scores(items, scores, self.n_items, out=out[start : start + len(part)])
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Refuse checkpoints trained on other semantic IDs: their codes would mean other items."""
        saved = state_dict.get(prefix + "semantic_ids")
        if saved is not None and (
            saved.shape != self.semantic_ids.shape or not torch.equal(saved.cpu(), self.semantic_ids.cpu())
        ):
            raise ValueError(
                "checkpoint was trained with a different semantic-ID table; load it with the tokenizer "
                "config (and dataset) it was trained with"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
