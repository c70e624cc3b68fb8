"""`vlmforge eval-curation`: proxy evaluation of curated sets, DataComp-style.

For every curated output the same small contrastive model (the ``clip`` stage) is trained for the same
number of samples seen, once per seed, through the same launcher `vlmforge train` uses (DeepSpeed; GPUs
when present); then it is evaluated on a held-out set that none of the runs holds: image-to-text and
text-to-image recall@k within pools of pairs, and zero-shot classification where the set has class labels.

Fairness: one tokenizer for every run (trained on the eval set's captions unless one is given, so it does
not depend on which runs are compared), `data.seed` and `train.seed` set from the seed, no held-out split
inside the runs (the eval set is the held-out data), and the eval pairs whose image hash or normalised
caption any of the runs holds are dropped before evaluating (the count is reported).
The models and the tokenizer go to ``RUN/eval_curation/`` (``OUTPUT/<nn>-<name>/`` with ``--output``); the
results to ``RUN/eval_curation.json``, which `vlmforge stats A --compare B [--html]` shows side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from vlmforge.common.errors import InputError, JobError
from vlmforge.common.files import write_json
from vlmforge.pipeline.evaluate.heldout import (
    EvalSet,
    PairKeys,
    is_curated,
    overlap,
    pair_keys,
    read_eval_set,
)
from vlmforge.training import retrieval
from vlmforge.training.config import TrainConfig, load_train_config
from vlmforge.training.eval_results import DEFAULT_CONFIG, DEFAULT_PROMPTS, result_path, summarise
from vlmforge.training.tokenizer import train_tokenizer


@dataclass
class Request:
    """What one `vlmforge eval-curation` call evaluates, and how."""

    runs: list[Path]
    eval_set: Path
    budget: int  # samples seen per training run
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    config: Path = DEFAULT_CONFIG
    overrides: list[str] = field(default_factory=list)  # train config --set
    output: Path | None = None  # None: RUN/eval_curation/ for each run
    tokenizer: Path | None = None
    labels: Path | None = None
    eval_input: list[str] = field(default_factory=list)  # reader settings of the eval set
    pool: int = 100
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    nproc: int = 1
    launcher: str = "auto"  # auto / deepspeed / torchrun, as `vlmforge train`; inprocess: this process
    progress: bool = True


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def work_dir(req: Request, run: Path, index: int) -> Path:
    """Where a run's tokenizer and seed runs go."""
    if req.output is None:
        return run / "eval_curation"
    return req.output / f"{index:02d}-{run.resolve().name}"


def check_request(req: Request) -> TrainConfig:
    """Fail before any work on a missing run, eval set, bad config or a budget below one step."""
    for run in req.runs:
        if not run.is_dir():
            raise InputError(f"run directory not found: {run}")
        if not is_curated(run):
            raise InputError(f"{run} is not a curated output (no data/*.parquet): run `vlmforge curate`")
    if not req.eval_set.exists():
        raise InputError(f"--eval-set: {req.eval_set} not found (make one: vlmforge sample-data DIR --eval)")
    if req.tokenizer is not None and not req.tokenizer.is_file():
        raise InputError(f"--tokenizer: {req.tokenizer} not found")
    if not req.seeds:
        raise ValueError("--seeds: give at least one seed")
    if req.launcher == "inprocess" and req.nproc != 1:
        raise ValueError("--launcher inprocess runs one process: use --nproc 1")
    cfg = load_train_config(req.config, req.overrides)
    if cfg.task != "clip":
        raise ValueError(f"{req.config}: task is {cfg.task!r}; eval-curation trains a clip model")
    per_step = samples_per_step(cfg, req.nproc)
    if req.budget < per_step:
        raise ValueError(
            f"--budget {req.budget} is less than one step ({per_step} samples: train.micro_batch_size "
            f"{cfg.train.micro_batch_size} x train.grad_accum {cfg.train.grad_accum} x {req.nproc} processes)"
        )
    return cfg


def samples_per_step(cfg: TrainConfig, nproc: int) -> int:
    return cfg.train.micro_batch_size * cfg.train.grad_accum * nproc


