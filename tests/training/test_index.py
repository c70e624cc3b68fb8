"""The data index: the held-out rule evaluated a row group at a time, the compact selection, and the
stream's outputs, which must stay those recorded with the per-row index it replaced."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sources import three_sources
from train_support import recipe_data, sample_rows, write_curated

from vlmforge.training import data as data_module
from vlmforge.training import index as index_module
from vlmforge.training.config import SubsetSection
from vlmforge.training.data import (
    CaptionStream,
    SampleFormat,
    StreamSpec,
    build_index,
    build_mix_index,
    epoch_rows,
    heldout_rows,
    train_loader,
)
from vlmforge.training.index import heldout_mask, is_heldout
from vlmforge.training.tokenizer import TextTokenizer

EXPECT = json.loads((Path(__file__).parent / "stream_expectation.json").read_text())


def test_heldout_mask_is_is_heldout_for_any_id(monkeypatch):
    monkeypatch.setattr(index_module, "_CHUNK", 64)  # several chunks, one cut inside a run of long ids
    rng = np.random.default_rng(0)
    ids = ["", "a", "000000004", "é✓ unicode ∑", "x" * 111, "y" * 127, "z" * 128, "w" * 129, "v" * 300]
    ids += ["".join(map(chr, rng.integers(32, 0x2FF, size=n))) for n in rng.integers(0, 200, size=300)]
    for fraction in (0.0, 0.05, 0.5, 0.999, 1.0):
        want = [is_heldout(i, fraction) for i in ids]
        for arr in (pa.array(ids), pa.array(ids, pa.large_string()), pa.array(ids).slice(7)):
            offset = len(ids) - len(arr)
            assert heldout_mask(arr, fraction).tolist() == want[offset:]
    assert 0 < sum(want) < len(ids) or fraction == 1.0
    with pytest.raises(ValueError, match="1 null id"):
        heldout_mask(pa.array(["a", None]), 0.1)
    with pytest.raises(ValueError, match="must hold strings"):
        heldout_mask(pa.array([1, 2]), 0.1)


def test_rows_of_reads_a_shard_piecewise(tmp_path):
    index = build_index(write_curated(tmp_path, [list(sample_rows())[:203]], row_group_rows=16), "train", 0.3)
    every = index.rows[0]
    assert len(every) == index.total and np.all(np.diff(every) > 0)
    assert every.tolist() == [i for i, r in enumerate(sample_rows()[:203]) if not is_heldout(r["id"], 0.3)]
    for lo, hi in ((0, 1), (5, 40), (17, 18), (len(every) - 3, len(every) + 9), (9, 9)):
        assert index.rows_of(0, lo, hi).tolist() == every[lo:hi].tolist()
    assert index.nbytes < every.nbytes  # a bit a row, not 8 bytes


def order_of(index, spec, fmt) -> dict[str, list]:
    out = {}
    for slot in range(spec.num_slots):
        stream = CaptionStream(index, fmt, spec, rank=slot // spec.readers_per_rank)
        for e in (0, 1):
            shards, rows, order = stream.epoch_order(e, slot)
            out[f"{slot}/{e}"] = [[index.files[int(shards[i])], int(rows[i])] for i in order[:12]]
    return out


def test_stream_is_the_one_recorded_before_the_compact_index(tmp_path):
    """Orders, batches, positions and fingerprints equal those the per-row index gave (recorded)."""
    curated, tokenizer = recipe_data()
    tok = TextTokenizer(tokenizer)
    fmt = SampleFormat(tok.bos_id, tok.eos_id, None, None, 40, encode=tok.encode)
    want = EXPECT["single"]
    spec = StreamSpec(seed=7, shuffle_buffer=16, micro_batch_size=4, world_size=2, num_workers=2)
    index = build_index(curated, "train", 0.1, SubsetSection(column="clip_score", percentile=50))
    held = build_index(curated, "heldout", 0.1)
    assert (index.fingerprint, index.total, index.note) == (want["fingerprint"], want["total"], want["note"])
    assert (held.fingerprint, held.total) == (want["heldout_fingerprint"], want["heldout_total"])
    assert [r["id"] for r in heldout_rows(held, 10)] == want["heldout_ids"]
    assert order_of(index, spec, fmt) == want["orders"]
    it = iter(train_loader(index, fmt, spec, rank=1)[1])
    assert [next(it)["ids"] for _ in range(3)] == want["rank1_batches"]
    assert CaptionStream(index, fmt, spec, rank=1).position(5) == want["rank1_position"]
    mix = build_mix_index(three_sources(tmp_path), "train", 0.2)
    spec = StreamSpec(seed=5, shuffle_buffer=8, micro_batch_size=3, world_size=3, num_workers=1)
    want = EXPECT["mix"]
    assert (mix.fingerprint, mix.total) == (want["fingerprint"], want["total"])
    assert order_of(mix, spec, fmt) == want["orders"]
    assert CaptionStream(mix, fmt, spec, rank=2).position(9) == want["rank2_position"]


# ------------------------------------------------------------------------- resume onto other readers


class _Worker:
    def __init__(self, id: int) -> None:
        self.id = id


def rank_ids(monkeypatch, index, fmt, spec, rank, n, start=0, position=None, previous=None) -> list:
    """The ids of a rank's next `n` batches as its DataLoader yields them (workers asked in turn)."""
    stream = CaptionStream(index, fmt, spec, rank, start, position, previous)
    readers = []
    for w in range(spec.readers_per_rank):  # a generator asks for its worker on its first batch
        info = _Worker(w) if spec.num_workers else None
        monkeypatch.setattr(data_module, "get_worker_info", lambda info=info: info)
        it = iter(stream)
        readers.append((it, [next(it)]))
    out = []
    for k in range(n):
        it, first = readers[k % len(readers)]
        batch = first.pop() if first else next(it)
        stream.note(batch)  # as the training loop's loader does (a packed stream's cursors)
        out.append(batch["ids"])
    return out, stream


