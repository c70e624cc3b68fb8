"""Where the job's work runs: in this process (the driver) or on Ray. The one place that decides.

`Executor` picks the mode for a job and makes it current; the engine's functions (`map_units`, `submit`,
`put`, `get`, `wait_first`) run in that mode. On Ray, callable classes run in Ray Data actor pools and
functions as Ray tasks; in the driver, the same code runs here, one call after another, and every
reference is a `Held` value. A job small enough that starting Ray (2.5-6 s on a small machine) costs more
than its work runs wholly in the driver; a cluster address always means Ray. Both modes give the same
output (tests compare them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import pyarrow as pa

from vlmforge.common.storage import read_parquet

# Ray Data logs every dataset execution at INFO; keep the terminal for progress bars and the summary.
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

_IN_DRIVER: ContextVar[bool] = ContextVar("in_driver", default=False)


class Held:
    """A value kept in this process where a Ray object reference would be."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Spilled:
    """A table persisted as a Parquet file (by a persisted exchange), standing where a reference would be."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Spilled, (self.path,))


STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a local Ray sized to this machine.

    Returns True when this call started (and so should stop) Ray.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        # a cluster's workers do not inherit this process's environment: pass the object-store settings on
        store_env = {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}
        if store_env:
            kwargs["runtime_env"] = {"env_vars": store_env}
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return True


class Executor:
    """The job's mode, as a context manager: `in_driver` runs everything in this process; otherwise Ray is
    joined (`address`) or started, and stopped on exit if this executor started it."""

    def __init__(self, in_driver: bool, address: str | None = None, num_cpus: int | None = None) -> None:
        if in_driver and address:
            raise ValueError("a cluster address always means Ray")
        self.in_driver, self.address, self.num_cpus = in_driver, address, num_cpus
        self._started = False

    def __enter__(self) -> Executor:
        if not self.in_driver:
            self._started = start_ray(self.address, self.num_cpus)
        self._token = _IN_DRIVER.set(self.in_driver)
        return self

    def __exit__(self, *exc: object) -> None:
        _IN_DRIVER.reset(self._token)
        if self._started:
            import ray

            ray.shutdown()


@contextmanager
def in_driver(on: bool = True) -> Iterator[None]:
    """Inside this block, the engine's functions run in this process (tests use it to compare modes)."""
    token = _IN_DRIVER.set(on)
    try:
        yield
    finally:
        _IN_DRIVER.reset(token)


def running_in_driver() -> bool:
    return _IN_DRIVER.get()


def cluster_cpus() -> int:
    """CPUs the job can use (at least 1): the cluster's, or this machine's in the driver."""
    if _IN_DRIVER.get():
        return os.cpu_count() or 1
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    if _IN_DRIVER.get():
        return 0.0
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


_REMOTE: dict[tuple[Callable, float], Any] = {}


def submit(fn: Callable[..., Any], *args: Any, num_returns: int = 1, num_cpus: float = 1) -> Any:
    """`fn(*args)` as a Ray task, or now in this process; one reference per return value. Arguments that
    are references are resolved (Ray does this for object refs; `Held` values are unwrapped here)."""
    if _IN_DRIVER.get():
        out = fn(*(resolve(a) if isinstance(a, Held | Spilled) else a for a in args))
        return Held(out) if num_returns == 1 else [Held(o) for o in out]
    import ray

    remote = _REMOTE.get((fn, num_cpus))
    if remote is None:
        remote = _REMOTE[(fn, num_cpus)] = ray.remote(num_cpus=num_cpus)(fn)
    return remote.options(num_returns=num_returns).remote(*args)


def put(value: Any) -> Any:
    """A reference to `value`: in the object store, or held here."""
    if _IN_DRIVER.get():
        return Held(value)
    import ray

    return ray.put(value)


def get(refs: Sequence[Any]) -> list[Any]:
    """The values behind references from `submit` or `put` (or tables persisted by an exchange)."""
    if all(isinstance(r, Held | Spilled) for r in refs):
        return [resolve(r) for r in refs]
    import ray

    return ray.get(list(refs))


def resolve(value: Any) -> Any:
    """The value behind a reference from `put` (a large argument passed once, fetched where it is used);
    any other value as it is."""
    if isinstance(value, Held):
        return value.value
    if isinstance(value, Spilled):
        return read_parquet(value.path)
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


def wait_first(refs: Sequence[Any]) -> Any:
    """The first of `refs` whose value is ready (a held or persisted value always is)."""
    if any(isinstance(r, Held | Spilled) for r in refs):
        return next(r for r in refs if isinstance(r, Held | Spilled))
    import ray

    (done,), _ = ray.wait(list(refs), num_returns=1)
    return done


BLOCKS_PER_WORKER = 4


def map_units(
    units: list[dict], worker: type, kwargs: dict, workers: int, progress: bool, num_gpus: float = 0
) -> list[dict]:
    """Run `worker(**kwargs)` (a callable class over a table of JSON units) over `units`, one unit per call:
    in `workers` Ray Data actors (`num_gpus` each), or one instance in the driver. Results sorted by part."""
    if not units:
        return []
    if _IN_DRIVER.get():
        call = worker(**kwargs)
        rows = [r for u in units for r in call(pa.table({"part": [json.dumps(u)]}))["result"].to_pylist()]
        return sorted(map(json.loads, rows), key=lambda r: r["part"])
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = progress
    # A few blocks per actor, not one per unit: Ray Data keeps state per block in the driver (metadata,
    # stats, the small blocks themselves), which grew the driver with the input's parts.
    blocks = min(len(units), BLOCKS_PER_WORKER * max(1, workers))
    ds = ray.data.from_items([{"part": json.dumps(u)} for u in units], override_num_blocks=blocks)
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
