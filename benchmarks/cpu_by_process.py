"""Run a command and report the CPU seconds every process used while it ran, by command line.

    .venv/bin/python benchmarks/cpu_by_process.py .venv/bin/vlmforge curate configs/curate/default.yaml \
        --input /tmp/vlmforge-bench-peers/sample-100000 --output /tmp/vlmforge-bench-peers/stages-100000 \
        --no-progress --overwrite

Every process in /proc (the command's own children, Ray's actors and daemons, anything else on the machine)
is sampled every half second; a process's CPU is its last sample less its first (user + system time), so what
a process spends after its last sample (up to half a second) is missed, and so is a process that lives
shorter than that. Linux only. Used to see how a curation run's
CPU splits between Ray's workers (e.g. `ray::MapWorker(MapBatches(AnnotateWorker))`, the OCR actors), the
driver and Ray's own processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def sample(seen: dict[tuple[str, str], list]) -> None:
    """Record each live process's CPU seconds under (pid, start time): [first, last, command line]."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # the process ended between listing and reading
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        record = seen.setdefault((entry.name, fields[19]), [cpu, cpu, command])
        record[1] = cpu
        record[2] = command or record[2]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    seen: dict[tuple[str, str], list] = {}
    sample(seen)
    start = time.monotonic()
    process = subprocess.Popen(sys.argv[1:])
    while process.poll() is None:
        sample(seen)
        time.sleep(0.5)
    sample(seen)
    by_command: Counter = Counter()
    for first, last, command in seen.values():
        if last - first > 0.05:
            by_command[command[:100]] += last - first
    print(f"wall {time.monotonic() - start:.1f} s, exit code {process.returncode}; CPU s by process:")
    for command, cpu in by_command.most_common(15):
        print(f"{cpu:8.1f}  {command}")


if __name__ == "__main__":
    main()
