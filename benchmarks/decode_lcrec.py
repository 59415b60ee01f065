"""LC-Rec decoding and training speed on SmolLM2-135M + LoRA (``decode.py --model LCRec``).

Three decoders on the *same* weights (SmolLM2 with the code tokens added and LoRA adapters whose
weights are perturbed away from their identity init, as after training), the same prompts
(seqrec template 0 over 20-item histories) and the same beam:

* ours: :class:`CausalLMBeamStepper` + the constrained beam search of ``LCRec.full_sort_predict``;
  the prompt is encoded once per user, beams are appended to that user's cache as a tree;
* ours with the prompt cache copied per beam after the prefill (the usual layout), to measure
  what sharing the prompt cache saves;
* HF ``generate(num_beams, prefix_allowed_tokens_fn=<dict trie>)``, as the released code
  decodes, which repeats every prompt ``beam`` times *before* the prefill.

Also times LoRA training steps (seqrec prompts, batch 8) to report training samples/s.
Users per CPU-second (process time; one torch thread). Prints a markdown table and writes
``benchmarks/results/decode_lcrec.json``.

    python benchmarks/decode.py --model LCRec                      # ~10 min on one core
    python benchmarks/decode.py --model LCRec --users 8 --hf-users 2 --train-steps 1   # smoke
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import recbole_letter  # noqa: E402,F401

from recbole_letter.atomic import write_json_atomic  # noqa: E402
from recbole_letter.generation.beam_search import constrained_beam_search  # noqa: E402
from recbole_letter.generation.causal_lm_stepper import CausalLMBeamStepper, cache_keyword  # noqa: E402
from recbole_letter.generation.losses import ranking_guided_loss  # noqa: E402
from recbole_letter.generation.prefix_index import PrefixIndex  # noqa: E402
from recbole_letter.llm.backbone import count_parameters, load_backbone  # noqa: E402
from recbole_letter.llm.batching import PromptBatch, encode_prompts, encode_training, response_logits  # noqa: E402
from recbole_letter.llm.finetuning import apply_finetuning  # noqa: E402
from recbole_letter.llm.prompts import PromptTemplates  # noqa: E402
from recbole_letter.tokenization.semantic_ids import SemanticIDTable  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def clock() -> float:
    return time.process_time()


class CopiedPromptStepper:
    """Same search, conventional cache layout: after the prefill every user's prompt cache is
    repeated once per beam and reordered by ``parent`` each step (``[B*K]`` rows)."""

    def __init__(self, model, prompts: PromptBatch) -> None:
        from transformers import DynamicCache

        self.model, self.cache, self.kw = model, DynamicCache(), cache_keyword(model)
        out = model(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask,
                    position_ids=prompts.position_ids, use_cache=True, logits_to_keep=1, **{self.kw: self.cache})
        self.first = out.logits[:, -1:].float()
        self.mask = prompts.attention_mask
        self.next_position = prompts.attention_mask.sum(-1)
        self.beams = 0
        self.steps = 0

    def start(self) -> torch.Tensor:
        return torch.log_softmax(self.first, dim=-1)

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        batch, beams = tokens.shape
        if self.beams == 0:
            self.cache.batch_repeat_interleave(beams)
            self.mask = self.mask.repeat_interleave(beams, dim=0)
        else:
            self.cache.reorder_cache((torch.arange(batch)[:, None] * self.beams + parent).flatten())
        self.beams = beams
        self.mask = torch.cat([self.mask, torch.ones(batch * beams, 1, dtype=self.mask.dtype)], dim=1)
        positions = (self.next_position + self.steps).repeat_interleave(beams)[:, None]
        out = self.model(input_ids=tokens.reshape(-1, 1), attention_mask=self.mask, position_ids=positions,
                         use_cache=True, **{self.kw: self.cache})
        self.steps += 1
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).view(batch, beams, -1)


def random_codes(n_items: int, levels: int, codes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows: set[tuple[int, ...]] = set()
    while len(rows) < n_items:
        rows.add(tuple(rng.integers(0, codes, levels).tolist()))
    return np.array(sorted(rows), dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="LCRec", choices=["LCRec"])
    parser.add_argument("--llm-path", default="smollm2")
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--users", type=int, default=32, help="users decoded by ours (both layouts)")
    parser.add_argument("--hf-users", type=int, default=8, help="users decoded by HF generate (the first ones)")
    parser.add_argument("--batch", type=int, default=8, help="users per decoding batch (every method)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=3, help="timed LoRA training steps (after one warm-up)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    wall = time.time()
    backbone = load_backbone(args.llm_path, seed=args.seed)
    load_s = time.time() - wall
    table = SemanticIDTable(random_codes(args.items, args.levels, args.codes, args.seed))
    tok = backbone.tokenizer
    from recbole_letter.llm.vocabulary import add_code_tokens

    first = add_code_tokens(tok, backbone.model, table.code_token_strings())
    model = apply_finetuning(backbone.model, "lora", range(first, len(tok)))
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # stand-in for trained adapters: non-zero LoRA B, distinct code rows
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * (0.02 if "lora_B" in name else 0.05))
    total, trainable = count_parameters(model)
    offsets = [first + int(o) for o in table.level_offsets]
    index = PrefixIndex(table.table)
    templates = PromptTemplates.load()
    code_str = np.array([""] + ["".join(t) for t in table.item_token_strings(np.arange(1, args.items + 1))], dtype=object)

    def prompt_for(items: np.ndarray) -> str:
        return templates.fill("seqrec", 0, {"history": ", ".join(code_str[items]), "item": ""})[0]

    histories = [rng.choice(np.arange(1, args.items + 1), args.history, replace=False) for _ in range(args.users)]
    prompts = [prompt_for(h) for h in histories]
    n_prompt_tokens = float(np.mean([len(ids) for ids in tok(prompts)["input_ids"]]))
    item_of = {tuple(int(o) + int(c) for o, c in zip(offsets, row)): i for i, row in enumerate(table.table) if i > 0}
    model.eval()

    def ours(stepper_cls, users: int) -> tuple[float, list[list[int]]]:
        top: list[list[int]] = []
        start = clock()
        with torch.no_grad():
            for s in range(0, users, args.batch):
                batch = encode_prompts(tok, prompts[s : min(s + args.batch, users)])
                items, _ = constrained_beam_search(stepper_cls(model, batch), index, offsets, args.beam)
                top += items[:, :10].tolist()
        return clock() - start, top

    children: dict[tuple[int, ...], set[int]] = {}
    for row in item_of:
        for level in range(args.levels):
            children.setdefault(row[:level], set()).add(row[level])
    trie = {prefix: sorted(t) for prefix, t in children.items()}

    def hf(users: int) -> tuple[float, list[list[int]]]:
        top: list[list[int]] = []
        start = clock()
        with torch.no_grad():
            for s in range(0, users, args.batch):
                batch = encode_prompts(tok, prompts[s : min(s + args.batch, users)])
                width = batch.input_ids.shape[1]

                def allowed(_: int, generated: torch.Tensor) -> list[int]:
                    return trie.get(tuple(generated[width:].tolist()), [tok.eos_token_id])

                out = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, num_beams=args.beam,
                    num_return_sequences=args.beam, max_new_tokens=args.levels, min_new_tokens=args.levels,
                    prefix_allowed_tokens_fn=allowed, do_sample=False, length_penalty=0.0,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )
                seqs = out[:, width:].reshape(batch.input_ids.shape[0], args.beam, -1).tolist()
                top += [[item_of.get(tuple(s), -1) for s in user[:10]] for user in seqs]
        return clock() - start, top

    ours(CausalLMBeamStepper, min(args.batch, args.users))  # warm-up
    t_ours, top_ours = ours(CausalLMBeamStepper, args.users)
    t_copy, top_copy = ours(CopiedPromptStepper, args.users)
    t_hf, top_hf = hf(args.hf_users)

    # training: seqrec prompts with code targets, LoRA + new rows, AdamW
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> float:
        hist = [rng.choice(np.arange(1, args.items + 1), args.history + 1, replace=False) for _ in range(args.train_batch)]
        responses = [[int(o) + int(c) for o, c in zip(offsets, table.table[h[-1]])] + [tok.eos_token_id] for h in hist]
        batch = encode_training(tok, [prompt_for(h[:-1]) for h in hist], responses)
        loss = ranking_guided_loss(response_logits(model, batch), batch.labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        return float(loss.detach())

    train_step()
    start = clock()
    for _ in range(args.train_steps):
        train_step()
    t_train = clock() - start
    train_rate = args.train_steps * args.train_batch / t_train if args.train_steps else float("nan")

    hf_n = args.hf_users
    same = float(np.mean([a == b for a, b in zip(top_ours[:hf_n], top_hf)])) if hf_n else float("nan")
    same_copy = float(np.mean([a == b for a, b in zip(top_ours, top_copy)]))
    rows = [
        {"method": "ours: shared prompt cache, beams as a tree", "users": args.users, "users_per_s": args.users / t_ours,
         "speedup_vs_hf": (hf_n / t_hf) and (args.users / t_ours) / (hf_n / t_hf), "identical_top10_vs_hf": same},
        {"method": "ours: prompt cache copied per beam", "users": args.users, "users_per_s": args.users / t_copy,
         "speedup_vs_hf": (args.users / t_copy) / (hf_n / t_hf), "identical_top10_vs_ours": same_copy},
        {"method": "HF generate(num_beams) + dict trie", "users": hf_n, "users_per_s": hf_n / t_hf, "speedup_vs_hf": 1.0},
    ]
    print(f"\n{backbone.name} + LoRA ({total:,} parameters, {trainable:,} trainable), {args.items} items, "
          f"{args.levels}x{args.codes} codes, prompts of {n_prompt_tokens:.0f} tokens, beam {args.beam}, "
          f"{args.batch} users per batch, {args.threads} thread(s); users per CPU-second. Load: {load_s:.0f} s wall.\n")
    print("| method | users | users/s | speed-up vs HF | identical top-10 |")
    print("|---|---|---|---|---|")
    for r in rows:
        ident = r.get("identical_top10_vs_hf", r.get("identical_top10_vs_ours"))
        label = "-" if ident is None else f"{100 * ident:.0f}%" + (" (vs HF)" if "identical_top10_vs_hf" in r else " (vs ours)")
        print(f"| {r['method']} | {r['users']} | {r['users_per_s']:.3f} | {r['speedup_vs_hf']:.1f}x | {label} |")
    print(f"\nLoRA training: {train_rate:.2f} samples per CPU-second (batch {args.train_batch}, seqrec prompts, "
          f"{args.train_steps} timed steps)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "setup": {**vars(args), "backbone": backbone.name, "parameters": total, "trainable": trainable,
                  "mean_prompt_tokens": n_prompt_tokens, "load_wall_s": load_s,
                  "timing": "process CPU seconds", "torch": torch.__version__,
                  "machine": platform.processor() or platform.machine()},
        "results": rows,
        "training": {"samples_per_cpu_s": train_rate, "batch": args.train_batch, "steps": args.train_steps},
    }
    write_json_atomic(payload, RESULTS / "decode_lcrec.json", default=None, trailing_newline=True)
    print(f"wrote {RESULTS / 'decode_lcrec.json'}")


if __name__ == "__main__":
    main()