def test_resume_onto_other_readers_sees_each_row_once(tmp_path, monkeypatch):
    """3 ranks x 2 workers stop mid-epoch; 2 ranks x 1 worker see exactly the rows not yet seen, then
    1 rank x 3 workers takes over mid-way again; the next epoch is the new layout's own."""
    rows = list(sample_rows())[:230]
    curated = write_curated(tmp_path, [rows[:70], rows[70:83], rows[83:184], rows[184:]], row_group_rows=16)
    index = build_index(curated, "train", 0.0)
    tok = TextTokenizer(recipe_data()[1])
    fmt = SampleFormat(tok.bos_id, tok.eos_id, None, None, 40, encode=tok.encode)
    a = StreamSpec(seed=1, shuffle_buffer=10, micro_batch_size=3, world_size=3, num_workers=2)
    b = StreamSpec(seed=1, shuffle_buffer=10, micro_batch_size=3, world_size=2, num_workers=0)
    c = StreamSpec(seed=1, shuffle_buffer=10, micro_batch_size=2, world_size=1, num_workers=3)
    k = 17  # of 24 batches a rank per epoch
    seen_a = []
    for rank in range(3):
        ids, stream = rank_ids(monkeypatch, index, fmt, a, rank, k)
        seen_a += [i for batch in ids for i in batch]
    position = stream.position(k)
    twice = CaptionStream(index, fmt, a, 0, 2 * k, position)  # grad_accum doubled: the same samples seen
    assert twice.layout["base"] == 2 * k and len(twice.remaining()) == 230 - len(seen_a)
    resumed = [CaptionStream(index, fmt, b, r, k, position, previous=a) for r in range(2)]
    rest = resumed[0].epoch_batches(0)
    assert rest == len(resumed[0].remaining()) // 2 // 3 and len(resumed[0].remaining()) == 230 - len(seen_a)
    m = 3  # B stops after m of its batches, C takes over
    seen_b, full_b = [], []
    for r in range(2):
        ids, stream_b = rank_ids(monkeypatch, index, fmt, b, r, rest + 1, k, position, a)
        seen_b += [i for batch in ids[:m] for i in batch]
        full_b += [i for batch in ids[:rest] for i in batch]
        # after the rest of epoch 0, epoch 1 is B's own layout, as a run that always had B's readers
        fresh, _ = rank_ids(monkeypatch, index, fmt, b, r, 1, start=(230 // 2 // 3))
        assert ids[rest] == fresh[0]
    every = [r["id"] for r in rows]
    assert not set(seen_a) & set(full_b) and len(set(full_b)) == len(full_b)
    assert len(set(every) - set(seen_a) - set(full_b)) < 2 * 3  # the dropped tails: under a batch a reader
    position = stream_b.position(k + m)
    assert len(position["layout"]["history"]) == 1 and position["layout"]["base"] == k
    again, _ = rank_ids(monkeypatch, index, fmt, b, 1, rest - m, k + m, position)  # same readers: exact
    assert [i for batch in again for i in batch] == full_b[len(full_b) // 2 + 3 * m :]
    ids, stream_c = rank_ids(monkeypatch, index, fmt, c, 0, 200, k + m, position, b)
    per_epoch = stream_c.epoch_batches(0)
    assert len(stream_c.layout["history"]) == 2 and per_epoch == (230 - len(seen_a) - len(seen_b)) // 3 // 2
    seen_c = [i for batch in ids[: per_epoch * 3] for i in batch]
    assert not (set(seen_a) | set(seen_b)) & set(seen_c) and len(set(seen_c)) == len(seen_c)
    assert len(set(every) - set(seen_a) - set(seen_b) - set(seen_c)) < 3 * 2
    fresh, _ = rank_ids(monkeypatch, index, fmt, c, 0, 3, start=stream_c.steps_per_epoch)
    assert ids[per_epoch * 3 : per_epoch * 3 + 3] == fresh  # epoch 1: C's own layout
    # and a checkpoint of C resumes C exactly
    position = stream_c.position(k + m + 5)
    tail, _ = rank_ids(monkeypatch, index, fmt, c, 0, 10, k + m + 5, position)
    assert tail == ids[5:15]
    packed = dataclasses.replace(fmt, packing=True)
    with pytest.raises(ValueError, match="not supported for packed streams"):
        CaptionStream(index, packed, b, 0, k, {"rank_batches": k, "ranks": [[]] * 3}, previous=a)


@pytest.mark.parametrize("packing", [False, True])
def test_as_many_slots_go_on_as_uninterrupted(tmp_path, monkeypatch, packing):
    """1 rank x 2 workers stopped, resumed on 2 ranks x 1 worker (another world size and grad_accum, as many
    slots and the same micro-batch size): each rank goes on with what the 2-rank run that was never
    interrupted reads there, not a reshuffled rest of the epoch; packed streams too (from their cursors)."""
    index = build_index(write_curated(tmp_path, [list(sample_rows())[:120]], row_group_rows=16), "train", 0.0)
    tok = TextTokenizer(recipe_data()[1])
    image = (512, 32) if packing else (None, None)  # packing: samples open with <|image|> (label -100)
    fmt = SampleFormat(tok.bos_id, tok.eos_id, *image, 40, encode=tok.encode, packing=packing)
    one = StreamSpec(seed=4, shuffle_buffer=6, micro_batch_size=3, world_size=1, num_workers=2)
    two = dataclasses.replace(one, world_size=2, num_workers=0)
    k = 2 * 13  # 13 batches a reader, of 20 an epoch unpacked: the next epoch is in the comparison too
    _, stream = rank_ids(monkeypatch, index, fmt, one, 0, k)
    position = stream.position(k)
    # the 2-rank run that was never interrupted, from batch 13 of each rank
    wants = [rank_ids(monkeypatch, index, fmt, two, rank, 13 + 12)[0][13:] for rank in range(2)]
    for start in (5, 13, 40):  # grad_accum 1 on 2 ranks; or any other count of batches a step
        for rank in range(2):
            got, resumed = rank_ids(monkeypatch, index, fmt, two, rank, 12, start, position, previous=one)
            assert got == wants[rank]
            if not packing:
                assert resumed.layout == {"base": start - 13, "epoch": 0, "history": []}
    if not packing:  # readers at different batches: the rest of the epoch is re-cut (test above)
        odd = CaptionStream(index, fmt, two, 0, 13, stream.position(k - 1), previous=one)
        assert odd.layout["history"]
    else:
        with pytest.raises(ValueError, match="not supported for packed streams"):
            CaptionStream(index, fmt, dataclasses.replace(two, num_workers=2), 0, 13, position, previous=one)


def test_a_mix_resumes_onto_other_readers(tmp_path, monkeypatch):
    """A mix (rows repeat within an epoch): the resumed rest of the epoch is the epoch's samples not yet
    emitted, as a multiset."""
    index = build_mix_index(three_sources(tmp_path), "train", 0.0)
    tok = TextTokenizer(recipe_data()[1])
    fmt = SampleFormat(tok.bos_id, tok.eos_id, None, None, 40, encode=tok.encode)
    a = StreamSpec(seed=2, shuffle_buffer=8, micro_batch_size=4, world_size=2, num_workers=0)
    b = StreamSpec(seed=2, shuffle_buffer=8, micro_batch_size=3, world_size=3, num_workers=0)
    ids = {k: pq.read_table(p, columns=["id"]).column("id").to_pylist() for k, p in enumerate(index.paths)}
    epoch = Counter(ids[s][r] for s, r in zip(*epoch_rows(index, 2, 0), strict=True))
    seen = Counter()
    for rank in range(2):
        batches, stream = rank_ids(monkeypatch, index, fmt, a, rank, 20)
        seen.update(i for batch in batches for i in batch)
    position = stream.position(20)
    for rank in range(3):
        resumed = CaptionStream(index, fmt, b, rank, 20, position, previous=a)
        batches, _ = rank_ids(monkeypatch, index, fmt, b, rank, resumed.epoch_batches(0), 20, position, a)
        seen.update(i for batch in batches for i in batch)
    assert not seen - epoch and sum((epoch - seen).values()) < 3 * 3  # the readers' dropped tails
