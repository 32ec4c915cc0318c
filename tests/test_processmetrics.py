"""The process_* metrics, read from the real /proc and checked against other sources."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shardsync.daemon.metrics import Exposition
from shardsync.daemon.processmetrics import add_process_metrics, read_process


def _vm_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_readings_agree_with_the_kernels_other_reports():
    stats = read_process()
    assert stats is not None
    # RSS: /proc/self/status says the same in KiB (allow for pages touched in between).
    assert abs(stats.resident_bytes - _vm_rss_bytes()) < 4 << 20
    assert stats.virtual_bytes >= stats.resident_bytes > 1 << 20
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert abs(stats.cpu_seconds - (usage.ru_utime + usage.ru_stime)) < 0.5
    assert stats.max_fds == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < stats.open_fds <= stats.max_fds
    assert stats.start_time <= time.time()


def test_open_fds_counts_a_newly_opened_file(tmp_path):
    before = read_process()
    with open(tmp_path / "f", "w"):
        during = read_process()
    assert before and during and during.open_fds == before.open_fds + 1


def test_start_time_is_when_the_process_started():
    started = time.time()
    code = ("import json; from shardsync.daemon.processmetrics import read_process; "
            "print(json.dumps(read_process().start_time))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    # Clock ticks are 10 ms; boot time is whole seconds, so allow a second either side.
    assert started - 1.0 <= json.loads(out) <= time.time() + 1.0


def test_a_command_name_with_spaces_and_parentheses_is_parsed(tmp_path):
    # A process may name itself anything (prctl PR_SET_NAME); the fields after it must
    # still be found. A /proc tree with such a name, the other files copied from the real one.
    proc = tmp_path / "proc"
    (proc / "self" / "fd").mkdir(parents=True)
    for n in range(3):
        (proc / "self" / "fd" / str(n)).touch()
    fields = ["S"] + ["0"] * 49
    fields[11], fields[12] = "250", "150"       # utime, stime: fields 14, 15
    fields[19], fields[20], fields[21] = "1000", "81920", "5"  # starttime, vsize, rss
    (proc / "self" / "stat").write_text(f"42 (a) b) (c ) {' '.join(fields)}\n")
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    (proc / "self" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max open files            unlimited            unlimited            files     \n")
    stats = read_process(str(proc))
    assert stats is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert stats.cpu_seconds == 400 / ticks
    assert stats.start_time == 1700000000 + 1000 / ticks
    assert stats.virtual_bytes == 81920
    assert stats.resident_bytes == 5 * os.sysconf("SC_PAGESIZE")
    assert (stats.open_fds, stats.max_fds) == (3, None)
    m = Exposition()
    add_process_metrics(m, stats)
    names = {f.name for f in text_string_to_metric_families(m.render())}
    assert "process_max_fds" not in names  # unlimited: no number to give
    assert "process_open_fds" in names


def test_no_proc_means_no_process_families():
    assert read_process("/nonexistent-proc") is None
    m = Exposition()
    add_process_metrics(m, None)
    assert m.render() == ""


def test_the_families_parse_as_prometheus_reads_them():
    m = Exposition()
    add_process_metrics(m, read_process())
    families = {f.name: f for f in text_string_to_metric_families(m.render())}
    # prometheus_client's parser names a counter family without its _total suffix.
    assert families["process_cpu_seconds"].type == "counter"
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds"):
        assert families[name].type == "gauge", name
        (sample,) = families[name].samples
        assert sample.value > 0, name
