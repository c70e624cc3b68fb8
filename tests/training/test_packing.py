"""Packed multimodal batches (data.packing): equivalence with unpacked rows, masks that do not leak, the
chunked loss, the packed stream and its exact resume (a SIGKILLed run, slow)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_support import (
    PYTHON,
    clean_env,
    kill_at_first_checkpoint,
    mixed_data,
    recipe_data,
    sample_rows,
    write_curated,
)

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import load_train_config
from vlmforge.training.data import (
    SampleFormat,
    StreamSpec,
    build_index,
    collate,
    collate_packed,
    make_sample,
    pack_rows,
    train_loader,
)
from vlmforge.training.flops import computed_counts
from vlmforge.training.metrics import read_metrics
from vlmforge.training.model.config import IGNORE_INDEX, get_config
from vlmforge.training.model.decoder import Attention, Decoder, Segments, block_causal_mask, length_buckets
from vlmforge.training.model.fusion import FusionModel, media_attention_mask
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.vlm import loss as vlm_loss

IMAGE = 512  # the image token of the recipe tokenizer and the tiny preset
SHARE = 0.8  # real tokens / positions of packed rows of 96 tokens (unpacked rows: about 0.45)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(recipe_data()[1])


def fmt_for(tok: TextTokenizer, max_tokens: int = 64, **kw) -> SampleFormat:
    return SampleFormat(tok.bos_id, tok.eos_id, IMAGE, 32, max_tokens, encode=tok.encode, **kw)


def samples_of(tok: TextTokenizer, image_first: bool, n: int = 12) -> list:
    rows = [dict(r) for r in sample_rows()[:n]]
    rows[3]["image"] = rows[7]["image"] = None  # text-only samples among the others
    fmt = fmt_for(tok, image_first=image_first)
    return [make_sample(r, fmt, np.random.default_rng(0)) for r in rows]


def model_with_open_gates(trainable_encoder: bool = True) -> FusionModel:
    """The tiny model with open gates (the images and adapters change the logits), the decoder trainable."""
    torch.manual_seed(0)
    model = FusionModel(get_config("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.7)
    model.requires_grad_(True)
    model.encoder.requires_grad_(trainable_encoder)
    return model


def packed_forward(model: FusionModel, batch: dict, labels: bool = True):
    keys = ("encoder_mask", "position_ids", "segment_ids")
    return model(
        input_ids=batch["input_ids"],
        images=batch["images"],
        labels=batch["labels"] if labels else None,
        **{k: batch[k] for k in keys},
    )


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, S - 1) next-token cross entropy, 0 where there is no target."""
    return F.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


