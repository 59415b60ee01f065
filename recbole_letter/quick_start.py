"""Run any model (ours or RecBole's) under one protocol; several models -> one results table.

Mirrors ``recbole.quick_start.run_recbole`` but drives
Config / create_dataset / data_preparation / Trainer itself, because RecBole's versions can only
find models inside ``recbole.model`` and import Ray at module load.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import logging
import pickle
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from recbole_letter.atomic import atomic_open, write_json_atomic
from recbole_letter.config import build_config as build_model_config
from recbole_letter.history_mask import MASKED, UNMASKED, history_protocol, mask_history
from recbole_letter.registry import ModelSpec, resolve_model
from recbole_letter.stages import resolve_stages
from recbole_letter.tables import format_cell, markdown_table

LOGGER = logging.getLogger("recbole_letter")


def build_config(
    model: str | ModelSpec,
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> tuple[Any, ModelSpec]:
    """A RecBole Config for the model named ``model`` (resolved by the registry) and its spec."""
    spec = model if isinstance(model, ModelSpec) else resolve_model(model)
    config = build_model_config(spec.model_class, dataset, config_files, config_dict, model_files=spec.config_files)
    return config, spec


def _split_fingerprint(*datasets: Any) -> str:
    """Identify a split by its evaluation rows so a multi-model table can prove all rows share one split.

    Hashes the sorted (user, item) tokens of each given split (valid, test): these are the same for
    sequential and general models on one split, whereas dataset sizes are not (sequential data
    augmentation rewrites ``inter_feat`` in place).
    """
    digest = hashlib.sha256()
    for ds in datasets:
        users = ds.id2token(ds.uid_field, ds.inter_feat[ds.uid_field].numpy())
        items = ds.id2token(ds.iid_field, ds.inter_feat[ds.iid_field].numpy())
        digest.update("\n".join(sorted(f"{u}\t{i}" for u, i in zip(users, items))).encode() + b"|")
    return digest.hexdigest()[:12]


class StopTraining(Exception):
    """Raised by an ``epoch_callback`` to end training after the current validation (e.g. a
    benchmark's wall-clock limit per row); the best checkpoint so far is then tested as usual.
    The message says why, and is returned as ``stopped_by_callback``."""


def run_recbole_letter(
    model: str,
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    epoch_callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model; returns RecBole-style results plus timing.

    ``epoch_callback(epoch_idx, valid_score)`` is RecBole's ``callback_fn``: the trainer calls it
    after every validation, which is how a Ray Tune trial reports per-epoch scores so a scheduler
    (ASHA) can stop bad trials early. It may raise :class:`StopTraining` to end training there.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_letter.validate import validate_config

    config, spec = build_config(model, dataset, config_files, config_dict)
    validate_config(config, spec, config_dict, [str(f) for f in config_files or []])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    # eval_mask_history: sequential models' rankings leave out earlier items, as general ones' do
    mask_history(config, train_data, valid_data, test_data)
    # Stages (semantic IDs...) first: building the model then trains nothing and gets them via config.
    # Under torch.distributed rank 0 fills the stage cache while the others wait, then they read it.
    if config["single_spec"]:
        resolve_stages(spec.model_class, config, train_data._dataset)
    else:
        from recbole_letter.distributed import as_timeout, wait_for_rank_zero

        wait_for_rank_zero(
            lambda: resolve_stages(spec.model_class, config, train_data._dataset),
            as_timeout(config["ddp_stage_timeout"]),
        )
    # Reseed after the stages: whether they ran or came from the cache, the model starts from the
    # same random state (stages also run under private RNG state, see recbole_letter.seeding).
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = spec.model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = spec.trainer_class(config, net)

    fit_kwargs: dict[str, Any] = {}
    if epoch_callback is not None:
        if _accepts_callback(trainer.fit):
            fit_kwargs["callback_fn"] = epoch_callback
        else:
            LOGGER.warning(
                "%s.fit has no callback_fn: no per-epoch validation reports (a tuning scheduler sees only "
                "the final result). Fix: use --tune_scheduler=fifo for this model.", type(trainer).__name__
            )
    started = time.perf_counter()
    stopped_early_by: str | None = None
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"], **fit_kwargs
        )
    except StopTraining as stop:  # raised by epoch_callback after a validation: test the best so far
        stopped_early_by = str(stop) or "callback"
        best_valid_score, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
        logger.info("training stopped by the epoch callback: %s", stopped_early_by)
    fit_seconds = time.perf_counter() - started
    epochs = len(getattr(trainer, "train_loss_dict", {}) or {}) or None
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    # A model may leave artefacts after its run (STORE: codes of --new_items written to an index JSON).
    outputs = net.after_run(config, train_data._dataset) if hasattr(net, "after_run") else None
    return {
        "model": spec.name,
        "label": result_label(spec.model_class, config, spec.name),
        "dataset": dataset,
        "best_valid_score": _to_float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": _floats(best_valid_result),
        "test_result": _floats(test_result),
        "fit_seconds": round(fit_seconds, 2),
        "epochs": epochs,
        "seconds_per_epoch": round(fit_seconds / epochs, 2) if epochs else None,
        "split": _split_fingerprint(valid_data._dataset, test_data._dataset),
        "protocol": history_protocol(test_data),
        **({"stopped_by_callback": stopped_early_by} if stopped_early_by else {}),
        "checkpoint": getattr(trainer, "saved_model_file", None) if saved else None,
        **({"outputs": outputs} if outputs else {}),
    }


def result_label(model_class: type, config: Any, name: str) -> str:
    """The row name in results tables: the model's own ``result_label(config)`` when it has one
    (TIGER: which semantic IDs and tau, so LETTER-TIGER is never mistaken for plain TIGER), else
    the model name. The ``model`` key of a result stays the registry name."""
    label = getattr(model_class, "result_label", None)
    return str(label(config)) if callable(label) else name


def _accepts_callback(fit: Callable[..., Any]) -> bool:
    """Whether a trainer's ``fit`` takes RecBole's ``callback_fn`` (tree-model trainers do not)."""
    params = inspect.signature(fit).parameters
    return "callback_fn" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _to_float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _floats(result: Any) -> dict[str, Any]:
    return {str(k): _to_float(v) for k, v in dict(result or {}).items()}


# ---------------------------------------------------------------- results tables


def results_table(results: Sequence[dict[str, Any]], split: str = "test_result") -> str:
    """One markdown table: a row per model, a column per metric (union over models), and a
    ``history`` column saying whether the ranking left out the user's earlier items (RecBole does for
    general models; sequential ones only under ``eval_mask_history``), so the two protocols never mix
    unseen."""
    columns: list[str] = []
    for res in results:
        for key in res.get(split) or {}:
            if key not in columns:
                columns.append(key)
    failed = any(res.get("error") for res in results)
    header = ["model", *columns, "history", "epochs", "s/epoch"] + (["error"] if failed else [])
    rows = []
    for res in results:
        values = res.get(split) or {}
        seconds = res.get("seconds_per_epoch")
        history = {MASKED: "masked", UNMASKED: "not masked"}.get(res.get("protocol"), "")
        cells = [res.get("label") or res["model"], *(values.get(col) for col in columns), history, res.get("epochs")]
        cells.append(None if seconds is None else f"{seconds:.1f}")
        if failed:
            cells.append(format_cell(res.get("error", ""), max_chars=200))
        rows.append(cells)
    return markdown_table(header, rows)


def run_models(
    models: Sequence[str],
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    results_dir: str | Path | None = None,
    saved: bool = True,
    debug: bool = False,
) -> tuple[list[dict[str, Any]], Path | None]:
    """Run several models in turn on the same data; returns their results and the JSON path.

    Every model's whole run is validated first (:func:`~recbole_letter.validate.validate_command`),
    so bad input fails before any stage or training. A model that fails while running is recorded
    with its error (one log line; the traceback with ``debug``) and the others still run; the
    JSON file is rewritten after every model so finished results are never lost. The returned
    path is None when no model got as far as writing it.
    """
    from recbole_letter.validate import validate_command

    distributed = "local_rank" in (config_dict or {})
    writes = not distributed or _dict_rank(config_dict or {}) == 0  # only global rank 0 writes results
    built = validate_command(models, dataset, config_files, config_dict)
    specs = [spec for _, spec in built]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(results_dir or built[0][0]["checkpoint_dir"] or "saved") / "results"
    out = root / f"{dataset}-{'-'.join(s.name for s in specs)}-{stamp}.json"
    written: Path | None = None
    results: list[dict[str, Any]] = []
    for spec in specs:
        try:
            res = run_recbole_letter(spec.name, dataset, config_files, config_dict, saved=saved)
        except Exception as exc:  # keep the other models' results
            if distributed:  # the other ranks wait in a collective: end the whole run instead
                raise
            if debug:
                LOGGER.error("model %s failed:\n%s", spec.name, traceback.format_exc())
            else:
                LOGGER.error("model %s failed: %s: %s (--debug shows the traceback)", spec.name, type(exc).__name__, exc)
            res = {"model": spec.name, "dataset": dataset, "error": f"{type(exc).__name__}: {exc}"}
        results.append(res)
        if writes:
            written = write_json_atomic({"dataset": dataset, "results": results}, out)
    splits = {r["split"] for r in results if "split" in r}
    if len(splits) > 1:
        LOGGER.warning("models ran on different data splits %s: their rows are not comparable", splits)
    if len({r["protocol"] for r in results if r.get("protocol")}) > 1:
        LOGGER.warning(
            "rows differ in the 'history' column: RecBole masks a user's earlier items for general models "
            "(Pop) but not for sequential ones. Fix: --eval_mask_history=True evaluates every row the same way."
        )
    return results, written


# ---------------------------------------------------------------- data-parallel runs

DISTRIBUTED_KEYS = ("nproc", "world_size", "ip", "port", "offset")


def _dict_rank(config_dict: dict) -> int:
    return int(config_dict.get("local_rank") or 0) + int(config_dict.get("offset") or 0)


def is_distributed_request(config_dict: dict | None) -> bool:
    """RecBole's multi-process keys ask for more than one process, or torchrun started us."""
    from recbole_letter.compat import launched_by_torchrun

    cd = config_dict or {}
    return launched_by_torchrun() or int(cd.get("nproc") or 1) > 1 or int(cd.get("world_size") or -1) > 1


