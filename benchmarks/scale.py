"""Constrained decoding from 1k to 1M items: prefix-index memory, build time and users/s per layout.

Synthetic unique code tables (uniformly random tuples; 4 levels x 256 codes and 3 x 1024) of
1k, 10k, 100k and 1M items. For each table and each prefix-index layout (dense tables, sparse
CSR) one worker process builds the index and decodes the same users with

* **index only**: a fixed log-prob stepper (no network), so the time is the index's own cost;
* **TIGER**: a randomly initialised T5 of TIGER's default shape (properties/model/TIGER.yaml)
  driven by ``T5BeamStepper``, beam search alone and followed by ``scatter_scores`` into the
  ``[users, n_items]`` matrix RecBole's full-sort evaluator takes;
* **HF generate + dict trie** (its own worker: the trie's memory is part of its cost): T5
  ``generate(num_beams, prefix_allowed_tokens_fn=trie)``, the released LETTER / LC-Rec decoding.

Each configuration runs in its own process so that peak RSS is that configuration's; speeds are
process CPU seconds with one torch thread (the machine is shared), best of ``--repeats``. Writes
``benchmarks/results/scale.{json,md,png}``.

    nice -n 10 python benchmarks/scale.py                     # all sizes, ~10 min on one thread
    python benchmarks/scale.py --sizes 1000 10000 --users 32  # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import yaml
from transformers import T5Config, T5ForConditionalGeneration

from common import RESULTS, clock, machine_info, random_table, write_result
from recbole_letter.atomic import write_text_atomic
from recbole_letter.config import PROPERTIES_DIR
from recbole_letter.generation.beam_search import constrained_beam_search, scatter_scores
from recbole_letter.generation.causal_lm_stepper import CausalLMBeamStepper
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.t5_stepper import T5BeamStepper
from recbole_letter.llm.backbone import load_backbone
from recbole_letter.llm.batching import PromptBatch

N_SPECIAL = 2  # TIGER's token layout: 0 = pad / decoder start, 1 = eos, then the code tokens
MB = 2**20


# ------------------------------------------------------------------ inputs
def histories(table: np.ndarray, users: int, length: int, offsets: list[int], seed: int) -> torch.Tensor:
    """``[users, length * levels]`` encoder tokens of uniformly drawn item histories."""
    rng = np.random.default_rng(seed + 1)
    items = rng.integers(1, table.shape[0], size=(users, length))
    return torch.as_tensor(table[items] + np.asarray(offsets)).flatten(1)


def tiger_t5(vocab_size: int, seed: int) -> T5ForConditionalGeneration:
    """Random T5 with TIGER's default architecture, read from its YAML (no training: speed only)."""
    spec = yaml.safe_load((PROPERTIES_DIR / "model" / "TIGER.yaml").read_text())
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=spec["d_model"],
        d_kv=spec["d_kv"],
        d_ff=spec["d_ff"],
        num_layers=spec["num_encoder_layers"],
        num_decoder_layers=spec["num_decoder_layers"],
        num_heads=spec["num_heads"],
        dropout_rate=0.0,
        feed_forward_proj=spec["feed_forward_proj"],
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_llm(n_codes: int, seed: int) -> tuple[torch.nn.Module, int]:
    """The ``tiny-random`` Llama of the LC-Rec tests with ``n_codes`` code tokens appended.

    Returns the model and the id of the first code token. Prompts are built from token ids
    directly (the history's code tokens), so no tokenizer work is timed.
    """
    backbone = load_backbone("tiny-random", seed=seed)
    first = len(backbone.tokenizer)
    backbone.model.resize_token_embeddings(first + n_codes, mean_resizing=False)
    return backbone.model.eval(), first


def llm_prompts(tokens: torch.Tensor) -> PromptBatch:
    """Unpadded prompt batch (every history has the same length)."""
    mask = torch.ones_like(tokens)
    return PromptBatch(tokens, mask, torch.arange(tokens.shape[1]).expand_as(tokens).contiguous())