def decontaminate(eval_set: EvalSet, runs: list[Path]) -> tuple[EvalSet, dict[str, int]]:
    """The eval pairs that share no image hash and no normalised caption with any run."""
    keys = PairKeys()
    for run in runs:
        keys.update(pair_keys(run))
    masks = overlap(eval_set, keys)
    either = masks["image"] | masks["caption"]
    dropped = {"image": int(masks["image"].sum()), "caption": int(masks["caption"].sum()),
               "either": int(either.sum())}
    kept = eval_set.select(~either)
    if len(kept) < 2:
        raise InputError(f"--eval-set: {len(kept)} pairs left once those in the training runs are dropped")
    return kept, dropped


def seed_overrides(
    req: Request, cfg: TrainConfig, run: Path, tokenizer: Path, out: Path, seed: int
) -> list[str]:
    """The train config overrides of one (run, seed): the budget in steps, seeds, paths, no inner eval."""
    steps = req.budget // samples_per_step(cfg, req.nproc)
    return [
        *req.overrides,
        f"data.path={json.dumps(str(run))}",
        f"tokenizer={json.dumps(str(tokenizer))}",
        f"train.output={json.dumps(str(out))}",
        f"train.steps={steps}",
        f"optim.warmup_steps={min(cfg.optim.warmup_steps, steps // 5)}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        "data.heldout_fraction=0",
        "eval.every=0",
        "train.save_every=0",
        f"train.progress={str(req.progress).lower()}",
    ]


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Training chatter (this process's and its launcher's children's) goes to stderr: stdout carries only
    the results (the table, or the JSON for machines)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def train_one(req: Request, overrides: list[str]) -> None:
    """One training run, through the launcher `vlmforge train` uses (or in this process)."""
    with stdout_to_stderr():
        _train(req, overrides)


def _train(req: Request, overrides: list[str]) -> None:
    if req.launcher == "inprocess":
        from vlmforge.training.train import run

        threads = torch.get_num_threads()
        try:
            run(load_train_config(req.config, overrides))
        finally:
            torch.set_num_threads(threads)  # the trainer sets one thread per rank on the CPU
        return
    from vlmforge.training.launch import launch

    code = launch(str(req.config), req.nproc, None, False, overrides, req.launcher)
    if code != 0:
        raise JobError(f"training failed (exit code {code}); the command is printed above")


def evaluate(
    run_dir: Path, tokenizer: Path, eval_set: EvalSet, pool: int, prompts: tuple[str, ...]
) -> dict[str, float]:
    """Retrieval recall@1/@5 both ways and (with labels) zero-shot accuracy of a trained clip run."""
    from vlmforge.pipeline.align.scorer import VlmforgeClipScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorer = VlmforgeClipScorer(run_dir, device, str(tokenizer))
    model, fmt = scorer.model, scorer.fmt
    image = retrieval.embed_images(model, fmt, eval_set.images)
    text = retrieval.embed_texts(model, fmt, eval_set.captions)
    metrics = retrieval.retrieval(image, text, pool)
    if eval_set.labels is not None:
        classes = sorted(set(eval_set.labels))
        prompt_emb = torch.stack(
            [retrieval.embed_texts(model, fmt, retrieval.prompts_for(c, prompts)) for c in classes]
        )
        target = torch.tensor([classes.index(label) for label in eval_set.labels])
        metrics["zero_shot"] = retrieval.zero_shot(image, retrieval.class_embeddings(prompt_emb), target)
    return metrics


def train_rows(run: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((run / "data").glob("*.parquet")))


def run_seed(req: Request, cfg: TrainConfig, run: Path, tokenizer: Path, out: Path, seed: int,
             eval_set: EvalSet) -> dict[str, Any]:
    """Train one (run, seed) into `out` (replacing an earlier one) and evaluate it."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    train_one(req, seed_overrides(req, cfg, run, tokenizer, out, seed))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(out, tokenizer, eval_set, req.pool, req.prompts)
    loss = json.loads((out / "summary.json").read_text())["final_train_loss"]
    return {"seed": seed, "metrics": metrics, "final_train_loss": loss, "train_s": round(train_s, 2),
            "eval_s": round(time.perf_counter() - t0, 2), "output": str(out)}


def evaluate_curation(req: Request, log: Callable[[str], None] = print) -> list[tuple[str, dict[str, Any]]]:
    """Train and evaluate every run for every seed; write each run's JSON; return (name, result) pairs."""
    cfg = check_request(req)
    eval_set, dropped = decontaminate(read_eval_set(req.eval_set, req.labels, req.eval_input), req.runs)
    log(f"eval set {req.eval_set}: {len(eval_set)} pairs ({dropped['either']} dropped as in a training run, "
        f"{eval_set.unreadable} unreadable)")
    per_step = samples_per_step(cfg, req.nproc)
    steps = req.budget // per_step
    classes = len(set(eval_set.labels)) if eval_set.labels is not None else 0
    eval_info = {"path": str(req.eval_set), "pairs": len(eval_set), "fingerprint": eval_set.fingerprint(),
                 "classes": classes, "dropped": dropped, "unreadable": eval_set.unreadable}
    names = [r.name if [x.name for x in req.runs].count(r.name) == 1 else str(r) for r in req.runs]
    results = []
    for index, (run, name) in enumerate(zip(req.runs, names, strict=True)):
        work = work_dir(req, run, index)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = req.tokenizer or work / "tokenizer.json"
        if req.tokenizer is None:  # the same captions give the same tokenizer for every run
            train_tokenizer(eval_set.captions, vocab_size(cfg), tokenizer)
        per_seed = []
        for seed in req.seeds:
            log(f"{run}: seed {seed}, {steps} steps of {per_step} samples -> {work / f'seed{seed}'}")
            per_seed.append(run_seed(req, cfg, run, tokenizer, work / f"seed{seed}", seed, eval_set))
        result = {
            "version": 1, "run": str(run), "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "train_rows": train_rows(run), "eval_set": eval_info,
            "settings": settings(req, cfg, tokenizer, len(eval_set), classes), "seeds": per_seed,
            "summary": summarise([s["metrics"] for s in per_seed]),
        }
        write_json(result_path(run), result)  # where `vlmforge stats` and its report read it
        results.append((name, result))
    return results


def settings(req: Request, cfg: TrainConfig, tokenizer: Path, pairs: int, classes: int) -> dict[str, Any]:
    """How a result was made; `eval_results.SAME` lists what two results must share to compare."""
    per_step = samples_per_step(cfg, req.nproc)
    steps = req.budget // per_step
    return {
        "config": str(req.config), "config_hash": config_hash(req, cfg),
        "tokenizer": str(tokenizer), "tokenizer_hash": _file_hash(tokenizer),
        "budget": req.budget, "steps": steps, "samples_per_step": per_step, "samples_seen": steps * per_step,
        "seeds": list(req.seeds), "pool": req.pool, "prompts": list(req.prompts) if classes else [],
        "chance": chance_levels(pairs, req.pool, classes), "nproc": req.nproc, "launcher": req.launcher,
    }


def chance_levels(pairs: int, pool: int, classes: int) -> dict[str, float]:
    """What a model that ignores its inputs scores: k / mean pool size, and 1 / classes."""
    size = pairs / len(retrieval.pools(pairs, pool))
    chance = {f"{d}_r{k}": min(k / size, 1.0) for d in ("i2t", "t2i") for k in retrieval.DEFAULT_KS}
    if classes:
        chance["zero_shot"] = 1 / classes
    return chance


def vocab_size(cfg: TrainConfig) -> int:
    """The text vocabulary of the model preset (the tokenizer must not exceed it)."""
    from vlmforge.training.train import model_config

    return model_config(cfg).decoder.vocab_size


def config_hash(req: Request, cfg: TrainConfig) -> str:
    """Hash of the training recipe apart from what differs per run or seed (data, output, seeds)."""
    payload = cfg.model_dump(mode="json", exclude={"data": {"path", "seed"}, "tokenizer": True,
                                                   "train": {"output", "seed", "progress"}})
    payload["nproc"] = req.nproc
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

