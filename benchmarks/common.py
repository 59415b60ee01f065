"""Helpers the benchmark scripts share (they import this module, never each other).

Run the scripts from the repository with the package installed (``pip install -e .``, which
``make`` does): they import ``recbole_letter`` like any user code and add nothing to ``sys.path``;
Python puts this folder on the path when a script in it runs, which is how they find ``common``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import recbole_letter  # noqa: F401  (RecBole compatibility shims before RecBole loads)

RESULTS = Path(__file__).resolve().parent / "results"
SYNTHETIC_DATASET = "synth100k"


def clock() -> float:
    """CPU seconds of this process: the 2-core machine is shared, so wall time measures the
    neighbours as much as the code. With one torch thread this is the time on a dedicated core."""
    return time.process_time()


# ---------------------------------------------------------------- synthetic TIGER set-up
def synthetic_args(parser: argparse.ArgumentParser) -> None:
    """Data / model-size flags of the synthetic set-up (decode.py, train_speed.py)."""
    parser.add_argument("--items", type=int, default=1682, help="catalogue size (ml-100k: 1682)")
    parser.add_argument("--users", type=int, default=943, help="users in the synthetic log (ml-100k: 943)")
    parser.add_argument("--levels", type=int, default=4, help="semantic-ID levels")
    parser.add_argument("--codes", type=int, default=256, help="codes per level")
    parser.add_argument("--history", type=int, default=20, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 where the CPU is shared)")
    parser.add_argument("--seed", type=int, default=0)


def random_table(n_rows: int, levels: int, codes: int, seed: int) -> np.ndarray:
    """Distinct uniformly random code tuples for items 1..n_rows-1; row 0 (padding) = -1.

    Tuples are drawn as distinct integers below ``codes ** levels`` (vectorised: a million rows
    take well under a second) and written in base ``codes``; sorting the integers sorts the
    tuples, so item ids follow the lexicographic order of their codes.
    """
    if levels * np.log2(codes) > 62:
        raise ValueError(f"{levels} levels of {codes} codes do not fit in int64; use fewer or smaller levels")
    flat = np.sort(np.random.default_rng(seed).choice(codes**levels, size=n_rows - 1, replace=False))
    table = np.empty((n_rows, levels), dtype=np.int64)
    table[0] = -1
    for level in range(levels):
        table[1:, level] = (flat // codes ** (levels - 1 - level)) % codes
    return table


def build_synthetic(args: argparse.Namespace, workdir: Path, **config_overrides):
    """Synthetic ml-100k-sized log -> RecBole data -> TIGER with a random 4x256 semantic-ID table.

    TIGER gets a fixed random semantic-ID table instead of the tokenizer stage's: decoding and
    training speed do not depend on how the codes were learnt, only on their shape.
    """
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_letter.config import PROPERTIES_DIR
    from recbole_letter.model.tiger import TIGER
    from recbole_letter.tokenization.semantic_ids import SemanticIDTable

    rng = np.random.default_rng(args.seed)
    folder = workdir / SYNTHETIC_DATASET
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(args.users):
        length = int(rng.integers(args.history + 2, 5 * args.history))
        items = rng.choice(args.items, size=length, replace=length > args.items)
        lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(items)]
    (folder / f"{SYNTHETIC_DATASET}.inter").write_text("\n".join(lines) + "\n")

    config = Config(
        model=TIGER,
        dataset=SYNTHETIC_DATASET,
        config_file_list=[str(PROPERTIES_DIR / "model" / "TIGER.yaml")],
        config_dict={
            "data_path": str(workdir),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
            "MAX_ITEM_LIST_LENGTH": args.history,
            "topk": [10],
            "metrics": ["Recall"],
            "valid_metric": "Recall@10",
            "repeatable": True,
            "seed": args.seed,
            "state": "ERROR",
            "use_gpu": False,
            **config_overrides,
        },
    )
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    # What the runner's stage resolution hands TIGER, here a fixed random table of the same shape.
    table = random_table(train_data._dataset.item_num, args.levels, args.codes, args.seed)
    config["semantic_id_table"] = SemanticIDTable.from_padded(table)
    model = TIGER(config, train_data._dataset)
    return config, model, train_data, test_data


# ---------------------------------------------------------------- tokenizer fits
def warm_up_tokenizer_fit() -> None:
    """One tiny fit first: the first AdamW of a process imports torch._dynamo (~7 s measured),
    which would otherwise be billed to whichever tokenizer is timed first."""
    from recbole_letter.tokenization.fit import TokenizerConfig, fit_tokenizer

    rng = np.random.default_rng(0)
    x, cf = rng.standard_normal((64, 8), dtype=np.float32), rng.standard_normal((64, 4), dtype=np.float32)
    fit_tokenizer(x, cf, TokenizerConfig(hidden_dims=(8,), code_dim=4, num_levels=2, codebook_size=8,
                                         n_div_clusters=2, epochs=1, kmeans_iters=2), progress=False)


# ---------------------------------------------------------------- results
def machine_info() -> dict[str, str]:
    """What produced the numbers: Python, torch and CPU."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()}


def write_result(path: Path, payload: dict, default=None) -> Path:
    """Write a benchmark's JSON (atomically, trailing newline) and say where."""
    from recbole_letter.atomic import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(payload, path, default=default, trailing_newline=True)
    print(f"\nwrote {path}")
    return path
