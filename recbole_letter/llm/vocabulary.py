"""Extending an LLM's vocabulary with semantic-ID code tokens (``<a_12>``, ``<b_3>``, ...).

LC-Rec writes every item as its code tokens and lets the LLM generate them, so every code of
every level becomes one new token. The new ids must be *contiguous and in level order* so that
code ``c`` of level ``l`` is token ``first_id + level_offsets[l] + c``: the constrained beam
search then masks a level with one slice of the vocabulary, without a lookup table.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

LOGGER = logging.getLogger("recbole_letter")


def add_code_tokens(tokenizer: Any, model: Any, tokens: Sequence[str]) -> int:
    """Add ``tokens`` to ``tokenizer``, resize ``model``'s embeddings; return the first new id.

    Raises:
        ValueError: if the tokenizer already knows one of the tokens. That happens when a
            tokenizer saved after an earlier extension is loaded as the base, or when a model's
            own vocabulary uses ``<a_1>``-style strings; either way the old rows would silently
            keep their meaning, so we refuse instead of reusing them.
    """
    if not tokens:
        raise ValueError("no code tokens to add: the semantic-ID table is empty")
    if len(set(tokens)) != len(tokens):
        raise ValueError("code tokens must be distinct; check the semantic-ID table's level sizes")
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise ValueError(
            f"the tokenizer already contains {len(clash)} code token(s), e.g. {clash[:5]}: load the "
            "base model's own tokenizer (not one saved after adding code tokens), or use a model whose "
            "vocabulary has no <letter_number> tokens"
        )
    first = len(tokenizer)
    added = tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if added != len(tokens) or ids != list(range(first, first + len(tokens))):
        raise RuntimeError(
            f"the tokenizer gave the {len(tokens)} code tokens non-contiguous ids; "
            "constrained decoding needs them appended in order"
        )
    # mean_resizing: new rows start at the mean of the old ones (plus small noise), not at a
    # random init whose logits could dominate the softmax before training.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    LOGGER.info("added %d code tokens to the vocabulary (ids %d..%d)", len(tokens), first, first + len(tokens) - 1)
    return first
