"""LLM pieces shared by the LLM-based generators (LC-Rec, STORE) and stages.

backbone.py (load SmolLM2 GGUF / a local HF causal LM / tiny-random), vocabulary.py (code tokens),
finetuning.py (LoRA / full, what a checkpoint carries), prompts.py + templates.yaml (task
templates), tasks.py (training samples of the LC-Rec tasks from RecBole rows, item text and
<ds>.user.json), batching.py (left-padded prompt/response batches, response-only logits).
The matching beam stepper is generation/causal_lm_stepper.py.
"""
