"""Process groups that end instead of hanging: bounded waits, race-free ports, dying ranks stop the run.

What can hang a data-parallel run, and what this module does about it:

* **A port taken between choosing and binding it.** Picking a "free" port and handing it to the
  ranks races with every other process on the host (another run, another test): a rank can then
  meet a *foreign* rendezvous and wait forever. When this node spawns global rank 0, the spawning
  process hosts the rendezvous store itself (:func:`host_store`), on the user's ``port`` or, when
  none is given, on a port the OS assigns at bind time; the ranks connect to it as clients. The
  port is held from the moment it is chosen, so nothing can race for it.
* **A peer that never arrives or never answers.** Every rendezvous and collective gets a timeout
  (``ddp_timeout`` seconds), so a lost rank turns into an error on the others instead of a hang.
* **A rank that dies.** :func:`spawn_ranks` stops the others at once and raises
  :class:`RankFailedError` naming the rank and how it died. Ranks turn the SIGTERM they get then
  into ``SystemExit``, so the temp-file cleanup of atomic writes (checkpoints, results, stage
  cache entries) runs and nothing half-written is left.
* **Rank 0 busy for a long time while the others wait** (fitting the tokenizer before training):
  that wait uses its own, longer bound (``ddp_stage_timeout``) instead of the collective timeout.
* **A rank that finished but never exits.** Freeing the last reference to a gloo group right
  after a collective can deadlock in torch 2.13 (see :func:`_rank_entry`); ranks never destroy
  their group and end with :func:`exit_process` (``os._exit`` after flushing).

Ground layer: imports only torch and the standard library.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from recbole_letter.atomic import remove_temp_files_of


class RankFailedError(RuntimeError):
    """A rank of a data-parallel run exited with an error, a non-zero code or a signal."""


class RankTimeoutError(RuntimeError):
    """The ranks did not finish within the caller's deadline (tests: a hang becomes a failure)."""


def distributed_backend(use_cuda: bool) -> str:
    """NCCL for GPU ranks (what RecBole hard-codes), gloo for CPU ranks (NCCL has no CPU support)."""
    return "nccl" if use_cuda else "gloo"


def launched_by_torchrun() -> bool:
    """torchrun / torch.distributed.run exports these for every process it starts."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def as_timeout(seconds: Any) -> _dt.timedelta | None:
    """``ddp_timeout``-style seconds as a timedelta; None/empty keeps torch's default (30 min)."""
    if seconds in (None, ""):
        return None
    value = float(seconds)
    if value <= 0:
        raise ValueError(f"a distributed timeout must be > 0 seconds, got {seconds!r}. Fix: e.g. --ddp_timeout=1800.")
    return _dt.timedelta(seconds=value)


def host_store(port: int, world_size: int, timeout: _dt.timedelta | None = None) -> Any:
    """Host the rendezvous store in this (spawning) process; ``port`` 0 = a port the OS picks.

    Returns the ``TCPStore`` (keep a reference while the ranks run); its ``.port`` is the port
    the ranks must connect to. A busy ``port`` fails here, before any rank starts.
    """
    from torch.distributed import TCPStore

    kwargs = {"timeout": timeout} if timeout is not None else {}
    try:
        return TCPStore("0.0.0.0", int(port), world_size, is_master=True, wait_for_workers=False, **kwargs)
    except (RuntimeError, OSError) as err:
        raise RuntimeError(
            f"cannot host the rendezvous on port {port}: {err}. Fix: pass a free --port, or leave --port out "
            "on a single node (the OS then picks one)."
        ) from err


def init_process_group(
    backend: str,
    *,
    rank: int,
    world_size: int,
    ip: str,
    port: int | str,
    hosted_store: bool,
    timeout: _dt.timedelta | None,
) -> None:
    """Join the default process group: env:// under torchrun, the spawner's store, or tcp://ip:port."""
    import torch.distributed as dist

    kwargs = {"timeout": timeout} if timeout is not None else {}
    if launched_by_torchrun():
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    elif hosted_store:
        store = dist.TCPStore(str(ip), int(port), world_size, is_master=False, **kwargs)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, **kwargs)
    else:
        dist.init_process_group(
            backend=backend, init_method=f"tcp://{ip}:{port}", rank=rank, world_size=world_size, **kwargs
        )


