"""Training speed: our TIGER vs a plain ``T5ForConditionalGeneration`` with a 32k text vocabulary.

Text-token implementations of TIGER / LETTER add the semantic-ID tokens to a T5 tokenizer, so
the softmax, the tied embedding and its AdamW update span ~32k rows. Ours has one row per code
(4 x 256 + 2 here) and no eos target. Same T5 shape (properties/model/TIGER.yaml), same
batches (batch 256, history 20 items = 80 tokens), one AdamW step per batch, dropout on.
Prints a markdown table and writes ``benchmarks/results/train_speed.json``.

    python benchmarks/train_speed.py           # ~2-4 min on one CPU thread
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from common import RESULTS, build_synthetic, clock, synthetic_args, write_result

from recbole_letter.model.tiger import EOS_TOKEN, TIGER

TEXT_VOCAB = 32128  # t5-small's vocabulary size


def text_vocab_t5(model: TIGER) -> T5ForConditionalGeneration:
    """The same T5 shape as ``model.t5`` but with a 32k vocabulary."""
    cfg = model.t5.config.to_dict()
    cfg["vocab_size"] = TEXT_VOCAB
    return T5ForConditionalGeneration(T5Config(**cfg))


def step_ours(model: TIGER, optimizer, batch) -> float:
    loss = model.calculate_loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def step_text_vocab(model: TIGER, t5: T5ForConditionalGeneration, optimizer, batch) -> float:
    """HF's own loss on code tokens + eos, as a text-token TIGER would train."""
    input_ids, attention_mask = model.encoder_inputs(batch)
    target = model.item_tokens[batch[model.POS_ITEM_ID]]
    labels = torch.cat([target, torch.full_like(target[:, :1], EOS_TOKEN)], dim=1)
    loss = t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    synthetic_args(parser)
    parser.add_argument("--batch", type=int, default=256, help="train_batch_size")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    argv, sys.argv = sys.argv, [sys.argv[0]]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            _, model, train_data, _ = build_synthetic(args, Path(tmp), train_batch_size=args.batch)
        finally:
            os.chdir(cwd)
            sys.argv = argv
    batches = []
    for batch in train_data:
        if len(batch) == args.batch:
            batches.append(batch)
        if len(batches) == args.steps:
            break
    baseline = text_vocab_t5(model)
    model.train()
    baseline.train()
    opt_ours = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_text = torch.optim.AdamW(baseline.parameters(), lr=1e-3)
    runs = {
        "TIGER (ours, code vocab)": lambda b: step_ours(model, opt_ours, b),
        f"T5ForConditionalGeneration, {TEXT_VOCAB} vocab": lambda b: step_text_vocab(model, baseline, opt_text, b),
    }
    for run in runs.values():  # warm-up
        run(batches[0])
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = clock()
            for batch in batches:
                run(batch)
            best[name] = min(best.get(name, float("inf")), clock() - start)

    n = sum(len(b) for b in batches)
    base = best[f"T5ForConditionalGeneration, {TEXT_VOCAB} vocab"]
    params = {
        "TIGER (ours, code vocab)": sum(p.numel() for p in model.parameters()),
        f"T5ForConditionalGeneration, {TEXT_VOCAB} vocab": sum(p.numel() for p in baseline.parameters()),
    }
    rows = [
        {"method": name, "vocab": model.t5.config.vocab_size if "ours" in name else TEXT_VOCAB,
         "parameters": params[name], "samples_per_s": n / seconds, "speedup": base / seconds}
        for name, seconds in best.items()
    ]
    print(f"\nTraining {args.steps} steps x batch {args.batch}, history {args.history} items x {args.levels} codes, "
          f"T5 {model.t5.config.num_layers}+{model.t5.config.num_decoder_layers} layers d{model.t5.config.d_model}, "
          f"{args.threads} thread(s), AdamW; samples per CPU-second, best of {args.repeats}\n")
    print("| model | vocab | parameters | samples/s | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['vocab']} | {r['parameters'] / 1e6:.2f}M | {r['samples_per_s']:.1f} | {r['speedup']:.2f}x |")
    payload = {
        "setup": {
            **vars(args),
            "timing": "process CPU seconds, best of repeats",
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "results": rows,
    }
    write_result(RESULTS / "train_speed.json", payload)


if __name__ == "__main__":
    main()
