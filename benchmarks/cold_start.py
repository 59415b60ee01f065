"""Cold-start items: STORE's LLM tokenization vs the quantiser's, for STORE, LCRec and TIGER.

A share of the items is held out: every training interaction of theirs is removed, so neither the
quantiser nor any generator sees them; they remain only as some users' *test* targets (the
leave-one-out split keeps each user's last interaction for test). Then

1. the backbone embeds every item's text (``text_encoder: llm``) and RQ-VAE is fitted on the
   **warm** items only; the cold items have no code (``SemanticIDTable`` rows of -1);
2. STORE, LCRec and TIGER train on that table (same split, same budget file);
3. the cold items get codes two ways, and each generator is evaluated with each:

   (a) **STORE text -> token**: STORE generates the codes from the item's title
       (:meth:`STORE.generate_codes`, any code per level, existing tuples excluded, next-best
       beam on collisions);
   (b) **quantiser**: the fitted RQ-VAE encodes the item's text embedding
       (``ItemTokenizer.tokenize_items``: nearest codes, free-code / extra-level rules);

   the codes are added with ``add_items`` (no retraining) and RecBole's evaluator ranks the full
   catalogue for the test interactions whose target is a cold item, and separately for those
   whose target is warm;
4. ``Pop`` is the floor (it never recommends a cold item: they have no training count);
5. text -> token accuracy of STORE on warm items (does it write the codes it was taught?) and
   agreement of (a) with (b) on cold items; token -> text: STORE's generated title vs the real
   one (exact match after normalising case/space, and word-level F1) for warm items and for cold
   items under (a) and (b) codes.

Everything runs in this process under ``properties/cold_start_cpu.yaml`` (or ``--config_files``)
plus ``--key=value`` overrides; numbers are written to ``benchmarks/results/cold_start_<name>.json``
and a markdown report to stdout and next to the JSON (``.md``). Times are CPU seconds of this process (``common.clock``).

Examples::

    python benchmarks/cold_start.py                                   # tiny-random, ml-100k, 300 users
    python benchmarks/cold_start.py --max_users=400 --llm_path=smollm2 --finetune=lora --learning_rate=0.001
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import RESULTS, clock, machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ROOT / "recbole_letter" / "properties" / "cold_start_cpu.yaml"
GENERATORS = ("STORE", "LCRec", "TIGER")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
LOGGER = logging.getLogger("recbole_letter.cold_start")


# ---------------------------------------------------------------- data
def write_cold_dataset(src: Path, dataset: str, out_root: Path, max_users: int, cold_share: float, seed: int) -> tuple[str, list[str]]:
    """Atomic files of a user subsample with held-out items; returns (dataset name, cold item tokens).

    Cold items are drawn from the items that are some user's last interaction (so each has a
    test interaction to evaluate); all their other interactions are removed.
    """
    name = f"{dataset}-cold-u{max_users}-c{cold_share:g}-s{seed}"
    folder = out_root / name
    inter = pd.read_csv(src / f"{dataset}.inter", sep="\t", dtype=str, keep_default_na=False)
    cols = {c.split(":")[0]: c for c in inter.columns}
    user, item, time = cols["user_id"], cols["item_id"], cols["timestamp"]
    rng = np.random.default_rng(seed)
    users = inter[user].unique()
    if max_users and max_users < len(users):
        inter = inter[inter[user].isin(set(rng.choice(users, size=max_users, replace=False)))]
    inter = inter.assign(_t=inter[time].astype(float)).sort_values([user, "_t"], kind="stable")
    last = inter.groupby(user, sort=False).tail(1)
    candidates = np.array(sorted(last[item].unique()))
    cold = sorted(rng.choice(candidates, size=max(1, int(round(cold_share * len(candidates)))), replace=False).tolist())
    is_cold = inter[item].isin(set(cold))
    is_last = inter.index.isin(last.index)
    kept = inter[~is_cold | is_last].drop(columns="_t")
    if (folder / f"{name}.inter").is_file():
        return name, cold
    tmp = out_root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept.to_csv(tmp / f"{name}.inter", sep="\t", index=False)
    shutil.copyfile(src / f"{dataset}.item", tmp / f"{name}.item")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"{name}: {inter[user].nunique()} users, {len(kept)}/{len(inter)} interactions kept, "
          f"{len(cold)} cold items (of {len(candidates)} test targets)", flush=True)
    return name, cold


# ---------------------------------------------------------------- tokenizer on warm items
def fit_warm_tokenizer(config: Any, dataset: Any, cold_ids: np.ndarray):
    """RQ-VAE on the warm items' LLM embeddings; returns (tokenizer, padded warm table, embeddings, level sizes)."""
    from recbole_letter.stages.item_tokenizer import ItemTokenizer, tokenizer_config_from
    from recbole_letter.stages.text_embeddings import item_text_embeddings
    from recbole_letter.tokenization.fit import fit_tokenizer
    from recbole_letter.tokenization.semantic_ids import make_unique

    emb = item_text_embeddings(config, dataset)  # [item_num, d], row 0 padding
    warm = np.setdiff1d(np.arange(1, dataset.item_num), cold_ids)
    cfg = tokenizer_config_from(config, "RQVAE")
    result = fit_tokenizer(emb[warm], None, cfg, progress=False)
    tokens = [str(t) for t in dataset.id2token(dataset.iid_field, warm)]
    tok = ItemTokenizer(tokens, result.codes, result.codes, cfg.codebook_sizes, model=result.model, config=cfg)
    unique, info = make_unique(result.codes, tok.last_level_distances(emb[warm]), cfg.codebook_sizes)
    tok.codes = unique
    table = np.full((dataset.item_num, unique.shape[1]), -1, dtype=np.int64)
    table[warm] = unique
    sizes = list(cfg.codebook_sizes) + ([int(unique[:, -1].max()) + 1] if unique.shape[1] > len(cfg.codebook_sizes) else [])
    return tok, table, emb, sizes, info


