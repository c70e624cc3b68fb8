"""Faults a curation job must survive: the driver killed mid-run, the output disk full or read-only.

Each case ends with a re-run of the same command whose output equals the undisturbed run's (the `curated`
session fixture: same config, same input), row for row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, curate
from helpers import CURATE, outcomes

from vlmforge.common.errors import JobError

pytestmark = pytest.mark.slow  # kills and starves whole curate runs


def _kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `cmd` in its own session, SIGKILL its whole process group once `ready()` holds."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the job ended (rc {proc.returncode}) before the point it was to be killed at")
            if time.monotonic() > deadline:
                pytest.fail("the job never reached the point it was to be killed at")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _same_as_undisturbed(out: Path, curated: tuple[Path, dict]) -> None:
    kept, rejected = outcomes(out)
    ref_kept, ref_rejected = outcomes(curated[0])
    assert sorted(kept) == sorted(ref_kept)
    assert {k: (r["stage"], r["reason"], r["detail"]) for k, r in rejected.items()} == {
        k: (r["stage"], r["reason"], r["detail"]) for k, r in ref_rejected.items()
    }
    for f in out.rglob("*"):
        assert ".tmp-" not in f.name, f"temporary file left behind: {f}"


def test_driver_killed_in_phase1_and_in_phase2_then_rerun_matches(curated, sample_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [*CURATE, "--input", str(sample_dir), "--output", str(out)]
    parts = len(list(sample_dir.glob("*.tar")))
    assert parts >= 3

    def finished_parts() -> int:
        return len(list((out / "_work/phase1").glob("*.stats.json")))

    # Killed in phase 1, once the first part is done.
    _kill_when(cmd, lambda: finished_parts() >= 1)
    done_before_second_kill = finished_parts()
    assert 1 <= done_before_second_kill < parts or pytest.skip("phase 1 finished before the kill landed")
    # Killed again in phase 2, once phase 1 is done and before phase 2 is.
    _kill_when(cmd, lambda: finished_parts() == parts)
    assert not (out / "manifest.json").exists()

    manifest = curate(sample_dir, out)
    assert manifest["phases"]["phase1"]["reused"] == parts  # nothing of phase 1 recomputed
    assert manifest["totals"] == curated[1]["totals"]
    _same_as_undisturbed(out, curated)


def _mount_tmpfs(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_read_only_output_is_a_clear_error(sample_dir, tmp_path, ray_local):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "ro", "size=1m")
    try:
        with pytest.raises(JobError, match="read-only file system"):
            curate(sample_dir, mnt / "out")
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # a failed worker may still hold a file


def test_disk_full_mid_write_then_rerun_after_freeing_space(curated, sample_dir, tmp_path):
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "size=3m")  # a phase-1 part of the sample data is about 5 MB
    try:
        out = mnt / "out"
        # As a user runs it: the CLI, with its own Ray.
        r = subprocess.run([*CURATE, "--input", str(sample_dir), "--output", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 2, r.stderr[-3000:]
        error = r.stderr.strip().splitlines()[-1]
        assert "disk full" in error and "run the same command again" in error, error
        for f in out.rglob("*.parquet"):
            pq.ParquetFile(f)  # every file under a final name is whole
        assert not [f for f in out.rglob("*") if ".tmp-" in f.name]
        subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
        curate(sample_dir, out)
        _same_as_undisturbed(out, curated)
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # a failed worker may still hold a file
