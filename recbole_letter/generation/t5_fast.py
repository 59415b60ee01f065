"""Teacher-forced T5 forward for training: HF's T5 weights and math, fewer passes over memory.

TIGER trains a small T5 (d_model 128) on long encoder inputs (20 history items x 4 codes = 80
tokens). At that size the matrix products run near the CPU's peak and about half of a training
step went to element-wise work around them (profile of ``benchmarks/train_speed.py``'s paper
shape, one thread). :func:`t5_logits` runs the same network as
``T5ForConditionalGeneration.forward`` (it reads the HF modules' weights, so checkpoints and
the beam stepper are unchanged) and removes that overhead where it does not change the math:

* **no decoder cache during training.** HF's forward builds an ``EncoderDecoderCache`` by
  default and copies every layer's cross-attention keys/values into it (6% of a step);
* **attention without SDPA's extra passes.** With dropout on, CPU SDPA falls back to its math
  path, which multiplies q and k by the (unit) scale and copies transposed keys; here scores are
  one batched matmul, the relative-position bias and the padding mask are combined once per
  stack (HF: once per layer) and shared by all layers;
* **cheaper dropout.** ``nn.Dropout`` draws one 32-bit random number per element
  (``bernoulli_``: 12% of a step) and keeps a float mask; here one 64-bit draw gives four
  16-bit uniforms, the 0/1 mask multiplies in the activations' dtype (a same-dtype product
  vectorises; ``torch.where`` and bool products measured no faster than ``nn.Dropout``), the
  1/(1-p) rescaling is folded into the next residual add, and the feed-forward's ReLU and
  dropout are one in-place pass whose backward needs no stored mask (:class:`_ReluDropoutInPlace`);
  the attention-probability dropout's rescaling moves into the residual add as well. The drop
  probability is quantised to 1/65536 (0.1 -> 0.100006); masks differ from ``nn.Dropout``'s
  draws, so training runs match HF's in distribution, not bitwise (``benchmarks/train_speed.py``
  compares loss curves);
* **cross-attention on the decoder's few rows.** HF projects all 80 encoder states to keys and
  values in every decoder layer; regrouping the same products around the 5 decoder positions
  (:func:`_cross_attend`) does ~7x fewer multiply-adds there;
* q, k and v as three products (a fused product's split costs a gradient concatenation).

With dropout off (``model.eval()``) the logits equal HF's to float rounding (tested).
``bf16=True`` runs the matrix products under CPU bfloat16 autocast (AMX / AVX512-BF16 CPUs);
that changes the numbers, so it is off unless asked for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import T5ForConditionalGeneration

_UINT16 = 65536


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, ``True`` with probability ``1 - p`` (``p`` rounded to a multiple of 1/65536).

    Four 16-bit uniforms per 64-bit draw of torch's default generator (so ``torch.manual_seed``
    governs it), compared against a threshold: ~4x fewer generator calls than ``bernoulli_``.
    """
    return _uniform16(shape, device) >= _threshold16(p)


def drop_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """The complement of :func:`keep_mask` (``True`` = dropped), drawn the same way."""
    return _uniform16(shape, device) < _threshold16(p)


