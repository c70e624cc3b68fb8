"""Persisted exchanges: map and reduce outputs on disk, the driver holding only file names, and a rerun
after a killed driver taking finished exchanges from their markers, with the same result."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vlmforge.pipeline.dedup.components import components_distributed, components_local, to_refs
from vlmforge.pipeline.engine import shuffle as shuffle_module
from vlmforge.pipeline.engine.executor import Spilled, get, in_driver
from vlmforge.pipeline.engine.shuffle import persisted, resuming


def edges(n: int = 400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, 300), rng.integers(0, n, 300)
    keep = a != b
    hi, lo = np.maximum(a, b)[keep], np.minimum(a, b)[keep]
    return pa.table({"hi": pa.array(hi, pa.int64()), "lo": pa.array(lo, pa.int64())})


def labels(table: pa.Table) -> dict[int, int]:
    """Connected components on the engine (several exchanges and maps per round)."""
    refs, _ = components_distributed(to_refs(table, 4), 3)
    out = pa.concat_tables(get(refs))
    return dict(zip(out["node"].to_pylist(), out["comp"].to_pylist(), strict=True))


def expected(table: pa.Table) -> dict[int, int]:
    nodes, comp = components_local(table["hi"].to_numpy(), table["lo"].to_numpy())
    return dict(zip(nodes.tolist(), comp.tolist(), strict=True))


def test_persisted_exchanges_give_the_in_memory_result_and_leave_no_files(ray_local, tmp_path):
    table = edges()
    with persisted(tmp_path / "x"):
        got = labels(table)
        outputs = list((tmp_path / "x").glob("*/out-*.parquet"))
        assert outputs and not list((tmp_path / "x").glob("*/map-*.parquet"))  # consumed map files go
    assert got == expected(table)
    with in_driver():
        assert labels(table) == got
    assert not (tmp_path / "x").exists()  # removed once the block ends


def test_rerun_after_a_killed_driver_reuses_finished_exchanges(ray_local, tmp_path, monkeypatch):
    table, finish = edges(seed=1), shuffle_module._finish
    calls = []

    def dies_at_the_third(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the driver is killed during the third exchange
        calls.append(args[0])
        return finish(*args)

    monkeypatch.setattr(shuffle_module, "_finish", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt), persisted(tmp_path / "r"):
        labels(table)
    assert sorted(p.parent.name for p in (tmp_path / "r").glob("*/_done.json")) == ["0000", "0001"]

    ran = []
    monkeypatch.setattr(shuffle_module, "_finish", lambda *args: ran.append(args[0]) or finish(*args))
    with persisted(tmp_path / "r"):
        assert resuming()
        got = labels(table)
    assert got == expected(table)
    assert ran and all(d.name not in ("0000", "0001") for d in ran)  # the finished two were not run again


def test_a_persisted_exchange_hands_back_file_references(ray_local, tmp_path):
    with persisted(tmp_path / "f"):
        refs = to_refs(edges(), 4)
        out, _ = shuffle_module.exchange(refs, "hi", 3, shuffle_module.identity)
        assert all(isinstance(r, Spilled) for r in out) and len(out) == 3
        assert sum(t.num_rows for t in get(out)) == sum(t.num_rows for t in get(refs))
        assert len(list((tmp_path / "f" / "0000").glob("out-*.parquet"))) == 3
