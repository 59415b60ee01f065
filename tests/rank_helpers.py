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
