"""Curation from and to an object store: a local S3-compatible server (moto's, on 127.0.0.1) holds the
input and receives the output; the result equals the local run's, and bad stores fail before any work
with one line naming the URL and the cause."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import CURATE, ROOT

from vlmforge.common.errors import InputError, JobError
from vlmforge.common.storage import ObjectPath, filesystem, location
from vlmforge.pipeline.config import load_config
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.report.html import Options, write_report
from vlmforge.pipeline.report.stats import compute_stats
from vlmforge.pipeline.sample_data import write_sample_data

N = 400
BUCKET = "vlmforge-test"


@pytest.fixture(scope="module")
def s3() -> str:
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables point at it while tests run."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    filesystem.cache_clear()
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket=BUCKET
    )
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    filesystem.cache_clear()


@pytest.fixture(scope="module")
def raw(tmp_path_factory, s3) -> tuple[Path, str]:
    """Sample shards on local disk and the same files uploaded under s3://BUCKET/raw."""
    local = tmp_path_factory.mktemp("raw")
    write_sample_data(local, n=N, seed=5)
    for f in sorted(local.rglob("*")):
        if f.is_file():
            (ObjectPath(f"s3://{BUCKET}/raw") / str(f.relative_to(local))).upload(f)
    return local, f"s3://{BUCKET}/raw"


def curate(input_path: str, output: str, *overrides: str) -> dict:
    cfg = load_config(
        ROOT / "configs/curate/default.yaml",
        [f"input.path={input_path}", f"output.path={output}", *overrides],
    )
    return run_curation(cfg, progress=False, log=lambda _: None)


def rows(output: str, manifest: dict, kind: str) -> pa.Table:
    root = location(output)
    tables = []
    for name in manifest["files"][kind]:
        loc = root / name
        tables.append(
            pq.read_table(loc.key, filesystem=loc.fs) if isinstance(loc, ObjectPath) else pq.read_table(loc)
        )
    return pa.concat_tables(tables).sort_by("id")


def test_s3_to_s3_equals_the_local_run(tmp_path, raw):
    local_in, s3_in = raw
    local = curate(str(local_in), str(tmp_path / "out"))
    remote = curate(s3_in, f"s3://{BUCKET}/out")
    assert remote["totals"] == local["totals"]
    assert remote["totals"]["rejected_rows"] > 0 and remote["totals"]["output_rows"] > 0
    assert [s["reasons"] for s in remote["stages"]] == [s["reasons"] for s in local["stages"]]
    for kind in ("data", "rejected"):
        assert rows(f"s3://{BUCKET}/out", remote, kind).equals(rows(str(tmp_path / "out"), local, kind)), kind
    # nothing of the run stayed on local disk, and the store holds no partial or temporary objects
    listed = filesystem("s3").get_file_info(pafs.FileSelector(f"{BUCKET}/out", recursive=True))
    names = [i.path for i in listed if i.type == pafs.FileType.File]
    assert f"{BUCKET}/out/manifest.json" in names
    assert not [n for n in names if ".tmp-" in n or n.endswith(".upload")]
    # a rerun finds the finished output in the store
    assert curate(s3_in, f"s3://{BUCKET}/out")["already_complete"]
    # `vlmforge stats` and the HTML report read it there
    remote_stats = compute_stats(f"s3://{BUCKET}/out")
    local_stats = compute_stats(tmp_path / "out")
    assert {**remote_stats, "output": "", "phases": {}} == {**local_stats, "output": "", "phases": {}}
    write_report([f"s3://{BUCKET}/out"], tmp_path / "report.html", Options(kept_examples=8))
    assert remote["totals"]["output_rows"] and "<img" in (tmp_path / "report.html").read_text()


def test_local_input_to_s3_output_and_back(tmp_path, raw):
    local_in, _ = raw
    m = curate(str(local_in), f"s3://{BUCKET}/from-local", "output.cache=" + str(tmp_path / "cache"))
    assert m["totals"]["input_rows"] == N
    assert any((tmp_path / "cache").rglob("*.parquet")), "the phase cache goes where output.cache says"


@pytest.mark.parametrize(
    ("input_path", "cause"),
    [
        (f"s3://no-such-bucket-{os.getpid()}/raw", "does not exist"),
        (f"s3://{BUCKET}/empty-prefix", "no objects under this prefix"),
    ],
)
def test_bad_input_fails_before_work_naming_url_and_cause(tmp_path, s3, input_path, cause):
    with pytest.raises(InputError) as err:
        curate(input_path, str(tmp_path / "out"))
    message = str(err.value)
    assert input_path.split("/raw")[0].split("/empty")[0] in message and cause in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


