"""Beam stepper for a decoder-only LLM (LC-Rec, STORE) that never copies the prompt per beam.

The usual way (HF ``generate(num_beams=K)``) repeats each prompt ``K`` times *before* the
prefill, so the long prompt is encoded ``K`` times and its KV cache is stored and reordered
``K`` times. Here the prompt is encoded once per user, and the beams are appended to the same
cache as a tree:

* step ``t`` feeds the ``K`` beam tokens of each user as ``K`` new cache slots of that user's row
  (one forward of shape ``[B, K]``), all at position ``prompt_length + t``;
* a 4-D attention mask lets each new token see the user's prompt and only its own ancestors
  (the slots of the beam it extends), so beams never see each other;
* reordering beams is a gather on a small ``[B, K, slots]`` boolean ancestry table: cache
  entries are never moved or copied. Slots of beams that died stay in the cache, masked.

So the cache grows by ``K`` tokens per level instead of holding ``B * K`` prompt copies, and any
HF causal LM that accepts a custom 4-D mask and ``position_ids`` works (Llama, Qwen2, Mistral,
Gemma; peft-wrapped ones too). Scores are full-vocabulary log-softmax sums, i.e. the
sequence log-probability of the item's code tokens given the prompt: the same number the
teacher-forced path computes.

Measured with ``benchmarks/decode.py --model LCRec`` (see the README).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from recbole_letter.llm.batching import PromptBatch


def cache_keyword(model: Any) -> str:
    """Name of the KV-cache argument: ``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class CausalLMBeamStepper:
    """Incremental decoding of ``K`` beams per prompt over one shared prompt cache."""

    def __init__(self, model: Any, prompts: PromptBatch) -> None:
        if model.training:
            raise RuntimeError("beam search needs the model in eval mode (dropout off); call model.eval() first")
        from transformers import DynamicCache

        self.model = model
        self.batch = prompts.input_ids.shape[0]
        self.device = prompts.input_ids.device
        self.dtype = next(model.parameters()).dtype
        # The cache object is updated in place by every forward; we keep our own reference.
        self.cache = DynamicCache()
        self._cache_kw = cache_keyword(model)
        out = model(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            position_ids=prompts.position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: self.cache},
        )
        self._first = out.logits[:, -1:].float()
        self.prompt_visible = prompts.attention_mask.bool()  # [B, P]
        self.next_position = prompts.attention_mask.long().sum(-1)  # [B]: position of the first answer token
        # ancestry[b, k, s]: beam k of user b descends from beam slot s (slots appended per step).
        self.ancestry = torch.zeros(self.batch, 1, 0, dtype=torch.bool, device=self.device)
        self.steps = 0

    def start(self) -> torch.Tensor:
        """Log-probabilities ``[B, 1, vocab]`` of the first answer token."""
        return torch.log_softmax(self._first, dim=-1)

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Extend beam ``parent[b, k]`` by ``tokens[b, k]``; log-probs ``[B, K, vocab]`` of the next token."""
        batch, beams = tokens.shape
        rows = torch.arange(batch, device=self.device)[:, None]
        inherited = self.ancestry[rows, parent]  # [B, K, S]
        own = torch.eye(beams, dtype=torch.bool, device=self.device).expand(batch, beams, beams)
        self.ancestry = torch.cat([inherited, own], dim=-1)  # [B, K, S + K]
        prompt = self.prompt_visible[:, None, :].expand(batch, beams, -1)
        visible = torch.cat([prompt, self.ancestry], dim=-1)[:, None]  # [B, 1, K, P + S + K]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        positions = (self.next_position + self.steps)[:, None].expand(batch, beams)
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        self.steps += 1
        return torch.log_softmax(out.logits.float(), dim=-1)
