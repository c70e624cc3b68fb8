"""Training pieces without DeepSpeed: config, tokenizer, the sharded stream and its resume, schedule, FLOPs,
weights across resolutions, launcher command lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import mixed_data, recipe_data, sample_rows, write_curated

from vlmforge.common.errors import ConfigError
from vlmforge.training.config import SubsetSection, load_train_config
from vlmforge.training.data import (
    CaptionStream,
    SampleFormat,
    StreamSpec,
    build_index,
    heldout_batches,
    make_sample,
    shuffle_order,
    slot_rows,
    train_loader,
)
from vlmforge.training.flops import step_flops
from vlmforge.training.launch import launch_command
from vlmforge.training.model.config import IGNORE_INDEX, get_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.optim import deepspeed_config, lr_factor
from vlmforge.training.tokenizer import TextTokenizer
from vlmforge.training.train import model_config
from vlmforge.training.weights import load_chain, load_into, save_tensors


@pytest.fixture(scope="module")
def data() -> tuple[Path, Path]:
    return recipe_data()


@pytest.fixture(scope="module")
def tok(data) -> TextTokenizer:
    return TextTokenizer(data[1])


def fmt_for(tok: TextTokenizer, image_size: int | None = 32, **kw) -> SampleFormat:
    return SampleFormat(
        tok.bos_id, tok.eos_id, 512 if image_size else None, image_size, 40, encode=tok.encode, **kw
    )


# ------------------------------------------------------------------------------------------------ config


def test_configs_in_repo_validate():
    for name in ("text_lm", "clip", "stage1", "stage2"):
        cfg = load_train_config(f"configs/train/{name}.yaml")
        assert cfg.train.output and cfg.tokenizer and cfg.data.path
    stage2 = load_train_config("configs/train/stage2.yaml")
    stage1_size = model_config(load_train_config("configs/train/stage1.yaml")).vision.input_size
    assert model_config(stage2).vision.input_size > stage1_size
    assert stage2.data.subset is not None


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_train_config(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"train\.micro_batchsize: unknown key"):
        load_train_config(None, ["train.micro_batchsize=4"])
    with pytest.raises(ConfigError, match=r"warmup_steps"):
        load_train_config(None, ["train.steps=5", "optim.warmup_steps=10"])
    with pytest.raises(ConfigError, match=r"tokenizer, train\.output"):
        load_train_config(None, ["data.path=x"]).require("data.path", "tokenizer", "train.output")
    with pytest.raises(ConfigError, match=r"model\.tile_grid"):
        load_train_config("configs/train/clip.yaml", ["model.tile_grid=2"])
    cfg = load_train_config("configs/train/stage1.yaml", ["train.steps=70", "data.subset.percentile=90"])
    assert cfg.train.steps == 70 and cfg.data.subset.percentile == 90


def test_deepspeed_config_is_filled_and_guarded(tmp_path):
    cfg = load_train_config(None, ["train.micro_batch_size=4", "train.grad_accum=3", "optim.grad_clip=0.5"])
    ds = deepspeed_config(cfg, "fp32")
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": False}
    for stage in (1, 2, 3):
        zero = json.loads(Path(f"configs/deepspeed/zero{stage}.json").read_text())["zero_optimization"]
        assert zero["stage"] == stage and zero["contiguous_gradients"] and zero["reduce_scatter"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "contiguous_gradients": False}}))
    with pytest.raises(ConfigError, match="contiguous_gradients"):
        deepspeed_config(load_train_config(None, [f"train.deepspeed={bad}"]), "fp32")
    bad.write_text(json.dumps({"train_batch_size": 8}))
    with pytest.raises(ConfigError, match="train_batch_size"):
        deepspeed_config(load_train_config(None, [f"train.deepspeed={bad}"]), "fp32")


# --------------------------------------------------------------------------------------------- tokenizer


def test_trained_tokenizer_layout(tok):
    assert (tok.bos_id, tok.eos_id, tok.image_id, tok.vocab_size) == (0, 1, 512, 512)
    text = "three small solid scarlet squares set on a plum background"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and max(ids) < 512 and len(ids) < len(text.split()) * 2
    tiny = get_config("tiny")
    tok.check_model(
        tiny.decoder.vocab_size, tiny.image_token_id, tiny.decoder.bos_token_id, tiny.decoder.eos_token_id
    )
    with pytest.raises(ValueError, match="image token 300"):
        tok.check_model(512, 300, 0, 1)


# ----------------------------------------------------------------------------------------------- samples


def test_sample_layout_and_caption_choice(tok):
    row = {
        "id": "a",
        "image": sample_rows()[0]["image"],
        "caption": "a red circle",
        "synthetic_caption": "a disc",
    }
    s = make_sample(row, fmt_for(tok), np.random.default_rng(0))
    body = tok.encode("a red circle") + [tok.eos_id]
    assert s.input_ids == [tok.bos_id, 512, *body]
    mllama = make_sample(row, fmt_for(tok, image_first=True), np.random.default_rng(0))
    assert mllama.input_ids == [512, tok.bos_id, *body]  # Mllama's order: <|image|><|begin_of_text|>
    assert mllama.labels == s.labels
    assert s.labels == [IGNORE_INDEX, IGNORE_INDEX, *body]  # loss on the caption (and EOS) only
    assert s.image.shape == (3, 32, 32) and s.image.std() > 0.1
    synthetic = make_sample(row, fmt_for(tok, synthetic_caption_prob=1.0), np.random.default_rng(0))
    assert synthetic.input_ids[2:-1] == tok.encode("a disc")
    text_only = make_sample({**row, "image": None}, fmt_for(tok), np.random.default_rng(0))
    assert text_only.image is None and 512 not in text_only.input_ids


def test_repeated_text_copies_the_caption_up_to_max_tokens(tok):
    row = {"id": "a", "image": None, "caption": "a red circle"}
    once = tok.encode("a red circle") + [tok.eos_id]
    twice = make_sample(row, fmt_for(tok, image_size=None, repeat_text=2), np.random.default_rng(0))
    assert twice.input_ids == [tok.bos_id, *once, *once] and twice.labels[1:] == [*once, *once]
    long = [*tok.encode("three small solid scarlet squares set on a plum background"), tok.eos_id]
    assert 40 < 1 + 3 * len(long) and 1 + len(long) < 40
    row = {**row, "caption": "three small solid scarlet squares set on a plum background"}
    cut = make_sample(row, fmt_for(tok, image_size=None, repeat_text=3), np.random.default_rng(0))
    assert len(cut.input_ids) == 40  # max_tokens: the copies are cut, never the first caption
    assert cut.input_ids[1 : 1 + len(long)] == long
    with pytest.raises(ConfigError, match="data.repeat_text"):
        load_train_config("configs/train/stage1.yaml", ["data.repeat_text=2"])


def test_synthetic_caption_probability_is_per_sample_and_seeded(tok):
    row = {"id": "a", "image": None, "caption": "red", "synthetic_caption": "blue"}
    fmt = fmt_for(tok, synthetic_caption_prob=0.3)
    picks = [make_sample(row, fmt, np.random.default_rng([0, i])).input_ids for i in range(400)]
    share = sum(p[1:-1] == tok.encode("blue") for p in picks) / len(picks)
    assert 0.22 < share < 0.38


def test_text_only_rows_get_a_placeholder_image_and_no_image_token(tok):
    index = build_index(mixed_data(), "train", 0.0)
    batch = heldout_batches(index, fmt_for(tok), 96, 96)[0]
    has_token = (batch["input_ids"] == 512).any(dim=1)
    assert batch["images"].shape == (96, 3, 32, 32) and batch["num_images"] == 48
    assert has_token.sum() == 48
    assert torch.all(batch["images"][~has_token] == 0)  # the placeholder: masked out by the missing token


# ----------------------------------------------------------------------------------------- index, split


def test_heldout_split_is_disjoint_and_stable(data):
    train = build_index(data[0], "train", 0.1)
    heldout = build_index(data[0], "heldout", 0.1)
    again = build_index(data[0], "heldout", 0.1)
    assert train.files == heldout.files and heldout.fingerprint == again.fingerprint
    for tr, ho in zip(train.rows, heldout.rows, strict=True):
        assert not set(tr) & set(ho)
    total = train.total + heldout.total
    assert total == len(sample_rows()) and 0.05 < heldout.total / total < 0.15


def test_subset_keeps_rows_at_or_above_the_percentile(data):
    full = build_index(data[0], "train", 0.1)
    top = build_index(data[0], "train", 0.1, SubsetSection(column="clip_score", percentile=75))
    assert 0.2 < top.total / full.total < 0.3 and "clip_score >=" in top.note
    with pytest.raises(ValueError, match="data.subset.column: .*'nope'"):
        build_index(data[0], "train", 0.1, SubsetSection(column="nope"))
    with pytest.raises(ValueError, match="'synthetic_caption' has no values"):
        build_index(data[0], "train", 0.1, SubsetSection(column="synthetic_caption"))


def uneven_index(tmp_path: Path):
    rows = list(sample_rows())[:230]
    sizes = [70, 13, 101, 46]  # uneven shards, and not a multiple of anything
    shards, start = [], 0
    for n in sizes:
        shards.append(rows[start : start + n])
        start += n
    return build_index(write_curated(tmp_path, shards, row_group_rows=16), "train", 0.0)


def test_split_across_ranks_and_workers_has_no_overlap_no_gap(tmp_path):
    index = uneven_index(tmp_path)
    for epoch in range(3):
        seen = Counter()
        for slot in range(6):  # e.g. 3 ranks x 2 workers
            shards, rows = slot_rows(index, 0, epoch, slot, 6)
            assert abs(len(rows) - index.total / 6) < 1
            seen.update(zip(shards.tolist(), rows.tolist(), strict=True))
        everything = {(s, int(r)) for s, rs in enumerate(index.rows) for r in rs}
        assert set(seen) == everything and max(seen.values()) == 1


def test_every_reader_yields_the_same_number_of_batches(tmp_path, tok):
    index = uneven_index(tmp_path)
    spec = StreamSpec(seed=0, shuffle_buffer=20, micro_batch_size=7, world_size=3, num_workers=2)
    counts = []
    for slot in range(6):
        stream = CaptionStream(index, fmt_for(tok, image_size=None), spec, rank=slot // 2)
        counts.append(len(stream.epoch_order(0, slot)[2]) // 7)
    assert counts == [index.total // 6 // 7] * 6
    assert stream.steps_per_epoch == 2 * counts[0]


def test_shuffle_buffer_order():
    order = shuffle_order(1000, 64, np.random.default_rng(1))
    assert sorted(order) == list(range(1000))
    assert all(order[k] < k + 64 for k in range(1000))  # never emits a row it has not read yet
    assert not np.array_equal(order, np.arange(1000))
    assert np.array_equal(order, shuffle_order(1000, 64, np.random.default_rng(1)))


def ids_of(loader, n: int) -> list[list[str]]:
    it = iter(loader)
    return [next(it)["ids"] for _ in range(n)]


def test_resumed_stream_continues_exactly(tmp_path, tok):
    """Two workers, a buffer spanning row groups, across an epoch boundary: batches k.. of a stream started at
    k equal those of an uninterrupted stream; the position names the epoch and the next (shard, row)."""
    index = uneven_index(tmp_path)
    spec = StreamSpec(seed=3, shuffle_buffer=40, micro_batch_size=5, world_size=1, num_workers=2)
    fmt = fmt_for(tok, image_size=None)
    stream, loader = train_loader(index, fmt, spec, rank=0)
    per_epoch = stream.steps_per_epoch
    full = ids_of(loader, per_epoch + 9)
    assert len({i for batch in full[:per_epoch] for i in batch}) == per_epoch * 5  # no row twice in an epoch
    assert full[per_epoch:] != full[:9]  # a new order next epoch
    for start in (7, per_epoch - 1, per_epoch + 3):
        _, resumed = train_loader(index, fmt, spec, rank=0, start_batches=start)
        assert ids_of(resumed, per_epoch + 9 - start) == full[start:]
    position = stream.position(per_epoch + 3)
    assert [r["epoch"] for r in position["readers"]] == [1, 1]
    assert all(r["shard"] in index.files and isinstance(r["row"], int) for r in position["readers"])


# ------------------------------------------------------------------------------------- optimisation bits


def test_warmup_then_cosine():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_flops_count_frozen_parts_at_4n_and_trained_at_6n():
    sizes = {"encoder": (100, 0), "decoder": (0, 1000), "fusion": (50, 0)}
    tokens_of = {"encoder": "image", "decoder": "text", "fusion": "text"}
    assert step_flops(sizes, tokens_of, {"text": 10, "image": 3}) == 6 * 100 * 3 + 4 * 1000 * 10 + 6 * 50 * 10
    # a frozen encoder at the input runs forward only (2N); attention: 4 per pair and unit of width, x3
    # where gradients flow (the decoder's, under trained adapters), x1 where they do not (the encoder's)
    frozen = {**sizes, "encoder": (0, 100)}
    attention = {"encoder": ("image_pairs", 8), "decoder": ("self", 16)}
    counts = {"text": 10, "image": 3, "self": 55, "image_pairs": 9}
    assert step_flops(frozen, tokens_of, counts, ("encoder",), attention) == (
        2 * 100 * 3 + 4 * 1000 * 10 + 6 * 50 * 10 + 4 * 8 * 9 + 3 * 4 * 16 * 55
    )
    assert step_flops(frozen, tokens_of, counts) == 4 * 100 * 3 + 4 * 1000 * 10 + 6 * 50 * 10


def test_weights_load_across_resolutions(tmp_path):
    torch.manual_seed(0)
    low = FusionModel(get_config("tiny"))
    path = tmp_path / "w.safetensors"
    save_tensors(
        {n: p.detach() for n, p in low.named_parameters() if n.startswith("encoder.")}, path, low.config, []
    )
    cfg = get_config("tiny")
    cfg.vision.image_size = 48
    high = FusionModel(cfg)
    load_into(high, path)
    expected = low.encoder.position_embedding_for((6, 6))
    assert torch.equal(high.encoder.position_embedding, expected)  # bilinear, as the encoder does on the fly
    assert torch.equal(high.encoder.patch_embedding.weight, low.encoder.patch_embedding.weight)


def test_init_from_also_loads_what_a_file_was_initialised_from(tmp_path):
    torch.manual_seed(0)
    trained = FusionModel(get_config("tiny"))
    clip, stage1 = tmp_path / "clip.safetensors", tmp_path / "stage1.safetensors"
    params = {n: p.detach() for n, p in trained.named_parameters()}
    save_tensors({n: p for n, p in params.items() if n.startswith("encoder.")}, clip, None, [])
    # stage 1 with a frozen encoder writes only what it trained, and points at the CLIP file
    projection = {n: p for n, p in params.items() if n.startswith("projection.")}
    save_tensors(projection, stage1, trained.config, [str(clip)])
    fresh = FusionModel(get_config("tiny"))
    load_chain(fresh, stage1, strict_names=True)
    assert torch.equal(fresh.encoder.patch_embedding.weight, trained.encoder.patch_embedding.weight)
    assert torch.equal(fresh.projection.proj.weight, trained.projection.proj.weight)
    clip.unlink()
    with pytest.raises(FileNotFoundError, match="model.init_from: weights file not found: .*clip"):
        load_chain(fresh, stage1)


# -------------------------------------------------------------------------------------------- launcher


def test_launch_commands():
    ds = launch_command(
        "c.yaml", 2, resume=True, overrides=["train.steps=3"], launcher="deepspeed", master_port=1234
    )
    assert ds[1:] == [
        "--num_gpus",
        "2",
        "--master_port",
        "1234",
        "--no_local_rank",
        "--module",
        "vlmforge.training.train",
        "c.yaml",
        "--resume",
        "--set=train.steps=3",
    ]
    tr = launch_command("c.yaml", 2, launcher="torchrun", master_port=1234)
    assert tr[1:] == [
        "--nproc_per_node", "2", "--master_port", "1234", "-m", "vlmforge.training.train", "c.yaml"
    ]
    with pytest.raises(ValueError, match="hostfile needs the deepspeed launcher"):
        launch_command("c.yaml", 2, hostfile="hosts", launcher="torchrun")
    with pytest.raises(FileNotFoundError, match="hostfile"):
        launch_command("c.yaml", 2, hostfile="/nonexistent/hosts", launcher="deepspeed")