def test_missing_output_bucket_fails_naming_it(tmp_path, raw):
    with pytest.raises(JobError, match="no-such-out-bucket.*does not exist"):
        curate(str(raw[0]), "s3://no-such-out-bucket/out")


def test_wrong_credentials_fail_before_work_naming_them(tmp_path, raw, monkeypatch):
    """The server checks keys (moto's IAM authentication, on for this test): ours are unknown to it."""
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    filesystem.cache_clear()
    try:
        denied = r"s3://vlmforge-test/raw: access denied: check AWS_ACCESS_KEY_ID"
        with pytest.raises(InputError, match=denied):
            curate(f"s3://{BUCKET}/raw", str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    finally:
        monkeypatch.undo()
        filesystem.cache_clear()


def test_unreachable_endpoint_fails_fast_naming_it(tmp_path, raw, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    filesystem.cache_clear()
    try:
        t0 = time.perf_counter()
        with pytest.raises(
            InputError, match=r"s3://vlmforge-test/raw: cannot connect to the endpoint http://127\.0\.0\.1:9"
        ):
            curate(f"s3://{BUCKET}/raw", str(tmp_path / "out"))
        assert time.perf_counter() - t0 < 60
    finally:
        monkeypatch.undo()
        filesystem.cache_clear()


@pytest.mark.slow
def test_s3_to_s3_on_ray_workers_equals_the_local_run(tmp_path, raw):
    """Ray workers read the shards and write the phase cache and output in the store themselves. The job
    runs as `vlmforge curate` in its own process, so its local Ray starts with the AWS variables (a Ray
    this test process started earlier would not have them)."""
    local_in, s3_in = raw
    local = curate(str(local_in), str(tmp_path / "out"), "ray.in_process_rows=0")
    cmd = [*CURATE, "--input", s3_in, "--output", f"s3://{BUCKET}/ray-out", "--set", "ray.in_process_rows=0"]
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    remote = json.loads(ObjectPath(f"s3://{BUCKET}/ray-out/manifest.json").read_text())
    assert not remote["in_driver"]
    for kind in ("data", "rejected"):
        assert rows(f"s3://{BUCKET}/ray-out", remote, kind).equals(rows(str(tmp_path / "out"), local, kind))


class FlakyProxy:
    """A TCP proxy in front of the S3 server that can cut its connections and refuse new ones."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.down = False
        self.refuse_next = 0
        self.refused = 0
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.down or self.refuse_next > 0
                if refuse:
                    self.refuse_next = max(0, self.refuse_next - 1)
                    self.refused += 1
            if refuse:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, down: bool = False, refuse_next: int = 0) -> None:
        """Reset every open connection; then refuse all new ones (`down`) or the next `refuse_next`."""
        with self.lock:
            self.down, self.refuse_next = down, refuse_next
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open = []

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def flaky(s3, monkeypatch) -> FlakyProxy:
    proxy = FlakyProxy(s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    filesystem.cache_clear()
    yield proxy
    monkeypatch.undo()
    filesystem.cache_clear()
    proxy.close()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, s3) -> str:
    """Four input shards in the store (so a fault can land between parts)."""
    local = tmp_path_factory.mktemp("sharded")
    write_sample_data(local, n=N, seed=6, shard_size=N // 4)
    for f in sorted(local.glob("*.tar")):
        (ObjectPath(f"s3://{BUCKET}/sharded") / f.name).upload(f)
    return f"s3://{BUCKET}/sharded"


def _after_first_part(out: Path, action) -> threading.Thread:
    def watch() -> None:
        while not list((out / "_work/phase1").glob("*.stats.json")):
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_store_outage_fails_naming_the_object_and_a_rerun_resumes(tmp_path, sharded, flaky):
    out = tmp_path / "out"
    _after_first_part(out, lambda: flaky.cut(down=True))
    with pytest.raises(JobError) as err:
        curate(sharded, str(out))
    message = str(err.value)
    assert "object storage failed" in message and BUCKET in message
    assert "run the same command again" in message
    assert "\n" not in message and flaky.refused > 0
    flaky.cut(down=False)
    resumed = curate(sharded, str(out))
    assert resumed["phases"]["phase1"]["reused"] >= 1  # the parts finished before the outage
    reference = curate(sharded, str(tmp_path / "reference"))
    for kind in ("data", "rejected"):
        assert rows(str(out), resumed, kind).equals(rows(str(tmp_path / "reference"), reference, kind))


def test_a_blip_shorter_than_the_retries_costs_nothing(tmp_path, sharded, flaky):
    out = tmp_path / "out"
    _after_first_part(out, lambda: flaky.cut(refuse_next=2))
    m = curate(sharded, str(out))
    assert flaky.refused == 2  # two refused connections, retried by the client
    assert m["totals"]["input_rows"] == N