def _uniform16(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int16 tensor of ``shape``, uniform on [-32768, 32767]: four values per 64-bit draw."""
    n = 1
    for size in shape:
        n *= size
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return words.view(torch.int16)[:n].view(shape)


def _threshold16(p: float) -> int:
    """int16 value below which a :func:`_uniform16` entry falls with probability ``p``."""
    return round(p * _UINT16) - _UINT16 // 2


class _Dropout:
    """Dropout state of one forward pass: probability, scale and whether it is active."""

    def __init__(self, p: float, training: bool) -> None:
        self.active = training and p > 0
        self.p = p
        self.scale = 1.0 / (1.0 - p) if self.active else 1.0

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with dropped entries zeroed, *not* rescaled (the caller applies ``scale``)."""
        if not self.active:
            return x
        return x * keep_mask(x.shape, self.p, x.device).to(x.dtype)

    def add(self, residual: torch.Tensor, x: torch.Tensor, inner_dropouts: int = 0) -> torch.Tensor:
        """``residual + dropout(x)`` with the rescaling folded into the add.

        ``inner_dropouts``: how many dropouts inside ``x`` were left unscaled (each is a factor
        1/(1-p) through linear maps, applied here once instead of on its larger tensor).
        """
        if not self.active:
            return residual + x
        return torch.add(residual, self.masked(x), alpha=self.scale ** (1 + inner_dropouts))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(x) * self.scale if self.active else x


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, S, H*D]`` -> ``[B, H, S, D]`` (a view)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, drop: _Dropout) -> torch.Tensor:
    """T5 attention (no 1/sqrt(d) scaling): softmax(q k^T + bias) v, probabilities dropped out.

    Returns ``[B, S, H*D]``. Without dropout this is SDPA (its fused CPU kernel); with dropout,
    an explicit softmax whose dropped probabilities are NOT rescaled: the caller folds the
    1/(1-p) into its residual add (``_Dropout.add(..., inner_dropouts=1)``), which is linear
    through ``v`` and the output projection and saves a pass over the output.
    """
    if not drop.active:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    else:
        batch, n_heads, length, _ = q.shape
        # One copy of k into head-major order, then BLAS reads it transposed (copying the
        # transposed view is slower); the bias is added by the product itself (baddbmm).
        keys_t = k.contiguous().flatten(0, 1).transpose(1, 2)
        scores = torch.baddbmm(bias.expand(batch, n_heads, length, -1).reshape(batch * n_heads, length, -1),
                               q.reshape(batch * n_heads, length, -1), keys_t)
        probs = torch.softmax(scores.view(batch, n_heads, length, -1), dim=-1)
        out = torch.matmul(drop.masked(probs), v)
    return out.transpose(1, 2).flatten(2)


def _self_attend(att, normed: torch.Tensor, bias: torch.Tensor, drop: _Dropout, n_heads: int) -> torch.Tensor:
    """Self-attention of one T5 layer on its normalised input, ``[B, S, H*D]`` before ``o``.

    q, k and v are three products rather than one on concatenated weights: the split of a fused
    output costs a concatenation of the three gradients in the backward pass, which measured
    dearer than the two extra (small) matrix products it saves.
    """
    q, k, v = (_heads(proj(normed), n_heads) for proj in (att.q, att.k, att.v))
    return _attend(q, k, v, bias, drop)


def _cross_attend(
    att, normed: torch.Tensor, encoded: torch.Tensor, bias: torch.Tensor, drop: _Dropout, n_heads: int
) -> torch.Tensor:
    """Cross-attention ``[B, T, H*D]`` (before ``o``) without projecting the encoder states.

    The decoder reads T = levels + 1 positions, the encoder gives S = 80: projecting every
    encoder state to keys and values (HF: ``k(encoded)``, ``v(encoded)``) costs S x d_model x
    2HD per sequence, most of a decoder layer. Regrouping the same products,
    ``(q_h W_k,h) encoded^T`` for the scores and ``(p_h encoded) W_v,h^T`` for the output, does
    the work on the T query rows instead (~7x fewer multiply-adds at the paper shape). Same
    math; only the float rounding order differs.
    """
    batch, length, _ = normed.shape
    d_kv = att.key_value_proj_dim
    w_k = att.k.weight.view(n_heads, d_kv, -1)  # [H, D, d_model]
    w_v = att.v.weight.view(n_heads, d_kv, -1)
    q = att.q(normed).view(batch * length, n_heads, d_kv).transpose(0, 1)  # [H, B*T, D]
    q_k = torch.bmm(q, w_k)  # [H, B*T, d_model]: the query in encoder-state space
    q_k = q_k.view(n_heads, batch, length, -1).permute(1, 0, 2, 3).reshape(batch, n_heads * length, -1)
    scores = torch.bmm(q_k, encoded.transpose(1, 2)).view(batch, n_heads, length, -1) + bias
    probs = drop.masked(torch.softmax(scores, dim=-1))
    mixed = torch.bmm(probs.view(batch, n_heads * length, -1), encoded)  # [B, H*T, d_model]
    mixed = mixed.view(batch, n_heads, length, -1).permute(1, 0, 2, 3).reshape(n_heads, batch * length, -1)
    out = torch.bmm(mixed, w_v.transpose(1, 2))  # [H, B*T, D], dropout not rescaled (as _attend)
    return out.view(n_heads, batch, length, d_kv).permute(1, 2, 0, 3).reshape(batch, length, n_heads * d_kv)


