"""TIGER (Rajput et al., NeurIPS 2023) as a RecBole ``SequentialRecommender``.

A small T5 encoder-decoder, trained from scratch, reads the semantic-ID tokens of a user's last
``MAX_ITEM_LIST_LENGTH`` items and generates the code tuple of the next item. With LETTER's
semantic IDs and ``tau < 1`` this is LETTER-TIGER (arXiv 2405.07314).

Vocabulary (a few hundred tokens per level, not a 32k text vocabulary)::

    0 = pad / decoder start, 1 = eos (reserved),
    2 + offset_l + c        code c of level l (offset_l = total codes of earlier levels),
    2 + n_codes + (u % B)   hashed user token, prepended to the encoder input when B > 0.

Design decisions:

* **No eos in the target.** Every item has exactly ``L`` codes, so the length is implicit;
  an eos would cost one more decoder position per sample and a trivially predictable token
  whose log-prob (~0) would not change the ranking. Decoding stops after ``L`` codes.
* **Scores are plain log-softmax sums**, not divided by ``tau``: ``tau`` shapes training
  gradients; the ranking is read from the model's own distribution, so beam scores equal the
  teacher-forced log-probability ``predict`` returns for the same item.
* **Decoding** (``full_sort_predict``) is the batched constrained beam search of
  :mod:`recbole_letter.generation.beam_search`, driven by :class:`T5BeamStepper`, which runs the
  T5 decoder blocks on a ``[users, beams]`` grid: the encoder runs once per user, its cross-
  attention keys/values are projected once per user (not copied per beam), and each step
  feeds one new token per beam with a self-attention KV cache. Measured with
  ``benchmarks/decode.py`` (1682 items, 4x256 codes, history 20, beam 20, 32 users per batch,
  one CPU thread): KV cache 71-83 users per CPU-second, recomputing the short prefix every
  step 40-44, HF ``generate`` + dict trie 8-20 (it copies the encoder states per beam and
  reorders those copies every step; its CPU time grows with memory contention), identical
  top-10 lists. The T5 encoder alone runs at ~190 users/s, so decoding costs about as much as
  encoding. ``use_cache=False`` is kept only so the benchmark can show the comparison.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation.beam_search import constrained_beam_search, scatter_scores
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.trainer import GenerativeTrainer
from recbole_letter.stages.item_tokenizer import semantic_ids_for

PAD_TOKEN = 0
EOS_TOKEN = 1
N_SPECIAL = 2


def _require(config, key: str):
    """``config[key]``, failing loudly: RecBole returns None for keys nobody set."""
    value = config[key]
    if value is None:
        raise ValueError(
            f"config key {key!r} is missing; load properties/model/TIGER.yaml or set it explicitly"
        )
    return value


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
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        use_cache: bool = True,
    ) -> None:
        if t5.training:
            raise RuntimeError("beam search needs the model in eval mode (dropout off); call model.eval() first")
        self.t5 = t5
        self.decoder = t5.decoder
        self.use_cache = use_cache
        self.n_heads = t5.config.num_heads
        self.d_kv = t5.config.d_kv
        encoded = t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
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
        self.tokens = torch.full((batch, 1, 1), PAD_TOKEN, dtype=torch.long, device=encoded.device)

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


class TIGER(SequentialRecommender):
    """Generative retrieval over semantic IDs with a T5 encoder-decoder (see module docstring)."""

    input_type = InputType.POINTWISE
    trainer_class = GenerativeTrainer
    # The tokenizer's keys (LETTER.yaml) are read too: item_tokenizer=LETTER fits it on demand.
    default_config_names = ("LETTER", "TIGER")

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        table = np.asarray(semantic_ids_for(config, dataset))
        if table.ndim != 2 or table.shape[0] != self.n_items:
            raise ValueError(
                f"semantic-ID table has shape {table.shape}, expected [{self.n_items}, n_levels] "
                "(one row per internal item id, row 0 = padding); rebuild it for this dataset"
            )
        if (table[0] != -1).any():
            raise ValueError("semantic-ID table row 0 (padding item) must be all -1; rebuild the table")
        self.register_buffer("semantic_ids", torch.as_tensor(table, dtype=torch.long))
        self.index = PrefixIndex(table, layout=str(_require(config, "prefix_index")))
        self.n_levels = self.index.n_levels
        sizes = self.index.level_sizes
        self.token_offsets: list[int] = [N_SPECIAL + sum(sizes[:l]) for l in range(self.n_levels)]
        item_tokens = torch.as_tensor(table, dtype=torch.long) + torch.tensor(self.token_offsets)
        item_tokens[0] = PAD_TOKEN
        self.register_buffer("item_tokens", item_tokens, persistent=False)

        self.user_token_buckets = int(config["user_token_buckets"] or 0)
        if self.user_token_buckets < 0:
            raise ValueError(f"user_token_buckets must be >= 0, got {self.user_token_buckets}")
        self.user_token_offset = N_SPECIAL + sum(sizes)
        vocab_size = self.user_token_offset + self.user_token_buckets

        self.tau = float(_require(config, "tau"))
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (1.0 = plain TIGER loss), got {self.tau}")
        self.beam_size = int(_require(config, "beam_size"))
        topk = config["topk"]
        max_k = max(topk) if isinstance(topk, (list, tuple)) else int(topk or 0)
        if self.beam_size < max_k:
            raise ValueError(
                f"beam_size={self.beam_size} < max(topk)={max_k}: the beam must hold at least "
                "max(topk) items or top-K fills with -inf ties; raise beam_size"
            )
        self.decode_batch_size = int(_require(config, "decode_batch_size"))
        if self.decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {self.decode_batch_size}")

        t5_config = T5Config(
            vocab_size=vocab_size,
            d_model=int(_require(config, "d_model")),
            d_kv=int(_require(config, "d_kv")),
            d_ff=int(_require(config, "d_ff")),
            num_layers=int(_require(config, "num_encoder_layers")),
            num_decoder_layers=int(_require(config, "num_decoder_layers")),
            num_heads=int(_require(config, "num_heads")),
            dropout_rate=float(_require(config, "dropout_rate")),
            feed_forward_proj=str(_require(config, "feed_forward_proj")),
            pad_token_id=PAD_TOKEN,
            eos_token_id=EOS_TOKEN,
            decoder_start_token_id=PAD_TOKEN,
        )
        self.t5 = T5ForConditionalGeneration(t5_config)

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

    # ----------------------------------------------------------------- inputs
    def encoder_inputs(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """History -> encoder token ids ``[B, S]`` and attention mask ``[B, S]``.

        RecBole's ``item_id_list`` is left-aligned and zero-padded, so trimming to the longest
        history of the batch drops only padding; padding item 0 maps to the pad token.
        """
        seq = interaction[self.ITEM_SEQ]
        longest = max(int(interaction[self.ITEM_SEQ_LEN].max()), 1)
        tokens = self.item_tokens[seq[:, :longest]].flatten(1)
        if self.user_token_buckets:
            user = interaction[self.USER_ID] % self.user_token_buckets + self.user_token_offset
            tokens = torch.cat([user[:, None], tokens], dim=1)
        return tokens, tokens != PAD_TOKEN

    def target_tokens(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``[B]`` -> target code tokens ``[B, L]`` and decoder inputs (shifted right)."""
        target = self.item_tokens[items]
        start = torch.full_like(target[:, :1], PAD_TOKEN)
        return target, torch.cat([start, target[:, :-1]], dim=1)

    def forward(self, interaction, items: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]`` for generating ``items`` after each history."""
        input_ids, attention_mask = self.encoder_inputs(interaction)
        _, decoder_input_ids = self.target_tokens(items)
        return self.t5(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        ).logits

    # ----------------------------------------------------------------- RecBole API
    def calculate_loss(self, interaction) -> torch.Tensor:
        """Ranking-guided generation loss of the next item's code tuple."""
        items = interaction[self.POS_ITEM_ID]
        target, _ = self.target_tokens(items)
        return ranking_guided_loss(self.forward(interaction, items), target, self.tau)

    def predict(self, interaction) -> torch.Tensor:
        """Teacher-forced log-probability ``[B]`` of ``interaction[item_id]`` (sampled evaluation)."""
        items = interaction[self.ITEM_ID]
        target, _ = self.target_tokens(items)
        log_probs = torch.log_softmax(self.forward(interaction, items).float(), dim=-1)
        return log_probs.gather(-1, target[..., None]).squeeze(-1).sum(-1)

    @torch.no_grad()
    def beam_search(self, interaction, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``beam_size`` items ``[B, K]`` and their log-probs, best first (no chunking)."""
        input_ids, attention_mask = self.encoder_inputs(interaction)
        stepper = T5BeamStepper(self.t5, input_ids, attention_mask, use_cache=use_cache)
        return constrained_beam_search(stepper, self.index, self.token_offsets, self.beam_size)

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        """``[B, n_items]``: beam log-probs for the beam's items, ``-inf`` for all others.

        Users are decoded ``decode_batch_size`` at a time to bound the cross-attention cache
        (RecBole's sequential full-sort batches hold ``eval_batch_size`` users).
        """
        n_users = len(interaction)
        chunks = []
        for start in range(0, n_users, self.decode_batch_size):
            part = interaction[start : start + self.decode_batch_size]
            items, scores = self.beam_search(part)
            chunks.append(scatter_scores(items, scores, self.n_items))
        return torch.cat(chunks, dim=0)

    def __str__(self) -> str:
        params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return (
            f"TIGER(levels={self.n_levels}, codes/level={self.index.level_sizes}, "
            f"vocab={self.t5.config.vocab_size}, beam={self.beam_size}, tau={self.tau}, "
            f"trainable parameters={params})"
        )