def run_models_distributed(
    models: Sequence[str],
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
) -> tuple[list[dict[str, Any]], Path | None]:
    """:func:`run_models` data-parallel over processes (RecBole's ``run_recboles`` semantics).

    Under ``torchrun`` this process is one rank (env:// rendezvous; ``offset`` = RANK - LOCAL_RANK).
    Otherwise ``nproc`` processes are spawned on this node with ranks ``offset .. offset+nproc-1``
    of ``world_size`` (default ``nproc``), meeting at ``ip:port``; the node with global rank 0 hosts
    that rendezvous in this process (``port`` left out on one node: the OS picks it, nothing can race
    for it). Gradients are averaged over ranks, so ``train_batch_size`` is the *global* batch (each
    rank loads 1/world_size of it). Only global rank 0 writes checkpoints and the results JSON; a
    failing rank ends every rank (:func:`~recbole_letter.distributed.spawn_ranks` raises
    ``RankFailedError`` naming it; torchrun stops the others likewise).
    Returns rank 0's results and JSON path (``None`` on other ranks).
    """
    from recbole_letter.compat import launched_by_torchrun

    cd = dict(config_dict or {})
    if launched_by_torchrun():
        import os

        local_rank = int(os.environ["LOCAL_RANK"])
        cd.update(
            local_rank=local_rank,
            world_size=int(os.environ["WORLD_SIZE"]),
            nproc=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
            offset=int(os.environ["RANK"]) - local_rank,
            ip=os.environ["MASTER_ADDR"],
            port=os.environ["MASTER_PORT"],
        )
        # The group is left up: destroying a gloo group can deadlock (distributed._rank_entry);
        # the CLI ends a torchrun rank with distributed.exit_process.
        results, path = run_models(models, dataset, config_files, cd, saved=saved)
        return (results, path) if _dict_rank(cd) == 0 else (results, None)

    from recbole_letter.distributed import as_timeout, host_store, spawn_ranks

    nproc = int(cd.get("nproc") or 1)
    world_size = int(cd.get("world_size") or -1)
    world_size = nproc if world_size <= 0 else world_size
    offset = int(cd.get("offset") or 0)
    if offset + nproc > world_size:
        raise ValueError(
            f"offset {offset} + nproc {nproc} exceeds world_size {world_size}: ranks would not exist. "
            "Fix: world_size = total processes over all nodes, offset = ranks started on earlier nodes."
        )
    port = cd.get("port")
    if port in (None, ""):
        # One node: the OS picks a port when the store binds it (nothing can race for it). Several
        # nodes must agree on a port: RecBole's default.
        port = 0 if world_size == nproc else 5678
    cd.update(nproc=nproc, world_size=world_size, ip=str(cd.get("ip") or "localhost"), offset=offset)
    store = None
    if offset == 0:  # this node holds global rank 0: host the rendezvous here (see distributed.py)
        store = host_store(int(port), world_size, as_timeout(cd.get("ddp_timeout")))
        port = store.port
        cd["ddp_hosted_store"] = True
    cd["port"] = str(port)
    # Where rank 0 writes checkpoints (the full config cascade decides): a rank killed mid-save
    # leaves its temp file there, which the launcher then removes.
    # (Built as one process: a multi-process Config would try to join the process group.)
    one_process = {k: v for k, v in cd.items() if k not in (*DISTRIBUTED_KEYS, "local_rank", "ddp_hosted_store")}
    checkpoint_dir = build_config(models[0], dataset, config_files, one_process)[0]["checkpoint_dir"]
    with tempfile.TemporaryDirectory(prefix="recbole_letter-results-") as handoff:
        spawn_ranks(
            _spawned_rank,
            (list(models), dataset, config_files, cd, saved, handoff),
            nproc,
            rank_offset=offset,
            world_size=world_size,
            cleanup_dirs=[checkpoint_dir],
        )
        del store  # ranks are gone: stop hosting the rendezvous
        returned = Path(handoff, "rank0.pkl")
        if not returned.is_file():  # this node does not hold global rank 0 (offset > 0)
            return [], None
        results, path = pickle.loads(returned.read_bytes())
    return results, None if path is None else Path(path)


def _spawned_rank(local_rank, models, dataset, config_files, config_dict, saved, handoff) -> None:
    """One process of :func:`run_models_distributed` (module level so ``spawn`` can import it).
    Global rank 0 hands its results to the spawning process through a file in ``handoff``."""
    cd = {**config_dict, "local_rank": local_rank}
    # No destroy_process_group: the process ends with os._exit right after (see distributed._rank_entry).
    results, path = run_models(models, dataset, config_files, cd, saved=saved)
    if _dict_rank(cd) == 0:
        with atomic_open(Path(handoff, "rank0.pkl"), "wb") as handle:
            handle.write(pickle.dumps((results, None if path is None else str(path))))

