"""TIGER (Rajput et al., NeurIPS 2023): the T5 part of a :class:`~.base.SemanticIDRecommender`.

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

from pathlib import Path
from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation import t5_fast
from recbole_letter.generation.losses import ranking_guided_loss, trie_log_probs, trie_ranking_guided_loss
from recbole_letter.generation.t5_stepper import T5BeamStepper
from recbole_letter.model.base import SemanticIDRecommender

PAD_TOKEN = 0
EOS_TOKEN = 1
N_SPECIAL = 2
CODE_SOFTMAX = ("trie", "vocab")
ENCODER_INPUTS = ("codes", "items")


class TIGER(SemanticIDRecommender):
    """Generative retrieval over semantic IDs with a T5 encoder-decoder (see module docstring)."""

    # The tokenizer's keys (LETTER.yaml) are read too: item_tokenizer=LETTER fits it on demand.
    default_config_names = ("LETTER", "TIGER")

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.place_code_tokens(first_token=N_SPECIAL, pad_token=PAD_TOKEN)

        self.user_token_buckets = int(self.require(config, "user_token_buckets"))
        if self.user_token_buckets < 0:
            raise ValueError(f"user_token_buckets must be >= 0, got {self.user_token_buckets}")
        self.user_token_offset = N_SPECIAL + self.n_code_tokens
        vocab_size = self.user_token_offset + self.user_token_buckets

        self.tau = float(self.require(config, "tau"))
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (1.0 = plain TIGER loss), got {self.tau}")

        t5_config = T5Config(
            vocab_size=vocab_size,
            d_model=int(self.require(config, "d_model")),
            d_kv=int(self.require(config, "d_kv")),
            d_ff=int(self.require(config, "d_ff")),
            num_layers=int(self.require(config, "num_encoder_layers")),
            num_decoder_layers=int(self.require(config, "num_decoder_layers")),
            num_heads=int(self.require(config, "num_heads")),
            dropout_rate=float(self.require(config, "dropout_rate")),
            feed_forward_proj=str(self.require(config, "feed_forward_proj")),
            pad_token_id=PAD_TOKEN,
            eos_token_id=EOS_TOKEN,
            decoder_start_token_id=PAD_TOKEN,
        )
        self.t5 = T5ForConditionalGeneration(t5_config)

        self.code_softmax = str(self.require(config, "code_softmax"))
        if self.code_softmax not in CODE_SOFTMAX:
            raise ValueError(f"code_softmax must be one of {CODE_SOFTMAX}, got {self.code_softmax!r}")
        self.renormalize_codes = self.code_softmax == "trie"
        self.encoder_input = str(self.require(config, "encoder_input"))
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {self.encoder_input!r}")
        self.fast_t5_forward = bool(self.require(config, "fast_t5_forward"))
        self.bf16_autocast = bool(self.require(config, "bf16_autocast"))
        if self.bf16_autocast and not self.fast_t5_forward:
            raise ValueError("bf16_autocast needs fast_t5_forward: True")
        if self.fast_t5_forward:
            t5_fast.check_supported(self.t5)

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

    def encoder_embeds(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """``encoder_input: items``: one input vector per history item, ``[B, S_items, d]``, and its mask.

        An item's vector is the sum of its code tokens' embeddings (the same embedding table the
        decoder generates codes with), so the encoder reads 20 positions instead of 80 for a
        20-item history at 4 codes per item. A departure from the TIGER paper, which feeds every
        code token; see ``benchmarks/train_speed.py`` and ``benchmarks/quality.py``.
        """
        seq = interaction[self.ITEM_SEQ]
        longest = max(int(interaction[self.ITEM_SEQ_LEN].max()), 1)
        seq = seq[:, :longest]
        embeds = self.t5.shared(self.item_tokens[seq]).sum(dim=-2)
        mask = seq != 0
        if self.user_token_buckets:
            user = interaction[self.USER_ID] % self.user_token_buckets + self.user_token_offset
            embeds = torch.cat([self.t5.shared(user)[:, None], embeds], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return embeds, mask

    def _encoder_kwargs(self, interaction) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Encoder input (``input_ids`` or ``inputs_embeds``, per ``encoder_input``) and its mask."""
        if self.encoder_input == "items":
            embeds, mask = self.encoder_embeds(interaction)
            return {"inputs_embeds": embeds}, mask
        input_ids, mask = self.encoder_inputs(interaction)
        return {"input_ids": input_ids}, mask

    def target_tokens(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``[B]`` -> target code tokens ``[B, L]`` and decoder inputs (shifted right)."""
        target = self.item_tokens[items]
        start = torch.full_like(target[:, :1], PAD_TOKEN)
        return target, torch.cat([start, target[:, :-1]], dim=1)

    def forward(self, interaction, items: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]`` for generating ``items`` after each history."""
        inputs, attention_mask = self._encoder_kwargs(interaction)
        _, decoder_input_ids = self.target_tokens(items)
        if self.fast_t5_forward:
            return t5_fast.t5_logits(
                self.t5, attention_mask, decoder_input_ids, bf16=self.bf16_autocast, **inputs
            )
        return self.t5(
            **inputs, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits

    # ----------------------------------------------------------------- RecBole API
    def calculate_loss(self, interaction) -> torch.Tensor:
        """Ranking-guided generation loss of the next item's code tuple."""
        items = interaction[self.POS_ITEM_ID]
        target, _ = self.target_tokens(items)
        logits = self.forward(interaction, items)
        if self.code_softmax == "trie":
            prefixes = self.index.item_prefixes[items]
            return trie_ranking_guided_loss(logits, target, prefixes, self.index, self.token_offsets, self.tau)
        return ranking_guided_loss(logits, target, self.tau)

    # ----------------------------------------------------------------- SemanticIDRecommender hooks
    def item_log_probs(self, interaction, items: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probability ``[B]`` of generating ``items`` after each history."""
        target, _ = self.target_tokens(items)
        logits = self.forward(interaction, items).float()
        if self.code_softmax == "trie":
            prefixes = self.index.item_prefixes[items]
            return trie_log_probs(logits, target, prefixes, self.index, self.token_offsets).sum(-1)
        log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs.gather(-1, target[..., None]).squeeze(-1).sum(-1)

    def make_stepper(self, interaction, use_cache: bool = True) -> T5BeamStepper:
        """Encode the histories once; the stepper decodes all beams on top of that encoding."""
        inputs, attention_mask = self._encoder_kwargs(interaction)
        return T5BeamStepper(
            self.t5, inputs.get("input_ids"), attention_mask, use_cache=use_cache,
            inputs_embeds=inputs.get("inputs_embeds"),
        )

    @classmethod
    def result_label(cls, config: Any) -> str:
        """Row name for results tables, e.g. ``TIGER (LETTER IDs, tau 0.7)``; non-default
        ``encoder_input`` / ``code_softmax`` are named too."""
        tokenizer = str(config["item_tokenizer"])
        ids = {"LETTER": "LETTER IDs", "RQVAE": "RQ-VAE IDs"}.get(tokenizer.upper(), f"IDs from {Path(tokenizer).name}")
        parts = [ids, f"tau {float(config['tau'])!r}"]
        if config["encoder_input"] == "items":
            parts.append("item-level input")
        if config["code_softmax"] == "vocab":
            parts.append("vocab softmax")
        return f"TIGER ({', '.join(parts)})"

    def __str__(self) -> str:
        params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return (
            f"TIGER(levels={self.n_levels}, codes/level={self.index.level_sizes}, "
            f"vocab={self.t5.config.vocab_size}, beam={self.beam_size}, tau={self.tau}, "
            f"code_softmax={self.code_softmax}, encoder_input={self.encoder_input}, "
            f"trainable parameters={params})"
        )

