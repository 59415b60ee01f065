"""Turning prompts and responses into left-padded token batches for a causal LM.

Both training and decoding left-pad: every row then *ends* at the same column, so

* the response tokens of a training batch sit in the last ``R`` columns and the LM head only
  needs to run on the last ``R + 1`` positions (``logits_to_keep``), not on a ``[B, T, vocab]``
  tensor (with a 50k vocabulary that tensor dominates memory);
* the decoding prompt's next token is predicted at the last column for every row.

Positions count from each row's first real token (``cumsum(mask) - 1``), so a padded row sees
exactly the positions it would see alone: teacher-forced scores and beam scores agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


@dataclass
class PromptBatch:
    """Left-padded prompts."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding
    position_ids: torch.Tensor  # [B, T] long

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids)))


@dataclass
class TrainingBatch(PromptBatch):
    """Left-padded prompt + response; ``labels`` cover the last ``R`` columns only."""

    labels: torch.Tensor = None  # [B, R] long, IGNORE_INDEX where the column is not a response token

    @property
    def logits_to_keep(self) -> int:
        """LM-head positions needed: the ``R`` response columns' predecessors, plus the last one."""
        return self.labels.shape[1] + 1

    def to(self, device: torch.device | str) -> "TrainingBatch":
        moved = super().to(device)
        return TrainingBatch(moved.input_ids, moved.attention_mask, moved.position_ids, self.labels.to(device))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting from each row's first real token; padding gets 0 (masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the model's own special tokens (e.g. a Llama BOS)."""
    return tokenizer(list(prompts), add_special_tokens=True)["input_ids"]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> PromptBatch:
    """Left-padded prompt batch for decoding."""
    if not prompts:
        raise ValueError("no prompts to encode")
    ids, mask = _left_pad(tokenize_prompts(tokenizer, prompts), int(tokenizer.pad_token_id))
    return PromptBatch(ids, mask, positions_from_mask(mask))


def text_response_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of free-text answers, each followed by EOS."""
    eos = int(tokenizer.eos_token_id)
    return [ids + [eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode_training(tokenizer: Any, prompts: Sequence[str], responses: Sequence[Sequence[int]]) -> TrainingBatch:
    """Left-padded ``prompt + response`` rows; loss labels only on the response tokens.

    ``responses`` are token ids that already end with EOS (code targets are spliced in as ids,
    so a code never depends on how the tokenizer would split its string).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token (EOS)")
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, responses)]
    ids, mask = _left_pad(rows, int(tokenizer.pad_token_id))
    width = max(len(r) for r in responses)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, response in enumerate(responses):
        labels[i, width - len(response) :] = torch.as_tensor(list(response), dtype=torch.long)
    return TrainingBatch(ids, mask, positions_from_mask(mask), labels)


def response_logits(model: Any, batch: TrainingBatch) -> torch.Tensor:
    """Teacher-forced logits ``[B, R, vocab]`` of the response columns (the prompt is never scored)."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=batch.logits_to_keep,
    )
    return out.logits[:, :-1]
