"""Starting or joining Ray, and running a callable class over work units with Ray Data."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

# Ray Data logs every dataset execution at INFO; keep the terminal for progress bars and the summary.
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a local Ray sized to this machine.

    Returns True when this call started (and so should stop) Ray.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return True


def cluster_cpus() -> int:
    """CPUs the cluster offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def map_units(
    units: list[dict],
    worker: type,
    kwargs: dict,
    workers: int,
    progress: bool,
    num_gpus: float = 0,
    in_process: bool = False,
) -> list[dict]:
    """Run `worker(**kwargs)` actors (`num_gpus` each) over `units`, one unit per call; return their results
    sorted by part. `in_process`: one worker in this process instead (small inputs: no actor start-up)."""
    from ray.data import DataContext

    if not units:
        return []
    if in_process:
        call = worker(**kwargs)
        rows = [r for u in units for r in call(pa.table({"part": [json.dumps(u)]}))["result"].to_pylist()]
        return sorted(map(json.loads, rows), key=lambda r: r["part"])
    DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items([{"part": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(
        worker,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(units)))),
        num_cpus=1,
        num_gpus=num_gpus or None,
    )
    return sorted((json.loads(r["result"]) for r in ds.iter_rows()), key=lambda r: r["part"])
