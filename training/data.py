"""Streaming dataset over curated Parquet shards, split by (rank, worker), shuffled, resumable exactly.

Each epoch the shards are put in a seeded order and their rows laid end to end; that row sequence is cut
into ``world_size * num_workers`` contiguous slices whose sizes differ by at most one row, one slice per
reader (rank, dataloader worker): no row is read twice and none is skipped. Every reader yields the same
number of batches per epoch (``rows // readers // micro_batch``; the short tail of a slice is dropped,
a different one each epoch), so every rank runs the same number of steps (a rank with fewer would leave
the others waiting in a collective).

Within its slice a reader streams rows through a seeded shuffle buffer. The buffer works on row positions,
so the order it emits is a pure function of (seed, epoch, reader) and is computed up front; rows are then
read a Parquet row group at a time, kept until emitted. That makes the position exact and cheap to restore:
(epoch, samples emitted) per reader, reported as (epoch, shard, row) of the buffer's read cursor and kept in
the checkpoint. A resumed run rebuilds the buffer's contents and emits exactly what an uninterrupted run
would have emitted.

With packing (``data.packing``, task vlm) a micro-batch is ``micro_batch_size`` rows of up to ``max_tokens``
tokens, each holding as many samples (each with its own image token and image) as fit, filled greedily in
stream order: a row is closed when the next sample does not fit, and the batch when its last row is. A
batch ends just before a sample, so where the next one starts is the reader's (epoch, samples emitted),
and packing from there gives what an uninterrupted stream gives. That cursor is not a function of the
batch count (it depends on the captions' lengths), so each packed batch carries it, the loader notes it as
the loop takes the batch, and the checkpoint keeps every rank's cursors; the stream runs across epochs
without dropping a tail. Evaluation batches stay unpacked.

Held-out rows (a hash of ``id``) never enter training; a stage-2 subset keeps the rows whose score column
is at or above a percentile of that column over the whole curated set (the index: ``training/index.py``).

Resuming onto another number of readers (ranks x workers), micro-batch size or batch count per step
(unpacked streams): the rest of the interrupted epoch is the positions of its row sequence that no reader
had emitted (``unseen``, from each earlier layout's samples emitted per slot), cut among the new readers
and shuffled with a new generation of seeds; later epochs are the new layout's own. The layout (first batch,
epoch, earlier layouts) is part of the position, so a resumed run resumes again.

Memory: a reader holds its own slice of an epoch (shard and row, 16 B a row, and its shuffle order), a mix
included (``mix_rows``); the rest of a resumed epoch costs O(epoch rows) once (``unseen`` replays every
earlier reader's shuffle buffer).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlmforge.training.index import (  # noqa: F401 (callers import the index from here too)
    ShardIndex,
    build_index,
    build_mix_index,
    data_index,
    is_heldout,
    source_indexes,
)
from vlmforge.training.model.config import CLIP_MEAN, CLIP_STD, IGNORE_INDEX
from vlmforge.training.model.fusion import packed_media_mask
from vlmforge.training.model.perceiver import sample_frame_indices
from vlmforge.training.model.tiling import TiledImage, collate_tiles, load_tiled_image

# CLIP's normalisation, which Mllama's image processor uses too (other encoders convert, VisionConfig).
IMAGE_MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
IMAGE_STD = torch.tensor(CLIP_STD).view(3, 1, 1)
ROW_COLUMNS = ["id", "image", "frames", "caption", "original_caption", "synthetic_caption", "time_spans"]


# ------------------------------------------------------------------------------------------ the split


def slice_bounds(total: int, slot: int, num_slots: int) -> tuple[int, int]:
    """Contiguous slice of `total` rows for reader `slot`; sizes differ by at most one, no gap."""
    return slot * total // num_slots, (slot + 1) * total // num_slots


def quotas(total: int, weights: list[float]) -> np.ndarray:
    """`total` samples shared out in proportion to `weights` (largest remainders; they sum to `total`)."""
    share = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    out = np.floor(share).astype(np.int64)
    out[np.argsort(-(share - out), kind="stable")[: total - int(out.sum())]] += 1
    return out


def epoch_rows(index: ShardIndex, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of a mix's whole epoch, in stream order (``mix_rows`` over all of it)."""
    return mix_rows(index, seed, epoch, 0, index.total)


def _due(quota: int, k: Any) -> Any:
    """Where a source's k-th sample sits in the epoch, as a fraction (the interleaving's sort key)."""
    return (np.asarray(k, dtype=np.int64) + 0.5) / max(quota, 1)


def _before(quota: int, x: float, inclusive: bool) -> int:
    """How many of a source's samples sit before `x` (or at it, `inclusive`)."""
    k = int(np.clip(np.floor(x * quota - 0.5), 0, quota))  # close; the exact floats settle it
    while k < quota and (_due(quota, k) <= x if inclusive else _due(quota, k) < x):
        k += 1
    while k > 0 and (_due(quota, k - 1) > x if inclusive else _due(quota, k - 1) >= x):
        k -= 1
    return k


