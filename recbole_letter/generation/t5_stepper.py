"""Incremental T5 decoding of a ``[users, beams]`` grid for :func:`~.beam_search.constrained_beam_search`.

The encoder runs once per user and its cross-attention keys/values are projected once per user
(not copied per beam); each step feeds one new token per beam with a self-attention KV cache.
Measured with ``benchmarks/decode.py`` (see :mod:`recbole_letter.model.tiger`): 71-83 users per
CPU-second with the cache, 40-44 recomputing the prefix, 8-20 for HF ``generate`` + a dict trie.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import T5ForConditionalGeneration


class T5BeamStepper:
    """Incremental T5 decoding of ``K`` beams per user, for :func:`constrained_beam_search`.

    Re-implements only the *wiring* of the HF T5 decoder forward on a ``[B, K, n]`` token grid
    (the modules and weights are the HF ones) so that cross-attention uses per-user keys/values
    ``[B, H, T, D]`` with the beams as query positions, instead of ``B * K`` copies of the encoder
    output. Must run with the model in eval mode (dropout is not applied here).
    """

    def __init__(
        self,
        t5: T5ForConditionalGeneration,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        use_cache: bool = True,
        inputs_embeds: torch.Tensor | None = None,
    ) -> None:
        """``input_ids`` are the encoder's tokens; pass ``None`` and ``inputs_embeds`` ``[B, S, d]``
        to feed ready input vectors instead (TIGER's one-vector-per-item encoder input)."""
        if t5.training:
            raise RuntimeError("beam search needs the model in eval mode (dropout off); call model.eval() first")
        self.t5 = t5
        self.decoder = t5.decoder
        self.use_cache = use_cache
        self.n_heads = t5.config.num_heads
        self.d_kv = t5.config.d_kv
        encoded = t5.encoder(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        ).last_hidden_state
        batch, length, _ = encoded.shape
        self.batch = batch
        dtype = encoded.dtype
        self.enc_bias = torch.zeros(batch, 1, 1, length, dtype=dtype, device=encoded.device)
        self.enc_bias.masked_fill_(~attention_mask.bool()[:, None, None, :], torch.finfo(dtype).min)
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in self.decoder.block:
            att = block.layer[1].EncDecAttention
            self.cross_kv.append((self._heads(att.k(encoded)), self._heads(att.v(encoded))))
        self.self_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.decoder.block)
        start = t5.config.decoder_start_token_id
        self.tokens = torch.full((batch, 1, 1), start, dtype=torch.long, device=encoded.device)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., S, H*D]`` -> ``[..., H, S, D]``."""
        return x.unflatten(-1, (self.n_heads, self.d_kv)).transpose(-2, -3)

    def _run(self, tokens: torch.Tensor, past: int) -> torch.Tensor:
        """Feed ``tokens [B, K, n]`` at positions ``past..past+n-1``; log-probs of the last one."""
        batch, beams, n = tokens.shape
        hidden = self.decoder.embed_tokens(tokens)
        first = self.decoder.block[0].layer[0].SelfAttention
        bias = first.compute_bias(n, past + n, device=tokens.device, past_seen_tokens=past)
        if n > 1:
            causal = torch.ones(n, past + n, dtype=torch.bool, device=tokens.device).triu(past + 1)
            bias = bias.masked_fill(causal, torch.finfo(bias.dtype).min)
        for i, block in enumerate(self.decoder.block):
            sa_layer, ca_layer, ff_layer = block.layer[0], block.layer[1], block.layer[-1]
            att = sa_layer.SelfAttention
            normed = sa_layer.layer_norm(hidden)
            q, k, v = self._heads(att.q(normed)), self._heads(att.k(normed)), self._heads(att.v(normed))
            if self.use_cache:
                if self.self_kv[i] is not None:
                    k = torch.cat([self.self_kv[i][0], k], dim=-2)
                    v = torch.cat([self.self_kv[i][1], v], dim=-2)
                self.self_kv[i] = (k, v)
            if n == 1:
                # One query over <= L keys: broadcast-multiply-sum is ~4x faster on CPU than SDPA's
                # batched matmuls of [1 x L] matrices (measured, benchmarks/decode.py shapes).
                weights = torch.softmax((q * k).sum(-1, keepdim=True) + bias.transpose(-1, -2), dim=-2)
                out = (weights * v).sum(-2, keepdim=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
            hidden = hidden + att.o(out.transpose(-2, -3).flatten(-2))

            att = ca_layer.EncDecAttention
            normed = ca_layer.layer_norm(hidden)
            q = self._heads(att.q(normed).reshape(batch, beams * n, -1))  # beams as query positions
            ck, cv = self.cross_kv[i]
            out = F.scaled_dot_product_attention(q, ck, cv, attn_mask=self.enc_bias, scale=1.0)
            hidden = hidden + att.o(out.transpose(1, 2).reshape(batch, beams, n, -1))
            hidden = ff_layer(hidden)
        last = self.decoder.final_layer_norm(hidden[:, :, -1])
        if self.t5.config.scale_decoder_outputs:
            last = last * (self.t5.config.d_model**-0.5)
        return torch.log_softmax(self.t5.lm_head(last).float(), dim=-1)

    def start(self) -> torch.Tensor:
        """Log-probs ``[B, 1, V]`` after the decoder start token."""
        return self._run(self.tokens, past=0)

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Keep the beams ``parent`` points at, append ``tokens``, return next log-probs."""
        rows = torch.arange(self.batch, device=parent.device)[:, None]
        self.tokens = torch.cat([self.tokens[rows, parent], tokens[..., None]], dim=-1)
        if not self.use_cache:
            return self._run(self.tokens, past=0)
        self.self_kv = [(k[rows, parent], v[rows, parent]) for k, v in self.self_kv]
        return self._run(self.tokens[..., -1:], past=self.tokens.shape[-1] - 1)
