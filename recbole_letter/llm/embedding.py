"""Item embeddings from the LLM backbone itself: mean-pooled hidden states over the item text.

STORE's premise is that one LLM does the embedding, the quantisation input and the
recommendation, so the semantic IDs are built from *its* view of the item text rather than from
a separate sentence encoder. We read "the LLM's own embedding" as the last hidden layer (after
the final norm) averaged over the text's real tokens; this is our reading, the STORE code is not
released. It is exposed as ``text_encoder: llm`` of the text-embedding stage, so the LETTER /
RQ-VAE tokenizers can use it too.

Batches are *right*-padded: in a causal LM a real token only attends to earlier positions, so
padding after the text is invisible to it, and positions count from 0 exactly as for the text
alone. Pooling then masks the padding out, so a text's vector does not depend on which other
texts share its batch (up to float rounding of the batched kernels).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

POOLING = "mean-last-hidden"  # enters the cache identity: change it when the pooling changes


@dataclass(frozen=True)
class BackboneSpec:
    """What identifies the backbone to load: the ``llm_*`` config keys of LCRec / STORE."""

    path: str
    dtype: str = "float32"
    seed: int = 0
    tiny_config: str = "null"  # JSON of llm_tiny_config (a string keeps the dataclass hashable)

    @classmethod
    def from_values(cls, path: Any, dtype: Any, seed: Any, tiny_config: Any) -> "BackboneSpec":
        if not path or not str(path).strip():
            raise ValueError(
                "text_encoder=llm needs llm_path: 'smollm2', 'tiny-random' or a local Hugging Face "
                "causal-LM directory (set it in the config or with --llm_path=...)"
            )
        if tiny_config is not None and not isinstance(tiny_config, dict):
            raise ValueError(f"llm_tiny_config must be a mapping or ~, got {tiny_config!r}")
        return cls(str(path).strip(), str(dtype or "float32"), int(seed or 0), json.dumps(tiny_config, sort_keys=True))

    @property
    def tiny_overrides(self) -> dict[str, Any] | None:
        return json.loads(self.tiny_config)


def mean_pooled_states(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 16,
    max_length: int = 256,
) -> np.ndarray:
    """``[len(texts), hidden]`` float32: the masked mean of the last hidden layer over each text.

    A text that tokenizes to nothing (the empty string, for a tokenizer without a BOS token)
    is read as the single EOS token, so every row pools over at least one real state.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise ValueError("nothing to encode: the text list is empty")
    device = next(model.parameters()).device
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    ids = [row if row else [int(tokenizer.eos_token_id)] for row in ids]
    order = np.argsort([len(r) for r in ids], kind="stable")  # similar lengths share a batch
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(ids[i]) for i in rows)
                batch = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    batch[r, : len(ids[i])] = torch.as_tensor(ids[i])
                    mask[r, : len(ids[i])] = 1
                hidden = model(
                    input_ids=batch.to(device),
                    attention_mask=mask.to(device),
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=1,  # only the states are needed, not a [B, T, vocab] head output
                ).hidden_states[-1]
                weights = mask.to(device=device, dtype=hidden.dtype).unsqueeze(-1)
                pooled = ((hidden * weights).sum(1) / weights.sum(1)).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(ids), pooled.shape[1]), dtype=np.float32)
                out[rows] = pooled
    finally:
        model.train(was_training)
    return out
