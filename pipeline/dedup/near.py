"""Phase 2, near duplicates: LSH buckets shuffled across the cluster, verified candidate pairs, connected
components, one survivor per component.

Rows are named by a node id, (part index << 32) | row in the part's phase-1 file, so tasks pass 8-byte
ids around and read a row's other columns from its part file only when they need them. Only the exact-dedup
survivors take part.
- Captions: each row's band keys (16 x 8 B by default) are shuffled by key; rows sharing a key are
  candidate pairs. The MinHash signatures of candidates only are then read from their parts (one exchange
  by the first row's part, one by the second's) and a pair is kept when its estimated Jaccard similarity
  reaches the threshold.
- Images: the band keys of sampled pHash bits are shuffled with the hash itself, so candidates are verified
  (Hamming distance <= k) inside their bucket.
- Both edge sets form one graph. Its connected components are found in one process when the edges are few,
  otherwise on Ray (large-star / small-star). Each component keeps its best row by `survivor_rule`; the
  others are dropped naming it (`near_duplicate_caption` when the row has a caption edge, else
  `near_duplicate_image`). Every member records the component (the survivor's id) and its size.
Results are written per part, so finalize reads only its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.common.storage import (
    Location,
    location,
    parquet_file,
    read_parquet,
    read_parquet_schema,
    rmtree,
)
from vlmforge.pipeline.config import NearDedupConfig
from vlmforge.pipeline.dedup.components import components_distributed, components_local, to_refs, unique_pairs
from vlmforge.pipeline.dedup.exact import losers_of_part
from vlmforge.pipeline.dedup.minhash import band_keys, estimated_jaccard
from vlmforge.pipeline.dedup.phash import band_keys as image_band_keys
from vlmforge.pipeline.dedup.phash import hamming
from vlmforge.pipeline.engine.accounting import StageStats
from vlmforge.pipeline.engine.executor import cluster_cpus, get, put
from vlmforge.pipeline.engine.shuffle import (
    Refs,
    column,
    exchange,
    gather_stats,
    map_each,
    persisted,
    resuming,
    shuffle,
)
from vlmforge.pipeline.filter.signatures import signature_matrix
from vlmforge.pipeline.registry import Context, PhaseResult

ROW_BITS = 32
CAPTION, IMAGE, VIDEO = 1, 2, 4  # edge kinds, also bits of a node's kind mask; the lowest bit names a loser
REASONS = {CAPTION: "near_duplicate_caption", IMAGE: "near_duplicate_image", VIDEO: "near_duplicate_video"}
EDGE_SCHEMA = pa.schema([("hi", pa.int64()), ("lo", pa.int64()), ("kind", pa.int8())])
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("dup_cluster", pa.string()),
        ("dup_cluster_size", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Part:
    """A phase-1 part file and its index in the node ids."""

    index: int
    name: str
    path: str


def node_ids(index: int, n: int) -> np.ndarray:
    return (np.int64(index) << np.int64(ROW_BITS)) | np.arange(n, dtype=np.int64)


def part_of(nodes: np.ndarray) -> np.ndarray:
    return nodes >> np.int64(ROW_BITS)


def row_of(nodes: np.ndarray) -> np.ndarray:
    return nodes & np.int64((1 << ROW_BITS) - 1)


def read_rows(path: str, columns: list[str], rows: np.ndarray) -> pa.Table:
    """`columns` of the given rows of a Parquet file, in the order of `rows`; reads only their row groups."""
    pf = parquet_file(path)
    sizes = np.array([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    group = np.searchsorted(starts, rows, side="right") - 1
    needed = np.unique(group)
    table = pf.read_row_groups(needed.tolist(), columns=columns)
    read_start = np.concatenate([[0], np.cumsum(sizes[needed])])[np.searchsorted(needed, group)]
    return table.take(pa.array(read_start + rows - starts[group]))


def live_rows(part: Part, exact_dir: str, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """The part's rows that survived exact dedup (only `columns`), with their node ids."""
    present = [c for c in columns if c in read_parquet_schema(part.path).names]
    table = read_parquet(part.path, columns=["id", *present])
    nodes = node_ids(part.index, table.num_rows)
    losers = losers_of_part(location(exact_dir), part.name)["id"]
    if len(losers):
        keep = pc.invert(pc.is_in(table["id"], value_set=losers))
        table, nodes = table.filter(keep), nodes[keep.to_numpy(zero_copy_only=False)]
    return table, nodes