def _taken(quota: np.ndarray, src: int, position: int) -> int:
    """How many of source `src`'s samples lie in the epoch's first `position` samples: its k-th lies at
    k + the other sources' samples before it (sorted by where they sit, then by source)."""

    def rank(k: int) -> int:
        x = float(_due(int(quota[src]), k))
        others = (_before(int(q), x, inclusive=u < src) for u, q in enumerate(quota) if u != src)
        return k + sum(others)

    lo, hi = 0, int(quota[src])  # the first k whose rank is >= position
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if rank(mid) < position else (lo, mid)
    return lo


def mix_rows(index: ShardIndex, seed: int, epoch: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of samples `start` to `end` - 1 of a mix's epoch, in stream order; only those.

    Each source gets its quota of the epoch (``quotas`` of all sources' rows): its shards in a seeded
    order, rows laid end to end, again in a new order while the quota is not filled. The sources are
    interleaved smoothly: a source's k-th sample sits at (k + 1/2) / quota of the way through the epoch
    (ties: the lower source first).
    """
    quota = quotas(index.total, index.weights)
    shards, rows, due, source = [], [], [], []
    for src, want in enumerate(quota):
        if want and not index.source_rows(src):
            raise ValueError(f"data.sources: {index.sources[src]!r} has no rows to draw from")
        ks = np.arange(_taken(quota, src, start), _taken(quota, src, end), dtype=np.int64)
        if not len(ks):
            continue
        mine = np.array([k for k, s in enumerate(index.file_source) if s == src], dtype=np.int64)
        have = index.source_rows(src)
        laps = ks // have
        for lap in np.unique(laps):  # each lap: the source's shards in a new order, rows end to end
            at = laps == lap
            order = np.random.default_rng([seed, epoch, src, int(lap)]).permutation(mine)
            s, r = _laid_out(index, order, ks[at] % have)
            shards.append(s)
            rows.append(r)
        due.append(_due(int(want), ks))
        source.append(np.full(len(ks), src, dtype=np.int64))
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((np.concatenate(source), np.concatenate(due)))
    return np.concatenate(shards)[order], np.concatenate(rows)[order]


def slot_rows(
    index: ShardIndex, seed: int, epoch: int, slot: int, num_slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of every row in this reader's slice for this epoch, in stream order."""
    if len(index.sources) > 1:
        return mix_rows(index, seed, epoch, *slice_bounds(index.total, slot, num_slots))
    order = np.random.default_rng([seed, epoch]).permutation(len(index.files))
    start, end = slice_bounds(index.total, slot, num_slots)
    shards, rows, offset = [], [], 0
    for s in order:
        size = int(index.sizes[s])
        lo, hi = max(start - offset, 0), min(end - offset, size)
        if lo < hi:
            shards.append(np.full(hi - lo, s, dtype=np.int64))
            rows.append(index.rows_of(int(s), lo, hi))
        offset += size
        if offset >= end:
            break
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(shards), np.concatenate(rows)


def epoch_at(
    index: ShardIndex, seed: int, epoch: int, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) at ascending `positions` of the epoch's row sequence (the one ``slot_rows`` cuts)."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(index.sources) > 1:
        if not len(positions):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = int(positions[0])
        shards, rows = mix_rows(index, seed, epoch, lo, int(positions[-1]) + 1)
        return shards[positions - lo], rows[positions - lo]
    return _laid_out(index, np.random.default_rng([seed, epoch]).permutation(len(index.files)), positions)


def _laid_out(index: ShardIndex, order: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) at ascending `positions` of the rows of the shards `order`, laid end to end."""
    ends = np.cumsum(index.sizes[order])
    at = np.searchsorted(ends, positions, side="right")
    shards = order[at].astype(np.int64)
    within = positions - (ends[at] - index.sizes[order][at])
    rows = np.empty(len(positions), dtype=np.int64)
    for k in np.unique(at):  # each shard's positions are one run; unpack only its span
        run = np.flatnonzero(at == k)
        lo, hi = int(within[run[0]]), int(within[run[-1]]) + 1
        rows[run] = index.rows_of(int(order[k]), lo, hi)[within[run] - lo]
    return shards, rows


def layout_rng(seed: int, epoch: int, slot: int, generation: int) -> np.random.Generator:
    """The shuffle buffer's randomness of a slot; generation g > 0: the g-th layout of an epoch's unseen
    rows after resuming onto a different number of readers (generation 0 is the epoch's first)."""
    return np.random.default_rng([seed, epoch, slot, 1, *([generation] if generation else [])])


def unseen(total: int, seed: int, buffer: int, epoch: int, history: list[dict[str, Any]]) -> np.ndarray:
    """Ascending positions of the epoch's row sequence that no reader of the earlier layouts emitted.

    ``history``: each earlier layout of this epoch, ``{"num_slots": n, "emitted": [samples per slot]}``;
    layout g cuts what the layouts before it left into n slices and shuffles each (``layout_rng``)."""
    remaining = np.arange(total, dtype=np.int64)
    for g, layer in enumerate(history):
        keep = np.ones(len(remaining), dtype=bool)
        for slot, emitted in enumerate(layer["emitted"]):
            lo, hi = slice_bounds(len(remaining), slot, layer["num_slots"])
            keep[lo + shuffle_order(hi - lo, buffer, layout_rng(seed, epoch, slot, g))[:emitted]] = False
        remaining = remaining[keep]
    return remaining


def shuffle_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of `buffer` slots emits a stream of `n` items.

    Fill the buffer; then for each new item emit a random slot's item and put the new one there; at the
    end, emit what is left in random order. Item i is emitted at most `buffer` places before position i.
    """
    out = np.empty(n, dtype=np.int64)
    slots = list(range(min(buffer, n)))
    picks = rng.integers(0, buffer, size=max(n - buffer, 0))
    for k, item in enumerate(range(len(slots), n)):
        j = picks[k]
        out[k] = slots[j]
        slots[j] = item
    rest = np.array(slots, dtype=np.int64)
    rng.shuffle(rest)
    out[max(n - buffer, 0) :] = rest
    return out


# ------------------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: Tensor | None  # (3, H, W), normalised
    video: Tensor | None = None  # (F, 3, H, W), normalised
    source: int = 0  # which of data.sources the row came from
    tiled: TiledImage | None = None  # Mllama tiles (SampleFormat.max_num_tiles > 1) instead of `image`
    # per label: 1 where the caption's time_spans cover the target token, 0 elsewhere in the caption (EOS
    # included), -1 where no loss is taken; None for a row without time_spans (time_tokens)
    time_tokens: list[int] | None = None


@dataclass
class SampleFormat:
    """How a row becomes a training sample (task-dependent)."""

    bos_id: int
    eos_id: int
    image_token_id: int | None  # None: no image token in the text (text_lm, clip)
    image_size: int | None  # None: images are not decoded (text_lm)
    max_tokens: int
    synthetic_caption_prob: float = 0.0
    encode: Any = field(default=None, repr=False)  # str -> list[int]
    repeat_text: int = 1  # the caption (with its EOS) this many times in a row, cut at max_tokens
    image_first: bool = False  # <|image|><|begin_of_text|> (Mllama's order) instead of BOS first
    packing: bool = False  # several samples per row of max_tokens (collate_packed)
    video_token_id: int | None = None  # task video: the token before the caption of a row with frames
    video_frames: int | None = None  # task video: frames each clip is resampled to (None: frames unread)
    # > 1: images are read as Mllama's aspect-ratio tiles of image_size px (model/tiling.py), not squashed
    max_num_tiles: int = 1
    # str -> (ids, character spans): set, rows with a ``time_spans`` column get Sample.time_tokens
    encode_offsets: Any = field(default=None, repr=False)


def load_image(data: bytes, size: int) -> Tensor:
    """Decode, convert to RGB and resize to size x size (the whole image, no crop: captions name
    positions), normalised with CLIP's mean and std."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.float32) / 255.0
    return (torch.from_numpy(pixels).permute(2, 0, 1) - IMAGE_MEAN) / IMAGE_STD


def load_video(frames: list[bytes], size: int, num_frames: int) -> Tensor:
    """A clip's JPEG frames (in time order) -> (num_frames, 3, size, size), resampled uniformly in time
    (frames repeat for short clips, as the model's ``sample_frame_indices``); each frame decoded once."""
    index = sample_frame_indices(len(frames), num_frames).tolist()
    decoded = {i: load_image(frames[i], size) for i in set(index)}
    return torch.stack([decoded[i] for i in index])


def choose_text(row: dict[str, Any], prob: float, rng: np.random.Generator) -> str:
    """`caption` (original caption with OCR appended), or `synthetic_caption` with probability `prob`."""
    synthetic = row.get("synthetic_caption")
    if synthetic and prob > 0 and rng.random() < prob:
        return synthetic
    return row.get("caption") or row.get("original_caption") or ""


def caption_prefix(bos_id: int, image_token_id: int | None, image_first: bool = False) -> list[int]:
    """The ids before a caption: ``<|begin_of_text|><|image|>``, or with ``image_first`` Mllama's order
    ``<|image|><|begin_of_text|>`` (what its processor writes: every text token, BOS included, sees the
    image, and transformers gives the same logits as this model); ``<|begin_of_text|>`` without an image.
    A prompt given to a trained model (synthetic captions) must start the way its training samples did."""
    if image_token_id is None:
        return [bos_id]
    return [image_token_id, bos_id] if image_first else [bos_id, image_token_id]


def timed_ids(
    row: dict[str, Any], text: str, encode_offsets: Any
) -> tuple[list[int], list[int]] | tuple[None, None]:
    """The caption's ids and, per id, 1 where it overlaps one of the row's ``time_spans`` (character spans
    [start, end) of ``caption`` whose truth depends on time, as the sample clips' ground truth gives them),
    or where it is whitespace only and directly precedes a timed id, else 0; (None, None) without spans,
    or when ``text`` is not the row's caption (a synthetic one).

    Whitespace before a timed word: BPE may split " grows" into " ", "gro", ...; the bare space is where
    the model commits to grows-vs-shrinks, yet its span ends where the word's begins."""
    spans = row.get("time_spans")
    if spans is None or encode_offsets is None or text != row.get("caption"):
        return None, None
    try:
        spans = [(int(a), int(b)) for a, b in spans]
    except (TypeError, ValueError) as e:
        raise ValueError(f"row {row['id']!r}: time_spans must be [start, end] pairs, got {spans!r}") from e
    if any(not 0 <= a < b <= len(text) for a, b in spans):
        raise ValueError(f"row {row['id']!r}: time_spans {spans} are not within its {len(text)}-char caption")
    ids, offsets = encode_offsets(text)
    timed = [int(any(s < b and a < e for a, b in spans)) for s, e in offsets]
    for i in range(len(timed) - 2, -1, -1):  # right to left: a run of whitespace ids before a word
        s, e = offsets[i]
        if timed[i + 1] and text[s:e].isspace():
            timed[i] = 1
    return ids, timed


def make_sample(row: dict[str, Any], fmt: SampleFormat, rng: np.random.Generator) -> Sample:
    text = choose_text(row, fmt.synthetic_caption_prob, rng)
    has_image = fmt.image_size is not None and row.get("image") is not None
    has_video = fmt.video_frames is not None and bool(row.get("frames"))
    media_token = fmt.video_token_id if has_video else fmt.image_token_id if has_image else None
    prefix = caption_prefix(fmt.bos_id, media_token, fmt.image_first)
    ids, timed = timed_ids(row, text, fmt.encode_offsets)
    keep = fmt.max_tokens - len(prefix) - 1
    body = (fmt.encode(text) if ids is None else ids)[:keep] + [fmt.eos_id]
    body = (body * fmt.repeat_text)[: fmt.max_tokens - len(prefix)]
    time_tokens = None
    if timed is not None:
        time_tokens = [-1] * len(prefix) + ((timed[:keep] + [0]) * fmt.repeat_text)[: len(body)]
    tiles = has_image and not has_video and fmt.max_num_tiles > 1
    image = load_image(row["image"], fmt.image_size) if has_image and not has_video and not tiles else None
    video = load_video(row["frames"], fmt.image_size, fmt.video_frames) if has_video else None
    tiled = None
    if tiles:
        try:
            tiled = load_tiled_image(row["image"], fmt.image_size, fmt.max_num_tiles)
        except ValueError as e:
            raise ValueError(f"row {row['id']!r}: {e}") from e
    labels = [IGNORE_INDEX] * len(prefix) + body
    return Sample(row["id"], prefix + body, labels, image, video, tiled=tiled, time_tokens=time_tokens)


def collate(
    samples: list[Sample],
    pad_id: int,
    image_size: int | None,
    video_frames: int | None = None,
    max_num_tiles: int = 1,
) -> dict[str, Any]:
    """Right-padded ids and labels, and images stacked when the task uses them.

    With ``max_num_tiles`` > 1 (Mllama tiles) ``images`` holds the batch's real tiles flat (total tiles,
    3, S, S) with ``num_tiles`` and ``aspect_ratio_ids`` per row (0 and 0 for a row without an image) and
    ``max_num_tiles``; ``tiling.pad_tiles`` gives the model its padded (B, max_num_tiles, 3, S, S) and
    ``aspect_ratio_mask`` (``eval.batch_images``).

    A row without an image gets a zero placeholder image (and no image token, so its mask is all false):
    every batch, text-only or not, then runs the encoder and every cross-attention layer on the same
    parameters in the same order, which ZeRO-3 needs on every rank (DeepSpeed issue 7170).
    Passing ``images=None`` instead makes the model read a partitioned weight for the placeholder's dtype,
    which under ZeRO-3 starts an all-gather on that rank alone, and the ranks' collectives no longer match.
    """
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[i, : len(s.labels)] = torch.tensor(s.labels)
    images = None
    batch: dict[str, Any] = {}
    if image_size is not None and max_num_tiles > 1:
        flat = collate_tiles([s.tiled for s in samples], image_size)
        images = flat.pop("tiles")
        batch.update(flat, max_num_tiles=max_num_tiles)
    elif image_size is not None:
        images = torch.zeros(len(samples), 3, image_size, image_size)
        for i, s in enumerate(samples):
            if s.image is not None:
                images[i] = s.image
    num_tokens = sum(len(s.input_ids) for s in samples)
    if video_frames is not None and image_size is not None:  # rows without a clip: zeros, masked out
        batch["videos"] = torch.zeros(len(samples), video_frames, 3, image_size, image_size)
        for i, s in enumerate(samples):
            if s.video is not None:
                batch["videos"][i] = s.video
        batch["num_videos"] = sum(s.video is not None for s in samples)
    if any(s.time_tokens is not None for s in samples):  # -1: no figure (padding, rows without spans)
        batch["time_tokens"] = torch.full((len(samples), length), -1, dtype=torch.int8)
        for i, s in enumerate(samples):
            if s.time_tokens is not None:
                batch["time_tokens"][i, : len(s.time_tokens)] = torch.tensor(s.time_tokens)
    return {
        **batch,
        "input_ids": input_ids,
        "labels": labels,
        "images": images,
        "ids": [s.id for s in samples],
        "sources": [s.source for s in samples],
        "num_tokens": num_tokens,  # real tokens (no padding)
        "num_images": sum(s.image is not None or s.tiled is not None for s in samples),
        # what the encoder runs on: placeholders too, and every frame of the clips
        "computed_images": (0 if images is None else len(samples))
        + len(samples) * (video_frames if "videos" in batch else 0),
    }


def pack_rows(samples: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Samples in order, greedily into rows of at most `max_tokens` tokens (a row closes when the next
    sample does not fit). The stream packs the same way, sample by sample (CaptionStream)."""
    rows: list[list[Sample]] = []
    used = max_tokens
    for s in samples:
        if used + len(s.input_ids) > max_tokens:
            rows.append([])
            used = 0
        rows[-1].append(s)
        used += len(s.input_ids)
    return rows


def collate_packed(
    rows: list[list[Sample]], pad_id: int, image_size: int, image_token_id: int
) -> dict[str, Any]:
    """Packed rows: ids and labels laid end to end per row, then right padding; each sample's positions
    start at 0 (``position_ids``) and its tokens carry its index in the row (``segment_ids``; padding -1,
    a segment of its own). ``images`` (B, N, C, H, W) holds each row's images in order (N: the most in a
    row, at least 1; empty slots are zeros) and ``encoder_mask`` (B, S, N) lets only a sample's own tokens
    see its image (``packed_media_mask``). The first label of every sample is -100 (its prefix), so no
    label crosses from one sample into the next."""
    if any(s.tiled is not None for row in rows for s in row):
        raise ValueError("data.packing is not supported with Mllama tiles (vision.max_num_tiles > 1)")
    length = max(sum(len(s.input_ids) for s in row) for row in rows)
    num_images = max(1, max(sum(s.image is not None for s in row) for row in rows))
    b = len(rows)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(length).repeat(b, 1)
    segment_ids = torch.full((b, length), -1, dtype=torch.long)
    images = torch.zeros(b, num_images, 3, image_size, image_size)
    for i, row in enumerate(rows):
        at, n = 0, 0
        for j, s in enumerate(row):
            end = at + len(s.input_ids)
            input_ids[i, at:end] = torch.tensor(s.input_ids)
            labels[i, at:end] = torch.tensor(s.labels)
            position_ids[i, at:end] = torch.arange(end - at)
            segment_ids[i, at:end] = j
            if s.image is not None:
                images[i, n] = s.image
                n += 1
            at = end
    samples = [s for row in rows for s in row]
    if any(s.labels[0] != IGNORE_INDEX for s in samples):
        raise ValueError("packing needs samples whose first label is -100 (labels must not cross samples)")
    real_images = sum(s.image is not None for s in samples)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "images": images,
        "encoder_mask": packed_media_mask(input_ids, segment_ids, image_token_id, num_images),
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "ids": [s.id for s in samples],
        "sources": [s.source for s in samples],
        "num_tokens": sum(len(s.input_ids) for s in samples),  # real tokens (no padding)
        "num_images": real_images,
        "computed_images": max(real_images, 1),  # only the slots some token sees run the encoder
    }


# ---------------------------------------------------------------------------------------- reading rows


class RowReader:
    """Rows of one reader's slice, fetched a row group at a time and kept until emitted."""

    def __init__(self, index: ShardIndex, shards: np.ndarray, rows: np.ndarray) -> None:
        self.index, self.shards, self.rows = index, shards, rows
        groups = np.empty(len(rows), dtype=np.int64)
        for s in np.unique(shards):  # vectorised per shard: a reader's slice has millions of rows
            at = shards == s
            groups[at] = np.searchsorted(index.group_starts[s], rows[at], side="right") - 1
        keys = shards * (1 << 32) + groups
        self._keys = keys
        uniq, inverse = np.unique(keys, return_inverse=True)
        by_key = np.argsort(inverse, kind="stable")  # each row group's members, ascending
        counts = np.bincount(inverse, minlength=len(uniq))
        ends = np.cumsum(counts)
        starts = ends - counts
        self._members = {int(k): by_key[a:b] for k, a, b in zip(uniq, starts, ends, strict=True)}
        self._files: dict[int, pq.ParquetFile] = {}

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard not in self._files:
            if len(self._files) >= max(4, 2 * len(self.index.sources)):  # a mix reads every source
                self._files.pop(next(iter(self._files))).close()
            self._files[shard] = pq.ParquetFile(self.index.paths[shard])
        return self._files[shard]

    def emit(self, order: np.ndarray, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(seq, row) for order[start:], where seq indexes this slice's stream."""
        position = np.full(len(self.rows), -1, dtype=np.int64)  # -1: not emitted (the dropped tail)
        position[order] = np.arange(len(order))
        pending: dict[int, dict[str, Any]] = {}
        for p in range(start, len(order)):
            seq = int(order[p])
            if seq not in pending:
                key = int(self._keys[seq])
                shard, group = key >> 32, key & 0xFFFFFFFF
                members = self._members[key]
                members = members[position[members] >= p]  # rows emitted before `start` are not kept
                file = self._file(shard)
                columns = [c for c in ROW_COLUMNS if c in file.schema_arrow.names]
                table = file.read_row_group(group, columns=columns)
                local = self.rows[members] - self.index.group_starts[shard][group]
                for m, row in zip(members, table.take(local).to_pylist(), strict=True):
                    pending[int(m)] = row
            yield seq, pending.pop(seq)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


# ------------------------------------------------------------------------------------------- the stream


@dataclass
class StreamSpec:
    """Everything that fixes the order of samples; part of the checkpoint."""

    seed: int
    shuffle_buffer: int
    micro_batch_size: int
    world_size: int
    num_workers: int

    @property
    def readers_per_rank(self) -> int:
        return max(self.num_workers, 1)

    @property
    def num_slots(self) -> int:
        return self.world_size * self.readers_per_rank


def _changed(previous: StreamSpec, spec: StreamSpec) -> bool:
    """Another number of slots (ranks x readers) or micro-batch size: the rest of the epoch is re-cut."""
    return (previous.num_slots, previous.micro_batch_size) != (spec.num_slots, spec.micro_batch_size)


class CaptionStream(IterableDataset):
    """Infinite stream of micro-batches for one rank; epochs follow each other."""

    def __init__(
        self,
        index: ShardIndex,
        fmt: SampleFormat,
        spec: StreamSpec,
        rank: int,
        start_batches: int = 0,
        position: dict[str, Any] | None = None,
        previous: StreamSpec | None = None,
    ) -> None:
        """``position``: what ``position`` returned at ``start_batches`` (a packed stream resumes from it).

        ``previous``: the spec the position was made with, when it had another number of readers or another
        micro-batch size: the rest of that epoch is then the rows its readers had not emitted, cut among
        this spec's readers (``relayout``); later epochs are this spec's. With as many slots (ranks x
        readers) and the same micro-batch size, each slot reads on where the checkpoint's slot stopped
        (``same_cut``, or a packed slot's cursor) when it can. Packed streams refuse other changes."""
        super().__init__()
        self.index, self.fmt, self.spec, self.rank = index, fmt, spec, rank
        self.start_batches = start_batches
        # Packing: (epoch, samples emitted) per reader where its next batch starts, as the loop takes them.
        self.cursors = {r: (0, 0) for r in range(spec.readers_per_rank)}
        self.taken = start_batches
        previous = previous or spec
        changed = _changed(previous, spec)
        if fmt.packing and changed:
            raise ValueError(
                "data.packing: resuming onto another number of ranks x data.num_workers or another "
                "train.micro_batch_size is not supported for packed streams"
            )
        if fmt.packing and start_batches:
            # Slot s (rank x readers + reader) goes on from the cursor of the checkpoint's slot s: with as
            # many slots, the ranks, readers a rank and batches a step (grad_accum) may differ.
            ranks = (position or {}).get("ranks")
            slots = [c for cursors in ranks or [] for c in sorted(cursors, key=lambda c: c["reader"])]
            if len(slots) != spec.num_slots:
                raise ValueError(
                    f"data.packing: no packed stream position for batch {start_batches} of rank {rank} "
                    "in the checkpoint (was it made with data.packing on?)"
                )
            mine = slots[rank * spec.readers_per_rank : (rank + 1) * spec.readers_per_rank]
            self.cursors = {r: (c["epoch"], c["emitted"]) for r, c in enumerate(mine)}
        self.batches_per_epoch = (index.total // spec.num_slots) // spec.micro_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data: {index.total} training rows cannot give each of {spec.num_slots} readers "
                f"(ranks x data.num_workers) one batch of train.micro_batch_size {spec.micro_batch_size}"
            )
        # Where this spec's layout starts: batch `base` of every rank is the first of epoch `epoch`, whose
        # rows the `history` layouts (other readers, before a resume) left unseen.
        self.layout: dict[str, Any] = {"base": 0, "epoch": 0, "history": []}
        self.layout.update((position or {}).get("layout") or {})
        self._unseen: np.ndarray | None = None
        made_at = (position or {}).get("rank_batches", start_batches)  # another grad_accum: another count
        if (changed or made_at != start_batches) and not fmt.packing:
            same = None if changed else same_cut(index, fmt, previous, made_at, position)
            if same is not None:  # every slot reads on where it stopped
                self.layout = {**same[0], "base": start_batches - same[1] * spec.readers_per_rank}
            else:
                self.layout = {**relayout(index, fmt, previous, made_at, position), "base": start_batches}

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches a rank gets per epoch (the same on every rank)."""
        return self.batches_per_epoch * self.spec.readers_per_rank

    def slot(self, worker: int) -> int:
        return self.rank * self.spec.readers_per_rank + worker

    def worker_batches(self, rank_batches: int, reader: int) -> int:
        """How many of the first `rank_batches` batches of this rank came from `reader` (round robin)."""
        return len(range(reader, rank_batches, self.spec.readers_per_rank))

    def _resumed(self, epoch: int) -> bool:
        """Is `epoch` the rest of an epoch that readers of another layout began?"""
        return epoch == self.layout["epoch"] and bool(self.layout["history"])

    def remaining(self) -> np.ndarray:
        """Positions of the resumed epoch's row sequence not seen before this layout (computed once)."""
        if self._unseen is None:
            spec, layout = self.spec, self.layout
            args = (spec.seed, spec.shuffle_buffer, layout["epoch"], layout["history"])
            self._unseen = unseen(self.index.total, *args)
        return self._unseen

    def epoch_batches(self, epoch: int) -> int:
        """Micro-batches each reader yields in `epoch` (fewer in a resumed epoch: its unseen rows only)."""
        if self._resumed(epoch):
            return len(self.remaining()) // self.spec.num_slots // self.spec.micro_batch_size
        return self.batches_per_epoch

    def locate(self, reader_batches: int) -> tuple[int, int]:
        """(epoch, batch in it) of a reader that has yielded `reader_batches` batches since ``base``."""
        first = self.epoch_batches(self.layout["epoch"])
        if reader_batches < first:
            return self.layout["epoch"], reader_batches
        epoch, batch = divmod(reader_batches - first, self.batches_per_epoch)
        return self.layout["epoch"] + 1 + epoch, batch

    def slice_rows(self, epoch: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of the slot's slice of `epoch`, in the order the shuffle buffer reads it."""
        spec = self.spec
        if not self._resumed(epoch):
            return slot_rows(self.index, spec.seed, epoch, slot, spec.num_slots)
        remaining = self.remaining()
        lo, hi = slice_bounds(len(remaining), slot, spec.num_slots)
        return epoch_at(self.index, spec.seed, epoch, remaining[lo:hi])

    def epoch_order(self, epoch: int, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, row) of the slot's rows and the order they are emitted in (packing: all of them)."""
        shards, rows = self.slice_rows(epoch, slot)
        generation = len(self.layout["history"]) if self._resumed(epoch) else 0
        rng = layout_rng(self.spec.seed, epoch, slot, generation)
        order = shuffle_order(len(rows), self.spec.shuffle_buffer, rng)
        if self.fmt.packing:
            return shards, rows, order
        return shards, rows, order[: self.epoch_batches(epoch) * self.spec.micro_batch_size]

    def _sample(self, row: dict[str, Any], epoch: int, shard: int, row_number: int) -> Sample:
        """The row as a sample, its random choices seeded by where it is (the same after any resume)."""
        sample = make_sample(row, self.fmt, np.random.default_rng([self.spec.seed, epoch, shard, row_number]))
        sample.source = self.index.file_source[shard]
        return sample

    def _samples(self, slot: int, epoch: int, start: int) -> Iterator[tuple[int, int, Sample]]:
        """(epoch, index in its epoch's order, sample) from `start` of `epoch` on, epoch after epoch."""
        while True:
            shards, rows, order = self.epoch_order(epoch, slot)
            reader = RowReader(self.index, shards, rows)
            for p, (seq, row) in enumerate(reader.emit(order, start), start):
                yield epoch, p, self._sample(row, epoch, int(shards[seq]), int(rows[seq]))
            reader.close()
            epoch, start = epoch + 1, 0

    def _packed(self, reader: int) -> Iterator[dict[str, Any]]:
        """Packed batches of `reader` from its cursor on; each carries the cursor after it."""
        first_epoch, start = self.cursors[reader]
        mb, limit = self.spec.micro_batch_size, self.fmt.max_tokens
        rows: list[list[Sample]] = []
        used = limit
        for epoch, p, sample in self._samples(self.slot(reader), first_epoch, start):
            if used + len(sample.input_ids) > limit:
                if len(rows) == mb:
                    batch = collate_packed(
                        rows, self.fmt.eos_id, self.fmt.image_size, self.fmt.image_token_id
                    )
                    yield {**batch, "stream": {"reader": reader, "epoch": epoch, "emitted": p}}
                    rows = []
                rows.append([])
                used = 0
            rows[-1].append(sample)
            used += len(sample.input_ids)

    def note(self, batch: dict[str, Any]) -> None:
        """The loop took `batch`: a packed batch moves its reader's cursor."""
        self.taken += 1
        if "stream" in batch:
            c = batch["stream"]
            self.cursors[c["reader"]] = (c["epoch"], c["emitted"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        # The DataLoader asks its workers in turn starting from worker 0, while rank batch k belongs to
        # reader k % readers: after a resume at batch `start`, worker w serves reader (w + start) % readers.
        worker = 0 if info is None else info.id
        start = self.start_batches - self.layout["base"]
        reader = (worker + start) % self.spec.readers_per_rank
        slot = self.slot(reader)
        done = self.worker_batches(start, reader)
        if self.fmt.packing:
            yield from self._packed(reader)
            return
        epoch, batch = self.locate(done)
        mb, fmt = self.spec.micro_batch_size, self.fmt
        while True:
            shards, rows, order = self.epoch_order(epoch, slot)
            reader = RowReader(self.index, shards, rows)
            samples: list[Sample] = []
            for seq, row in reader.emit(order, batch * mb):
                samples.append(self._sample(row, epoch, int(shards[seq]), int(rows[seq])))
                if len(samples) == mb:
                    yield collate(
                        samples, fmt.eos_id, fmt.image_size, fmt.video_frames, fmt.max_num_tiles
                    )
                    samples = []
            reader.close()
            epoch, batch = epoch + 1, 0

    def position(self, rank_batches: int) -> dict[str, Any]:
        """Where this rank's readers stand after `rank_batches` micro-batches: epoch, samples emitted, and
        the (shard, row) the shuffle buffer reads next.

        Packing: from the cursors of the batches the loop took (``note``), which must be `rank_batches`;
        every rank calls this at once (a checkpoint) and gets all ranks' cursors under "ranks", since the
        checkpoint's state is rank 0's."""
        if self.fmt.packing and self.taken != rank_batches:
            raise ValueError(
                f"position at batch {rank_batches}, but the loop took {self.taken} packed batches"
            )
        readers = []
        for reader in range(self.spec.readers_per_rank):
            if self.fmt.packing:
                epoch, emitted = self.cursors[reader]
            else:
                done = self.worker_batches(rank_batches - self.layout["base"], reader)
                epoch, batch = self.locate(done)
                emitted = batch * self.spec.micro_batch_size
            shards, rows = self.slice_rows(epoch, self.slot(reader))
            cursor = min(emitted + self.spec.shuffle_buffer, len(rows))
            at_end = cursor == len(rows)
            readers.append(
                {
                    "reader": reader,
                    "epoch": epoch,
                    "emitted": emitted,
                    "shard": None if at_end else self.index.files[int(shards[cursor])],
                    "row": None if at_end else int(rows[cursor]),
                }
            )
        position: dict[str, Any] = {"rank_batches": rank_batches, "readers": readers}
        if self.layout != {"base": 0, "epoch": 0, "history": []}:  # since a resume onto other readers
            position["layout"] = self.layout
        if self.fmt.packing:
            cursors = [{k: r[k] for k in ("reader", "epoch", "emitted")} for r in readers]
            ranks = [cursors]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                ranks = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(ranks, cursors)
            position["ranks"] = ranks
        return position


def same_cut(
    index: ShardIndex, fmt: SampleFormat, previous: StreamSpec, rank_batches: int, position: dict | None
) -> tuple[dict[str, Any], int] | None:
    """(layout, batches each reader has yielded since its base) of `previous`'s readers after `rank_batches`
    batches of every rank, if all of them stand at the same batch; else None. A stream with as many slots
    (ranks x readers) and the same micro-batch size then goes on in that layout: its slot s reads on where
    slot s stopped, as if uninterrupted (another grad_accum, or 2 ranks x 1 reader after 1 x 2)."""
    old = CaptionStream(index, fmt, previous, 0, rank_batches, position)
    since = rank_batches - old.layout["base"]
    counts = {old.worker_batches(since, r) for r in range(previous.readers_per_rank)}
    return (old.layout, counts.pop()) if len(counts) == 1 else None


def relayout(
    index: ShardIndex, fmt: SampleFormat, previous: StreamSpec, rank_batches: int, position: dict | None
) -> dict[str, Any]:
    """The layout of a stream resumed after `rank_batches` batches of every rank of `previous`'s readers:
    the epoch those readers were in goes on with what none of them emitted (``base``: that batch)."""
    old = CaptionStream(index, fmt, previous, 0, rank_batches, position)
    since = rank_batches - old.layout["base"]
    at = [old.locate(old.worker_batches(since, r)) for r in range(previous.readers_per_rank)]
    # readers differ by at most one batch: one that finished the epoch stands at (epoch + 1, 0)
    epoch = min(e for e, _ in at)
    full = old.epoch_batches(epoch)
    emitted = [(b if e == epoch else full) * previous.micro_batch_size for e, b in at]
    history = list(old.layout["history"]) if epoch == old.layout["epoch"] else []
    if any(emitted):
        history.append({"num_slots": previous.num_slots, "emitted": emitted * previous.world_size})
    return {"base": rank_batches, "epoch": epoch, "history": history}


class NotingLoader:
    """The DataLoader of a packed stream: tells the stream (in this process) which batches the loop took."""

    def __init__(self, loader: DataLoader, stream: CaptionStream) -> None:
        self.loader, self.stream = loader, stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.stream.note(batch)
            yield batch


def train_loader(
    index: ShardIndex,
    fmt: SampleFormat,
    spec: StreamSpec,
    rank: int,
    start_batches: int = 0,
    position: dict[str, Any] | None = None,
    previous: StreamSpec | None = None,
) -> tuple[CaptionStream, DataLoader | NotingLoader]:
    """The rank's stream and its loader; `position`: the checkpoint's (``CaptionStream.position``),
    `previous`: the checkpoint's spec if its readers or micro-batch size differ."""
    stream = CaptionStream(index, fmt, spec, rank, start_batches, position, previous)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=spec.num_workers,
        prefetch_factor=2 if spec.num_workers else None,
        persistent_workers=False,
    )
    return stream, NotingLoader(loader, stream) if fmt.packing else loader


def heldout_rows(index: ShardIndex, max_rows: int) -> list[dict[str, Any]]:
    """The first `max_rows` rows of an index (the held-out split) in shard order, as read."""
    shards, rows, have = [], [], 0
    for s in range(len(index.files)):  # only the shards the first `max_rows` rows lie in
        r = index.rows_of(s, 0, max_rows - have)
        shards.append(np.full(len(r), s, dtype=np.int64))
        rows.append(r)
        have += len(r)
        if have >= max_rows:
            break
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if len(rows) == 0:
        raise ValueError("data.heldout_fraction: no held-out rows to evaluate on (raise the fraction)")
    reader = RowReader(index, np.concatenate(shards), rows)
    out = [row for _, row in reader.emit(np.arange(len(rows)), 0)]
    reader.close()
    return out


def heldout_batches(index: ShardIndex, fmt: SampleFormat, max_rows: int, micro_batch_size: int) -> list[dict]:
    """The first `max_rows` held-out rows in shard order, as batches (the same on every rank)."""
    samples = [make_sample(row, fmt, np.random.default_rng(0)) for row in heldout_rows(index, max_rows)]
    return [
        collate(
            samples[i : i + micro_batch_size], fmt.eos_id, fmt.image_size, fmt.video_frames, fmt.max_num_tiles
        )
        for i in range(0, len(samples), micro_batch_size)
    ]
