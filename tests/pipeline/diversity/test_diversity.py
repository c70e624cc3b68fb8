"""Phase 4 diversity resampling on captions with a planted head (three phrases in many rows) and a tail."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vlmforge.common.files import read_table_or_empty
from vlmforge.pipeline.config import DiversityConfig
from vlmforge.pipeline.diversity.phase import RESULT_SCHEMA, read_part, resolve_diversity

HEAD = ["red car street", "blue sky cloud", "green tree park"]  # no stop words: 5 n-grams each
PURE, MIXED, TAIL = 600, 100, 1200  # per phrase: rows of the phrase alone, of the phrase + a rare word
T = 100
F = PURE + MIXED  # document frequency of every head n-gram
HEAD_KEEP = 1 - (1 - T / F) ** 5  # exponent 1: each of 5 n-grams sampled with T/F
CFG = DiversityConfig(threshold=T, exponent=1.0)


def _captions() -> pa.Table:
    caps = [h for h in HEAD for _ in range(PURE)]
    caps += [f"{h} rare{k}x{i}" for k, h in enumerate(HEAD) for i in range(MIXED)]
    caps += [f"tail{i} thing{i % 40}" for i in range(TAIL)]
    order = np.random.default_rng(0).permutation(len(caps))
    return pa.table({"id": [f"r{i:05d}" for i in range(len(caps))], "caption": [caps[i] for i in order]})


@pytest.fixture(scope="module")
def captions() -> pa.Table:
    return _captions()


def _run(
    table: pa.Table, tmp: Path, parts: int, workers: int, cfg: DiversityConfig = CFG
) -> tuple[pa.Table, dict]:
    """Split `table` into `parts` parts (row i to part i % parts), resample, return all results by id."""
    src = tmp / "parts"
    src.mkdir(parents=True)
    names = [f"p{k}" for k in range(parts)]
    which = np.arange(table.num_rows) % parts
    for k, name in enumerate(names):
        pq.write_table(table.filter(pa.array(which == k)), src / f"{name}.parquet")
    out = tmp / "out"
    done = resolve_diversity(names, functools.partial(read_part, str(src)), out, cfg, workers)
    results = pa.concat_tables(
        [read_table_or_empty(out / f"{n}.parquet", RESULT_SCHEMA) for n in names]
    ).sort_by("id")
    return results, done


@pytest.fixture(scope="module")
def planted(captions, ray_local, tmp_path_factory) -> tuple[pa.Table, dict]:
    return _run(captions, tmp_path_factory.mktemp("planted"), parts=2, workers=1)


def _rows(captions: pa.Table, results: pa.Table, kind: str) -> pa.Table:
    """Results of the rows whose caption is a head phrase alone ('pure'), has a rare word ('mixed') or is
    a tail caption ('tail')."""
    caps = captions.sort_by("id")["caption"]
    pure = pc.is_in(caps, pa.array(HEAD))
    mask = {"pure": pure, "tail": pc.starts_with(caps, "tail")}.get(kind)
    if mask is None:
        mask = pc.invert(pc.or_(pure, pc.starts_with(caps, "tail")))
    return results.filter(mask)


def test_rows_with_a_rare_ngram_all_survive(captions, planted):
    results, done = planted
    assert results.num_rows == captions.num_rows
    for kind in ("mixed", "tail"):
        rows = _rows(captions, results, kind)
        assert rows.num_rows == (3 * MIXED if kind == "mixed" else TAIL)
        assert rows["reason"].null_count == rows.num_rows
        assert pc.all(pc.equal(rows["diversity_keep_prob"], 1.0)).as_py()
    assert done["counters"]["always_kept"] == 3 * MIXED + TAIL
    assert done["counters"]["no_vocab"] == 0


def test_head_is_thinned_as_the_formula_predicts(captions, planted):
    results, done = planted
    pure = _rows(captions, results, "pure")
    np.testing.assert_allclose(pure["diversity_keep_prob"].to_numpy(), HEAD_KEEP, rtol=1e-6)
    n = pure.num_rows
    kept = pure["reason"].null_count
    sigma = np.sqrt(n * HEAD_KEEP * (1 - HEAD_KEEP))
    assert abs(kept - n * HEAD_KEEP) <= 4 * sigma
    assert done["reasons"] == {"diversity_resample": n - kept}
    dropped = pure.filter(pc.is_valid(pure["reason"]))
    assert set(dropped["reason"].to_pylist()) == {"diversity_resample"}
    assert dropped["detail"][0].as_py() == f"keep probability {HEAD_KEEP:.4g}"

    top = done["stats"]["top_ngrams"]
    head_grams = {g for h in HEAD for g in (*h.split(), " ".join(h.split()[:2]), " ".join(h.split()[1:]))}
    assert {t["ngram"] for t in top[:15]} == head_grams
    assert all(t["before"] == F for t in top[:15])
    head_after = sum(t["after"] for t in top[:15])
    assert head_after == 5 * (3 * MIXED + kept)
    # share of the head n-grams: before vs the most the formula allows (4 sigma above the expected count)
    rest = 2 * 3 * MIXED + 3 * TAIL  # document counts of the other n-grams, none of which is dropped
    share_before = 15 * F / (15 * F + rest)
    worst = 5 * (3 * MIXED + n * HEAD_KEEP + 4 * sigma)
    share_after = head_after / (head_after + rest)
    assert share_after <= worst / (worst + rest) < share_before
    before, after = done["stats"]["before"], done["stats"]["after"]
    assert after["top100_share"] < before["top100_share"]
    assert after["entropy"] > before["entropy"]
    assert before["distinct"] == after["distinct"] == done["counters"]["vocabulary"]


def test_scores_rank_rare_captions_above_the_head(captions, planted):
    results, _ = planted
    head = _rows(captions, results, "pure")["diversity_score"].to_numpy()
    tail = _rows(captions, results, "tail")["diversity_score"].to_numpy()
    assert np.ptp(head) == 0 and head[0] > 0
    assert tail.min() > head.max()


def test_same_rows_kept_with_any_split_workers_and_rerun(captions, planted, tmp_path):
    results, _ = planted
    other, _ = _run(captions, tmp_path / "b", parts=5, workers=2)
    assert other.equals(results)
    uncached, _ = _run(
        captions, tmp_path / "e", parts=3, workers=2, cfg=CFG.model_copy(update={"cache_ngrams": False})
    )
    assert uncached.equals(results)
    again, _ = _run(captions, tmp_path / "c", parts=2, workers=1)
    assert again.equals(results)
    reseeded, _ = _run(captions, tmp_path / "d", parts=2, workers=2, cfg=CFG.model_copy(update={"seed": 1}))
    assert not reseeded["reason"].equals(results["reason"])


@pytest.mark.parametrize("suffix", [".txt", ".parquet"])
def test_reference_vocabulary(captions, ray_local, tmp_path, suffix):
    docs = ["Red car, street!", "blue sky", "cloud"]  # n-grams 'sky cloud' and green ones are not in it
    path = tmp_path / f"ref{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(docs) + "\n")
    else:
        pq.write_table(pa.table({"body": docs}), path)
    cfg = CFG.model_copy(update={"reference": str(path), "reference_column": "body"})
    results, done = _run(captions, tmp_path, parts=3, workers=2, cfg=cfg)
    caps = captions.sort_by("id")["caption"]
    no_vocab = pc.or_(pc.starts_with(caps, "green"), pc.starts_with(caps, "tail"))
    assert done["counters"]["no_vocab"] == PURE + MIXED + TAIL
    assert pc.all(pc.equal(results.filter(no_vocab)["diversity_keep_prob"], 1.0)).as_py()
    assert done["stats"]["before"]["distinct"] == done["counters"]["vocabulary"] == 5 + 3 + 1
    # mixed red rows are now sampled like pure ones: their rare word is outside the vocabulary
    red = results.filter(pc.starts_with(caps, "red"))
    np.testing.assert_allclose(red["diversity_keep_prob"].to_numpy(), 1 - (1 - T / F) ** 5, rtol=1e-6)
    blue = results.filter(pc.starts_with(caps, "blue"))  # blue, sky, cloud, 'blue sky' in the vocabulary
    np.testing.assert_allclose(blue["diversity_keep_prob"].to_numpy(), 1 - (1 - T / F) ** 4, rtol=1e-6)