def caption_band_rows(parts: list[Part], exact_dir: str, bands: int, rows: int, num_perm: int) -> pa.Table:
    """(key, node) for every band of every live caption with shingles, derived from its signature here so
    that a new threshold or band shape reuses phase 1."""
    keys, nodes = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    for part in parts:
        table, ids = live_rows(part, exact_dir, ["minhash"])
        if "minhash" not in table.column_names or not table.num_rows:
            continue
        sigs = signature_matrix(table["minhash"], num_perm)
        has_shingles = (sigs != np.uint32(0xFFFFFFFF)).any(axis=1)
        keys.append(band_keys(sigs[has_shingles], bands, rows).reshape(-1))
        nodes.append(np.repeat(ids[has_shingles], bands))
    return pa.table({"key": np.concatenate(keys), "node": np.concatenate(nodes)})


def image_band_rows(parts: list[Part], exact_dir: str, bands: int, bits: int, seed: int) -> pa.Table:
    """(key, node, phash) for every band of every live row with a perceptual hash."""
    keys, nodes, hashes = [np.empty(0, np.uint64)], [np.empty(0, np.int64)], [np.empty(0, np.uint64)]
    for part in parts:
        table, ids = live_rows(part, exact_dir, ["phash"])
        if "phash" not in table.column_names or not table.num_rows:
            continue
        col = table["phash"].combine_chunks()
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        values = pc.fill_null(col, 0).to_numpy().astype(np.uint64)[valid]
        keys.append(image_band_keys(values, bands, bits, seed).reshape(-1))
        nodes.append(np.repeat(ids[valid], bands))
        hashes.append(np.repeat(values, bands))
    return pa.table(
        {"key": np.concatenate(keys), "node": np.concatenate(nodes), "phash": np.concatenate(hashes)}
    )