# ---------------------------------------------------------------- evaluation
def subset_loader(config: Any, loader: Any, items: np.ndarray, keep: bool) -> Any:
    """The test loader restricted to interactions whose target is (``keep``) / is not in ``items``."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    ds = loader._dataset
    mask = np.isin(ds.inter_feat[ds.iid_field].numpy(), items)
    sub = ds.copy(ds.inter_feat[torch_mask(mask if keep else ~mask)])
    return FullSortEvalDataLoader(config, sub, loader._sampler, shuffle=False), int(len(sub))


def torch_mask(mask: np.ndarray):
    import torch

    return torch.as_tensor(mask)


def evaluate(trainer: Any, model: Any, loaders: dict[str, Any], cold_ids: np.ndarray, k: int = 10) -> dict[str, Any]:
    """RecBole's evaluator on each loader, plus the share of the top-``k`` lists (all test users)
    that cold items take: a model that pushes every new item to the top scores well on the cold
    rows alone, and this column (with the "all" rows) shows it."""
    import torch

    trainer.model = model
    out: dict[str, Any] = {name: {m: float(v) for m, v in trainer.evaluate(loader, load_best_model=False).items()}
                           for name, loader in loaders.items()}
    model.eval()
    cold = torch.zeros(int(model.n_items), dtype=torch.bool)
    cold[torch.as_tensor(cold_ids)] = True
    taken, slots = 0, 0
    with torch.no_grad():
        for batch in loaders["all"]:
            interaction = batch[0].to(model.device)
            scores = model.full_sort_predict(interaction).view(-1, int(model.n_items))
            scores[:, 0] = float("-inf")
            top = scores.topk(k, dim=1).indices.cpu()
            taken += int(cold[top].sum())
            slots += top.numel()
    out[f"cold_share_top{k}"] = taken / max(slots, 1)
    return out


def cold_first_reference(n_cold: int, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Expected recall / NDCG on the cold rows of a ranking that puts all cold items first, in
    random order: what "recommend every new item" earns without knowing anything."""
    ranks = np.arange(1, n_cold + 1)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((hit / np.log2(ranks + 1)).mean())
    return out


def normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", str(text).lower()))


def word_f1(pred: str, gold: str) -> float:
    p, g = normalise(pred).split(), normalise(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def reconstruction(model: Any, ids: np.ndarray, titles: list[str]) -> dict[str, float]:
    generated = model.generate_text(ids.tolist())
    exact = [normalise(g) == normalise(t) for g, t in zip(generated, titles)]
    return {
        "exact_title": float(np.mean(exact)),
        "word_f1": float(np.mean([word_f1(g, t) for g, t in zip(generated, titles)])),
        "n": len(ids),
        "examples": [[t, g] for t, g in list(zip(titles, generated))[:3]],
    }


def parse_model_files(values: list[str]) -> dict[str, list[str]]:
    """``["TIGER=a.yaml", ...]`` -> ``{"TIGER": ["a.yaml"]}``: budget files that only one model reads
    (on a GPU TIGER needs its own epochs and learning rate, the LLMs LC-Rec's recipe)."""
    out: dict[str, list[str]] = {}
    for value in values:
        model, sep, path = value.partition("=")
        if not sep or model not in (*GENERATORS, "Pop") or not Path(path).is_file():
            raise SystemExit(f"error: --model_files={value}: expected MODEL=<existing YAML> with MODEL in {(*GENERATORS, 'Pop')}")
        out.setdefault(model, []).append(path)
    return out


def relative(path: str) -> str:
    """A path inside the repository as a repository-relative string (results must not name a worktree)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def markdown_report(payload: dict[str, Any]) -> str:
    """The result JSON as markdown: the ranking table (cold / warm / all test rows) with the
    cold-first reference row, and STORE's text <-> token checks. Also written next to the JSON."""
    from recbole_letter.tables import markdown_table

    header = ["model, cold-item codes", *[f"cold {m}" for m in METRICS], *[f"warm {m}" for m in METRICS],
              *[f"all {m}" for m in METRICS], "cold share of top-10"]
    rows = [[label, *[r["cold"].get(m) for m in METRICS], *[r["warm"].get(m) for m in METRICS],
             *[r["all"].get(m) for m in METRICS], r["cold_share_top10"]] for label, r in payload["results"].items()]
    reference = payload["cold_first_reference"]
    rows.append(["reference: all cold items first, random order", *[reference.get(m) for m in METRICS],
                 *[None] * (2 * len(METRICS)), min(1.0, payload["n_cold_items"] / 10)])
    setup = (
        f"{payload['dataset']} (from {payload['source']}): {payload['n_cold_items']} held-out items; test "
        f"interactions with a cold target: {payload['n_test_cold']}, with a warm target: {payload['n_test_warm']}. "
        f"Backbone `{payload['llm_path']}`, budget `{' '.join(payload['budget_files'])}`"
        f"{''.join(f', {m} also `{chr(32).join(fs)}`' for m, fs in payload.get('model_files', {}).items())}, overrides "
        f"{payload['overrides'] or 'none'}; {payload['semantic_ids']}; {payload['cpu_seconds'].get('total')} CPU-s."
    )
    recon = payload["reconstruction"]
    return "\n\n".join([
        f"## Cold-start items: {payload['dataset']}", setup, markdown_table(header, rows),
        "## STORE text <-> token",
        markdown_table(["check", "value"], [[k, v] for k, v in payload["text_token_skills"].items()]),
        markdown_table(["token -> text", "exact title", "word F1", "items"],
                       [[k, v["exact_title"], v["word_f1"], v["n"]] for k, v in recon.items()]),
    ]) + "\n"


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", help="dataset with a .item title column")
    parser.add_argument("--max_users", type=int, default=300, help="user subsample (0 = all)")
    parser.add_argument("--cold_share", type=float, default=0.3, help="share of the test-target items held out")
    parser.add_argument("--seed", type=int, default=0, help="subsample / hold-out seed")
    parser.add_argument("--config_files", default=str(BUDGET), help="budget YAML(s), space-separated")
    parser.add_argument("--model_files", action="append", default=[], metavar="MODEL=YAML",
                        help="an extra YAML read after the budget by one model only (e.g. TIGER=properties/cold_start_gpu_tiger.yaml); repeatable")
    parser.add_argument("--checkpoint_dir", default=str(ROOT / "saved" / "cold_start"))
    parser.add_argument("--text_samples", type=int, default=50, help="items per token -> text / text -> token check")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/cold_start_<dataset>.json)")
    parser.add_argument("--report_from", default=None, help="only rewrite the markdown (.md) of this result JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_letter.cli import parse_overrides
    from recbole_letter.data.bundled import resolve_dataset_dir
    from recbole_letter.quick_start import build_config
    from recbole_letter.tokenization.semantic_ids import SemanticIDTable

    args, extra = build_parser().parse_known_args(argv)
    if args.report_from:
        source = Path(args.report_from)
        source.with_suffix(".md").write_text(markdown_report(json.loads(source.read_text())))
        print(source.with_suffix(".md").read_text())
        return 0
    overrides = parse_overrides(extra)
    started = clock()
    checkpoint_dir = Path(args.checkpoint_dir).resolve()
    src = resolve_dataset_dir(args.dataset, overrides.get("data_path", "dataset"), checkpoint_dir)
    data_root = checkpoint_dir / "datasets"
    name, cold_tokens = write_cold_dataset(src, args.dataset, data_root, args.max_users, args.cold_share, args.seed)
    files = args.config_files.split()
    model_files = parse_model_files(args.model_files)
    # --data_path names where the *source* dataset is; every model reads the held-out copy
    base = {"state": "WARNING", "show_progress": False, **overrides,
            "checkpoint_dir": str(checkpoint_dir), "data_path": str(data_root)}

    def prepared(model_name: str):
        config, spec = build_config(model_name, name, files + model_files.get(model_name, []), dict(base))
        init_seed(config["seed"], config["reproducibility"])
        train, valid, test = data_preparation(config, create_dataset(config))
        return config, spec, train, valid, test

    store_config, store_spec, train, valid, test = prepared("STORE")
    dataset = train._dataset
    cold_ids = np.sort(dataset.token2id(dataset.iid_field, cold_tokens))
    print(f"{len(cold_ids)} cold items, {dataset.item_num - 1 - len(cold_ids)} warm; "
          f"{len(train._dataset)} training rows", flush=True)

    t0 = clock()
    tok, warm_table, emb, sizes, resolution = fit_warm_tokenizer(store_config, dataset, cold_ids)
    table = SemanticIDTable.from_padded(warm_table, level_sizes=sizes, allow_unassigned=True)
    codes_quantiser = tok.tokenize_items(emb[cold_ids])
    stage_seconds = clock() - t0
    print(f"tokenizer on warm items: {table} ({resolution['collisions_before']} collisions resolved), "
          f"{stage_seconds:.0f} CPU-s", flush=True)

    item_text = None
    results: dict[str, Any] = {}
    timings: dict[str, float] = {"embeddings_and_tokenizer": round(stage_seconds, 1)}
    codes_store = None
    store_model = None
    for model_name in (*GENERATORS, "Pop"):
        if model_name == "STORE":
            config, spec, train_m, valid_m, test_m = store_config, store_spec, train, valid, test
        else:
            config, spec, train_m, valid_m, test_m = prepared(model_name)
        cold_loader, n_cold = subset_loader(config, test_m, cold_ids, keep=True)
        warm_loader, n_warm = subset_loader(config, test_m, cold_ids, keep=False)
        loaders = {"cold": cold_loader, "warm": warm_loader, "all": test_m}
        if model_name == "STORE":
            print(f"test interactions: {n_cold} with a cold target, {n_warm} with a warm target", flush=True)
        if model_name != "Pop":
            config["semantic_id_table"] = table
        t0 = clock()
        init_seed(config["seed"], config["reproducibility"])
        model = spec.model_class(config, train_m._dataset).to(config["device"])
        trainer = spec.trainer_class(config, model)
        trainer.fit(train_m, valid_m, saved=False, show_progress=False)
        timings[f"{model_name}_train"] = round(clock() - t0, 1)
        print(f"{model_name}: trained in {timings[model_name + '_train']:.0f} CPU-s", flush=True)
        if model_name == "Pop":
            results["Pop"] = evaluate(trainer, model, loaders, cold_ids)
            continue
        if model_name == "STORE":
            store_model = model
            item_text = model.item_text
            cold_texts = [{"title": item_text.titles[i], "description": item_text.descriptions[i]} for i in cold_ids]
            t0 = clock()
            codes_store, _ = model.generate_codes(cold_texts, unique=True)
            timings["STORE_tokenize_cold"] = round(clock() - t0, 1)
        for label, codes in (("a: STORE text->token", codes_store), ("b: quantiser", codes_quantiser)):
            with_cold = copy.deepcopy(model)
            with_cold.add_items(codes, cold_ids)
            results[f"{model_name}, {label}"] = evaluate(trainer, with_cold, loaders, cold_ids)
        print(f"{model_name}: evaluated", flush=True)

    # ---- STORE's own text <-> token skills
    rng = np.random.default_rng(args.seed)
    warm_ids = np.setdiff1d(np.arange(1, dataset.item_num), cold_ids)
    sample = np.sort(rng.choice(warm_ids, size=min(args.text_samples, len(warm_ids)), replace=False))
    texts = [{"title": item_text.titles[i], "description": item_text.descriptions[i]} for i in sample]
    predicted, _ = store_model.generate_codes(texts, unique=False)
    truth = warm_table[sample]
    skills: dict[str, Any] = {
        "text2token_warm_exact": float((predicted == truth).all(axis=1).mean()),
        "text2token_warm_first_code": float((predicted[:, 0] == truth[:, 0]).mean()),
        "cold_codes_a_equal_b": float((codes_store == codes_quantiser).all(axis=1).mean()),
        "cold_first_code_a_equal_b": float((codes_store[:, 0] == codes_quantiser[:, 0]).mean()),
        "chance_first_code": 1.0 / sizes[0],
    }
    recon = {"warm": reconstruction(store_model, sample, [item_text.titles[i] for i in sample])}
    cold_sample = cold_ids[: args.text_samples]
    for label, codes in (("cold (a)", codes_store), ("cold (b)", codes_quantiser)):
        with_cold = copy.deepcopy(store_model)
        with_cold.add_items(codes, cold_ids)
        recon[label] = reconstruction(with_cold, cold_sample, [item_text.titles[i] for i in cold_sample])
    timings["total"] = round(clock() - started, 1)

    payload = {
        "dataset": name, "source": args.dataset, "max_users": args.max_users, "cold_share": args.cold_share,
        "seed": args.seed, "n_cold_items": int(len(cold_ids)), "n_test_cold": n_cold, "n_test_warm": n_warm,
        "budget_files": [relative(f) for f in files],
        "model_files": {m: [relative(f) for f in fs] for m, fs in model_files.items()},
        "overrides": {k: str(v) for k, v in overrides.items()},
        "llm_path": store_config["llm_path"], "semantic_ids": repr(table), "results": results,
        "cold_first_reference": cold_first_reference(len(cold_ids)), "text_token_skills": skills,
        "reconstruction": recon, "cpu_seconds": timings, "machine": machine_info(),
    }
    report = markdown_report(payload)
    print("\n" + report)
    out = Path(args.out) if args.out else RESULTS / f"cold_start_{args.dataset}.json"
    write_result(out, payload)
    out.with_suffix(".md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