class FixedStepper:
    """Stepper with no network: fixed random log-probs, so only the index and the search cost time."""

    def __init__(self, batch: int, beam: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.log_probs = torch.log_softmax(torch.randn(batch, beam, vocab, generator=g), dim=-1)

    def start(self) -> torch.Tensor:
        return self.log_probs[:, :1]

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.log_probs[:, : parent.shape[1]]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def best_cpu_seconds(run, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs in process CPU seconds (one thread: time on a dedicated core)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = clock()
        out = run()
        best = min(best, clock() - start)
    return best, out


# ------------------------------------------------------------------ workers (one process each)
def worker_layout(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one layout's index and time the index-only, TIGER and LLM decodes."""
    table = random_table(spec["items"] + 1, spec["levels"], spec["codes"], spec["seed"])
    rss_before = rss_mb()
    out_base = {"rss_before_index_mb": rss_before}
    wall, cpu = time.perf_counter(), clock()
    index = PrefixIndex(table, layout=spec["layout"])
    build_wall, build_cpu = time.perf_counter() - wall, clock() - cpu
    out: dict[str, Any] = {
        **out_base,
        "index_build_s": build_wall,
        "index_build_cpu_s": build_cpu,
        "index_mb": index.nbytes() / MB,
        "index_rss_delta_mb": rss_mb() - rss_before,
        "n_prefixes": index.n_prefixes,
        "level_sizes": index.level_sizes,
        "widths": [index.width(level) for level in range(index.n_levels)],
        "layouts": index.layouts,
    }
    offsets = [N_SPECIAL + sum(index.level_sizes[:level]) for level in range(index.n_levels)]
    vocab = N_SPECIAL + sum(index.level_sizes)
    users, batch, beam = spec["users"], spec["batch"], spec["beam"]

    fixed = FixedStepper(batch, beam, vocab, spec["seed"])
    constrained_beam_search(fixed, index, offsets, beam)  # warm-up
    seconds, _ = best_cpu_seconds(
        lambda: [constrained_beam_search(fixed, index, offsets, beam) for _ in range(users // batch)],
        spec["repeats"],
    )
    out["index_only_users_per_s"] = (users // batch) * batch / seconds

    t5 = tiger_t5(vocab, spec["seed"])
    tokens = histories(table, users, spec["history"], offsets, spec["seed"])
    chunks = [tokens[i : i + batch] for i in range(0, users, batch)]

    def decode(dense_scores: bool) -> list[list[int]]:
        top = []
        with torch.no_grad():
            for ids in chunks:
                stepper = T5BeamStepper(t5, ids, torch.ones_like(ids, dtype=torch.bool))
                items, scores = constrained_beam_search(stepper, index, offsets, beam)
                if dense_scores:  # what full_sort_predict hands RecBole's evaluator
                    scores = scatter_scores(items, scores, table.shape[0])
                    items = scores.topk(10, dim=1).indices
                top += items[:, :10].tolist()
        return top

    decode(False)  # warm-up (allocator, thread pools)
    seconds, top = best_cpu_seconds(lambda: decode(False), spec["repeats"])
    out["tiger_users_per_s"] = users / seconds
    out["tiger_top10"] = top
    seconds, _ = best_cpu_seconds(lambda: decode(True), spec["repeats"])
    out["tiger_fullsort_users_per_s"] = users / seconds

    llm, first = tiny_llm(sum(index.level_sizes), spec["seed"])
    llm_offsets = [first + o - N_SPECIAL for o in offsets]
    llm_chunks = [c - N_SPECIAL + first for c in chunks]

    def decode_llm() -> list[list[int]]:
        top = []
        with torch.no_grad():
            for ids in llm_chunks:
                stepper = CausalLMBeamStepper(llm, llm_prompts(ids))
                items, _ = constrained_beam_search(stepper, index, llm_offsets, beam)
                top += items[:, :10].tolist()
        return top

    decode_llm()
    seconds, top = best_cpu_seconds(decode_llm, spec["repeats"])
    out["llm_users_per_s"] = users / seconds
    out["llm_top10"] = top
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def worker_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """HF ``generate`` constrained by a dict trie (the released code's decoding) on the same users."""
    table = random_table(spec["items"] + 1, spec["levels"], spec["codes"], spec["seed"])
    sizes = [int(s) + 1 for s in table[1:].max(axis=0)]
    offsets = [N_SPECIAL + sum(sizes[:level]) for level in range(len(sizes))]
    rss_before = rss_mb()
    wall = time.perf_counter()
    tokens = (table[1:] + np.asarray(offsets)).tolist()
    children: dict[tuple[int, ...], set[int]] = {}
    for row in tokens:
        for level in range(len(row)):
            children.setdefault(tuple(row[:level]), set()).add(row[level])
    trie = {prefix: sorted(allowed) for prefix, allowed in children.items()}
    del children
    item_of = {tuple(row): i + 1 for i, row in enumerate(tokens)}
    del tokens
    out: dict[str, Any] = {"trie_build_s": time.perf_counter() - wall, "trie_rss_delta_mb": rss_mb() - rss_before}

    t5 = tiger_t5(N_SPECIAL + sum(sizes), spec["seed"])
    users, batch, beam = spec["users"], spec["batch"], spec["beam"]
    ids_all = histories(table, users, spec["history"], offsets, spec["seed"])
    chunks = [ids_all[i : i + batch] for i in range(0, users, batch)]

    def allowed(batch_id: int, generated: torch.Tensor) -> list[int]:
        return trie.get(tuple(generated.tolist()[1:]), [])

    def decode() -> list[list[int]]:
        top = []
        with torch.no_grad():
            for ids in chunks:
                seqs = t5.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    num_beams=beam,
                    num_return_sequences=beam,
                    max_new_tokens=len(sizes),
                    prefix_allowed_tokens_fn=allowed,
                    do_sample=False,
                )
                rows = seqs[:, 1:].view(len(ids), beam, -1).tolist()
                top += [[item_of[tuple(s)] for s in user[:10]] for user in rows]
        return top

    seconds, top = best_cpu_seconds(decode, 1)
    out["hf_users_per_s"] = users / seconds
    out["hf_top10"] = top

    llm, first = tiny_llm(sum(sizes), spec["seed"])
    shift = first - N_SPECIAL  # LLM token id of a T5 code token
    prompt_length = ids_all.shape[1]

    def allowed_llm(batch_id: int, generated: torch.Tensor) -> list[int]:
        prefix = tuple(t - shift for t in generated.tolist()[prompt_length:])
        return [t + shift for t in trie.get(prefix, [])]

    def decode_llm() -> list[list[int]]:
        top = []
        with torch.no_grad():
            for ids in chunks:
                seqs = llm.generate(
                    input_ids=ids + shift,
                    attention_mask=torch.ones_like(ids),
                    num_beams=beam,
                    num_return_sequences=beam,
                    max_new_tokens=len(sizes),
                    prefix_allowed_tokens_fn=allowed_llm,
                    do_sample=False,
                    pad_token_id=0,
                )
                rows = (seqs[:, prompt_length:] - shift).view(len(ids), beam, -1).tolist()
                top += [[item_of[tuple(s)] for s in user[:10]] for user in rows]
        return top

    seconds, top = best_cpu_seconds(decode_llm, 1)
    out["hf_llm_users_per_s"] = users / seconds
    out["hf_llm_top10"] = top
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one configuration in a fresh process (own peak RSS); errors and timeouts are recorded."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ driver
def dense_bytes_estimate(n_prefixes: list[int], level_sizes: list[int]) -> int:
    """Bytes the dense tables would take: int64 child + float32 mask per (prefix, code)."""
    return sum(12 * n * s for n, s in zip(n_prefixes, level_sizes))


def overlap(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean share of top-10 items two methods agree on."""
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


def table_row(base: dict[str, Any], method: str, result: dict[str, Any], sparse: dict[str, Any]) -> dict[str, Any]:
    """One results row: HF rows put their speeds in the same columns as our layouts."""
    row = {**base, "method": method, **result}
    hf = method.startswith("HF")
    row["build_s"] = result.get("trie_build_s" if hf else "index_build_s")
    row["memory_mb"] = result.get("trie_rss_delta_mb" if hf else "index_mb", result.get("memory_mb_estimate"))
    row["tiger_decode_users_per_s"] = result.get("hf_users_per_s" if hf else "tiger_users_per_s")
    row["llm_decode_users_per_s"] = result.get("hf_llm_users_per_s" if hf else "llm_users_per_s")
    for model in ("tiger", "llm"):
        top = result.get(f"hf_{model}_top10" if hf and model == "llm" else "hf_top10" if hf else f"{model}_top10")
        if top is not None and f"{model}_top10" in sparse:
            row[f"{model}_top10_overlap_with_sparse"] = overlap(top, sparse[f"{model}_top10"])
    for key in ("tiger_top10", "llm_top10", "hf_top10", "hf_llm_top10"):
        row.pop(key, None)
    return row


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def slot_cost_ratio(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sparse / dense time of the index alone on full tries, where both score the same slots.

    Every prefix has every code as a child, so the widths are equal and the ratio is the cost
    of a sparse slot relative to a dense one: the ``SPARSE_SLOT_COST`` that ``auto`` uses.
    """
    out = []
    for levels, codes in ((3, 16), (2, 64), (2, 256)):
        n = codes**levels
        table = np.concatenate([np.full((1, levels), -1), np.indices((codes,) * levels).reshape(levels, -1).T])
        seconds = {}
        for layout in ("dense", "sparse"):
            index = PrefixIndex(table, layout=layout)
            offsets = [N_SPECIAL + codes * level for level in range(levels)]
            fixed = FixedStepper(args.batch, args.beam, N_SPECIAL + codes * levels, args.seed)
            constrained_beam_search(fixed, index, offsets, args.beam)
            seconds[layout], _ = best_cpu_seconds(
                lambda: [constrained_beam_search(fixed, index, offsets, args.beam) for _ in range(20)], 3
            )
        out.append({"trie": f"full {levels}x{codes} ({n:,} items)", "sparse_over_dense": seconds["sparse"] / seconds["dense"]})
    return out


def scaling_ratios(rows: list[dict[str, Any]], shapes: list[str]) -> list[dict[str, Any]]:
    """Per shape and layout: 1M-item figures and users/s at 1M over users/s at 10k (same run)."""
    ratios = []
    for shape in shapes:
        for layout in ("sparse", "auto"):
            at = {r["items"]: r for r in rows if r["shape"] == shape and r["method"] == layout}
            small, large = at.get(10_000, {}), at.get(1_000_000, {})
            ratio: dict[str, Any] = {"shape": shape, "layout": layout}
            for key in ("tiger_users_per_s", "tiger_fullsort_users_per_s", "llm_users_per_s"):
                if key in small and key in large:
                    ratio[f"{key}_1m_over_10k"] = large[key] / small[key]
            if "index_mb" in large:
                ratio.update(index_mb_1m=large["index_mb"], build_s_1m=large["index_build_s"],
                             peak_rss_mb_1m=large["peak_rss_mb"], layouts_1m=large["layouts"])
            ratios.append(ratio)
    return ratios


def method_name(row: dict[str, Any]) -> str:
    """``auto`` rows say which layout each level got (d = dense, s = sparse)."""
    if row["method"] == "auto" and row.get("layouts"):
        return "auto (" + "".join(kind[0] for kind in row["layouts"]) + ")"
    return row["method"]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(rows: list[dict[str, Any]], ratios: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    lines = [
        f"Constrained decoding vs catalogue size: {setup['users']} users, beam {setup['beam']}, "
        f"{setup['batch']} users per batch, history {setup['history']} items, {setup['threads']} thread; "
        "random TIGER-shaped T5 and the tiny-random Llama; users per CPU-second, best of "
        f"{setup['repeats']} (HF: 1 run). Peak RSS is per worker process and includes ~0.3 GB of "
        "torch/transformers. Top-10 agreement is with the sparse layout's lists for the same users.",
        "",
        "| codes | items | method | build s | index / trie MB | peak RSS MB | index-only users/s "
        "| TIGER users/s | TIGER + [users, items] scores | LLM users/s | top-10 = sparse (TIGER / LLM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r or "skipped" in r:
            reason = r.get("skipped") or r["error"]
            lines.append(f"| {r['shape']} | {r['items']:,} | {r['method']} | {reason} | | | | | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['items']:,} | {method_name(r)} | {fmt(r.get('build_s'), '.2f')} "
            f"| {fmt(r.get('memory_mb'))} | {fmt(r.get('peak_rss_mb'), '.0f')} "
            f"| {fmt(r.get('index_only_users_per_s'), '.0f')} | {fmt(r.get('tiger_decode_users_per_s'))} "
            f"| {fmt(r.get('tiger_fullsort_users_per_s'))} | {fmt(r.get('llm_decode_users_per_s'))} "
            f"| {percent(r.get('tiger_top10_overlap_with_sparse'))} / {percent(r.get('llm_top10_overlap_with_sparse'))} |"
        )
    lines += [
        "",
        "1M items against 10k items, same run (users/s ratio; >= 0.5 means within 2x):",
        "",
        "| codes | layout | layouts per level at 1M | index MB at 1M | build s at 1M | peak RSS MB at 1M "
        "| TIGER | TIGER + scores | LLM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q in ratios:
        lines.append(
            f"| {q['shape']} | {q['layout']} | {', '.join(q.get('layouts_1m', [])) or '-'} "
            f"| {fmt(q.get('index_mb_1m'))} | {fmt(q.get('build_s_1m'), '.2f')} | {fmt(q.get('peak_rss_mb_1m'), '.0f')} "
            f"| {fmt(q.get('tiger_users_per_s_1m_over_10k'), '.2f')} "
            f"| {fmt(q.get('tiger_fullsort_users_per_s_1m_over_10k'), '.2f')} "
            f"| {fmt(q.get('llm_users_per_s_1m_over_10k'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Log-log: items vs decode users/s (left) and vs index / trie memory (right).

    Line style = method, colour = model (left) or code shape (right), marker = code shape;
    hollow markers are dense-table sizes that were estimated, not built.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    styles = {"sparse": "-", "auto": "-.", "dense": "--", "HF generate + trie": ":"}
    markers = {"4x256": "o", "3x1024": "s"}
    models = {"tiger_decode_users_per_s": ("TIGER (T5)", "C0"), "llm_decode_users_per_s": ("tiny Llama", "C1")}
    shape_colours = {"4x256": "C2", "3x1024": "C3"}
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 5))
    for shape, marker in markers.items():
        for method, style in styles.items():
            mine = [r for r in rows if r["shape"] == shape and r["method"] == method]
            for key, (_, colour) in models.items():
                pts = [(r["items"], r[key]) for r in mine if r.get(key)]
                if pts:
                    speed.plot(*zip(*pts), style, marker=marker, color=colour)
            built = [(r["items"], r["memory_mb"]) for r in mine if r.get("memory_mb") and "skipped" not in r]
            guessed = [(r["items"], r["memory_mb"]) for r in mine if r.get("memory_mb") and "skipped" in r]
            colour = shape_colours[shape]
            if built:
                memory.plot(*zip(*built), style, marker=marker, color=colour)
            if guessed:
                memory.plot(*zip(*(built[-1:] + guessed)), style, color=colour)
                memory.plot(*zip(*guessed), marker, color=colour, markerfacecolor="none")
    for ax, label in ((speed, "decode, users per CPU-second"), (memory, "index / trie memory, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items in catalogue")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    memory.axhline(200, color="grey", lw=0.8)
    memory.text(1e3, 230, "200 MB target", color="grey", fontsize=8)
    method_keys = [Line2D([], [], color="k", ls=style, label=method) for method, style in styles.items()]
    shape_keys = [Line2D([], [], color="k", ls="", marker=m, label=f"{shape} codes") for shape, m in markers.items()]
    model_keys = [Line2D([], [], color=c, label=name) for name, c in models.values()]
    speed.legend(handles=method_keys + model_keys + shape_keys, fontsize=7, ncol=3, loc="lower center")
    memory.legend(handles=method_keys + [Line2D([], [], color=c, marker=markers[s], label=f"{s} codes")
                                         for s, c in shape_colours.items()], fontsize=7, loc="upper left")
    speed.set_ylim(bottom=1)
    fig.suptitle("Constrained beam search vs catalogue size (hollow markers: dense tables estimated, not built)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--shapes", nargs="+", default=["4x256", "3x1024"], help="LEVELSxCODES")
    parser.add_argument("--users", type=int, default=64, help="users decoded per method")
    parser.add_argument("--batch", type=int, default=32, help="users per decoding batch")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--history", type=int, default=20, help="items per user history")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (best kept)")
    parser.add_argument("--dense-cap-mb", type=float, default=1024, help="skip the dense layout above this size")
    parser.add_argument("--hf-max-items", type=int, default=1_000_000, help="largest catalogue for HF generate")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="scale", help="results file stem")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        spec = json.loads(args.worker)
        torch.set_num_threads(spec["threads"])
        result = worker_hf(spec) if spec["layout"] == "hf" else worker_layout(spec)
        print(json.dumps(result))
        return

    common = {k: getattr(args, k) for k in ("users", "batch", "beam", "history", "repeats", "threads", "seed")}
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        levels, codes = (int(x) for x in shape.split("x"))
        for items in args.sizes:
            base = {"shape": shape, "items": items}
            spec = {**common, "items": items, "levels": levels, "codes": codes}
            sparse = run_worker({**spec, "layout": "sparse"}, args.timeout)
            runs = [("sparse", sparse), ("auto", run_worker({**spec, "layout": "auto"}, args.timeout))]
            estimate = (
                dense_bytes_estimate(sparse["n_prefixes"], sparse["level_sizes"]) / MB
                if "n_prefixes" in sparse
                else None
            )
            if estimate is not None and estimate > args.dense_cap_mb:
                runs.append(("dense", {"skipped": f"not built: tables would take {estimate:,.0f} MB",
                                       "memory_mb_estimate": estimate}))
            else:
                runs.append(("dense", run_worker({**spec, "layout": "dense"}, args.timeout)))
            if items <= args.hf_max_items:
                runs.append(("HF generate + trie", run_worker({**spec, "layout": "hf"}, args.timeout)))
            for method, result in runs:
                rows.append(table_row(base, method, result, sparse))
                print(f"{shape} {items:>9,} {method:<20} "
                      f"{ {k: v for k, v in rows[-1].items() if k not in ('shape', 'items', 'method')} }", flush=True)
    ratios = scaling_ratios(rows, args.shapes)
    slot_costs = slot_cost_ratio(args)

    setup = {
        **vars(args),
        "timing": "process CPU seconds per worker (1 thread), best of repeats; build time is wall clock",
        **machine_info(),
        "cpus": os.cpu_count(),
    }
    setup.pop("worker")
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, ratios, setup)
    table += "\nIndex alone on full tries (equal widths), sparse time / dense time: " + ", ".join(
        f"{c['trie']}: {c['sparse_over_dense']:.2f}" for c in slot_costs
    ) + " (prefix_index.SPARSE_SLOT_COST summarises these).\n"
    print("\n" + table)
    write_result(RESULTS / f"{args.name}.json", {"setup": setup, "results": rows, "ratios": ratios, "slot_cost": slot_costs})
    write_text_atomic(RESULTS / f"{args.name}.md", table)
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.md, .png")


if __name__ == "__main__":
    main()
