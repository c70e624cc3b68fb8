"""A real two-node Ray cluster that loses a worker node mid-job: the curation finishes, output unchanged.

Both nodes run on this machine (`ray start --block` on loopback, one CPU each, token authentication on with
a random token in RAY_AUTH_TOKEN for the nodes and the driver). Each `ray start` runs in its own session,
so its process group holds that node's processes and the test stops exactly what it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT
from helpers import CURATE, outcomes

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT, JOB_TIMEOUT = 120, 400

pytestmark = [
    pytest.mark.slow,  # a two-node Ray cluster
    pytest.mark.skipif(not RAY.exists(), reason=f"no `ray` command next to {sys.executable}"),
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Node:
    """One `ray start --block` process and the Ray processes under it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        ports = _free_ports(6)
        cmd = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--object-store-memory", str(100 << 20), "--disable-usage-stats",
               "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
               "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
               "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
               "--min-worker-port", "0", "--max-worker-port", "0", *args]  # fmt: skip
        self.name, self.log = name, logs / f"{name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self.seen: set[psutil.Process] = set()

    def processes(self) -> list[psutil.Process]:
        """The node's live processes below `ray start` (remembered, so a stop finds them all)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        self.seen.update(kids)
        return kids

    def wait_started(self) -> None:
        """Wait for `ray start` to report the node up; skip the test when Ray cannot start here."""
        deadline = time.monotonic() + START_TIMEOUT
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"`ray start` ({self.name}) cannot run here: {self.log.read_text()[-1500:]}")
            time.sleep(0.2)
        self.processes()

    def stop(self) -> None:
        """SIGKILL the node's process group and any remembered process that left it."""
        self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in self.seen:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=30)


@pytest.fixture
def cluster() -> Iterator[tuple[str, Node, dict[str, str]]]:
    """A head and a worker node, one CPU each; yields (address, worker node, env for a driver)."""
    temp = Path(tempfile.mkdtemp(prefix="vlmray", dir="/tmp"))  # short: Ray's socket paths have a limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    port, client_port = _free_ports(2)
    head_args = ["--head", "--port", str(port), "--include-dashboard", "false",
                 "--ray-client-server-port", str(client_port), "--temp-dir", str(temp / "ray")]  # fmt: skip
    nodes = [Node("head", head_args, env, temp)]
    try:
        nodes[0].wait_started()
        nodes.append(Node("worker", ["--address", f"127.0.0.1:{port}"], env, temp))
        nodes[1].wait_started()
        yield f"127.0.0.1:{port}", nodes[1], env
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _alive(procs: list[psutil.Process]) -> list[tuple[psutil.Process, str]]:
    """(process, command line) of the processes still running."""
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append((p, " ".join(p.cmdline())))
        except psutil.Error:
            pass
    return alive


def _run_and_kill_worker(cluster, sample_dir, out: Path, log: Path, ready) -> dict:
    """Run the job on the cluster, SIGKILL the worker node's raylet once `ready()`, and wait for the job;
    returns `ready`'s view at the kill (what had finished) and the manifest."""
    address, worker, env = cluster
    cmd = [*CURATE, "--input", str(sample_dir), "--output", str(out), "--address", address]
    with log.open("w") as f:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (state := ready(worker)):
            assert job.poll() is None, "the job ended before the fault: " + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job never reached the fault point"
            time.sleep(0.02)
        raylet = [p for p, line in _alive(worker.processes()) if line.split(" ")[0].endswith("/raylet")]
        assert len(raylet) == 1, raylet
        raylet[0].kill()
        assert worker.proc.wait(timeout=60) != 0  # `ray start --block` saw its raylet die, took the node down
        rc = job.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert rc == 0, log.read_text()[-4000:]
    return {"at_kill": state, "manifest": json.loads((out / "manifest.json").read_text())}


def _assert_same_output(out: Path, manifest: dict, curated) -> None:
    assert manifest["totals"] == curated[1]["totals"]
    kept, rejected = outcomes(out)
    ref_kept, ref_rejected = outcomes(curated[0])
    assert len(kept) == len(set(kept)) and sorted(kept) == sorted(ref_kept)  # no duplicates, nothing lost
    assert len(rejected) == manifest["totals"]["rejected_rows"]  # one rejected row per id
    assert {k: (r["stage"], r["reason"], r["detail"]) for k, r in rejected.items()} == {
        k: (r["stage"], r["reason"], r["detail"]) for k, r in ref_rejected.items()
    }
    # Only under _work may the killed tasks' half-written temporary files remain (hidden, never renamed).
    assert not [f for f in out.rglob("*") if ".tmp-" in f.name and "_work" not in f.relative_to(out).parts]


def test_worker_node_lost_mid_phase1_job_completes_unchanged(cluster, curated, sample_dir, tmp_path):
    """SIGKILL the worker node's raylet while its phase-1 actor holds a part: same output as undisturbed."""
    out = tmp_path / "out"
    parts = len(list(sample_dir.glob("*.tar")))

    def done() -> int:
        return len(list((out / "_work/phase1").glob("*.stats.json")))

    def ready(worker) -> int:
        on_worker = any("Phase1Worker" in line for _, line in _alive(worker.processes()))
        return done() if done() >= 1 and on_worker else 0

    run = _run_and_kill_worker(cluster, sample_dir, out, tmp_path / "driver.log", ready)
    assert run["at_kill"] < parts or pytest.skip("phase 1 finished before the fault landed")
    assert run["manifest"]["phases"]["phase1"]["reused"] == 0  # one run, no resume: Ray recovered inside
    _assert_same_output(out, run["manifest"], curated)


def test_worker_node_lost_during_phase2_exchanges_completes_unchanged(cluster, curated, sample_dir, tmp_path):
    """SIGKILL the worker node while the global phases' persisted exchanges run: their tasks are retried on
    the head node and the output equals the undisturbed run's."""
    out = tmp_path / "out"

    def exchanges() -> list[Path]:
        return [f for f in (out / "_work/exchange").rglob("*") if f.suffix in (".parquet", ".json")]

    def ready(worker) -> tuple[int, bool] | None:
        files = exchanges()
        finished = any((out / "_work/finalize").rglob("*.json"))
        return (len(files), finished) if files else None

    run = _run_and_kill_worker(cluster, sample_dir, out, tmp_path / "driver.log", ready)
    assert not run["at_kill"][1] or pytest.skip("the job reached finalize before the fault landed")
    assert run["manifest"]["phases"]["phase1"]["reused"] == 0
    _assert_same_output(out, run["manifest"], curated)
    assert not (out / "_work/exchange").exists() or not exchanges()  # finished exchanges leave no files
