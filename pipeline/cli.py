"""The `vlmforge` command line: curate, stats, sample-data, synth, cache, eval-curation (and training's)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlmforge.common.storage import location

DESCRIPTION = """\
vlmforge: curate image-text pairs on Ray Data, then pretrain a vision-language model with DeepSpeed.

  vlmforge sample-data demo/raw --n 2000          # a small web-crawl-like dataset to try things on
  vlmforge curate configs/curate/default.yaml --input demo/raw --output demo/curated
  vlmforge stats demo/curated                     # what each stage kept and dropped
"""


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "curate",
        help="run a curation job (phase 1 filters, global dedup, Parquet shards)",
        description="Run the curation recipe in CONFIG on Ray. Every phase's results are cached under a "
        "fingerprint of its input and the config keys it reads, so a re-run resumes after a crash, and a "
        "run with a changed config on the same output recomputes only from the first phase the change "
        "affects (see --plan). A finished output with the same config is left as it is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  vlmforge curate configs/curate/default.yaml --input shards/ --output curated/\n"
        "  vlmforge curate cfg.yaml --address auto --set language.min_score=0.6 --set image.min_side=128\n"
        "  vlmforge curate cfg.yaml --output curated/ --set near_dedup.caption.threshold=0.9 --plan",
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/curate/default.yaml")
    p.add_argument(
        "--input", help="input: a directory, file or glob of .tar / .parquet / .jsonl (input.path)"
    )
    p.add_argument("--output", help="output directory (output.path)")
    p.add_argument("--address", help="Ray cluster address ('auto' or HOST:PORT); default starts a local Ray")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set caption.max_chars=500 (repeatable)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="discard the output and its cache, then run from scratch"
    )
    p.add_argument(
        "--plan", action="store_true", help="print which phases would be reused or run, and why; run nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")
    p.set_defaults(handler=_curate)


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="print the funnel, languages and size distributions of an output; write an HTML report",
        description="Summarise a curated output from its manifest and column reads.\nWith --html, write a "
        "self-contained HTML report (charts, example gallery; it needs no network to view).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  vlmforge stats curated/ --html report.html\n"
        "  vlmforge stats run_a/ --compare run_b/ --html a_vs_b.html   # side by side, kept-id difference\n"
        "  vlmforge stats curated/web curated/tables curated/grounding   # per-source counts of a mix",
    )
    p.add_argument(
        "dir",
        nargs="+",
        help="output directory of `vlmforge curate`; several (the sources of a training mix, curated one "
        "by one): a table of each one's rows in, kept and rejected",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML report to PATH")
    p.add_argument("--compare", metavar="OTHER_DIR", help="a second output to compare with DIR, side by side")
    p.add_argument("--gallery", type=int, default=24, metavar="N", help="kept pairs shown (default 24)")
    p.add_argument(
        "--per-reason", type=int, default=6, metavar="N", help="rejected pairs shown per reason (default 6)"
    )
    p.set_defaults(handler=_stats)


def _add_sample_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample-data",
        help="write a synthetic web-crawl-like dataset (webdataset tars + ground truth)",
        description="Write N drawn-scene image-text pairs as img2dataset-style webdataset shards, with "
        "injected defects (other languages, duplicates, boilerplate, broken images ...) recorded in "
        "OUT/ground_truth.jsonl.",
    )
    p.add_argument("out", help="output directory")
    p.add_argument("--n", type=int, default=None, help="number of pairs (default 2000; with --eval 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shard-size", type=int, default=500, help="samples per tar shard (default 500)")
    p.add_argument(
        "--eval",
        action="store_true",
        help="write a held-out evaluation set instead: clean single-object pairs with long captions and a "
        "class label (the shape) in OUT/labels.jsonl, drawn from a random stream no training set uses",
    )
    p.add_argument(
        "--video",
        action="store_true",
        help="write synthetic video clips instead (key.mp4 + key.txt: moving, appearing, changing shapes "
        "with time-dependent captions) with planted defects (corrupt, truncated, audio-only, header bombs, "
        "wrong language, re-encoded/resized/trimmed duplicates) in OUT/ground_truth.jsonl",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="DIR",
        help="with --eval: a training set (raw input or curated output) whose image hashes and normalised "
        "captions no eval pair may repeat (repeatable)",
    )
    p.set_defaults(handler=_sample_data)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from vlmforge.pipeline.synth import KINDS

    p = sub.add_parser(
        "synth",
        help="write synthetic structured pairs (charts, tables, equations, flowcharts, grounding, "
        "screenshots, qa)",
        description="Write N generated pairs of KIND as webdataset shards for `vlmforge curate`: caption = "
        "the target text (markdown table, LaTeX, Mermaid flowchart, boxes, HTML, question-answer), KEY.json "
        "= its structure. Deterministic from --seed.",
        epilog="examples:\n  vlmforge synth tables synth/tables --n 2000\n"
        "  vlmforge curate configs/curate/synthetic.yaml --input synth/tables --output curated/tables",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=KINDS, help="what to generate")
    p.add_argument("out", help="output directory")
    p.add_argument("--n", type=int, default=2000, help="number of pairs (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shard-size", type=int, default=500, help="samples per tar shard (default 500)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.synth import write_synth

    shards = write_synth(args.kind, args.out, args.n, args.seed, args.shard_size, args.workers, progress=True)
    print(f"wrote {args.n} {args.kind} pairs to {args.out} ({len(shards)} shards)")
    return 0


def _add_eval_curation(sub: argparse._SubParsersAction) -> None:
    from vlmforge.training.eval_results import DEFAULT_CONFIG, DEFAULT_PROMPTS

    p = sub.add_parser(
        "eval-curation",
        help="train the same small CLIP on each curated output and compare them on a held-out set",
        description="Proxy evaluation of curation choices, DataComp-style. For every curated output RUN the "
        "clip stage trains for the same number of samples seen (--budget), once per seed, through the "
        "launcher `vlmforge train` uses (DeepSpeed; GPUs when present); each model is then evaluated on a "
        "held-out set no run holds (pairs sharing an image hash or normalised caption with any run are "
        "dropped first): image->text and text->image recall@1/@5 within pools of --pool pairs, and "
        "zero-shot classification accuracy when the set has class labels. One tokenizer for every run, "
        "trained on the eval set's captions unless --tokenizer is given. Writes RUN/eval_curation.json "
        "(shown by `vlmforge stats RUN --compare OTHER --html`) and prints the table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  vlmforge sample-data eval/ --eval --exclude demo/raw\n"
        "  vlmforge curate configs/curate/unfiltered.yaml --input demo/raw --output demo/unfiltered\n"
        "  vlmforge eval-curation demo/curated demo/unfiltered --eval-set eval/ --budget 12800\n"
        "  vlmforge eval-curation a/ b/ --eval-set eval/ --budget 12800 --seeds 0 --nproc 8   # 8 GPUs",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="curated output directories to compare")
    p.add_argument("--eval-set", required=True, metavar="DIR",
                   help="held-out pairs in any input format (e.g. `vlmforge sample-data DIR --eval`)")
    p.add_argument("--budget", type=int, required=True, metavar="N",
                   help="samples seen by each training run (steps: N / (micro-batch x accumulation x nproc))")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="training seeds, each a separate run (default 0 1 2)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="clip train config (default: the repo's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train config key, e.g. --set train.micro_batch_size=32 (repeatable)")
    p.add_argument("--output", metavar="DIR",
                   help="where the models and tokenizer go (default: RUN/eval_curation/ of each run)")
    p.add_argument("--tokenizer", metavar="JSON", help="use this tokenizer.json for every run")
    p.add_argument("--labels", metavar="JSONL",
                   help='class labels: JSON lines {"id": ..., "label": ...} (default EVAL_SET/labels.jsonl)')
    p.add_argument("--eval-input", action="append", default=[], metavar="KEY=VALUE",
                   help="reader setting of the eval set, as the curate input section: caption_column=text")
    p.add_argument("--pool", type=int, default=100, help="retrieval candidates per query (default 100)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEMPLATE",
                   help="zero-shot prompt with {label} and {a} (a/an), repeatable (default: "
                   + "; ".join(DEFAULT_PROMPTS) + ")")
    p.add_argument("--nproc", type=int, default=1, help="training processes (devices) per run (default 1)")
    p.add_argument("--launcher", choices=("auto", "deepspeed", "torchrun", "inprocess"), default="auto",
                   help="as `vlmforge train`; inprocess: train in this process (one process, no launcher)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--no-progress", action="store_true", help="hide the training progress bars")
    p.set_defaults(handler=_eval_curation)


def _curate(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.config import load_config

    overrides = list(args.set)
    for key, value in (
        ("input.path", args.input),
        ("output.path", args.output),
        ("ray.address", args.address),
    ):
        if value:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_config(args.config, overrides)
    if args.plan:
        return _print_plan(cfg)
    from vlmforge.pipeline.job import run_curation
    from vlmforge.pipeline.report.stats import compute_stats, print_stats

    manifest = run_curation(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    print_stats(compute_stats(cfg.output.path))
    if not manifest.get("already_complete"):
        reused = manifest["phases"]["phase1"]["reused"]
        if reused:
            print(
                f"resumed: {reused} of {manifest['input']['parts']} phase-1 parts reused from an earlier run"
            )
    return 0


def _print_plan(cfg) -> int:
    from rich.console import Console
    from rich.table import Table

    from vlmforge.pipeline.cache.plan import plan

    if not cfg.output.path:
        raise ValueError("--plan needs an output: pass --output DIR or set output.path")
    table = Table(title=f"plan for {cfg.output.path}")
    for col in ("phase", "action", "why"):
        table.add_column(col)
    for row in plan(cfg):
        table.add_row(row["phase"], row["action"], row["why"])
    Console().print(table)
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="manage the phase cache of curated outputs",
        description="`vlmforge cache gc OUT [OUT ...]` deletes the cached phase results that none of the "
        "given outputs' manifests refers to (results of earlier configs), keeping what those runs need to "
        "be re-run or resumed.",
    )
    p.add_argument("action", choices=["gc"], help="gc: delete unreferenced cache entries")
    p.add_argument("outputs", nargs="+", help="curated output directories whose runs to keep")
    p.set_defaults(handler=_cache)


def _cache(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.cache.plan import gc

    freed = gc([location(o) for o in args.outputs])
    print(f"removed {freed['entries']} cache entries, {freed['bytes'] / 1e6:.1f} MB")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.report.stats import (
        compare_kept_ids,
        compute_stats,
        config_diff,
        load_manifest,
        print_source_counts,
        print_stats,
        source_counts,
    )

    if len(args.dir) > 1:
        if args.html or args.compare:
            raise ValueError("--html and --compare take one DIR (several: the per-source table only)")
        counts = source_counts(args.dir)
        if args.json:
            print(json.dumps(counts, indent=2))
        else:
            print_source_counts(counts)
        return 0
    args.dir = args.dir[0]
    if args.html:
        from vlmforge.pipeline.report.html import Options, write_report

        dirs = [args.dir] + ([args.compare] if args.compare else [])
        opts = Options(kept_examples=args.gallery, rejected_per_reason=args.per_reason)
        info = write_report(dirs, args.html, opts)
        print(f"wrote {args.html} ({info['bytes'] / 1e6:.1f} MB) in {info['total_s']:.1f} s")
        return 0
    stats = compute_stats(args.dir)
    other = compute_stats(args.compare) if args.compare else None
    diff = compare_kept_ids(args.dir, args.compare) if args.compare else None
    changed = config_diff(load_manifest(args.dir), load_manifest(args.compare)) if args.compare else None
    if args.json:
        both = {"a": stats, "b": other, "kept_ids": diff, "config_diff": changed}
        print(json.dumps(both if other else stats, indent=2, default=str))
        return 0
    print_stats(stats)
    evaluated = [(Path(s["output"]).name, s["eval_curation"]) for s in (stats, other)
                 if s is not None and s["eval_curation"] is not None]
    if other is not None:
        print_stats(other)
        print(f"kept ids: {diff['both']} in both, {diff['only_a']} only in {args.dir}, "
              f"{diff['only_b']} only in {args.compare}")
        for c in changed:
            print(f"config {c['key']}: {c['a']!r} -> {c['b']!r}  (reruns from {c['phase'] or 'nothing'})")
        if not changed:
            print("config: the two runs used the same recipe")
    if evaluated:
        from vlmforge.training.eval_results import print_table

        print_table(evaluated)
    return 0


def _eval_set(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.evaluate.heldout import PairKeys, pair_keys
    from vlmforge.pipeline.sample_data import write_eval_set

    keys = PairKeys()
    for d in args.exclude:
        if not Path(d).exists():
            raise FileNotFoundError(f"--exclude: {d} not found")
        keys.update(pair_keys(d))
    n = 1000 if args.n is None else args.n
    summary = write_eval_set(Path(args.out), n=n, seed=args.seed, shard_size=args.shard_size, exclude=keys,
                             progress=True)
    print(f"wrote {summary['n']} labelled eval pairs to {args.out} ({len(summary['classes'])} classes), "
          f"apart from {len(keys.images)} images and {len(keys.captions)} captions of "
          f"{len(args.exclude)} training set(s)")
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.sample_data import write_sample_data

    if args.exclude and not args.eval:
        raise ValueError("--exclude goes with --eval")
    if args.eval:
        return _eval_set(args)
    if args.video:
        from vlmforge.pipeline.sample_data.video import write_video_sample_data

        n = 200 if args.n is None else args.n
        counts = write_video_sample_data(Path(args.out), n, args.seed)["counts"]
        print(f"wrote {n} clips to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    args.n = 2000 if args.n is None else args.n
    if args.n <= 0:
        raise ValueError("--n must be positive")
    summary = write_sample_data(
        Path(args.out), n=args.n, seed=args.seed, shard_size=args.shard_size, progress=True
    )
    print(
        f"wrote {summary['n']} pairs to {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    )
    return 0


def _eval_curation(args: argparse.Namespace) -> int:
    from vlmforge.pipeline.evaluate.eval_curation import Request, evaluate_curation
    from vlmforge.training.eval_results import DEFAULT_PROMPTS, print_table

    req = Request(
        runs=[Path(r) for r in args.runs], eval_set=Path(args.eval_set), budget=args.budget, seeds=args.seeds,
        config=Path(args.config), overrides=list(args.set), output=Path(args.output) if args.output else None,
        tokenizer=Path(args.tokenizer) if args.tokenizer else None,
        labels=Path(args.labels) if args.labels else None, eval_input=list(args.eval_input), pool=args.pool,
        prompts=tuple(args.prompt or DEFAULT_PROMPTS), nproc=args.nproc, launcher=args.launcher,
        progress=not args.no_progress,
    )
    results = evaluate_curation(req, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({name: r for name, r in results}, indent=2))
    else:
        print_table(results)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmforge", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_curate(sub)
    _add_stats(sub)
    _add_sample_data(sub)
    _add_synth(sub)
    _add_cache(sub)
    _add_eval_curation(sub)
    from vlmforge.training.cli import register as register_training

    register_training(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlmforge.common.errors import AccountingError, ConfigError, InputError, JobError

    try:
        return args.handler(args)
    except (ConfigError, InputError, JobError, FileNotFoundError, ValueError) as e:
        print(f"vlmforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except AccountingError as e:
        print(f"vlmforge {args.command}: internal accounting error (please report): {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
