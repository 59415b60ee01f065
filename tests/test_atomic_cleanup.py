"""atomic.remove_temp_files_of: a dead writer's temp files go, nobody else's."""
from __future__ import annotations

import os

from recbole_letter.atomic import remove_temp_files_of, temp_path_beside


def test_removes_exactly_the_dead_processes_temp_files(tmp_path):
    (tmp_path / "sub").mkdir()
    dead, alive = 424242, os.getpid()
    checkpoint_tmp = tmp_path / f"TIGER-Dec-01-2026_21-19-39.pth.{dead}.tmp"  # the trainer's checkpoint temp name
    atomic_tmp = tmp_path / "sub" / f".results.json.{dead}.1a2b3c4d.tmp"  # temp_path_beside's form
    mine = temp_path_beside(tmp_path / "x.json")  # a live writer's
    other = tmp_path / f"TIGER.pth.{dead + 1}.tmp"
    finished = tmp_path / f"TIGER-{dead}.pth"  # a complete file whose name happens to hold the number
    for path in (checkpoint_tmp, atomic_tmp, mine, other, finished):
        path.write_text("x")
    removed = remove_temp_files_of([dead], [tmp_path, tmp_path / "missing"])
    assert sorted(removed) == sorted([checkpoint_tmp, atomic_tmp])
    assert not checkpoint_tmp.exists() and not atomic_tmp.exists()
    assert mine.exists() and other.exists() and finished.exists()
    assert str(alive) in mine.name
