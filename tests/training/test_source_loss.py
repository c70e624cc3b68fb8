"""Per-source training loss of a mix: from the loss the model takes at each label, packed or not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from train_support import recipe_data, sample_rows

from vlmforge.training import text_lm, vlm
from vlmforge.training.data import SampleFormat, collate, collate_packed, make_sample, pack_rows
from vlmforge.training.model.config import get_config
from vlmforge.training.model.fusion import FusionModel
from vlmforge.training.source_loss import source_means, source_sums
from vlmforge.training.tokenizer import TextTokenizer

IMAGE = 512  # the image token of the recipe tokenizer and the tiny preset
NAMES = ["web", "charts", "qa"]


@pytest.fixture(scope="module")
def samples() -> list:
    """12 samples (two without an image) of three sources, sample i of source i % 3 but the last two of 0."""
    tok = TextTokenizer(recipe_data()[1])
    fmt = SampleFormat(tok.bos_id, tok.eos_id, IMAGE, 32, 64, encode=tok.encode)
    rows = [dict(r) for r in sample_rows()[:12]]
    rows[3]["image"] = rows[7]["image"] = None
    made = [make_sample(r, fmt, np.random.default_rng(0)) for r in rows]
    return [dataclasses.replace(s, source=0 if i >= 10 else i % 3) for i, s in enumerate(made)]


@pytest.fixture(scope="module")
def model() -> FusionModel:
    torch.manual_seed(0)
    model = FusionModel(get_config("tiny"))
    with torch.no_grad():  # open gates: the image changes the loss
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.7)
    return model


def means(batch: dict, model: FusionModel) -> dict[str, float]:
    out = vlm.output(model, batch)  # with gradients: the chunked, recomputed pieces
    assert float(out.loss) == pytest.approx(float(out.token_loss.nanmean()), rel=1e-6)
    out.loss.backward()
    return source_means(source_sums(out.token_loss, batch, 3).flatten().tolist(), NAMES)


def test_each_source_gets_the_mean_over_its_own_labels(samples, model):
    pad = 0
    with torch.no_grad():
        alone = {
            f"loss/{name}": float(vlm.loss(model, collate([s for s in samples if s.source == k], pad, 32)))
            for k, name in enumerate(NAMES)
        }
    unpacked = means(collate(samples, pad, 32), model)
    rows = pack_rows(samples, 64)
    assert len(rows) < len(samples) / 2
    packed = means(collate_packed(rows, pad, 32, IMAGE), model)
    assert unpacked.keys() == packed.keys() == alone.keys()
    for key, want in alone.items():
        assert unpacked[key] == pytest.approx(want, rel=1e-5), key
        assert packed[key] == pytest.approx(want, rel=1e-5), key
    assert len({round(v, 3) for v in alone.values()}) == 3  # the sources' figures differ


def test_sums_add_up_over_micro_batches_and_a_source_without_labels_is_left_out(samples, model):
    with torch.no_grad():
        whole = vlm.output(model, collate(samples, 0, 32))
        halves = [vlm.output(model, collate(part, 0, 32)) for part in (samples[:6], samples[6:])]
    total = source_sums(whole.token_loss, collate(samples, 0, 32), 3)
    added = sum(source_sums(o.token_loss, collate(p, 0, 32), 3) for o, p in zip(
        halves, (samples[:6], samples[6:]), strict=True))  # fmt: skip
    assert torch.allclose(total, added, rtol=1e-6)
    web_only = [s for s in samples if s.source == 0]
    with torch.no_grad():
        out = vlm.output(model, collate(web_only, 0, 32))
    assert list(source_means(source_sums(out.token_loss, collate(web_only, 0, 32), 3).flatten().tolist(),
                             NAMES)) == ["loss/web"]  # fmt: skip


def test_text_lm_gives_the_loss_at_each_label():
    tok = TextTokenizer(recipe_data()[1])
    fmt = SampleFormat(tok.bos_id, tok.eos_id, None, None, 40, encode=tok.encode)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    lm = text_lm.TextLM(get_config("tiny"))
    batch = collate([make_sample(r, fmt, rng) for r in sample_rows()[:6]], 0, None)
    out = text_lm.output(lm, batch)
    assert float(out.loss) == pytest.approx(float(out.token_loss.nanmean()), rel=1e-6)
    taken = ~out.token_loss.isnan()
    assert torch.equal(taken[:, 1:], batch["labels"][:, 1:] != -100) and not taken[:, 0].any()
