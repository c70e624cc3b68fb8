"""Training on a mix of curated outputs (data.sources): quotas, interleaving, resume, per-source metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import train
from train_support import recipe_data, sample_rows, write_curated

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import SourceSection, load_train_config
from vlmforge.training.data import (
    SampleFormat,
    StreamSpec,
    build_mix_index,
    epoch_rows,
    quotas,
    slot_rows,
    source_indexes,
    train_loader,
)
from vlmforge.training.metrics import read_metrics
from vlmforge.training.tokenizer import TextTokenizer


def three_sources(tmp_path: Path) -> list[SourceSection]:
    """web: 300 rows in 3 shards; charts: 60 rows; qa: 24 rows; ids prefixed by their source."""
    rows = list(sample_rows())
    out = []
    for name, n, shard, weight in (("web", 300, 100, 2.0), ("charts", 60, 25, 1.0), ("qa", 24, 24, 1.0)):
        mine = [{**r, "id": f"{name}-{r['id']}"} for r in rows[:n]]
        path = write_curated(tmp_path / name, [mine[i : i + shard] for i in range(0, n, shard)], 16)
        out.append(SourceSection(path=str(path), weight=weight))
    return out


def test_quotas_sum_and_follow_weights():
    assert quotas(10, [1, 1, 1]).tolist() == [4, 3, 3]
    assert quotas(384, [2, 1, 1]).tolist() == [192, 96, 96]
    assert quotas(7, [1e-9, 1]).sum() == 7


def test_an_epoch_holds_each_source_by_weight_interleaved(tmp_path):
    index = build_mix_index(three_sources(tmp_path), "train", 0.0)
    assert index.sources == ["web", "charts", "qa"] and index.total == 384
    shards, rows = epoch_rows(index, 0, 0)
    source = np.array(index.file_source)[shards]
    assert np.bincount(source).tolist() == [192, 96, 96]
    # qa has 24 rows and a quota of 96: each row 4 times; web 192 of its 300 rows, none twice
    pairs = Counter(zip(shards.tolist(), rows.tolist(), strict=True))
    assert {n for (s, _), n in pairs.items() if index.file_source[s] == 2} == {4}
    assert {n for (s, _), n in pairs.items() if index.file_source[s] == 0} == {1}
    for window in range(0, 384, 32):  # smooth: every 32 samples hold 16/8/8 +- 1
        counts = np.bincount(source[window : window + 32], minlength=3)
        assert np.all(np.abs(counts - [16, 8, 8]) <= 1), counts
    again = epoch_rows(index, 0, 0)
    assert np.array_equal(again[0], shards) and np.array_equal(again[1], rows)
    assert not np.array_equal(epoch_rows(index, 0, 1)[1], rows)  # a new order next epoch
    seen = Counter()
    for slot in range(3):
        s, r = slot_rows(index, 0, 0, slot, 3)
        seen.update(zip(s.tolist(), r.tolist(), strict=True))
    assert seen == pairs  # the readers' slices are the epoch, cut in three


def test_heldout_is_evaluated_source_by_source(tmp_path):
    sources = three_sources(tmp_path)
    heldout = source_indexes(build_mix_index(sources, "heldout", 0.3))
    assert list(heldout) == ["web", "charts", "qa"]
    for name, index in heldout.items():
        assert index.total > 0 and all(f.startswith(f"{name}/") for f in index.files)


def test_a_mixed_stream_resumes_exactly_and_labels_each_sample(tmp_path):
    index = build_mix_index(three_sources(tmp_path), "train", 0.0)
    tok = TextTokenizer(recipe_data()[1])
    fmt = SampleFormat(tok.bos_id, tok.eos_id, None, None, 40, encode=tok.encode)
    spec = StreamSpec(seed=1, shuffle_buffer=30, micro_batch_size=8, world_size=1, num_workers=2)
    stream, loader = train_loader(index, fmt, spec, rank=0)
    n = stream.steps_per_epoch + 5
    it = iter(loader)
    full = [next(it) for _ in range(n)]
    for batch in full:  # each sample's label is the source its id came from
        assert [index.sources[s] for s in batch["sources"]] == [i.split("-")[0] for i in batch["ids"]]
    labels = Counter(index.sources[s] for b in full[: stream.steps_per_epoch] for s in b["sources"])
    total = sum(labels.values())
    assert labels["web"] / total == pytest.approx(0.5, abs=0.03)
    assert labels["qa"] / total == pytest.approx(0.25, abs=0.03)
    for start in (3, stream.steps_per_epoch + 1):
        _, resumed = train_loader(index, fmt, spec, rank=0, start_batches=start)
        it = iter(resumed)
        assert [next(it)["ids"] for _ in range(n - start)] == [b["ids"] for b in full[start:]]


def test_sources_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.path and data.sources"):
        load_train_config(None, ["data.path=x", 'data.sources=[{"path": "a"}]'])
    with pytest.raises(ConfigError, match="used twice"):
        load_train_config(None, ['data.sources=[{"path": "a/web"}, {"path": "b/web"}]'])
    with pytest.raises(ConfigError, match="weight"):
        load_train_config(None, ['data.sources=[{"path": "a", "weight": 0}]'])
    cfg = load_train_config(None, ['data.sources=[{"path": "a"}]', "tokenizer=t", "train.output=o"])
    cfg.require("data.path", "tokenizer", "train.output")  # the mix stands in for data.path
    with pytest.raises(FileNotFoundError, match=r"data.sources \(nowhere\)"):
        build_mix_index([SourceSection(path=str(tmp_path / "nowhere"))], "train", 0.0)


@pytest.mark.slow
def test_vlmforge_train_on_a_mix_logs_each_source(tmp_path):
    sources = three_sources(tmp_path)
    mix = "[" + ", ".join(f'{{"path": "{s.path}", "weight": {s.weight}}}' for s in sources) + "]"
    result = train(
        "configs/train/text_lm.yaml", tmp_path / "run", "data.path=null", f"data.sources={mix}",
        "train.steps=6", "optim.warmup_steps=1", "train.micro_batch_size=8", "data.heldout_fraction=0.2",
        "eval.max_rows=16",
    )  # fmt: skip
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    per_source = Counter()
    for record in steps:
        per_source.update({k.split("/")[1]: v for k, v in record.items() if k.startswith("samples/")})
    assert sum(per_source.values()) == 6 * 8 and set(per_source) == {"web", "charts", "qa"}
    assert per_source["web"] > per_source["charts"]
    for record in steps:  # each source's loss, where the step had samples of it
        with_samples = {k.split("/")[1] for k, v in record.items() if k.startswith("samples/") and v}
        assert {k.split("/")[1] for k in record if k.startswith("loss/")} == with_samples
    # exact under gradient accumulation: step 1 as 2 micro-batches of 4 has the same per-source losses
    accumulated = train(
        "configs/train/text_lm.yaml", tmp_path / "accum", "data.path=null", f"data.sources={mix}",
        "train.steps=1", "optim.warmup_steps=1", "train.micro_batch_size=4", "train.grad_accum=2",
        "data.heldout_fraction=0.2", "eval.max_rows=16",
    )  # fmt: skip
    first = read_metrics(tmp_path / "accum" / "metrics.jsonl", "train")[0]
    losses = {k: v for k, v in steps[0].items() if k.startswith("loss/")}
    assert losses and {k: first[k] for k in losses} == pytest.approx(losses, rel=1e-5)
    assert accumulated.summary["steps"] == 1
    after = result.summary["eval_after"]
    for name in ("web", "charts", "qa"):
        assert f"{name}/loss" in after
    assert after["loss"] == pytest.approx(np.mean([after[f"{n}/loss"] for n in ("web", "charts", "qa")]))
