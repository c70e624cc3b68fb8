"""Near-duplicate removal: signatures equal datasketch's, precision/recall against brute force, image copies,
connected components, determinism, and the whole curation dropping planted near duplicates."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from conftest import curate
from datasketch import MinHash, MinHashLSH
from helpers import encode, raw_batch
from PIL import Image

from vlmforge.common.files import AtomicParquetWriter
from vlmforge.pipeline.config import ImageConfig, NearDedupConfig, load_config
from vlmforge.pipeline.dedup.components import NODE_SCHEMA, components_distributed, components_local, to_refs
from vlmforge.pipeline.dedup.minhash import band_keys, optimal_bands, shingles, signatures
from vlmforge.pipeline.dedup.near import CAPTION, IMAGE, resolve_near_duplicates
from vlmforge.pipeline.dedup.neardup_eval import (
    edge_index_pairs,
    exact_pairs,
    pair_metrics,
    planted_captions,
    write_caption_part,
)
from vlmforge.pipeline.dedup.phash import hamming, phash
from vlmforge.pipeline.engine.executor import in_driver
from vlmforge.pipeline.filter.image_decode import ImageDecode
from vlmforge.pipeline.sample_data.reading import read_ground_truth

THRESHOLD = 0.8


def test_signatures_equal_datasketch_and_bands_match_its_lsh():
    tricky = ["A red car, parked.", "a RED car parked", "", "!!!", "one", "ﬁne ÅNGSTRÖM İstanbul"]
    tricky += ["snake_case  words\t\n", "Straße STRASSE", "\u0301e x", "the quick brown fox jumps over it"]
    texts = tricky + planted_captions(300, seed=3).captions
    # The first batch is normalised as one string; a caption holding the separator makes it text by text.
    for batch in (texts, [*texts, "a\x1eb c"]):
        for ngram, num_perm, seed in [(2, 128, 1), (1, 64, 7), (3, 256, 2)]:
            ours = signatures(batch, ngram, num_perm, seed)
            for text, sig in zip(batch, ours, strict=True):
                m = MinHash(num_perm=num_perm, seed=seed)
                m.update_batch(shingles(text, ngram))
                assert np.array_equal(sig, m.hashvalues), (text, ngram)
    assert np.array_equal(ours[0], ours[1])  # case and punctuation do not matter
    assert signatures([], 2, 128, 1).shape == (0, 128)  # an empty batch
    # Two captions share a band key exactly when datasketch's LSH (same bands x rows) puts them together.
    for t, perm, w in [(0.5, 64, (0.5, 0.5)), (0.8, 128, (0.05, 0.95)), (0.9, 128, (0.3, 0.7))]:
        lsh = MinHashLSH(threshold=t, num_perm=perm, weights=w)
        assert optimal_bands(t, perm, *w) == (lsh.b, lsh.r)
    sigs = signatures(texts, 2, 128, 1)
    keys = band_keys(sigs, 16, 8)
    lsh = MinHashLSH(num_perm=128, params=(16, 8))
    for i, s in enumerate(sigs):
        lsh.insert(i, MinHash(num_perm=128, seed=1, hashvalues=s, scheme="affine32"))
    for i, s in enumerate(sigs[:40]):
        theirs = set(lsh.query(MinHash(num_perm=128, seed=1, hashvalues=s, scheme="affine32")))
        ours_set = {j for j in range(len(sigs)) if np.any(keys[j] == keys[i])}
        assert theirs == ours_set


def _caption_parts(
    tmp: Path, captions: list[str], ids: list[str], cfg: NearDedupConfig, rows: int, batch: int
):
    return [
        (
            f"p{k}",
            write_caption_part(
                ids[s : s + rows],
                captions[s : s + rows],
                str(tmp / f"p{k}.parquet"),
                cfg.caption,
                batch_rows=batch,
            ),
        )
        for k, s in enumerate(range(0, len(captions), rows))
    ]


def test_caption_precision_recall_against_brute_force(ray_local, tmp_path):
    planted = planted_captions(20_000, seed=0)
    cfg = NearDedupConfig.model_validate({"image": {"enabled": False}})
    rows = 5000
    files = _caption_parts(tmp_path, planted.captions, planted.ids, cfg, rows, 1024)
    result = resolve_near_duplicates(files, tmp_path / "exact", tmp_path / "nd", cfg, 4, keep_edges=True)
    found = edge_index_pairs(pq.read_table(tmp_path / "nd" / "_edges.parquet"), rows)
    truth = exact_pairs(planted.captions, cfg.caption.ngram, 0.3)  # every pair at similarity >= 0.3
    m = pair_metrics(found, truth, THRESHOLD)
    print(json.dumps({**m, "counters": result["counters"]}))
    assert m["true"] > 500 and m["true_high"] > 300
    assert m["precision"] >= 0.95
    assert m["recall"] >= 0.95
    assert m["recall_high"] >= 0.99
    variants = [p for p, s in planted.planted.items() if s == 1.0]
    assert len(variants) > 100 and all(p in found for p in variants)  # case/punctuation/whitespace copies
    # One survivor per pair: every found pair lost exactly one row.
    assert result["reasons"] == {"near_duplicate_caption": len(found)}


def _sample_images(sample_dir: Path, limit: int) -> dict[str, bytes]:
    truth = {key: row["kind"] for key, row in read_ground_truth(sample_dir).items()}
    images = {}
    for shard in sorted(sample_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.rsplit(".", 1)
                if ext in ("jpg", "png") and truth[key] == "clean" and len(images) < limit:
                    images[key] = tar.extractfile(m).read()
    return images


def _copy(data: bytes, how: str, rng: random.Random) -> bytes:
    img = Image.open(io.BytesIO(data))
    img = img.convert("RGB") if img.mode in ("RGB", "CMYK", "L", "P") else img.convert("RGBA").convert("RGB")
    w, h = img.size
    if how == "resized":
        s = rng.uniform(0.5, 1.6)
        return encode(img.resize((max(64, int(w * s)), max(64, int(h * s)))), "JPEG", quality=90)
    if how == "reencoded":
        return encode(img, "JPEG", quality=rng.randint(30, 70))
    c = rng.uniform(0.01, 0.03)  # slightly cropped: 1-3% off each side
    return encode(img.crop((int(w * c), int(h * c), w - int(w * c), h - int(h * c))), "JPEG", quality=90)


def test_image_copies_found_and_distinct_images_kept_apart(ray_local, sample_dir, tmp_path):
    originals = _sample_images(sample_dir, 1000)
    rng = random.Random(0)
    keys = sorted(originals)
    copies = {
        f"{k}-{how}": (k, _copy(originals[k], how, rng))
        for i, k in enumerate(keys[:300])
        for how in [("resized", "reencoded", "cropped")[i % 3]]
    }
    rows = [{"id": k, "image": v} for k, v in originals.items()]
    rows += [{"id": k, "image": v} for k, (_, v) in copies.items()]
    stage = ImageDecode(ImageConfig(), phash=True)
    kept, rejected = stage(raw_batch(rows))
    assert rejected.num_rows == 0 and kept["phash"].null_count == 0
    # The stage's hash is the image's pHash as decoded there (JPEG draft mode); no second decode.
    assert stage.stats.counters["decoded"] == len(rows)
    path = tmp_path / "p0.parquet"
    with AtomicParquetWriter(path, pa.schema([("id", pa.string()), ("phash", pa.uint64())])) as w:
        w.write(kept.select(["id", "phash"]))
    cfg = NearDedupConfig.model_validate({"caption": {"enabled": False}})
    result = resolve_near_duplicates(
        [("p0", str(path))], tmp_path / "x", tmp_path / "nd", cfg, 2, keep_edges=True
    )
    ids = kept["id"].to_pylist()
    found = {
        (ids[a], ids[b]) for a, b in edge_index_pairs(pq.read_table(tmp_path / "nd/_edges.parquet"), 10**9)
    }
    linked = {frozenset(p) for p in found}
    recall = {
        how: np.mean([frozenset((c, o)) in linked for c, (o, _) in copies.items() if c.endswith(how)])
        for how in ("resized", "reencoded", "cropped")
    }
    wrong = {x for a, b in found for x in (a, b) if a.split("-")[0] != b.split("-")[0]}
    print(json.dumps({"recall": recall, "false_rows": len(wrong), "counters": result["counters"]}))
    assert min(recall.values()) >= 0.90
    assert len(wrong) <= 0.01 * len(originals)


def test_phash_matches_the_reference_construction():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    k, i = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    dct = 2.0 * np.cos(np.pi * k * (2 * i + 1) / 64)
    low = (dct @ pixels @ dct.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    assert phash(img) == int("".join("1" if b else "0" for b in bits), 2)
    assert hamming(np.array([0b1011], np.uint64), np.array([0b0110], np.uint64))[0] == 3


def test_distributed_components_equal_single_process(ray_local):
    rng = np.random.default_rng(1)
    # Long paths (many rounds), random sparse edges, a big star and duplicated edges.
    path = np.arange(0, 3000, dtype=np.int64)
    u = [path[:-1], rng.integers(10_000, 12_000, 3000), np.full(500, 50_000), rng.integers(0, 3000, 200)]
    v = [path[1:], rng.integers(10_000, 12_000, 3000), np.arange(50_001, 50_501), rng.integers(0, 3000, 200)]
    u, v = np.concatenate(u), np.concatenate(v)
    keep = u != v
    hi, lo = np.maximum(u, v)[keep], np.minimum(u, v)[keep]
    nodes, comp = components_local(hi, lo)
    assert comp[nodes == 2999][0] == 0 and comp[nodes == 50_300][0] == 50_000
    refs, rounds = components_distributed(to_refs(pa.table({"hi": hi, "lo": lo}), 3), partitions=3)
    got = pa.concat_tables([NODE_SCHEMA.empty_table(), *ray.get(refs)]).sort_by("node")
    assert rounds > 1
    assert np.array_equal(got["node"].to_numpy(), nodes) and np.array_equal(got["comp"].to_numpy(), comp)


def _mixed_parts(tmp: Path, rows: int, batch: int) -> list[tuple[str, str]]:
    """Captions with planted near duplicates, images with planted near pHashes, across several parts."""
    planted = planted_captions(4000, seed=5, copy_share=0.2)
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**63, len(planted.captions), dtype=np.int64).astype(np.uint64)
    for i in range(0, len(hashes) - 1, 7):  # every 7th row's image is a near copy of the next row's
        flips = rng.choice(64, size=int(rng.integers(0, 6)), replace=False)
        hashes[i] = hashes[i + 1] ^ np.bitwise_or.reduce(np.uint64(1) << flips.astype(np.uint64), initial=0)
    cfg = NearDedupConfig()
    files = _caption_parts(tmp, planted.captions, planted.ids, cfg, rows, batch)
    for k, (_, path) in enumerate(files):
        t = pq.read_table(path)
        t = t.append_column("phash", pa.array(hashes[k * rows : k * rows + t.num_rows], pa.uint64()))
        pq.write_table(t, path)
    return files


def _all_results(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("p*.parquet"))]).sort_by("id")


def test_same_survivors_whatever_the_workers_batches_and_components_path(ray_local, tmp_path):
    runs = []
    settings = [(1, 1000, 2_000_000, False), (2, 64, 0, False), (5, 333, 0, False), (3, 200, 0, True)]
    for k, (partitions, batch, local_max, driver_only) in enumerate(settings):
        d = tmp_path / f"run{k}"
        d.mkdir()
        files = _mixed_parts(d, 1000, batch)
        cfg = NearDedupConfig(local_max_edges=local_max)
        with in_driver(driver_only):  # the last run: every exchange in this process, no Ray task
            result = resolve_near_duplicates(files, d / "x", d / "nd", cfg, partitions)
        runs.append((_all_results(d / "nd"), result))
    base, result = runs[0]
    assert set(result["reasons"]) == {"near_duplicate_caption", "near_duplicate_image"}
    assert result["counters"]["components"] < result["counters"]["component_members"] / 2 + 50
    for other, other_result in runs[1:]:
        assert other.equals(base)
        assert other_result["reasons"] == result["reasons"]
    # The survivor rule: the most caption words wins, then the smallest id.
    words = {}
    for f in sorted((tmp_path / "run0").glob("p*.parquet")):
        t = pq.read_table(f, columns=["id", "caption_words"])
        words.update(zip(t["id"].to_pylist(), t["caption_words"].to_pylist(), strict=True))
    for row in base.to_pylist():
        best = row["dup_cluster"]
        assert (-words[best], best) <= (-words[row["id"]], row["id"])
        assert (row["reason"] is None) == (row["id"] == best)


def _english_rows(sample_dir: Path) -> list[dict]:
    with open(sample_dir / "ground_truth.jsonl") as f:
        truth = {r["key"]: r for r in map(json.loads, f)}
    rows = {}
    for shard in sorted(sample_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.rsplit(".", 1)
                if truth[key]["kind"] == "clean" and truth[key]["variant"] is None:
                    rows.setdefault(key, {"id": key})["jpg" if ext == "jpg" else ext] = tar.extractfile(
                        m
                    ).read()
    return [r for r in rows.values() if "jpg" in r and "txt" in r and truth[r["id"]]["n_words"] >= 12]


def test_curation_drops_planted_near_duplicates(ray_local, sample_dir, tmp_path):
    rows = _english_rows(sample_dir)[:160]
    base, spare = rows[:120], rows[120:]
    table = [{"id": r["id"], "caption": r["txt"].decode(), "image": r["jpg"]} for r in base]
    rng = np.random.default_rng(0)
    planted = []
    for i, r in enumerate(base[:20]):  # caption copy (last word dropped), on a new random picture
        noise = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
        caption = " ".join(r["txt"].decode().split()[:-1])
        table.append({"id": f"zc{i:02d}", "caption": caption, "image": encode(noise)})
        planted.append((f"zc{i:02d}", r["id"], "near_duplicate_caption"))
    for i, (r, s) in enumerate(
        zip(base[20:40], spare, strict=False)
    ):  # image copy (resized), another caption
        img = Image.open(io.BytesIO(r["jpg"])).convert("RGB")
        small = encode(img.resize((img.width * 3 // 4, img.height * 3 // 4)), "JPEG", quality=80)
        table.append({"id": f"zi{i:02d}", "caption": s["txt"].decode(), "image": small})
        planted.append((f"zi{i:02d}", r["id"], "near_duplicate_image"))
    words = {t["id"]: len(t["caption"].split()) for t in table}
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pa.Table.from_pylist(table), inp / "pairs.parquet", row_group_size=50)
    outs = []
    for k, (workers, batch) in enumerate([(1, 32), (2, 500)]):
        out = tmp_path / f"out{k}"
        manifest = curate(
            inp,
            out,
            "input.id_column=id",
            "input.rows_per_part=70",
            f"ray.workers={workers}",
            f"ray.batch_rows={batch}",
        )
        outs.append((out, manifest))
    (out, manifest), (out2, _) = outs
    stage = next(s for s in manifest["stages"] if s["stage"] == "near_dedup")
    assert stage["reasons"] == {"near_duplicate_caption": 20, "near_duplicate_image": 20}
    rejected = {r["id"]: r for r in pads.dataset(out / "rejected").to_table().to_pylist()}
    data = (
        pads.dataset(out / "data").to_table(columns=["id", "dup_cluster", "dup_cluster_size"]).sort_by("id")
    )
    sizes = dict(zip(data["id"].to_pylist(), data["dup_cluster_size"].to_pylist(), strict=True))
    clusters = dict(zip(data["id"].to_pylist(), data["dup_cluster"].to_pylist(), strict=True))
    for copy, orig, reason in planted:
        # The survivor rule: more caption words first, then the smaller id (no alignment scores yet).
        survivor, loser = sorted((copy, orig), key=lambda k: (-words[k], k))
        assert rejected[loser]["stage"] == "near_dedup" and rejected[loser]["reason"] == reason
        assert rejected[loser]["detail"] == f"near duplicate of {survivor}"
        assert sizes[survivor] == 2 and clusters[survivor] == survivor
    assert sum(s == 1 for s in sizes.values()) == len(sizes) - 40
    assert all(clusters[k] == k for k, s in sizes.items() if s == 1)
    t = manifest["totals"]
    assert t["input_rows"] == t["output_rows"] + t["rejected_rows"] == len(table)
    # 1 worker with batches of 32 and 2 workers with batches of 500 keep the same rows, clusters and details.
    data2 = (
        pads.dataset(out2 / "data").to_table(columns=["id", "dup_cluster", "dup_cluster_size"]).sort_by("id")
    )
    assert data2.equals(data)
    rejected2 = pads.dataset(out2 / "rejected").to_table().sort_by("id")
    assert rejected2.equals(pads.dataset(out / "rejected").to_table().sort_by("id"))


def test_config_rejects_bad_near_dedup_keys():
    from vlmforge.common.errors import ConfigError

    for bad, field in [
        ("near_dedup.caption.bands=40", "bands"),
        ("near_dedup.survivor_rule=['bad key']", "rule"),
        ("near_dedup.image.max_distance=-1", "max_distance"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [bad] + (["near_dedup.caption.rows=8"] if "bands" in bad else []))
    assert load_config(None, []).near_dedup.caption.band_shape() == (16, 8)
    assert (CAPTION, IMAGE) == (1, 2)
