"""Tiny rank functions for spawn_ranks tests: stdlib only, so a spawned process imports them fast."""
from __future__ import annotations

import time
from pathlib import Path


def sleep_or_raise(local_rank: int, raising_rank: int | None, marker_dir: str) -> None:
    """Every rank writes a marker, then ``raising_rank`` raises and the others sleep (as a rank
    blocked in a collective would wait for a dead peer)."""
    Path(marker_dir, f"started{local_rank}").write_text("")
    if local_rank == raising_rank:
        raise ValueError(f"boom on rank {local_rank}")
    time.sleep(3600)


def write_slowly_or_raise(local_rank: int, raising_rank: int, out_dir: str) -> None:
    """Rank ``raising_rank`` raises once the other rank is in the middle of an atomic write (which
    then never finishes on its own): what is left of that write after the run is stopped?"""
    from recbole_letter.atomic import atomic_open

    out = Path(out_dir)
    if local_rank == raising_rank:
        deadline = time.monotonic() + 120
        while not (out / "writing").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("peer failed mid-write")
    with atomic_open(out / "results.json") as handle:
        handle.write('{"half": ')
        handle.flush()
        (out / "writing").write_text("")
        time.sleep(3600)
        handle.write("written}")