class _RMSNorm(torch.autograd.Function):
    """T5's RMS norm ``w * x / sqrt(mean(x^2) + eps)`` with a hand-written backward.

    HF's ``T5LayerNorm`` is five element-wise ops whose autograd backward makes about twice as
    many passes over ``[B, S, d_model]``; this one keeps ``x`` and the per-row ``1/rms`` and
    derives both gradients in a few passes (~25% less time per norm, 9 norms per encoder pass).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, inv_rms)
        return x * inv_rms * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, inv_rms = ctx.saved_tensors
        normed = x * inv_rms
        grad_normed = grad * weight
        grad_weight = (grad * normed).reshape(-1, x.shape[-1]).sum(0)
        grad_x = inv_rms * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x, grad_weight, None


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a ``T5LayerNorm``; fp32 outside autocast takes :class:`_RMSNorm`."""
    if x.dtype != torch.float32 or norm.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return norm(x)
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)


class _ReluDropoutInPlace(torch.autograd.Function):
    """``relu`` then unscaled dropout, in place on the feed-forward's first product.

    The ``[B, S, d_ff]`` product is the largest activation of a step (8x d_model at the paper
    shape), so every pass over it counts. Overwriting it (nothing else reads ``wi``'s output)
    with ``relu`` and zeroing the dropped entries saves allocating a mask-sized float tensor and
    a product. The backward pass needs no mask either: the output is zero exactly where the
    gradient must be (dropped, or not above zero), which ``threshold_backward`` reads from the
    output that ``wo`` keeps for its own backward anyway.
    """

    @staticmethod
    def forward(ctx, inner: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        out = inner.relu_()
        out.masked_fill_(drop_mask(out.shape, p, out.device), 0)
        ctx.mark_dirty(inner)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


def _feed_forward(layer, hidden: torch.Tensor, drop: _Dropout, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden + dropout(wo(dropout(relu(wi(norm(hidden))))))``: ReLU and dropout in one pass.

    ``rows`` (flat indices of the real, non-padding positions) runs the feed-forward on those
    positions only. It is position-wise and a padding position's state is never read by a real
    one (padding keys are masked in self-attention, padding encoder states in cross-attention),
    so every real output and gradient is unchanged while the largest products of the layer skip
    the padding (~9% of ml-100k's training positions at 20 history items, most of them on
    Amazon data with short histories).
    """
    if rows is None:
        return drop.add(hidden, _feed_forward_branch(layer, hidden, drop), inner_dropouts=1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    branch = drop.masked(_feed_forward_branch(layer, flat.index_select(0, rows), drop)).to(flat.dtype)  # bf16 autocast
    return flat.index_add(0, rows, branch, alpha=drop.scale * drop.scale).view_as(hidden)


def _feed_forward_branch(layer, hidden: torch.Tensor, drop: _Dropout) -> torch.Tensor:
    """``wo(dropout(relu(wi(norm(hidden)))))`` with that dropout left unscaled (see ``_Dropout.add``)."""
    dense = layer.DenseReluDense
    inner = dense.wi(_rms_norm(layer.layer_norm, hidden))
    if drop.active:
        return dense.wo(_ReluDropoutInPlace.apply(inner, drop.p))
    return dense.wo(torch.relu(inner))


def _padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, S]`` 0/1 mask -> additive ``[B, 1, 1, S]`` bias (0 or the dtype's minimum)."""
    bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask.bool()[:, None, None, :], torch.finfo(dtype).min)


def check_supported(t5: T5ForConditionalGeneration) -> None:
    """The fast forward implements T5's ReLU feed-forward with tied, rescaled output embeddings."""
    cfg = t5.config
    if cfg.is_gated_act or cfg.dense_act_fn != "relu":
        raise ValueError(
            f"t5_fast supports feed_forward_proj='relu' only, got {cfg.feed_forward_proj!r}; "
            "set fast_t5_forward: False to use HF's forward"
        )


def encode(
    t5: T5ForConditionalGeneration,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """T5 encoder output ``[B, S, d_model]`` from token ids or ready input embeddings."""
    encoder = t5.encoder
    drop = _Dropout(t5.config.dropout_rate, t5.training)
    hidden = encoder.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    hidden = drop(hidden)
    length = hidden.shape[1]
    first = encoder.block[0].layer[0].SelfAttention
    bias = first.compute_bias(length, length, device=hidden.device) + _padding_bias(attention_mask, hidden.dtype)
    n_heads = t5.config.num_heads
    real = attention_mask.reshape(-1).bool()
    rows = None if bool(real.all()) else real.nonzero().squeeze(1)
    for block in encoder.block:
        sa_layer = block.layer[0]
        att = sa_layer.SelfAttention
        hidden = drop.add(hidden, att.o(_self_attend(att, _rms_norm(sa_layer.layer_norm, hidden), bias, drop, n_heads)), 1)
        hidden = _feed_forward(block.layer[-1], hidden, drop, rows)
    return drop(_rms_norm(encoder.final_layer_norm, hidden))


def decode_logits(
    t5: T5ForConditionalGeneration,
    encoded: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
) -> torch.Tensor:
    """Teacher-forced decoder logits ``[B, T, vocab]`` (causal self-attention, no cache)."""
    decoder = t5.decoder
    drop = _Dropout(t5.config.dropout_rate, t5.training)
    n_heads = t5.config.num_heads
    hidden = drop(decoder.embed_tokens(decoder_input_ids))
    length = hidden.shape[1]
    first = decoder.block[0].layer[0].SelfAttention
    causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
    self_bias = first.compute_bias(length, length, device=hidden.device).masked_fill(
        causal, torch.finfo(hidden.dtype).min
    )
    cross_bias = _padding_bias(attention_mask, encoded.dtype)
    for block in decoder.block:
        sa_layer, ca_layer = block.layer[0], block.layer[1]
        att = sa_layer.SelfAttention
        hidden = drop.add(hidden, att.o(_self_attend(att, _rms_norm(sa_layer.layer_norm, hidden), self_bias, drop, n_heads)), 1)
        att = ca_layer.EncDecAttention
        normed = _rms_norm(ca_layer.layer_norm, hidden)
        hidden = drop.add(hidden, att.o(_cross_attend(att, normed, encoded, cross_bias, drop, n_heads)), 1)
        hidden = _feed_forward(block.layer[-1], hidden, drop)
    hidden = drop(_rms_norm(decoder.final_layer_norm, hidden))
    if t5.config.tie_word_embeddings and t5.config.scale_decoder_outputs:
        hidden = hidden * (t5.config.d_model**-0.5)
    return t5.lm_head(hidden)


def t5_logits(
    t5: T5ForConditionalGeneration,
    attention_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Same logits as ``t5(input_ids=..., attention_mask=..., decoder_input_ids=...).logits``.

    Dropout follows ``t5.training``. ``bf16`` runs under CPU bfloat16 autocast (logits are
    returned in float32 either way).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        encoded = encode(t5, attention_mask, input_ids=input_ids, inputs_embeds=inputs_embeds)
        logits = decode_logits(t5, encoded, attention_mask, decoder_input_ids)
    return logits.float()
