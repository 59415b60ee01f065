"""LLM pieces shared by the LLM-based generators (LC-Rec, STORE) and stages.

backbone.py (load SmolLM2 GGUF / a local HF causal LM / tiny-random), vocabulary.py (code tokens),
finetuning.py (LoRA / full, what a checkpoint carries), prompts.py + templates.yaml (task
templates), batching.py (left-padded prompt/response batches, response-only logits).
"""
