"""The detector's compiled labelling must give scipy.ndimage's components, numbered alike, with their boxes
and pixel counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vlmforge.pipeline.enrich import blob_label
from vlmforge.pipeline.enrich.blob_label import components


def _reference(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    stats = [(xs.start, ys.start, xs.stop, ys.stop, int((labels[ys, xs] == i).sum()))
             for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1)]
    return labels, np.array(stats, np.int64).reshape(n, 5)


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    random = [rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < p
              for p in (0.05, 0.3, 0.5, 0.6, 0.9) for _ in range(40)]
    spiral = np.zeros((21, 21), bool)  # one component reached from many sides: labels joined late
    for k in range(0, 10, 2):
        spiral[k, k : 21 - k] = spiral[k : 21 - k, 20 - k] = spiral[20 - k, k : 21 - k] = True
        spiral[k + 2 : 21 - k, k] = True
    comb = np.zeros((9, 12), bool)  # teeth first seen apart, joined by the bottom row (a later root merges)
    comb[:, ::3] = True
    comb[-1] = True
    diagonals = np.eye(9, dtype=bool) | np.eye(9, dtype=bool)[::-1]
    edges = [np.zeros((4, 4), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.ones((1, 9), bool),
             np.eye(6, dtype=bool)[::-1]]
    return [*random, spiral, comb, diagonals, ~comb, *edges]


@pytest.mark.parametrize("path", ["components", "kernel", "scipy"])
def test_components_equal_scipy_labels_boxes_and_counts(path: str) -> None:
    run = {
        "components": components,  # the compiled kernel where numba is installed
        "kernel": getattr(blob_label._components, "py_func", blob_label._components),  # its Python source
        "scipy": blob_label._scipy_components,  # the path without numba
    }[path]
    for mask in _masks():
        labels, stats = run(np.ascontiguousarray(mask))
        want_labels, want_stats = _reference(mask)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(stats, want_stats)
        assert labels.dtype == np.int32 and stats.shape == (want_labels.max(initial=0), 5)


def test_numba_is_used_when_installed() -> None:
    pytest.importorskip("numba")
    assert hasattr(blob_label._components, "py_func")  # compiled, not the Python source


def test_a_kernel_without_a_cache_location_is_still_compiled() -> None:
    """numba cannot cache a function that has no source file (it raises at decoration); such a kernel is
    compiled without a cache instead of failing the import."""
    pytest.importorskip("numba")
    namespace: dict = {}
    exec(compile("def double(x):\n    return 2 * x\n", "<no file>", "exec"), namespace)  # noqa: S102
    kernel = blob_label._compiled(namespace["double"])
    assert kernel(21) == 42 and hasattr(kernel, "py_func")
