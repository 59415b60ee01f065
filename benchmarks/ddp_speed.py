"""Data-parallel training speed: samples/s of 1 process vs 2 gloo processes on this machine.

For each model (TIGER at ``properties/model/TIGER.yaml``'s T5 shape, and RecBole's SASRec through
RecBole's own multi-process keys) the same synthetic log is trained for the same number of
batches of the same *global* size by

* ``1 process``: one plain process (no process group), the baseline;
* ``2 processes (gloo)``: 2 ranks through ``nproc``/``world_size`` (each loads half of every
  global batch; DDP averages the gradients over gloo),

each in freshly spawned processes with one torch thread. Reported: training samples per
wall-clock second (the number users see; with 2 processes, global samples / the slower rank's
time), the ratio to the 1-process run of the same script, and CPU-seconds per 1,000 samples summed
over ranks (what the parallel run costs in compute), and samples per CPU-second of the busiest
rank with its ratio (what dedicated cores would give if waiting for the other rank cost nothing:
the view that the load of other jobs distorts least). One warm-up epoch of a few batches runs
first and is not timed.

The machine this ran on has 2 CPU cores shared with other jobs: a 2-process run can only beat 1
process if a second core is actually free, and gloo's all-reduce of every gradient costs CPU
the single process does not spend. Read the ratio as "what this machine gave at that moment",
not as the scaling of the code on dedicated cores or GPUs.

    python benchmarks/ddp_speed.py                      # TIGER and SASRec, ~5 minutes here
    python benchmarks/ddp_speed.py --models TIGER --batches 6
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import RESULTS, machine_info, random_table, write_result

from recbole_letter import distributed
from recbole_letter.tables import markdown_table

DATASET = "ddpsynth"


def write_log(folder: Path, users: int, items: int, history: int, seed: int) -> Path:
    """A synthetic interaction log (uniform items, ``history``+2 .. 3*``history`` per user)."""
    rng = np.random.default_rng(seed)
    out = folder / DATASET
    out.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(users):
        length = int(rng.integers(history + 2, 3 * history))
        lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(rng.choice(items, size=length))]
    (out / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    return folder


def model_setup(name: str, args: argparse.Namespace) -> tuple[object, list[str], dict]:
    """(model class or RecBole name, config files, config keys) for one benchmarked model."""
    from recbole_letter.config import PROPERTIES_DIR

    if name == "TIGER":
        from recbole_letter.model.tiger import TIGER

        return TIGER, [str(PROPERTIES_DIR / "model" / "TIGER.yaml")], {"train_batches_per_epoch": args.batches}
    if name == "SASRec":
        return "SASRec", [], {}
    raise ValueError(f"unknown model {name!r}: TIGER or SASRec")


def train_rank(local_rank: int, name: str, args: argparse.Namespace, data: str, out: str, ddp: dict) -> None:
    """One process: build data and model, one untimed warm-up epoch, one timed epoch; write timings.

    Module level: ``spawn`` imports it."""
    import sys

    import torch

    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv: not this script's flags
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole on pandas 2 / torch 2.13: noise here
    import recbole_letter  # noqa: F401
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer

    from recbole_letter import compat
    from recbole_letter.tokenization.semantic_ids import SemanticIDTable

    model, files, keys = model_setup(name, args)
    config_dict = {
        "data_path": data,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": args.history,
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "train_batch_size": args.batch,  # global: each of 2 ranks loads half
        "repeatable": True,
        "seed": 0,
        "state": "ERROR",
        "show_progress": False,
        "use_gpu": False,
        "checkpoint_dir": str(Path(out) / "saved"),
        **keys,
        **({**ddp, "local_rank": local_rank} if ddp else {}),
    }
    config = Config(model=model, dataset=DATASET, config_file_list=files, config_dict=config_dict)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    if name == "TIGER":
        table = random_table(train_data._dataset.item_num, args.levels, args.codes, seed=0)
        config["semantic_id_table"] = SemanticIDTable.from_padded(table)
        from recbole_letter.generation.trainer import GenerativeTrainer

        net = model(config, train_data._dataset)
        trainer = compat.trusted_checkpoint_trainer(GenerativeTrainer)(config, net)
        batches = min(args.batches, len(train_data))
    else:
        net = get_model(model)(config, train_data._dataset)
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
        batches = len(train_data)
    warm = trainer.batches_per_epoch_cap if hasattr(trainer, "batches_per_epoch_cap") else None
    if warm is not None:
        trainer.batches_per_epoch_cap = args.warmup_batches
    trainer._train_epoch(train_data, 0)
    if warm is not None:
        trainer.batches_per_epoch_cap = warm
    if ddp:
        torch.distributed.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer._train_epoch(train_data, 1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = batches * args.batch  # global rows in the timed epoch (RecBole's last batch may be short)
    if name != "TIGER":
        rows = len(train_data._dataset)
    Path(out, f"rank{local_rank}.json").write_text(
        json.dumps({"wall": wall, "cpu": cpu, "samples": rows, "batches": batches})
    )


def measure(name: str, processes: int, args: argparse.Namespace, data: Path) -> dict:
    """Spawn ``processes`` ranks (1 = a plain process) and combine their timings."""
    with tempfile.TemporaryDirectory(prefix="ddp_speed-") as out:
        store, ddp = None, {}
        if processes > 1:
            store = distributed.host_store(0, processes, distributed.as_timeout(600))
            ddp = {"nproc": processes, "world_size": processes, "offset": 0, "ip": "localhost",
                   "port": store.port, "ddp_hosted_store": True, "ddp_timeout": 600}
        distributed.spawn_ranks(
            train_rank, (name, args, str(data), out, ddp), processes, deadline_seconds=args.deadline
        )
        del store
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(processes)]
    wall = max(r["wall"] for r in ranks)
    samples = ranks[0]["samples"]
    return {
        "model": name,
        "processes": processes,
        "samples": samples,
        "batches": ranks[0]["batches"],
        "wall_seconds": round(wall, 3),
        "samples_per_second": round(samples / wall, 2),
        "cpu_seconds_per_1k_samples": round(1000 * sum(r["cpu"] for r in ranks) / samples, 3),
        # What a dedicated core per rank would give if waiting costs nothing: the contention-free view.
        "samples_per_busiest_rank_cpu_second": round(samples / max(r["cpu"] for r in ranks), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["TIGER", "SASRec"])
    parser.add_argument("--users", type=int, default=150, help="synthetic users (SASRec trains a full epoch of them)")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--history", type=int, default=20, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--batch", type=int, default=128, help="global train_batch_size")
    parser.add_argument("--batches", type=int, default=6, help="timed TIGER batches")
    parser.add_argument("--warmup_batches", type=int, default=2)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--deadline", type=float, default=900, help="seconds before a measurement is killed")
    parser.add_argument("--out", type=Path, default=RESULTS / "ddp_speed.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp_speed-data-") as tmp:
        data = write_log(Path(tmp), args.users, args.items, args.history, seed=0)
        for name in args.models:
            base = cpu_base = None
            for processes in (1, 2):
                load = os.getloadavg()[0]
                row = measure(name, processes, args, data)
                base = base or row["samples_per_second"]
                row["ratio_to_1_process"] = round(row["samples_per_second"] / base, 3)
                cpu_base = cpu_base or row["samples_per_busiest_rank_cpu_second"]
                row["cpu_ratio_to_1_process"] = round(row["samples_per_busiest_rank_cpu_second"] / cpu_base, 3)
                row["load_average_before"] = round(load, 2)
                rows.append(row)
                print(f"{name} x{processes}: {row['samples_per_second']} samples/s ({row['ratio_to_1_process']}x)", flush=True)

    header = ["model", "processes", "samples/s (wall)", "ratio to 1 process", "samples per CPU-s of the busiest rank",
              "ratio (CPU view)", "CPU-s per 1k samples (all ranks)", "timed samples", "1-min load before"]
    table = markdown_table(header, [
        [r["model"], r["processes"], r["samples_per_second"], r["ratio_to_1_process"],
         r["samples_per_busiest_rank_cpu_second"], r["cpu_ratio_to_1_process"], r["cpu_seconds_per_1k_samples"],
         r["samples"], r["load_average_before"]] for r in rows
    ], float_format=".2f")
    print("\n" + table)
    write_result(args.out, {"machine": {**machine_info(), "cpus": os.cpu_count()}, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows})
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
