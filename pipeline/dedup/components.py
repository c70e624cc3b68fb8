"""Connected components of an edge list, labelled by their smallest node: in one process for small edge
lists, or on Ray with the large-star / small-star rounds of Kiveris et al. (2014, "Connected Components in
MapReduce and Beyond") when the edges do not fit one process.

Both return the same labels, so a result does not depend on which path ran.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from vlmforge.pipeline.engine.executor import put
from vlmforge.pipeline.engine.shuffle import Refs, column, exchange, gather_stats, map_each

NODE_SCHEMA = pa.schema([("node", pa.int64()), ("comp", pa.int64())])


def components_local(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component) for every node of the edges (u, v); a component is named by its smallest node."""
    nodes, inverse = np.unique(np.concatenate([u, v]), return_inverse=True)
    n = len(nodes)
    if n == 0:
        return nodes, nodes.copy()
    graph = sp.coo_matrix((np.ones(len(u), np.int8), (inverse[: len(u)], inverse[len(u) :])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, labels, nodes)
    return nodes, smallest[labels]


def unique_pairs(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (hi, lo) pairs, sorted."""
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    keep = np.ones(len(hi), bool)
    keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    return hi[keep], lo[keep]


def _edges(hi: np.ndarray, lo: np.ndarray) -> pa.Table:
    hi, lo = unique_pairs(hi, lo)
    return pa.table({"hi": pa.array(hi, pa.int64()), "lo": pa.array(lo, pa.int64())})


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each run of equal keys in sorted `keys`, and the run id of every element."""
    new = np.ones(len(keys), bool)
    new[1:] = keys[1:] != keys[:-1]
    return np.flatnonzero(new), np.cumsum(new) - 1


def both_directions(table: pa.Table) -> pa.Table:
    """Each undirected edge (hi, lo) as two rows keyed by either end: (x, y)."""
    hi, lo = column(table, "hi"), column(table, "lo")
    return pa.table({"x": np.concatenate([hi, lo]), "y": np.concatenate([lo, hi])})


def large_star(table: pa.Table) -> tuple[pa.Table, dict]:
    """Every node links its larger neighbours to its smallest neighbour (or itself).

    Also counts the nodes that are neither a star centre (all neighbours larger) nor a leaf (one neighbour,
    smaller): when there are none, the edges are disjoint stars around each component's smallest node."""
    x, y = column(table, "x"), column(table, "y")
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    if len(x) == 0:
        return _edges(x, y), {"unsettled": 0, "edges": 0}
    starts, run = _groups(x)
    smallest = np.minimum(np.minimum.reduceat(y, starts), x[starts])
    larger = y > x
    out = _edges(y[larger], smallest[run][larger])
    sizes = np.diff(np.append(starts, len(x)))
    all_larger = np.logical_and.reduceat(larger, starts)
    leaf = (sizes == 1) & ~larger[starts]
    return out, {"unsettled": int(np.count_nonzero(~(all_larger | leaf))), "edges": out.num_rows}


def small_star(table: pa.Table) -> tuple[pa.Table, dict]:
    """Every node links itself and its smaller neighbours to the smallest of them."""
    hi, lo = column(table, "hi"), column(table, "lo")
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    if len(hi) == 0:
        return _edges(hi, lo), {"edges": 0}
    starts, run = _groups(hi)
    smallest = np.minimum.reduceat(lo, starts)  # lo < hi on every edge
    m = smallest[run]
    others = lo != m
    out_hi = np.concatenate([hi[starts], lo[others]])
    out_lo = np.concatenate([smallest, m[others]])
    out = _edges(out_hi, out_lo)
    return out, {"edges": out.num_rows}


def star_labels(table: pa.Table) -> pa.Table:
    """(node, comp) of a settled star forest, from both directions keyed by node x: a leaf's one neighbour
    is its (smaller) centre; a centre's neighbours are all larger and it names its own component."""
    x, y = column(table, "x"), column(table, "y")
    node, first = np.unique(x, return_index=True)
    comp = np.minimum(x, y)[first]
    return pa.table({"node": pa.array(node, pa.int64()), "comp": pa.array(comp, pa.int64())})


def components_distributed(edge_refs: Refs, partitions: int, max_rounds: int = 64) -> tuple[Refs, int]:
    """Label the components of the (hi, lo) edge tables on Ray; returns (node, comp) tables partitioned by
    node, and the number of rounds run."""
    refs = edge_refs
    for rounds in range(1, max_rounds + 1):
        undirected, _ = map_each(refs, both_directions)
        refs, stats = exchange(undirected, "x", partitions, large_star)
        if sum(s["unsettled"] for s in gather_stats(stats)) == 0:
            undirected, _ = map_each(refs, both_directions)
            labels, _ = exchange(undirected, "x", partitions, star_labels)
            return labels, rounds
        refs, _ = exchange(refs, "hi", partitions, small_star)
    raise RuntimeError(f"connected components did not settle in {max_rounds} rounds")


def to_refs(table: pa.Table, partitions: int) -> Refs:
    """Put a driver-side table into the object store (or hold it in the driver) as
    `partitions` slices."""
    step = max(1, -(-table.num_rows // max(1, partitions)))
    return [put(table.slice(i, step)) for i in range(0, max(table.num_rows, 1), step)]
