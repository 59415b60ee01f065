"""TIGER training speed at the paper's shape, and the loss curve check that the fast path is the
same training.

Rows (same T5 shape, properties/model/TIGER.yaml: 4+4 layers, d_model 128, 6 heads x 64,
d_ff 1024; same batches: 256 sequences, history 20 items x 4 codes = 80 encoder tokens; one
AdamW step per batch, dropout 0.1 on; one thread; training sequences per CPU-second):

* ``HF forward (before)``: ``T5ForConditionalGeneration.forward`` as TIGER called it before
  ``generation/t5_fast.py`` (decoder cache on, SDPA math path, ``nn.Dropout``), vocabulary
  softmax, glibc's default allocator: the baseline every ratio is taken against;
* ``HF forward, freed memory reused``: the same with ``cpu_reuse_freed_memory`` (what the
  allocator setting alone is worth);
* ``fast forward, fp32``: :func:`recbole_letter.generation.t5_fast.t5_logits`, same loss
  (the speed of the forward/backward alone), freed memory reused as the package now runs it;
  ``..., glibc default allocator``: the fast forward alone;
* ``fast forward, fp32, trie softmax``: what ``TIGER.calculate_loss`` runs by default;
* ``fast forward, bf16 autocast``: ``bf16_autocast: True`` (opt-in: changes the numbers);
* ``item-level encoder input``: ``encoder_input: items`` (20 encoder positions instead of 80;
  a different architecture, reported for the departure's cost/benefit);
* ``T5ForConditionalGeneration, 32128 vocab``: a text-token TIGER (HF loss on code tokens + eos).

Every row but "before" and the 32k-vocabulary one runs with freed memory reused (column
``freed_memory_reused``); each run gets one untimed step after the allocator is switched, so
the timed steps see its steady state, as a long training does. Each timing runs in its own forked
process (:func:`time_in_child`): allocator state carries over between runs in one process.

Loss curves: the before/fast-fp32 (and bf16) forwards train copies of one initial model on the
same batches, (a) with dropout off, where they must agree to float rounding, and (b) with dropout
0.1, where their dropout masks differ, so the curves must agree within the spread that dropout
alone causes (measured by a second HF run with another dropout seed).

    python benchmarks/train_speed.py           # ~10 CPU-minutes on one thread
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from transformers import T5Config, T5ForConditionalGeneration

from common import RESULTS, build_synthetic, clock, machine_info, synthetic_args, write_result

from recbole_letter.cpu_memory import reuse_freed_memory
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.model.tiger import EOS_TOKEN, TIGER

TEXT_VOCAB = 32128  # t5-small's vocabulary size
BEFORE = "HF forward (before)"


def text_vocab_t5(model: TIGER) -> T5ForConditionalGeneration:
    """The same T5 shape as ``model.t5`` but with a 32k vocabulary."""
    cfg = model.t5.config.to_dict()
    cfg["vocab_size"] = TEXT_VOCAB
    return T5ForConditionalGeneration(T5Config(**cfg))


def configure(model: TIGER, fast: bool, bf16: bool = False, softmax: str = "vocab", encoder_input: str = "codes") -> TIGER:
    """Switch the options ``TIGER.forward`` / ``calculate_loss`` read at call time."""
    model.fast_t5_forward, model.bf16_autocast = fast, bf16
    model.code_softmax, model.encoder_input = softmax, encoder_input
    model.renormalize_codes = softmax == "trie"
    return model


def loss_before(model: TIGER, batch) -> torch.Tensor:
    """TIGER's loss as computed before t5_fast: HF forward with its default decoder cache."""
    input_ids, attention_mask = model.encoder_inputs(batch)
    items = batch[model.POS_ITEM_ID]
    target, decoder_input_ids = model.target_tokens(items)
    logits = model.t5(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    return ranking_guided_loss(logits, target, model.tau)


def loss_text_vocab(model: TIGER, t5: T5ForConditionalGeneration, batch) -> torch.Tensor:
    """HF's own loss on code tokens + eos, as a text-token TIGER would train."""
    input_ids, attention_mask = model.encoder_inputs(batch)
    target = model.item_tokens[batch[model.POS_ITEM_ID]]
    labels = torch.cat([target, torch.full_like(target[:, :1], EOS_TOKEN)], dim=1)
    return t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def stepper(params, loss_fn: Callable) -> Callable:
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step(batch) -> float:
        loss = loss_fn(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def time_in_child(run: Callable, reuse: bool, batches: list) -> float:
    """CPU seconds of ``run`` over ``batches`` in a forked child with the allocator set to ``reuse``.

    A fork per timing: the allocator's state is process-wide and history-dependent (a heap shaped
    by an earlier run with reuse on keeps serving a later run without it, and once set, glibc's
    mmap threshold stops adapting), so runs timed one after the other in one process would
    measure each other; the parent never touches the allocator. The child starts from the parent's
    untouched state, takes one untimed step so the allocator reaches the steady state of a long
    training, then times ``batches``.
    """
    import multiprocessing

    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)

    def child() -> None:
        if reuse:  # otherwise glibc's untouched defaults (main() builds the model with them)
            reuse_freed_memory(True)
        run(batches[0])
        start = clock()
        for batch in batches:
            run(batch)
        send.send(clock() - start)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    seconds = receive.recv()
    process.join()
    return seconds


def loss_curves(model: TIGER, batches: list, dropout: float, seed: int, bf16: bool) -> dict[str, list[float]]:
    """Per-step training losses of copies of ``model`` trained on ``batches`` by each forward."""
    runs = {"before": (False, False, seed), "before, other dropout seed": (False, False, seed + 1),
            "fast fp32": (True, False, seed)}
    if bf16:
        runs["fast bf16"] = (True, True, seed)
    curves = {}
    for name, (fast, use_bf16, run_seed) in runs.items():
        if dropout == 0.0 and "other" in name:
            continue
        net = configure(copy.deepcopy(model), fast=fast, bf16=use_bf16)
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
            elif isinstance(getattr(module, "dropout", None), float):  # T5Attention's attention-probs dropout
                module.dropout = dropout
        net.t5.config.dropout_rate = dropout
        net.train()
        step = stepper(net.parameters(), (lambda b, n=net: loss_before(n, b)) if not fast else net.calculate_loss)
        torch.manual_seed(run_seed)
        curves[name] = [round(step(b), 5) for b in batches]
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    synthetic_args(parser)
    parser.add_argument("--batch", type=int, default=256, help="train_batch_size")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats (best kept)")
    parser.add_argument("--curve_steps", type=int, default=30, help="steps of each loss curve")
    parser.add_argument("--curve_batch", type=int, default=64, help="batch size of the loss curves")
    parser.add_argument("--no_text_vocab", action="store_true", help="skip the 32k-vocabulary row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bf16_ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    argv, sys.argv = sys.argv, [sys.argv[0]]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            # cpu_reuse_freed_memory off: the forked timings must start from glibc's own defaults
            _, model, train_data, _ = build_synthetic(
                args, Path(tmp), train_batch_size=args.batch, cpu_reuse_freed_memory=False
            )
        finally:
            os.chdir(cwd)
            sys.argv = argv
    batches = [b for b in train_data if len(b) == args.batch][: max(args.steps, 1)]
    model.train()

    models = {name: copy.deepcopy(model) for name in ("before", "before_reuse", "fast", "fast_glibc", "trie", "bf16", "items")}
    # name -> (step function, reuse freed memory?). "before" is what TIGER ran before this work,
    # with glibc's default allocator; the package now turns reuse on (cpu_reuse_freed_memory).
    runs: dict[str, tuple[Callable, bool]] = {
        BEFORE: (stepper(models["before"].parameters(), lambda b: loss_before(models["before"], b)), False),
        "HF forward, freed memory reused": (
            stepper(models["before_reuse"].parameters(), lambda b: loss_before(models["before_reuse"], b)), True
        ),
        "fast forward, fp32, glibc default allocator": (
            stepper(models["fast_glibc"].parameters(), configure(models["fast_glibc"], True).calculate_loss), False
        ),
        "fast forward, fp32": (stepper(models["fast"].parameters(), configure(models["fast"], True).calculate_loss), True),
        "fast forward, fp32, trie softmax (TIGER default)": (
            stepper(models["trie"].parameters(), configure(models["trie"], True, softmax="trie").calculate_loss), True
        ),
        "item-level encoder input (fast fp32, trie)": (
            stepper(models["items"].parameters(),
                    configure(models["items"], True, softmax="trie", encoder_input="items").calculate_loss),
            True,
        ),
    }
    if bf16_ok:
        runs["fast forward, bf16 autocast (trie)"] = (
            stepper(models["bf16"].parameters(), configure(models["bf16"], True, bf16=True, softmax="trie").calculate_loss),
            True,
        )
    if not args.no_text_vocab:
        baseline = text_vocab_t5(model).train()
        runs[f"T5ForConditionalGeneration, {TEXT_VOCAB} vocab"] = (
            stepper(baseline.parameters(), lambda b: loss_text_vocab(model, baseline, b)), False
        )
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (run, reuse) in runs.items():
            best[name] = min(best.get(name, float("inf")), time_in_child(run, reuse, batches))

    n = sum(len(b) for b in batches)
    rows = [
        {"method": name, "freed_memory_reused": runs[name][1], "samples_per_cpu_s": round(n / seconds, 1),
         "speedup_vs_before": round(best[BEFORE] / seconds, 2)}
        for name, seconds in best.items()
    ]
    shape = (f"T5 {model.t5.config.num_layers}+{model.t5.config.num_decoder_layers} layers d{model.t5.config.d_model}, "
             f"{model.t5.config.num_heads}x{model.t5.config.d_kv} heads, d_ff {model.t5.config.d_ff}")
    print(f"\nTraining {args.steps} steps x batch {args.batch}, history {args.history} items x {args.levels} codes, "
          f"{shape}, {args.threads} thread(s), AdamW, dropout {model.t5.config.dropout_rate}; best of {args.repeats}\n")
    print("| method | freed memory reused | samples / CPU-s | vs before |")
    print("|---|---|---|---|")
    for r in rows:
        reused = "yes" if r["freed_memory_reused"] else "no"
        print(f"| {r['method']} | {reused} | {r['samples_per_cpu_s']} | {r['speedup_vs_before']:.2f}x |")

    curve_batches = [b for b in train_data if len(b) >= args.curve_batch]
    curve_batches = [b[: args.curve_batch] for b in curve_batches][: args.curve_steps]
    curves = {
        "dropout 0": loss_curves(model, curve_batches, 0.0, args.seed, bf16_ok),
        f"dropout {model.t5.config.dropout_rate}": loss_curves(
            model, curve_batches, model.t5.config.dropout_rate, args.seed, bf16_ok
        ),
    }
    checks = {}
    for setting, runs_ in curves.items():
        ref = torch.tensor(runs_["before"])
        for name, values in runs_.items():
            if name == "before":
                continue
            diff = (torch.tensor(values) - ref).abs()
            checks[f"{setting}: {name}"] = {"max_abs_diff": round(float(diff.max()), 5),
                                            "mean_abs_diff_last10": round(float(diff[-10:].mean()), 5)}
    print(f"\nLoss curves ({args.curve_steps} steps x batch {args.curve_batch}, vocabulary softmax), "
          "|loss - loss(before)| per step:\n")
    print("| setting / forward | max | mean of last 10 steps |")
    print("|---|---|---|")
    for name, c in checks.items():
        print(f"| {name} | {c['max_abs_diff']} | {c['mean_abs_diff_last10']} |")
    payload = {
        "setup": {**vars(args), "timing": "process CPU seconds, best of repeats", "shape": shape,
                  "bf16_supported": bf16_ok, **machine_info()},
        "results": rows,
        "loss_curves": curves,
        "loss_curve_checks": checks,
    }
    write_result(RESULTS / "train_speed.json", payload)


if __name__ == "__main__":
    main()
