"""8-connected components of an ink mask, with each one's box and pixel count, compiled by numba when it is
installed.

The text detector labels two masks of every image the OCR phase sees. On images this small scipy.ndimage's
`label` + `find_objects` + a per-component count spend most of their time in per-call and per-object
overheads; one compiled two-pass union-find does it all about 5x faster. Without numba, scipy gives the
same labels and stats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

try:
    import numba
except ImportError:  # scipy gives the same result
    numba = None

_EIGHT = np.ones((3, 3), bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32; 0 background, 1.. in raster order of each component's first pixel, as scipy numbers
    them) and stats: one row per label, (x0, y0, x1, y1, pixels), the box's ends exclusive."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    return _components(mask) if numba is not None else _scipy_components(mask)


def _scipy_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, n = ndimage.label(mask, structure=_EIGHT, output=np.int32)
    stats = np.empty((n, 5), np.int32)
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels)):
        stats[i, :4] = xs.start, ys.start, xs.stop, ys.stop
    stats[:, 4] = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, stats


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        up = parent[i]
        parent[i] = root
        i = up
    return root


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`components` as one kernel: a raster pass labels each pixel with the root of its visited neighbours
    (W, NW, N, NE), joining their sets where two meet (each set's root its smallest label), or a new label;
    a second pass renumbers and measures."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    parent = np.zeros(64, np.int32)
    n = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            root = 0
            for dy, dx in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
                yy, xx = y + dy, x + dx
                if yy < 0 or xx < 0 or xx >= w or labels[yy, xx] == 0:
                    continue
                other = _find(parent, labels[yy, xx])
                if root == 0:
                    root = other
                elif other < root:
                    parent[root] = other
                    root = other
                elif other > root:
                    parent[other] = root
            if root == 0:
                n += 1
                if n >= parent.shape[0]:
                    grown = np.zeros(2 * parent.shape[0], np.int32)
                    grown[: parent.shape[0]] = parent
                    parent = grown
                parent[n] = n
                root = n
            labels[y, x] = root
    # provisional labels grow in raster order and a root is its set's smallest label: the roots come in
    # the order of their components' first pixels, as scipy numbers them
    final = np.zeros(n + 1, np.int32)
    m = 0
    for i in range(1, n + 1):
        root = _find(parent, i)
        if root == i:
            m += 1
            final[i] = m
        else:
            final[i] = final[root]
    stats = np.zeros((m, 5), np.int32)
    stats[:, 0] = w
    stats[:, 1] = h
    for y in range(h):
        for x in range(w):
            if labels[y, x] == 0:
                continue
            label = final[labels[y, x]]
            labels[y, x] = label
            row = stats[label - 1]
            row[0] = min(row[0], x)
            row[1] = min(row[1], y)
            row[2] = max(row[2], x + 1)
            row[3] = max(row[3], y + 1)
            row[4] += 1
    return labels, stats


def _compiled(function: Callable) -> Callable:
    """`function` compiled by numba, cached beside this module (or in numba's user cache directory); where
    neither can be written, compiled afresh in each process instead of failing."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


if numba is not None:
    _find = _compiled(_find)
    _components = _compiled(_components)
