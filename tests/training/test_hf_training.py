"""`vlmforge train` from Hugging Face checkpoint dirs on 2 CPU ranks under ZeRO-3 (tiny random models in
sharded safetensors, tests/train_support.py:tiny_hf_dirs).

Llama + CLIP dirs (model.hf_decoder, model.hf_encoder): stage 1 trains the adapters while the decoder stays
the HF dir's, bit for bit; checkpoints leave the frozen decoder and encoder out; a SIGKILL then --resume
gives the uninterrupted run's losses; `vlmforge eval` rebuilds the model from the dirs and the weights file
and gives the run's own evaluation, which the 2 ranks split (3 batches: one rank evaluates two, the other
one and a repeat it does not count).
Such a model does not export to Mllama (CLIP's attention biases and unpadded tokens have no place there).
Mllama dir (model.hf_mllama): training continues from it and the export gives transformers' logits on the
trainer's own sequences.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from train_support import (
    PYTHON,
    ROOT,
    clean_env,
    kill_at_first_checkpoint,
    mixed_data,
    recipe_data,
    sample_rows,
    tiny_hf_dirs,
)  # fmt: skip

from vlmforge.training.metrics import read_metrics

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # multi-process DeepSpeed runs

STEPS = 8
SAVE_EVERY = 4
TIMEOUT = 240
TOL = 1e-4
CLI = [PYTHON, "-m", "vlmforge.pipeline.cli", "train", "configs/train/stage1.yaml", "--nproc", "2"]


@pytest.fixture(scope="module")
def dirs() -> dict[str, Path]:
    """The tiny HF dirs, with the recipe tokenizer as the decoder dir's tokenizer.json."""
    found = tiny_hf_dirs()
    _, tokenizer = recipe_data()
    for name in ("llama", "mllama"):
        shutil.copy(tokenizer, found[name] / "tokenizer.json")
    return found


def sets(out: Path, dirs: dict[str, Path], source: str) -> list[str]:
    models = {
        "llama_clip": {"model.hf_decoder": dirs["llama"], "model.hf_encoder": dirs["clip"]},
        "llama_siglip": {"model.hf_decoder": dirs["llama"], "model.hf_encoder": dirs["siglip"]},
        "mllama": {"model.hf_mllama": dirs["mllama"], "data.image_first": "true"},  # Mllama's order
    }[source]
    values = {
        "tokenizer": dirs["llama"] / "tokenizer.json",  # tokenizer: the decoder dir's tokenizer.json
        "data.path": mixed_data(),  # a shard with images and one without: one rank has none each step
        "data.heldout_fraction": 0.1,
        "data.shuffle_buffer": 16,
        "data.num_workers": 1,
        "data.max_tokens": 40,
        "model.init_from": "[]",
        **models,
        "train.output": out,
        "train.steps": STEPS,
        "train.micro_batch_size": 8,
        "train.save_every": SAVE_EVERY,
        "train.deepspeed": "configs/deepspeed/zero3.json",
        "train.progress": "false",
        "eval.max_rows": 16,
        "eval.micro_batch_size": 5,  # 13 held-out rows, 3 batches: eval splits unevenly over 2 ranks
        "optim.warmup_steps": 2,
        "optim.lr": 3e-3,
    }
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


def train(out: Path, dirs: dict[str, Path], source: str, resume: bool = False, nproc: int = 2) -> None:
    cmd = CLI[:-1] + [str(nproc)] + sets(out, dirs, source) + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def checkpoint_names(out: Path) -> set[str]:
    """Parameter names anywhere in the latest DeepSpeed checkpoint: module states, the ZeRO optimizer's
    parameter shapes, frozen parameter shapes and fragments."""
    tag = (out / "checkpoints" / "latest").read_text().strip()
    names: set[str] = set()
    for file in (out / "checkpoints" / tag).glob("*.pt"):
        state = torch.load(file, map_location="cpu", weights_only=False)
        names |= set(state.get("module") or {})
        for group in state.get("param_shapes") or []:
            names |= set(group)
        for key in ("frozen_param_shapes", "frozen_param_fragments"):
            names |= set(state.get(key) or {})
    return names


