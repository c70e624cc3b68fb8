"""Task video on a handful of tiny H.264 clips (the sample-data video generator, decoded with PyAV).

One short DeepSpeed run (ZeRO-2, one rank, CPU, in this process) from a saved image-stage model, plus a
few plain optimizer steps on one repeated batch.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from train_support import write_curated

from vlmforge.common.errors import ConfigError
from vlmforge.pipeline.sample_data.video import encode, random_clip
from vlmforge.training import video
from vlmforge.training.config import load_train_config
from vlmforge.training.data import (
    StreamSpec,
    build_index,
    collate,
    heldout_batches,
    make_sample,
    train_loader,
)
from vlmforge.training.eval import loss_sums, video_gap
from vlmforge.training.model.config import get_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.model.hf import export_mllama
from vlmforge.training.tokenizer import TextTokenizer, train_tokenizer
from vlmforge.training.train import model_config, run
from vlmforge.training.weights import load_fusion_model, save_tensors

ROOT = Path(__file__).resolve().parents[2]
FPS = 4  # encoded frame rate; curation samples 2 frames a second of it (as video.fps would)


def clip_row(i: int, rng: random.Random) -> dict:
    """A clip encoded to MP4 and decoded back with PyAV at 2 fps: a curated video row."""
    clip = random_clip(rng, seconds=2.0, size=(48, 32))
    data = encode(clip.frames(FPS), FPS)
    frames, times = [], []
    with av.open(io.BytesIO(data)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n % (FPS // 2) == 0:
                out = io.BytesIO()
                frame.to_image().save(out, "JPEG", quality=90)
                frames.append(out.getvalue())
                times.append(n / FPS)
    caption = clip.caption()
    return {
        "id": f"clip{i:03d}",
        "caption": caption,
        "original_caption": caption,
        "frames": frames,
        "frame_times": times,
        "duration_s": clip.seconds,
        "width": clip.width,
        "height": clip.height,
        "lang": "en",
        "time_spans": [list(span) for span in clip.time_spans()],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("video")
    rng = random.Random(0)
    rows = [clip_row(i, rng) for i in range(24)]
    curated = write_curated(root / "curated", [rows[:12], rows[12:]], row_group_rows=8)
    # 512 BPE ids need more text than 24 captions: the README's lines come along.
    texts = [r["caption"] for r in rows] + (ROOT / "README.md").read_text().splitlines()
    tokenizer = root / "tokenizer.json"
    train_tokenizer(texts, 512, tokenizer)
    torch.manual_seed(0)
    image_model = FusionModel(get_config("tiny"))  # stands in for a stage-2 output
    image_file = root / "image.safetensors"
    tensors = {n: p.detach().clone() for n, p in image_model.named_parameters()}
    save_tensors(tensors, image_file, image_model.config, [], {})
    return {"root": root, "curated": curated, "tokenizer": tokenizer, "image": image_file, "rows": rows}


def config(setup: dict, out: Path, *overrides: str):
    return load_train_config(
        ROOT / "configs/train/video.yaml",
        [
            f"data.path={setup['curated']}",
            f"tokenizer={setup['tokenizer']}",
            f"train.output={out}",
            f"model.init_from=[{setup['image']}]",
            "model.tile_grid=1",
            "data.heldout_fraction=0.2",
            "data.num_workers=0",
            "train.micro_batch_size=4",
            "train.progress=false",
            "train.save_every=0",
            "eval.every=0",
            "eval.micro_batch_size=4",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def trained(setup, torch_one_thread) -> dict:
    threads = torch.get_num_threads()
    try:
        cfg = config(setup, setup["root"] / "run", "train.steps=6", "optim.warmup_steps=1")
        result = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return {"cfg": cfg, "result": result}


def test_video_rows_become_clips_in_groups(setup):
    cfg = config(setup, setup["root"] / "unused")
    mc = model_config(cfg)
    assert (mc.video.num_frames, mc.video.group_size, mc.video.num_groups) == (8, 4, 2)
    fmt = video.sample_format(cfg, mc, TextTokenizer(cfg.tokenizer))
    index = build_index(cfg.data.path, "heldout", cfg.data.heldout_fraction)
    batch = heldout_batches(index, fmt, 4, 4)[0]
    assert batch["videos"].shape == (4, 8, 3, 32, 32) and batch["num_videos"] == 4
    # 2 s at 2 fps = 4 frames, each read twice, in time order; every row starts BOS <|video|>
    assert torch.equal(batch["videos"][:, 0], batch["videos"][:, 1])
    assert not torch.equal(batch["videos"][:, 1], batch["videos"][:, 2])
    assert (batch["input_ids"][:, :2] == torch.tensor([fmt.bos_id, mc.video_token_id])).all()


def marked_words(tok: TextTokenizer, labels: list[int], mask: list[int], value: int = 1) -> list[str]:
    """The text of each run of consecutive labels marked `value`, stripped."""
    runs, run = [], []
    for t, m in zip([*labels, -1], [*mask, -2], strict=True):
        if m == value:
            run.append(t)
        elif run:
            runs.append(tok.decode(run).strip(" ,"))
            run = []
    return runs


def video_format(setup: dict):
    cfg = config(setup, setup["root"] / "unused")
    mc = model_config(cfg)
    return cfg, mc, video.sample_format(cfg, mc, TextTokenizer(cfg.tokenizer))


def test_time_tokens_mark_exactly_the_words_the_frames_order_decides(setup):
    cfg, _, fmt = video_format(setup)
    tok = TextTokenizer(cfg.tokenizer)
    rng = random.Random(5)
    clip = next(c for c in (random_clip(rng) for _ in range(60)) if c.motion == "right_to_left")
    row = {"id": "r", "caption": clip.caption(), "time_spans": clip.time_spans()}
    sample = make_sample(row, fmt, None)
    assert marked_words(tok, sample.labels, sample.time_tokens) == ["right", "left"]
    static = marked_words(tok, sample.labels[:-1], sample.time_tokens[:-1], 0)
    assert static == [f"a {clip.colour} {clip.shape} moves from", "to"]
    assert sample.labels[-1] == fmt.eos_id and sample.time_tokens[-1] == 0
    assert [m == -1 for m in sample.time_tokens] == [t < 0 for t in sample.labels]  # -1: no loss taken
    # through the curated shards: every held-out row's marked tokens spell its time_spans' words
    index = build_index(cfg.data.path, "heldout", cfg.data.heldout_fraction)
    for batch in heldout_batches(index, fmt, 8, 4):
        for labels, mask in zip(batch["labels"], batch["time_tokens"], strict=True):
            text = tok.decode(labels[labels >= 0][:-1].tolist())
            words = marked_words(tok, labels.tolist(), mask.tolist())
            assert words and all(w in text.replace(",", "").split() for w in words), (text, words)
            assert (mask[labels < 0] == -1).all() and (mask[labels >= 0] >= 0).all()
    # a row without spans, or read as a synthetic caption, gets none; bad spans are named
    assert make_sample({"id": "r", "caption": row["caption"]}, fmt, None).time_tokens is None
    with pytest.raises(ValueError, match="row 'r': time_spans .* are not within its"):
        make_sample(row | {"time_spans": [[3, 99]]}, fmt, None)
    with pytest.raises(ValueError, match="row 'r': time_spans must be \\[start, end\\] pairs"):
        make_sample(row | {"time_spans": [5]}, fmt, None)


def test_a_bare_space_before_a_timed_word_is_timed(setup, torch_one_thread):
    cfg, mc, fmt = video_format(setup)
    tok = TextTokenizer(cfg.tokenizer)
    # this tokenizer splits " yellow" into " ", "y", ...: the bare space is where the model picks the colour
    row = setup["rows"][1]
    assert row["caption"] == "a circle changes colour from yellow to red"
    ids, offsets = tok.encode_offsets(row["caption"])
    overlap = [int(any(s < b and a < e for a, b in row["time_spans"])) for s, e in offsets]
    space = next(i for i, (s, e) in enumerate(offsets) if row["caption"][s:e] == " " and overlap[i + 1])
    sample = make_sample(row, fmt, None)
    timed = sample.time_tokens[len(sample.time_tokens) - len(ids) - 1 : -1]
    assert [i for i, (t, o) in enumerate(zip(timed, overlap, strict=True)) if t != o] == [space]
    assert timed[space] == 1 and marked_words(tok, sample.labels, sample.time_tokens) == ["yellow", "red"]
    # a bare space before a static word stays static: "a yellow square" names what any frame shows
    static = next(r for r in setup["rows"] if r["caption"].startswith("a yellow "))
    ids, offsets = tok.encode_offsets(static["caption"])
    assert static["caption"][slice(*offsets[1])] == " "
    assert make_sample(static, fmt, None).time_tokens[-len(ids) - 1 : -1][1] == 0
    # timed + static are still the whole caption's loss
    torch.manual_seed(0)
    model = video.build_model(cfg, mc).eval()
    batch = collate([sample, make_sample(static, fmt, None)], fmt.eos_id, fmt.image_size, fmt.video_frames)
    whole, n, timed_sum, nt, static_sum, ns = loss_sums(model, [batch])
    assert nt == sum(x.count(1) for x in batch["time_tokens"].tolist())  # the bare space included
    assert nt + ns == n and (timed_sum + static_sum) / n == pytest.approx(whole / n, rel=1e-5)


def test_timed_and_static_figures_split_the_whole_caption_ones(setup, torch_one_thread):
    cfg, mc, fmt = video_format(setup)
    torch.manual_seed(0)
    model = video.build_model(cfg, mc).eval()
    for name, p in model.named_parameters():
        if name.endswith("_gate"):  # open gates: the clip changes the loss
            p.data.fill_(1.0)
    batches = heldout_batches(build_index(cfg.data.path, "heldout", cfg.data.heldout_fraction), fmt, 8, 4)
    gaps = video_gap(model, batches)
    assert gaps["video_gap"] != pytest.approx(1.0, abs=1e-5)
    assert gaps["timed_video_gap"] != pytest.approx(gaps["static_video_gap"], abs=1e-5)
    whole, n, timed, nt, static, ns = loss_sums(model, batches)
    assert nt > 0 and ns > 0 and nt + ns == n  # every held-out row carries spans
    assert (timed + static) / n == pytest.approx(gaps["loss"], rel=1e-5)
    assert gaps["timed_loss"] == pytest.approx(timed / nt, rel=1e-6)
    # every caption token marked timed: the timed figures are the whole-caption ones
    for batch in batches:
        batch["time_tokens"] = torch.where(batch["labels"] >= 0, 1, -1).to(torch.int8)
    all_timed = video_gap(model, batches)
    assert "static_loss" not in all_timed
    for key in ("loss", "loss_other_clip", "loss_time_shuffled", "video_gap", "time_shuffled_gap"):
        assert all_timed[f"timed_{key}"] == pytest.approx(all_timed[key], rel=1e-5), key
        assert all_timed[key] == pytest.approx(gaps[key], rel=1e-6), key


def test_video_stream_resumes_exactly(setup):
    cfg = config(setup, setup["root"] / "unused")
    mc = model_config(cfg)
    fmt = video.sample_format(cfg, mc, TextTokenizer(cfg.tokenizer))
    index = build_index(cfg.data.path, "train", cfg.data.heldout_fraction)
    spec = StreamSpec(0, 8, 4, 1, 0)
    batches = iter(train_loader(index, fmt, spec, 0)[1])
    first = [next(batches) for _ in range(6)]  # past the end of the first epoch
    resumed = iter(train_loader(index, fmt, spec, 0, start_batches=3)[1])
    for want in first[3:]:
        got = next(resumed)
        assert got["ids"] == want["ids"] and torch.equal(got["videos"], want["videos"])


def test_loss_decreases_on_a_repeated_batch(setup, torch_one_thread):
    cfg = config(setup, setup["root"] / "unused")
    mc = model_config(cfg)
    torch.manual_seed(0)
    model = video.build_model(cfg, mc)
    fmt = video.sample_format(cfg, mc, TextTokenizer(cfg.tokenizer))
    batch = heldout_batches(build_index(cfg.data.path, "train", 0.2), fmt, 4, 4)[0]
    trainable = [p for _, p in model.trainable_parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = video.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.slow  # a DeepSpeed run (its CPU comm op JIT-loads once per process)
def test_a_few_steps_train_only_the_video_adapters(setup, trained):
    summary = trained["result"].summary
    assert summary["task"] == "video" and summary["steps"] == 6
    assert math.isfinite(summary["final_train_loss"])
    assert summary["frozen_unchanged"]
    after = summary["eval_after"]
    assert all(math.isfinite(v) for v in after.values())
    # zero gates: before training the clip cannot matter
    assert summary["eval_before"]["video_gap"] == 1.0
    model = trained["result"].engine.module
    with safe_open(str(setup["image"]), "pt") as f:
        for name in f.keys():
            assert torch.equal(model.get_parameter(name).detach(), f.get_tensor(name)), name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("video.") for n in trainable)
    gates = [p for n, p in model.named_parameters() if n.startswith("video.") and n.endswith("_gate")]
    assert gates and any(float(g.detach().abs().max()) > 0 for g in gates)
    with safe_open(str(trained["result"].output / "model.safetensors"), "pt") as f:
        assert f.keys() and all(k.startswith("video.") for k in f.keys())


@pytest.mark.slow  # a DeepSpeed run (its CPU comm op JIT-loads once per process)
def test_export_refuses_the_trained_video_model(trained, tmp_path):
    model = load_fusion_model(trained["result"].output / "model.safetensors")
    assert model.video is not None and model.config.video.num_frames == 8
    with pytest.raises(ValueError, match="video model"):
        export_mllama(model, tmp_path)


@pytest.mark.slow  # evaluates the DeepSpeed run's weights
def test_vlmforge_eval_reports_the_video_gap_of_the_weights(setup, trained, capsys):
    from vlmforge.training.cli import _eval

    cfg = trained["cfg"]
    weights = trained["result"].output / "model.safetensors"
    overrides = [f"data.path={cfg.data.path}", f"tokenizer={cfg.tokenizer}", "data.heldout_fraction=0.2"]
    config = str(ROOT / "configs/train/video.yaml")
    args = argparse.Namespace(config=config, weights=str(weights), set=overrides)
    assert _eval(args) == 0
    result = json.loads(capsys.readouterr().out)
    after = trained["result"].summary["eval_after"]
    assert set(result) == set(after)
    assert result["video_gap"] == pytest.approx(after["video_gap"], rel=1e-4)


def test_video_config_errors_name_the_field(setup, tmp_path):
    with pytest.raises(ConfigError, match="video.frames_per_group"):
        config(setup, tmp_path, "video.frames_per_group=3")
    with pytest.raises(ConfigError, match="task video only"):
        load_train_config(ROOT / "configs/train/stage1.yaml", ["video.num_frames=8"])
    cfg = config(setup, tmp_path, "video.num_frames=6", "video.frames_per_group=null")
    with pytest.raises(ConfigError, match="video.frames_per_group: 32 does not divide"):
        model_config(cfg)


def test_unset_trainable_fields_default_to_video_only(setup, tmp_path):
    cfg = config(setup, tmp_path, "model.trainable={fusion: true}")
    chosen = video.trainable(cfg)
    assert (chosen.video, chosen.fusion, chosen.encoder, chosen.projection) == (True, True, False, False)


def test_video_weights_without_a_tensor_of_today_fail_naming_it(tmp_path):
    """A video file saved before the perceiver's group embedding existed is refused, not silently loaded
    with that tensor at its random start."""
    torch.manual_seed(0)
    model = FusionModel(get_config("tiny_video"))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    image = tmp_path / "image.safetensors"
    save_tensors({n: t for n, t in params.items() if not n.startswith("video.")}, image, model.config, [])
    video = {n: t for n, t in params.items() if n.startswith("video.")}
    whole, old = tmp_path / "whole.safetensors", tmp_path / "old.safetensors"
    save_tensors(video, whole, model.config, [str(image)])
    loaded = dict(load_fusion_model(whole).named_parameters())
    assert torch.equal(loaded["video.resampler.group_embedding"], params["video.resampler.group_embedding"])
    del video["video.resampler.group_embedding"]
    save_tensors(video, old, model.config, [str(image)])
    with pytest.raises(ValueError, match=r"lack \['video.resampler.group_embedding'\].*retrain the video"):
        load_fusion_model(old)