# ----------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("image_first", [False, True])
def test_packed_losses_and_gradients_equal_unpacked(tok, image_first):
    """Per-caption losses from one packed batch equal those of the same samples unpacked (one per row,
    right-padded), and so do the batch loss (a mean per token) and every parameter's gradient (fp32)."""
    samples = samples_of(tok, image_first)
    rows = pack_rows(samples, 64)
    assert len(rows) < len(samples) / 2 and all(sum(len(s.input_ids) for s in r) <= 64 for r in rows)
    packed = collate_packed(rows, tok.eos_id, 32, IMAGE)
    unpacked = collate(samples, tok.eos_id, 32)
    assert packed["num_tokens"] == unpacked["num_tokens"] and packed["ids"] == unpacked["ids"]
    assert len(Segments.of(packed["segment_ids"]).buckets) > 1  # attention in several length buckets
    model = model_with_open_gates()

    with torch.no_grad():
        got = token_losses(packed_forward(model, packed, labels=False).logits, packed["labels"])
        want = token_losses(model(unpacked["input_ids"], unpacked["images"]).logits, unpacked["labels"])
    seg = packed["segment_ids"][:, :-1]
    k = 0
    for r, row in enumerate(rows):
        for j in range(len(row)):
            caption = got[r][seg[r] == j].sum()
            assert abs(float(caption - want[k].sum())) <= 1e-5 * max(1.0, float(want[k].sum())), (r, j)
            k += 1
    assert k == len(samples)

    grads = []
    for run in (lambda: packed_forward(model, packed).loss, lambda: vlm_loss(model, unpacked)):
        model.zero_grad()
        loss = run()
        loss.backward()
        grads.append(
            (float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (packed_loss, packed_grads), (loss, unpacked_grads) = grads
    assert abs(packed_loss - loss) <= 1e-5
    assert packed_grads.keys() == unpacked_grads.keys() and len(packed_grads) > 50
    assert any(n.startswith("encoder.") for n in packed_grads)
    for name, g in unpacked_grads.items():
        assert torch.allclose(packed_grads[name], g, rtol=1e-4, atol=1e-5), name
    # vlm.loss takes the packed keys from the batch the same way
    assert abs(float(vlm_loss(model, packed)) - packed_loss) < 1e-6


# ----------------------------------------------------------------------------------------------- masks


def test_block_causal_mask_and_per_sample_image_masks(tok):
    segments = torch.tensor([[0, 0, 0, 1, 1, -1, -1]])
    mask = block_causal_mask(segments)[0, 0]
    expect = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expect)
    for image_first in (False, True):
        samples = samples_of(tok, image_first)
        rows = pack_rows(samples, 64)
        packed = collate_packed(rows, tok.eos_id, 32, IMAGE)
        assert not packed["encoder_mask"][packed["segment_ids"] == -1].any()  # padding sees no image
        for r, row in enumerate(rows):
            at, n = 0, 0
            for s in row:
                end = at + len(s.input_ids)
                # Each sample's block is exactly Mllama's rule on the sample alone, on its own image slot.
                alone = media_attention_mask(torch.tensor([s.input_ids]), IMAGE, 1)[0, :, 0]
                block = packed["encoder_mask"][r, at:end]
                if s.image is None:
                    assert not block.any() and not alone.any()  # text-only: sees no image
                else:
                    assert torch.equal(block[:, n], alone) and alone.any()
                    assert not block[:, [m for m in range(block.shape[1]) if m != n]].any()
                    n += 1
                at = end


def test_length_buckets_pad_the_fewest_pairs():
    """Samples of very different lengths go into at most ``max_buckets`` groups, longest first, each padded
    to its own longest: the split of the sorted lengths that pads to the fewest causal pairs (brute force)."""
    lengths = [3, 80, 5, 79, 4, 40, 41, 2, 6, 21, 20, 1, 5, 40]  # with ties
    n = len(lengths)
    ordered = sorted(range(n), key=lambda i: -lengths[i])

    def pairs(groups: list[list[int]]) -> float:
        return sum(len(g) * lengths[g[0]] * (lengths[g[0]] + 1) / 2 for g in groups)

    for k in (1, 2, 3, 4, 20):
        groups = length_buckets(lengths, k)
        assert [i for g in groups for i in g] == ordered and len(groups) <= k and all(groups)
        cheapest = min(
            pairs([ordered[a:b] for a, b in zip((0, *cuts), (*cuts, n), strict=True)])
            for m in range(min(k, n))
            for cuts in itertools.combinations(range(1, n), m)
        )
        assert pairs(groups) == cheapest
    assert length_buckets(lengths, 1) == [ordered]
    assert [[lengths[i] for i in g] for g in length_buckets(lengths, 4)] == [
        [80, 79], [41, 40, 40], [21, 20], [6, 5, 5, 4, 3, 2, 1]
    ]
    assert length_buckets([], 4) == [] and length_buckets([7], 4) == [[0]]
    assert length_buckets([5, 5, 5], 4) == [[0, 1, 2]]  # equal lengths: one bucket


def packed_rows(lengths: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment_ids, position_ids) of rows holding samples of the given lengths, padded to ``width``."""
    segments = torch.full((len(lengths), width), -1)
    positions = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, row in enumerate(lengths):
        at = 0
        for j, n in enumerate(row):
            segments[r, at : at + n], positions[r, at : at + n] = j, torch.arange(n)
            at += n
    return segments, positions


@pytest.mark.parametrize("max_buckets", [1, 4])
def test_per_sample_attention_is_the_block_causal_mask(max_buckets):
    """Self-attention over packed rows sample by sample (Segments; samples of very different lengths in
    length buckets, or all in one) gives what the block-causal mask gives, values and gradients; the
    buckets' slots round-trip the rows, zeros at their padding."""
    torch.manual_seed(0)
    cfg = get_config("tiny").decoder
    attn = Attention(cfg)
    segments, positions = packed_rows([[1, 30, 2, 17], [3, 9, 40], [5, 5, 5, 5, 1], [48]], 52)
    seg = Segments.of(segments, max_buckets=max_buckets)
    assert len(seg.buckets) == max_buckets and sum(n for n, _ in seg.buckets) == 13
    slots = sum(n * length for n, length in seg.buckets)
    # buckets: 48 | 40 30 | 17 9 | the rest, against 13 samples padded to 48
    assert slots == (13 * 48 if max_buckets == 1 else 48 + 2 * 40 + 2 * 17 + 8 * 5)
    real = segments >= 0
    x = torch.randn(4, 52, cfg.dim)
    back = seg.scatter(seg.gather(x))
    assert torch.equal(back[real], x[real]) and not back[~real].any()

    cos, sin = Decoder(cfg).rope(0, 52, x, positions)
    weights = torch.randn(int(real.sum()), cfg.dim)
    results = []
    for mask in (block_causal_mask(segments), seg):
        xg = x.clone().requires_grad_(True)
        attn.zero_grad()
        out = attn(xg, cos, sin, None, mask)
        (out[real] * weights).sum().backward()
        results.append((out[real].detach(), xg.grad, [p.grad.clone() for p in attn.parameters()]))
    (masked, masked_dx, masked_dw), (per_sample, dx, dw) = results
    assert torch.allclose(masked, per_sample, atol=1e-6)
    assert torch.allclose(masked_dx, dx, atol=1e-6)
    for a, b in zip(masked_dw, dw, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(masked, attn(x, cos, sin)[real], atol=1e-3)  # plain causal differs


def test_segments_find_each_samples_image_in_bucket_order():
    segments, _ = packed_rows([[2, 7, 3], [9, 1]], 12)
    encoder_mask = torch.zeros(2, 12, 3, dtype=torch.bool)
    encoder_mask[0, 1, 0] = True  # sample (0, 0) sees slot 0 from its second token
    encoder_mask[0, 9:12, 1] = True  # (0, 2): slot 1; (0, 1) is text-only
    encoder_mask[1, 0:9, 2] = encoder_mask[1, 9, 0] = True  # (1, 0): slot 2, (1, 1): slot 0
    seg = Segments.of(segments, encoder_mask, max_buckets=2)
    assert seg.buckets == [(2, 9), (3, 3)]  # lengths 9 7 | 3 2 1
    assert seg.image.tolist() == [3 + 2, -1, 1, 0, 3 + 0]  # samples (1, 0) (0, 1) | (0, 2) (0, 0) (1, 1)
    assert torch.equal(seg.sees_image, encoder_mask.any(dim=-1)) and seg.num_images == 3
    with pytest.raises(ValueError, match="no sample"):
        Segments.of(torch.full((2, 5), -1))


def test_packed_samples_cannot_see_each_other(tok):
    """Changing one sample's text or image changes its own logits and no other sample's: a leak in the
    self-attention mask, the positions or the image masks fails this."""
    samples = samples_of(tok, image_first=False)
    rows = pack_rows(samples, 64)
    r = next(i for i, row in enumerate(rows) if len(row) >= 3 and all(s.image is not None for s in row[:2]))
    batch = collate_packed(rows, tok.eos_id, 32, IMAGE)
    model = model_with_open_gates().eval()
    seg = batch["segment_ids"][r]
    with torch.no_grad():
        base = packed_forward(model, batch, labels=False).logits[r]
        text = {**batch, "input_ids": batch["input_ids"].clone()}
        first = (seg == 0).nonzero().flatten()
        text["input_ids"][r, first[2:]] = (text["input_ids"][r, first[2:]] + 7) % 512  # caption 0's words
        image = {**batch, "images": batch["images"].clone()}
        image["images"][r, 0] = batch["images"][r, 1].flip(-1)  # caption 0's image
        for changed in (text, image):
            out = packed_forward(model, changed, labels=False).logits[r]
            assert (out[seg == 0] - base[seg == 0]).abs().max() > 1e-3  # its own sample changes
            assert torch.equal(out[seg != 0], base[seg != 0])  # nothing else does, bit for bit


# ------------------------------------------------------------------------------------------------ loss


def test_chunked_loss_equals_the_unchunked_loss(tok):
    """The loss in 8 pieces (recomputed in backward) equals one piece and the full-logits cross entropy
    within 1e-6, with the same gradients."""
    batch = collate(samples_of(tok, image_first=True), tok.eos_id, 32)
    model = model_with_open_gates()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["images"]).logits
    full = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    results = []
    for chunks in (1, 8):
        model.loss_chunks = chunks
        model.zero_grad()
        loss = vlm_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one, one_grads), (eight, eight_grads) = results
    assert abs(float(one - full)) <= 1e-6 and abs(float(eight - full)) <= 1e-6
    for a, b in zip(one_grads, eight_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert model(batch["input_ids"], batch["images"], labels=batch["labels"]).logits is None


def test_flops_count_what_is_computed(tok):
    samples = samples_of(tok, image_first=False)
    packed = collate_packed(pack_rows(samples, 64), tok.eos_id, 32, IMAGE)
    unpacked = collate(samples, tok.eos_id, 32)
    vision = get_config("tiny").vision
    t = vision.num_tokens
    p, u = computed_counts(packed, vision), computed_counts(unpacked, vision)
    assert (p["text"], p["image"]) == (packed["input_ids"].numel(), 10 * t)  # 10 images
    assert (u["text"], u["image"]) == (unpacked["input_ids"].numel(), 12 * t)
    assert packed["num_tokens"] < packed["input_ids"].numel() < unpacked["input_ids"].numel()
    # attention: unpacked rows causal over their padded length; packed samples each padded to the longest
    rows, length = unpacked["input_ids"].shape
    assert u["self"] == rows * length * (length + 1) / 2 and u["cross"] == rows * length * t
    # packed: each sample padded to its length bucket's longest (fewer pairs than all padded to the longest)
    lengths = [len(s.input_ids) for s in samples]
    groups = [[lengths[i] for i in g] for g in length_buckets(lengths)]
    assert sorted(x for g in groups for x in g) == sorted(lengths) and len(groups) > 1
    assert p["self"] == sum(len(g) * max(g) * (max(g) + 1) / 2 for g in groups)
    assert p["cross"] == sum(len(g) * max(g) for g in groups) * t
    n, longest = len(samples), max(lengths)
    assert p["self"] < n * longest * (longest + 1) / 2
    assert (p["image_pairs"], u["image_pairs"]) == (10 * t * t, 12 * t * t)


def test_packing_config(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.packing applies to task vlm only"):
        load_train_config("configs/train/text_lm.yaml", ["data.packing=true"])
    cfg = load_train_config("configs/train/stage1.yaml", ["data.packing=true"])
    assert cfg.data.packing and cfg.data_hash() != load_train_config("configs/train/stage1.yaml").data_hash()


# ---------------------------------------------------------------------------------------------- stream


def batches_of(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_packed_stream_resumes_exactly(tmp_path, tok):
    """Two workers, across epochs: a packed stream started from the position noted after k batches gives
    the uninterrupted stream's batches k.. (same samples, same rows); every row of a reader's slice comes
    once per epoch."""
    rows = [dict(r) for r in sample_rows()[:60]]
    for r in rows[::5]:
        r["image"] = None
    index = build_index(write_curated(tmp_path, [rows[:35], rows[35:]], row_group_rows=8), "train", 0.0)
    spec = StreamSpec(seed=3, shuffle_buffer=12, micro_batch_size=2, world_size=1, num_workers=2)
    fmt = fmt_for(tok, max_tokens=96, packing=True)
    stream, loader = train_loader(index, fmt, spec, rank=0)
    full = batches_of(loader, 20)
    # Worker w serves reader w from the start; each reader's slice is 30 rows an epoch, none dropped.
    readers = [[i for b in full[w::2] for i in b["ids"]] for w in range(2)]
    assert min(map(len, readers)) > 60
    for epoch in range(2):
        seen = [i for r in readers for i in r[30 * epoch : 30 * (epoch + 1)]]
        assert sorted(seen) == sorted(r["id"] for r in rows)  # every row once an epoch
    assert readers[0][:30] != readers[0][30:60]
    assert all(b["input_ids"].shape[1] <= 96 for b in full)
    share = sum(b["num_tokens"] for b in full) / sum(b["input_ids"].numel() for b in full)
    assert share > SHARE, share
    assert {b["stream"]["epoch"] for b in full} == {0, 1, 2}
    for k in (5, 12):
        stream, loader = train_loader(index, fmt, spec, rank=0)
        batches_of(loader, k)
        position = stream.position(k)
        _, resumed = train_loader(index, fmt, spec, rank=0, start_batches=k, position=position)
        for want, got in zip(full[k:], batches_of(resumed, 20 - k), strict=True):
            assert got["ids"] == want["ids"]
            assert torch.equal(got["input_ids"], want["input_ids"])
            assert torch.equal(got["encoder_mask"], want["encoder_mask"])
            assert torch.equal(got["images"], want["images"])
    with pytest.raises(ValueError, match="data.packing: no packed stream position"):
        train_loader(index, fmt, spec, rank=0, start_batches=5, position={"rank_batches": 5, "readers": []})


# ------------------------------------------------------------------------------------ SIGKILL, resume

STEPS, SAVE_EVERY, TIMEOUT = 8, 3, 300  # the killed run is ~40 s on a quiet machine, mostly start-up


def run_values(out: Path) -> dict[str, object]:
    return {
        "task": "vlm",
        "tokenizer": recipe_data()[1],
        "data.path": mixed_data(),
        "data.packing": "true",
        "data.heldout_fraction": 0,
        "data.shuffle_buffer": 16,
        "data.num_workers": 2,
        "data.max_tokens": 96,
        "model.init_from": "[]",
        "train.output": out,
        "train.steps": STEPS,
        "train.micro_batch_size": 2,
        "train.save_every": SAVE_EVERY,
        "train.progress": "false",
        "train.deepspeed": "configs/deepspeed/zero2.json",
        "optim.warmup_steps": 2,
        "optim.lr": 3e-3,
    }


def run_here(out: Path, resume: bool = False) -> None:
    """The run in this process (one rank, one thread, as the killed run's OMP_NUM_THREADS=1)."""
    from vlmforge.training.train import run

    overrides = [f"{k}={v}" for k, v in run_values(out).items()]
    run(load_train_config("configs/train/stage1.yaml", overrides), resume=resume)


@pytest.mark.slow
def test_packed_sigkill_then_resume_matches_uninterrupted_run(tmp_path, torch_one_thread):
    """With data.packing: `vlmforge train` SIGKILLed after its first checkpoint, then resumed: the same
    losses, samples and image counts as an uninterrupted run, step for step. The uninterrupted run and the
    resume run in this process (one launch fewer each on a busy machine)."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    killed.mkdir()
    run_here(ref)
    cmd = [PYTHON, "-m", "vlmforge.pipeline.cli", "train", "configs/train/stage1.yaml", "--nproc", "1"]
    cmd += [x for k, v in run_values(killed).items() for x in ("--set", f"{k}={v}")]
    resumed_from = kill_at_first_checkpoint(cmd, killed, clean_env(), TIMEOUT, STEPS)
    run_here(killed, resume=True)
    want = {r["step"]: r for r in read_metrics(ref / "metrics.jsonl", "train")}
    got = {r["step"]: r for r in read_metrics(killed / "metrics.jsonl", "train")}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(resumed_from + 1, STEPS + 1):
        for key in ("loss", "data", "images"):
            assert got[step][key] == want[step][key], (step, key)
    # packed: several samples per row, most positions real tokens
    assert max(r["images"] for r in want.values()) > 2 and want[1]["real_token_share"] > 0.8