def assert_trained(out: Path, losses: dict[int, float]) -> None:
    """Finite losses, and the adapters' gates (zero at the start) opened. The decoder is random, so its
    loss stays near ln(512) and says little in a few steps."""
    assert all(np.isfinite(v) for v in losses.values()), losses
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        gates = [f.get_tensor(n) for n in f.keys() if n.endswith(("attn_gate", "mlp_gate"))]
    assert gates and all(g.abs().min() > 0 for g in gates), gates


@pytest.fixture(scope="module")
def llama_clip_run(dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llama_clip")
    train(out, dirs, "llama_clip")
    return out


def test_llama_clip_dirs_train_under_zero3(llama_clip_run, dirs):
    from vlmforge.training.model.hf import Checkpoint, export_mllama
    from vlmforge.training.vlm import evaluate_weights
    from vlmforge.training.weights import load_fusion_model, read_metadata

    out = llama_clip_run
    s = summary(out)
    assert s["zero_stage"] == 3 and s["world_size"] == 2 and s["steps"] == STEPS
    assert s["micro_batches_per_rank"] == [STEPS, STEPS]
    assert s["frozen_unchanged"]  # every rank's partition of the decoder and encoder, before and after
    losses = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert_trained(out, losses)
    # the DeepSpeed checkpoint holds the trained parts only
    names = checkpoint_names(out)
    assert any(n.startswith("fusion.") for n in names), sorted(names)[:5]
    assert not any(n.startswith(("decoder.", "encoder.")) for n in names), sorted(names)[:5]
    # model.safetensors too, and it names the dirs; `vlmforge eval` rebuilds the run's model from both
    meta = read_metadata(out / "model.safetensors")
    assert json.loads(meta["hf_sources"]) == {"decoder": str(dirs["llama"]), "encoder": str(dirs["clip"])}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {n.split(".")[0] for n in f.keys()} == {"projection", "fusion"}
    model = load_fusion_model(out / "model.safetensors").eval()
    hf_llama = Checkpoint(dirs["llama"])
    for name, p in model.decoder.named_parameters():
        key = "model.embed_tokens.weight" if name == "lm_head.weight" else "model." + name  # tied
        assert torch.equal(p, hf_llama[key]), name
    overrides = sets(out, dirs, "llama_clip")[1::2]
    evaluated = evaluate_weights(ROOT / "configs/train/stage1.yaml", out / "model.safetensors", overrides)
    for key in ("loss", "loss_shuffled"):
        assert abs(evaluated[key] - s["eval_after"][key]) <= 1e-5, (evaluated, s["eval_after"])
    with pytest.raises(ValueError, match="attention biases"):
        export_mllama(model, out / "mllama")


def test_llama_clip_sigkill_then_resume_matches_uninterrupted_run(llama_clip_run, dirs, tmp_path):
    """The pattern of test_distributed.py::test_sigkill_then_resume_matches_uninterrupted_run, under ZeRO-3
    and with the frozen parts coming back from the HF dirs on resume."""
    cmd = CLI + sets(tmp_path, dirs, "llama_clip")
    resumed_from = kill_at_first_checkpoint(cmd, tmp_path, clean_env(), TIMEOUT, STEPS)

    train(tmp_path, dirs, "llama_clip", resume=True)
    ref = {r["step"]: r for r in read_metrics(llama_clip_run / "metrics.jsonl", "train")}
    got = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl", "train")}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(resumed_from + 1, STEPS + 1):
        assert got[step]["loss"] == ref[step]["loss"], step  # exact: CPU, fp32, same order
        assert got[step]["data"] == ref[step]["data"], step
    assert summary(tmp_path)["micro_batches_per_rank"] == [STEPS - resumed_from] * 2
    assert summary(tmp_path)["frozen_unchanged"]


def test_mllama_dir_trains_and_exports_with_transformers_logits(dirs, tmp_path):
    from vlmforge.training.config import load_train_config
    from vlmforge.training.data import collate, make_sample
    from vlmforge.training.model.fusion import media_attention_mask
    from vlmforge.training.model.hf import export_mllama
    from vlmforge.training.tokenizer import TextTokenizer
    from vlmforge.training.vlm import sample_format
    from vlmforge.training.weights import load_fusion_model

    out = tmp_path / "run"
    train(out, dirs, "mllama")
    s = summary(out)
    assert s["zero_stage"] == 3 and s["frozen_unchanged"] and s["micro_batches_per_rank"] == [STEPS, STEPS]
    assert not any(n.startswith(("decoder.", "encoder.")) for n in checkpoint_names(out))

    model = load_fusion_model(out / "model.safetensors").eval()
    export_mllama(model, tmp_path / "export", max_shard_bytes=200_000)
    assert (tmp_path / "export" / "model.safetensors.index.json").is_file()
    hf = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    before = transformers.MllamaForConditionalGeneration.from_pretrained(dirs["mllama"]).eval()

    # the trainer's own sequences: its config, tokenizer, make_sample and collate (<|image|> first)
    cfg = load_train_config(ROOT / "configs/train/stage1.yaml", sets(out, dirs, "mllama")[1::2])
    fmt = sample_format(cfg, model.config, TextTokenizer(cfg.tokenizer))
    rng = np.random.default_rng(0)
    batch = collate([make_sample(dict(r), fmt, rng) for r in sample_rows()[:4]], fmt.eos_id, fmt.image_size)
    ids = batch["input_ids"]
    assert (ids[:, 0] == model.config.image_token_id).all() and (ids[:, 1] == fmt.bos_id).all()
    mask = media_attention_mask(ids, model.config.image_token_id, 1)[..., None].long()
    hf_inputs = dict(
        input_ids=ids,
        pixel_values=batch["images"][:, None, None],  # one image of one tile per row
        aspect_ratio_ids=torch.ones(len(ids), 1, dtype=torch.long),
        aspect_ratio_mask=torch.ones(len(ids), 1, 1, dtype=torch.long),
        cross_attention_mask=mask,
    )
    with torch.no_grad():
        ours = model(ids, batch["images"]).logits
        theirs = hf(**hf_inputs).logits
        untrained = before(**hf_inputs).logits
        other_images = hf(**{**hf_inputs, "pixel_values": hf_inputs["pixel_values"].roll(1, 0)}).logits
    diff = (ours - theirs).abs().max().item()
    print(f"mllama after training: max abs logit diff {diff:.2e} (logits up to {theirs.abs().max():.1f})")
    assert diff <= TOL
    assert (theirs - untrained).abs().max() > 1e-3  # the export carries what the run trained
    image_effect = (theirs - other_images).abs().max().item()
    print(f"mllama: another row's image moves transformers' logits by up to {image_effect:.2e}")
    assert image_effect > 1e-3  # and the comparison covers the image path, not only the text


def test_llama_siglip_dirs_train_on_one_rank(dirs, tmp_path):
    """A SigLIP tower (no class token, its own pixel normalisation) as the encoder: 1 rank, ZeRO-3."""
    from vlmforge.training.vlm import evaluate_weights

    train(tmp_path, dirs, "llama_siglip", nproc=1)
    s = summary(tmp_path)
    assert s["frozen_unchanged"] and s["micro_batches_per_rank"] == [STEPS]
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")}
    assert_trained(tmp_path, losses)
    overrides = sets(tmp_path, dirs, "llama_siglip")[1::2]
    weights = tmp_path / "model.safetensors"
    evaluated = evaluate_weights(ROOT / "configs/train/stage1.yaml", weights, overrides)
    assert abs(evaluated["loss"] - s["eval_after"]["loss"]) <= 1e-5, (evaluated, s["eval_after"])
