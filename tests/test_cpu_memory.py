"""cpu_memory: with reuse on, a repeated large allocation reuses pages instead of faulting them in."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from recbole_letter import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh interpreter: the allocator setting is process-wide, and page-fault counts need a
# process whose heap no earlier test has shaped.
_PROBE = textwrap.dedent(
    """
    import resource, sys
    import torch
    from recbole_letter.cpu_memory import reuse_freed_memory

    torch.set_num_threads(1)

    def faults_of_last_round():  # the first rounds may grow the heap before a freed block is reusable
        for round_ in range(4):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            x = torch.ones(16 * 1024 * 1024)  # 64 MiB: above glibc's largest mmap threshold
            del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    applied = reuse_freed_memory(sys.argv[1] == "on")
    print(applied, faults_of_last_round())
    """
)


def _last_round_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere reuse_freed_memory reports False")
def test_reuse_avoids_page_faults_on_the_next_large_allocation():
    applied_on, faults_on = _last_round_faults("on")
    applied_off, faults_off = _last_round_faults("off")
    assert applied_on == "True" and applied_off == "True"
    pages = 64 * 1024 * 1024 // 4096
    assert faults_off > pages // 2, "glibc's default should map (and fault in) a fresh 64 MiB block"
    assert faults_on < pages // 20, f"reuse on still faulted {faults_on} pages for a reused 64 MiB block"


def test_config_key_switches_it_on(monkeypatch, tiny_seq_dataset, fast_config):
    calls = []
    monkeypatch.setattr("recbole_letter.config.reuse_freed_memory", lambda enabled: calls.append(enabled))
    from recbole_letter.quick_start import build_config

    params = {**fast_config, "data_path": str(tiny_seq_dataset()), "train_neg_sample_args": None}
    for enabled in (True, False):
        build_config("SASRec", "tiny", config_dict={**params, "cpu_reuse_freed_memory": enabled})
    assert calls == [True]


def test_off_glibc_it_reports_not_applied(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.reuse_freed_memory(True) is False
