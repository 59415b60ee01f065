"""What of the LLM is trained: LoRA adapters (+ code-token rows) or the full model.

LC-Rec fine-tunes LLaMA with LoRA (r 8, alpha 32, dropout 0.05 on every attention and MLP
projection) and trains the embedding and LM head in full (``modules_to_save``), because the new
code tokens start with meaningless rows. Training only the *new rows* is enough to give the code
tokens meaning and keeps the pretrained text rows intact and the checkpoint small; it is our
default (``llm_train_embeddings: new_rows``). peft's ``trainable_token_indices`` implements it
(and follows a tied LM head automatically); ``full`` restores the released recipe.

``trained_state_keys`` names what a checkpoint must hold: the parameters that train. The frozen
base is re-loaded from ``llm_path`` when the model is built, so a checkpoint per improvement is
a few MB of adapters, not a copy of a 135M/7B model.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

LOGGER = logging.getLogger("recbole_letter")

FINETUNE_MODES = ("lora", "full")
EMBEDDING_MODES = ("new_rows", "full")


def _embedding_names(model: Any) -> tuple[str, str | None, bool]:
    """Short module names of the input embedding and LM head, and whether they share weights."""
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n}
    tied = head is not None and head.weight is embed.weight
    return names[id(embed)], (names[id(head)] if head is not None else None), tied


def apply_finetuning(
    model: Any,
    mode: str,
    new_token_ids: Sequence[int],
    *,
    lora_r: int = 8,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    train_embeddings: str = "new_rows",
) -> Any:
    """Return ``model`` set up for ``mode`` (``lora``: a peft model; ``full``: all trainable)."""
    mode = str(mode).lower()
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
    if mode == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    train_embeddings = str(train_embeddings).lower()
    if train_embeddings not in EMBEDDING_MODES:
        raise ValueError(f"llm_train_embeddings must be one of {EMBEDDING_MODES}, got {train_embeddings!r}")
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        raise ValueError(
            f"lora_target_modules {missing} are not modules of this LLM; set lora_target_modules "
            "to its projection names (Llama/Qwen/Gemma: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)"
        )
    embed_name, head_name, tied = _embedding_names(model)
    extra: dict[str, Any] = {}
    ids = [int(i) for i in new_token_ids]
    if train_embeddings == "new_rows":
        rows = {embed_name: ids}
        if head_name is not None and not tied:
            rows[head_name] = ids  # a tied head follows the embedding's adapter by itself
        extra["trainable_token_indices"] = rows
    else:
        extra["modules_to_save"] = [embed_name] + ([head_name] if head_name and not tied else [])
        if tied:  # keep the LM head tied to the trained copy of the embedding
            extra["ensure_weight_tying"] = True
    config = LoraConfig(
        r=int(lora_r),
        lora_alpha=int(lora_alpha),
        lora_dropout=float(lora_dropout),
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        **extra,
    )
    return get_peft_model(model, config)


def trained_state_keys(module: torch.nn.Module) -> set[str]:
    """``state_dict`` keys of the parameters that train (what a checkpoint must carry)."""
    return {name for name, param in module.named_parameters() if param.requires_grad}