def bucket_pairs(keys: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of sorted `keys` in one bucket (equal key) at most `window` apart: every
    pair of a bucket of up to window + 1 rows, and a band around the diagonal of larger ones."""
    n = len(keys)
    new = np.ones(n, bool)
    new[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)[np.cumsum(new) - 1]
    active = np.flatnonzero(ends - np.arange(n) > 1)
    first, second = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for d in range(1, window + 1):
        if not len(active):
            break
        first.append(active)
        second.append(active + d)
        active = active[ends[active] - active > d + 1]
    return np.concatenate(first), np.concatenate(second)


def _sorted_buckets(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (key, node): positions, keys, nodes. Shuffled rows arrive in node order (parts and
    rows in order, map outputs concatenated in order), so a stable sort by key is enough."""
    keys, nodes = column(table, "key"), column(table, "node")
    if np.all(nodes[1:] >= nodes[:-1]):
        order = np.argsort(keys, kind="stable")
    else:
        order = np.lexsort((nodes, keys))
    return order, keys[order], nodes[order]


def bucket_candidates(table: pa.Table, window: int) -> tuple[pa.Table, dict]:
    """Candidate pairs (hi, lo) of the (key, node) buckets in this partition, with each end's part index."""
    _, keys, nodes = _sorted_buckets(table)
    i, j = bucket_pairs(keys, window)
    hi, lo = unique_pairs(nodes[j], nodes[i])
    distinct = hi != lo
    hi, lo = hi[distinct], lo[distinct]
    out = pa.table({"hi": hi, "lo": lo, "part_hi": part_of(hi), "part_lo": part_of(lo)})
    return out, {"pairs": len(i)}


def image_edges(table: pa.Table, window: int, max_distance: int) -> tuple[pa.Table, dict]:
    """Image pairs of the buckets in this partition whose pHashes are at most `max_distance` bits apart."""
    order, keys, nodes = _sorted_buckets(table)
    hashes = column(table, "phash")[order]
    i, j = bucket_pairs(keys, window)
    close = hamming(hashes[i], hashes[j]) <= max_distance
    hi, lo = unique_pairs(nodes[j][close], nodes[i][close])
    distinct = hi != lo
    out = pa.table({"hi": hi[distinct], "lo": lo[distinct], "kind": np.full(distinct.sum(), IMAGE, np.int8)})
    return out, {"pairs": len(i), "edges": out.num_rows}


def values_of(nodes: np.ndarray, paths: dict[int, str], name: str) -> pa.Array:
    """Column `name` of `nodes` (from the parts in `paths`), in their order, read from their part files."""
    parts = part_of(nodes)
    at = [np.flatnonzero(parts == index) for index in np.unique(parts)]
    if not at:
        return pa.array([], read_parquet_schema(next(iter(paths.values()))).field(name).type)
    pieces = [read_rows(paths[int(parts[a[0]])], [name], row_of(nodes[a]))[name] for a in at]
    values = pa.chunked_array([c for piece in pieces for c in piece.chunks]).combine_chunks()
    return values.take(pa.array(np.argsort(np.concatenate(at))))


def _signatures_of(nodes: np.ndarray, paths: dict[int, str], num_perm: int) -> np.ndarray:
    """The MinHash signatures of `nodes` (all from the parts in `paths`), read from their part files."""
    return signature_matrix(values_of(nodes, paths, "minhash"), num_perm)


def with_low_values(table: pa.Table, paths: dict[int, str], name: str) -> pa.Table:
    """Distinct candidate pairs (all copies of a pair meet here) with column `name` of their `lo` row
    (`lo_value`)."""
    hi, lo = unique_pairs(column(table, "hi"), column(table, "lo"))
    return pa.table({"hi": hi, "lo": lo, "part_hi": part_of(hi), "lo_value": values_of(lo, paths, name)})


def verified_caption_edges(
    table: pa.Table, paths: dict[int, str], num_perm: int, threshold: float
) -> tuple[pa.Table, dict]:
    """The candidate pairs whose estimated Jaccard similarity reaches `threshold`."""
    hi, lo = column(table, "hi"), column(table, "lo")
    lo_sigs = signature_matrix(table["lo_value"], num_perm)
    sim = estimated_jaccard(_signatures_of(hi, paths, num_perm), lo_sigs)
    keep = sim >= threshold - 1e-12
    out = pa.table({"hi": hi[keep], "lo": lo[keep], "kind": np.full(keep.sum(), CAPTION, np.int8)})
    return out, {"candidates": len(hi), "edges": out.num_rows}


def unverified_caption_edges(table: pa.Table) -> tuple[pa.Table, dict]:
    """Every distinct candidate pair as an edge (no verification, as datatrove does)."""
    hi, lo = unique_pairs(column(table, "hi"), column(table, "lo"))
    out = pa.table({"hi": hi, "lo": lo, "kind": np.full(len(hi), CAPTION, np.int8)})
    return out, {"candidates": len(hi), "edges": len(hi)}


def kind_masks(u: np.ndarray, v: np.ndarray, kinds: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """For each of the sorted `nodes`, the OR of the kinds of its edges."""
    mask = np.zeros(len(nodes), np.int8)
    for ends in (u, v):
        np.bitwise_or.at(mask, np.searchsorted(nodes, ends), kinds)
    return mask


def node_masks(table: pa.Table) -> pa.Table:
    """(node, mask) for the edges of one partition keyed by node (both directions)."""
    x, kind = column(table, "x"), column(table, "kind")
    nodes = np.unique(x)
    mask = np.zeros(len(nodes), np.int8)
    np.bitwise_or.at(mask, np.searchsorted(nodes, x), kind)
    return pa.table({"node": nodes, "mask": mask})


def both_directions_with_kind(table: pa.Table) -> pa.Table:
    hi, lo, kind = column(table, "hi"), column(table, "lo"), column(table, "kind")
    return pa.table({"x": np.concatenate([hi, lo]), "kind": np.concatenate([kind, kind])})


def join_masks(labels: pa.Table, masks: pa.Table) -> pa.Table:
    """(node, comp, mask, part) from co-partitioned (node, comp) and (node, mask) tables."""
    labels = labels.sort_by("node")
    masks = masks.sort_by("node")
    nodes = column(labels, "node")
    if not np.array_equal(nodes, column(masks, "node")):
        raise RuntimeError("component labels and kind masks disagree on their nodes")
    return labels.append_column("mask", masks["mask"]).append_column("part", pa.array(part_of(nodes)))


def with_rule_columns(table: pa.Table, paths: dict[int, str], columns: list[str]) -> pa.Table:
    """Members of one partition keyed by part, with their id and the survivor rule's columns (`r_<name>`)."""
    nodes, parts = column(table, "node"), column(table, "part")
    order = np.argsort(parts, kind="stable")
    table, nodes, parts = table.take(pa.array(order)), nodes[order], parts[order]
    schema = read_parquet_schema(next(iter(paths.values())))
    pieces = [pa.schema([schema.field(c) for c in columns]).empty_table()]
    for index in np.unique(parts):
        at = np.flatnonzero(parts == index)
        pieces.append(read_rows(paths[int(index)], columns, row_of(nodes[at])))
    fetched = pa.concat_tables(pieces)
    for name in columns:
        table = table.append_column(f"r_{name}", fetched[name])
    return table


def choose_survivors(table: pa.Table, rule: list[tuple[str, str]], names: list[str]) -> tuple[pa.Table, dict]:
    """For the components in this partition: the best member by `rule` survives, the others are losers."""
    keys = [("comp", "ascending"), *[(f"r_{c}", order) for c, order in rule], ("node", "ascending")]
    keys = [(name, order, "at_end") for name, order in keys]
    table = table.take(pc.sort_indices(table, sort_keys=keys))
    comp = column(table, "comp")
    n = len(comp)
    new = np.ones(n, bool)
    new[1:] = comp[1:] != comp[:-1]
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    sizes = np.diff(np.append(starts, n))
    ids = table["r_id"]
    survivor_ids = ids.take(pa.array(starts[run]))
    mask = column(table, "mask")
    lowest = mask & -mask
    reason = np.array([REASONS.get(k) for k in lowest.tolist()], object)
    reason[new] = None
    detail = pc.binary_join_element_wise("near duplicate of ", survivor_ids, "")
    detail = pc.if_else(pa.array(new), pa.nulls(n, pa.string()), detail)
    parts = part_of(column(table, "node"))
    out = pa.table(
        {
            "part": pa.array(names, pa.string()).take(pa.array(parts)),
            "part_index": parts,
            "id": ids,
            "reason": pa.array(reason, pa.string()),
            "detail": detail,
            "dup_cluster": survivor_ids,
            "dup_cluster_size": pa.array(sizes[run], pa.int32()),
        }
    )
    kinds, counts = np.unique(lowest[~new], return_counts=True)
    reasons = {REASONS[int(k)]: int(c) for k, c in zip(kinds, counts, strict=True)}
    return out, {"components": len(starts), "members": n, "reasons": reasons}


def write_results(table: pa.Table, out_dir: str) -> tuple[pa.Table, dict]:
    """Write this partition's results, one file per part."""
    table = table.sort_by([("part", "ascending"), ("id", "ascending")])
    written = {}
    for name in pc.unique(table["part"]).to_pylist():
        rows = table.filter(pc.equal(table["part"], name)).select(RESULT_SCHEMA.names)
        with AtomicParquetWriter(location(out_dir) / f"{name}.parquet", RESULT_SCHEMA) as w:
            w.write(rows)
        written[name] = rows.num_rows
    return pa.table({"part": list(written)}), {"files": len(written)}


def _survivor_columns(cfg: NearDedupConfig, schema: pa.Schema) -> list[tuple[str, str]]:
    """The survivor rule's (column, order) for the columns present; ids break the remaining ties."""
    rule = [(k.lstrip("-"), "descending" if k.startswith("-") else "ascending") for k in cfg.survivor_rule]
    rule = [(c, order) for c, order in rule if c in schema.names]
    return rule if any(c == "id" for c, _ in rule) else [*rule, ("id", "ascending")]


def groups_of(parts: list[Part], groups: int) -> list[list[Part]]:
    """`parts` in at most `groups` consecutive runs (one map task each)."""
    size = max(1, -(-len(parts) // groups))
    return [parts[i : i + size] for i in range(0, len(parts), size)]


def exchange_partitions(band_rows: int, workers: int | None) -> int:
    """Partitions of a phase's exchanges: two per worker, more when the band rows pass 4M per partition."""
    return max(2 * (workers or cluster_cpus()), -(-band_rows // 4_000_000))


def find_edges(
    parts: list[Part], exact_dir: Location, cfg: NearDedupConfig, partitions: int
) -> tuple[Refs, dict]:
    """The verified near-duplicate edges (hi, lo, kind) of the live rows, as tables in the object store."""
    groups = [(g, str(exact_dir)) for g in groups_of(parts, 2 * partitions)]
    paths = put({p.index: p.path for p in parts})  # once, not once per task
    edge_refs: Refs = []
    counters: Counter = Counter()
    image_stats: Refs = []
    if cfg.image.enabled:
        ic = cfg.image
        args = [(*g, ic.bands, ic.band_bits, ic.seed) for g in groups]
        refs, image_stats = shuffle(
            image_band_rows, args, "key", partitions, image_edges,
            window=cfg.bucket_window, max_distance=ic.max_distance,
        )  # fmt: skip
        edge_refs += refs
    if cfg.caption.enabled:
        cc = cfg.caption
        bands, rows = cc.band_shape()
        cand, cand_stats = shuffle(
            caption_band_rows, [(*g, bands, rows, cc.num_perm) for g in groups], "key", partitions,
            bucket_candidates, window=cfg.bucket_window,
        )  # fmt: skip
        if cc.verify:
            with_lo, _ = exchange(
                cand, "part_lo", partitions, with_low_values, paths=paths, name="minhash"
            )
            refs, verify_stats = exchange(
                with_lo, "part_hi", partitions, verified_caption_edges,
                paths=paths, num_perm=cc.num_perm, threshold=cc.threshold,
            )  # fmt: skip
        else:
            refs, verify_stats = exchange(cand, "part_lo", partitions, unverified_caption_edges)
        edge_refs += refs
        counters["caption_bucket_pairs"] = sum(s["pairs"] for s in gather_stats(cand_stats))
        verified = gather_stats(verify_stats)
        counters["caption_candidates"] = sum(s["candidates"] for s in verified)
        counters["caption_edges"] = sum(s["edges"] for s in verified)
    if image_stats:
        found = gather_stats(image_stats)
        counters["image_bucket_pairs"] = sum(s["pairs"] for s in found)
        counters["image_edges"] = sum(s["edges"] for s in found)
    return edge_refs, dict(counters)


def label_members(edge_refs: Refs, edges: int, local_max_edges: int, partitions: int) -> tuple[Refs, dict]:
    """(node, comp, mask, part) of every node with an edge: in one process up to `local_max_edges`."""
    if edges <= local_max_edges:
        table = pa.concat_tables([EDGE_SCHEMA.empty_table(), *get(edge_refs)])
        hi, lo, kind = column(table, "hi"), column(table, "lo"), column(table, "kind")
        nodes, comp = components_local(hi, lo)
        mask = kind_masks(hi, lo, kind, nodes)
        members = pa.table({"node": nodes, "comp": comp, "mask": mask, "part": part_of(nodes)})
        return to_refs(members, partitions), {"cc_local": 1}
    plain, _ = map_each(edge_refs, _hi_lo)
    labels, rounds = components_distributed(plain, partitions)
    directed, _ = map_each(edge_refs, both_directions_with_kind)
    masks, _ = exchange(directed, "x", partitions, node_masks)
    members, _ = map_each(list(zip(labels, masks, strict=True)), join_masks)
    return members, {"cc_local": 0, "cc_rounds": rounds}


def _hi_lo(table: pa.Table) -> pa.Table:
    return table.select(["hi", "lo"])


def dump_edges(edge_refs: Refs, path: Location) -> None:
    """Write the edges (hi, lo, kind) to one Parquet file (for evaluation)."""
    with AtomicParquetWriter(path, EDGE_SCHEMA) as w:
        for ref in edge_refs:
            w.write(get([ref])[0])


def resolve_near_duplicates(
    phase1_files: list[tuple[str, str]],
    exact_dir: Location,
    out_dir: Location,
    cfg: NearDedupConfig,
    partitions: int,
    keep_edges: bool = False,
) -> dict:
    """Find near-duplicate clusters among the exact-dedup survivors of the phase-1 files (part name, path,
    in a fixed order) and write each part's results under `out_dir`. Returns counts per reason and counters.
    """
    if out_dir.exists() and not resuming():  # a rerun keeps what its finished exchanges wrote
        rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [Part(i, name, path) for i, (name, path) in enumerate(phase1_files)]
    if not parts or not cfg.enabled:
        return {"reasons": {}, "counters": {}}
    edge_refs, counters = find_edges(parts, exact_dir, cfg, partitions)
    edges = counters.get("caption_edges", 0) + counters.get("image_edges", 0)
    if keep_edges:
        dump_edges(edge_refs, out_dir / "_edges.parquet")
    members, cc = label_members(edge_refs, edges, cfg.local_max_edges, partitions)
    counters.update(cc)
    del edge_refs
    paths = put({p.index: p.path for p in parts})
    rule = _survivor_columns(cfg, read_parquet_schema(parts[0].path))
    columns = list(dict.fromkeys(["id", *(c for c, _ in rule)]))
    fetched, _ = exchange(members, "part", partitions, with_rule_columns, paths=paths, columns=columns)
    names = [p.name for p in parts]
    results, stats = exchange(fetched, "comp", partitions, choose_survivors, rule=rule, names=names)
    _, written = exchange(results, "part_index", partitions, write_results, out_dir=str(out_dir))
    reasons: Counter = Counter()
    for s in gather_stats(stats):
        reasons.update(s["reasons"])
        counters["components"] = counters.get("components", 0) + s["components"]
        counters["component_members"] = counters.get("component_members", 0) + s["members"]
    gather_stats(written)
    return {"reasons": dict(reasons), "counters": counters}


def run(ctx: Context) -> PhaseResult:
    """Run (or reuse) the near-duplicate resolution of phase 2; its stats as a stage."""
    layout, nd = ctx.layout, ctx.cfg.near_dedup

    def compute() -> dict:
        bands = nd.caption.band_shape()[0] if nd.caption.enabled else 0
        band_rows = ctx.rows_in * (bands + (nd.image.bands if nd.image.enabled else 0))
        partitions = exchange_partitions(band_rows, ctx.cfg.ray.workers)
        files = [(key, str(layout.phase1(key)[0])) for key in layout.parts.values()]
        with persisted(layout.exchanges("near_dedup")):
            return resolve_near_duplicates(
                files, layout.dir("exact_dedup"), layout.dir("near_dedup"), nd, partitions
            )

    reused = layout.done("near_dedup")
    done = layout.run_once("near_dedup", compute, ctx.log, ctx.phase.title)
    return PhaseResult(
        stages=[StageStats.from_done("near_dedup", ctx.rows_in, done)], timing={"reused": reused}
    )