def wait_for_rank_zero(done_by_rank_zero: Callable[[], Any], stage_timeout: _dt.timedelta | None) -> Any:
    """Run ``done_by_rank_zero`` on global rank 0 first; the other ranks wait, then run it too.

    Used where rank 0 fills a cache the others then read (the stages before training). The wait
    is a gloo barrier on its own group with ``stage_timeout``, so a long fit on rank 0 does not
    trip the (shorter) collective timeout, and rank 0 dying ends the wait with an error.
    """
    import torch.distributed as dist

    kwargs = {"timeout": stage_timeout} if stage_timeout is not None else {}
    # Not destroyed afterwards: destroying a gloo group can deadlock (see _rank_entry); it lives
    # as long as the default group, and ranks end with exit_process.
    group = dist.new_group(backend="gloo", **kwargs)
    if dist.get_rank() != 0:
        dist.barrier(group=group)
    result = done_by_rank_zero()
    if dist.get_rank() == 0:
        dist.barrier(group=group)
    return result


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _rank_entry(local_rank: int, fn: Callable[..., None], args: Sequence[Any], error_dir: str) -> None:
    """What each spawned process runs.

    SIGTERM (sent when another rank failed) becomes ``SystemExit``, so ``finally``/``except
    BaseException`` blocks remove their temp files. The process then ends with ``os._exit``
    instead of a normal interpreter exit, and ``fn`` must not destroy its process group: when
    the last reference to a gloo group goes (``destroy_process_group`` followed by DDP's reducer
    being collected, or interpreter teardown), the group's destructor joins its worker threads
    while holding the GIL, and a worker still releasing a finished collective waits for that
    GIL: a deadlock (seen with torch 2.13 as a rank that finished its work and never exited,
    more often on a loaded machine). Keeping the group registered until ``os._exit`` means its
    destructor never runs. Output is flushed first; a failure's traceback goes to stderr and to
    ``error_dir`` for :func:`spawn_ranks`' message.
    """
    import sys
    import traceback

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    code = 0
    try:
        fn(local_rank, *args)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        code = 1
        text = traceback.format_exc()
        sys.stderr.write(f"rank process {local_rank} failed:\n{text}")
        try:
            Path(error_dir, f"rank{local_rank}.txt").write_text(text)
        except OSError:
            pass
    finally:
        exit_process(code)


def exit_process(code: int) -> None:
    """Flush logs and output, then end this process at once, skipping interpreter teardown.

    For a process that has joined a process group and is done: see :func:`_rank_entry` for the
    teardown deadlock this avoids. Used by spawned ranks and by the CLI under torchrun.
    """
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def spawn_ranks(
    fn: Callable[..., None],
    args: Sequence[Any],
    nprocs: int,
    *,
    rank_offset: int = 0,
    world_size: int | None = None,
    deadline_seconds: float | None = None,
    grace_seconds: float = 10.0,
    cleanup_dirs: Sequence[str | Path] = (),
) -> None:
    """``torch.multiprocessing.spawn`` that never waits forever and says which rank failed.

    ``fn(local_rank, *args)`` (module level: ``spawn`` imports it) runs in ``nprocs`` fresh
    processes. When one fails, the others get ``grace_seconds`` to end on their own (their
    collectives fail once a peer is gone), then SIGTERM, then SIGKILL; :class:`RankFailedError`
    names the global rank and the cause, with its traceback when it raised. ``deadline_seconds``
    bounds the whole run (tests); past it every rank is killed and :class:`RankTimeoutError` raised.
    Once the ranks are down after a failure, temp files they left under ``cleanup_dirs`` (a rank
    killed in the middle of an atomic write cannot remove its own) are deleted.
    """
    import tempfile

    import torch.multiprocessing as mp

    world = world_size or nprocs
    with tempfile.TemporaryDirectory(prefix="recbole_letter-ranks-") as error_dir:
        context = mp.start_processes(
            _rank_entry, args=(fn, tuple(args), error_dir), nprocs=nprocs, join=False, start_method="spawn"
        )
        end = None if deadline_seconds is None else time.monotonic() + deadline_seconds
        try:
            while True:
                step = 5.0 if end is None else max(0.0, min(5.0, end - time.monotonic()))
                if context.join(timeout=step, grace_period=grace_seconds):
                    return
                if end is not None and time.monotonic() >= end:
                    _kill_all(context)
                    raise RankTimeoutError(
                        f"{nprocs} ranks did not finish within {deadline_seconds:.0f} s; all were killed."
                    )
        except mp.ProcessExitedException as err:
            rank = rank_offset + err.error_index
            if err.signal_name:
                how = f"was killed by {err.signal_name}"
            else:
                how = f"exited with code {err.exit_code}"
            remove_temp_files_of([process.pid for process in context.processes], cleanup_dirs)
            trace_file = Path(error_dir, f"rank{err.error_index}.txt")
            trace = trace_file.read_text() if trace_file.is_file() else ""
            last = trace.strip().splitlines()[-1] if trace.strip() else ""
            raise RankFailedError(
                f"rank {rank} of {world} (pid {err.error_pid}) {how}{': ' + last if last else ''}. The other ranks "
                "were stopped; nothing unfinished was written (checkpoints and results are written atomically, "
                "by rank 0 only). Fix: see that rank's output"
                + (f":\n{trace}" if trace else " above (out of memory is a common cause of a killed rank).")
            ) from None
        except BaseException:  # Ctrl-C or an error in this process: take the ranks down with us
            _kill_all(context)
            remove_temp_files_of([process.pid for process in context.processes], cleanup_dirs)
            raise


def _kill_all(context: Any) -> None:
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 10
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
