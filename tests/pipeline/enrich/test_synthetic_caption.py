"""Synthetic captions from the tiny recipe's stage-2 checkpoint, on the held-out rows of its data."""

from __future__ import annotations

import io
import shutil
import statistics
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from train_support import open_tiled_model, recipe_data

from vlmforge.pipeline.config import SyntheticCaptionConfig
from vlmforge.pipeline.enrich.synthetic_caption import SyntheticCaption, load_captioner
from vlmforge.training.data import is_heldout
from vlmforge.training.eval import word_f1
from vlmforge.training.model.hf import export_mllama


@pytest.fixture(scope="module")
def heldout() -> pa.Table:
    """id, image, caption of the rows every training stage held out (data.heldout_fraction 0.05)."""
    curated, _ = recipe_data()
    table = pa.concat_tables(
        pq.read_table(f, columns=["id", "image", "caption"])
        for f in sorted((curated / "data").glob("*.parquet"))
    )
    return table.filter(pa.array([is_heldout(i, 0.05) for i in table.column("id").to_pylist()]))


@pytest.fixture(scope="module")
def config(recipe) -> SyntheticCaptionConfig:
    return SyntheticCaptionConfig(checkpoint=str(recipe["stage2"].output), batch_rows=64)


@pytest.fixture(scope="module")
def greedy(config, heldout, torch_one_thread) -> tuple[SyntheticCaption, list[str | None]]:
    captioner = SyntheticCaption(config)
    out = captioner(heldout.select(["id", "image"]))
    assert out.column("id").equals(heldout.column("id"))
    return captioner, out.column("synthetic_caption").to_pylist()


def test_captions_are_non_empty_and_depend_on_the_image(greedy, heldout):
    captioner, captions = greedy
    n = heldout.num_rows
    assert n >= 80
    empty = captions.count(None)
    assert captioner.counters == {"rows": n, "generated": n - empty} | ({"empty": empty} if empty else {})
    assert n - empty >= 0.99 * n
    assert all(c == " ".join(c.split()) for c in captions if c)  # whitespace-normalised
    # Every row has the same prompt, so a model that ignores the image writes one caption for all rows
    # under greedy decoding (as the untrained fused model, whose gates are zero, does).
    assert len(set(captions)) >= 4


@pytest.mark.xfail(
    strict=True,
    reason="the shortened recipe's 300-step stage 1 barely uses the image, so its greedy captions match a "
    "random row's caption about as well as their own; at full length (benchmarks/synthetic_captions.py) "
    "the margin is 0.032 word F1 on 620 held-out rows (t 3.45, benchmarks/RESULTS.md)",
)
def test_captions_are_closer_to_their_own_caption_than_to_another_rows(greedy, heldout):
    captions = greedy[1]
    truth = heldout.column("caption").to_pylist()
    own = statistics.mean(word_f1(c, t) for c, t in zip(captions, truth, strict=True))
    other = statistics.mean(word_f1(c, t) for c, t in zip(captions, truth[1:] + truth[:1], strict=True))
    print(f"word F1 with own caption {own:.3f}, with the next row's {other:.3f}")
    assert own > other + 0.03, (own, other)


def test_bad_image_gives_null_and_is_counted(config, heldout, torch_one_thread):
    good = heldout.column("image")[0].as_py()
    batch = pa.table(
        {
            "id": ["good", "garbage", "truncated", "missing"],
            "image": [good, b"not an image", good[: len(good) // 3], None],
        }
    )
    captioner = SyntheticCaption(config)
    out = captioner(batch)
    assert out.column("id").to_pylist() == batch.column("id").to_pylist()
    captions = out.column("synthetic_caption").to_pylist()
    assert captions[0] and captions[1:] == [None, None, None]
    assert captioner.counters == {"rows": 4, "bad_image": 3, "generated": 1}


def test_greedy_captions_do_not_depend_on_the_batch(config, greedy, heldout, torch_one_thread):
    rows = heldout.slice(0, 16).select(["id", "image"])
    one = SyntheticCaption(config.model_copy(update={"batch_rows": 1}))(rows)
    eight = SyntheticCaption(config.model_copy(update={"batch_rows": 8}))(rows)
    assert one.column("synthetic_caption").equals(eight.column("synthetic_caption"))
    assert one.column("synthetic_caption").to_pylist() == greedy[1][:16]


def test_top_p_sampling_is_seeded_by_seed_and_rows(config, greedy, heldout, torch_one_thread):
    rows = heldout.slice(0, 16).select(["id", "image"])
    sample = config.model_copy(update={"temperature": 1.0, "top_p": 0.9})
    captioner = SyntheticCaption(sample)
    first = captioner(rows).column("synthetic_caption").to_pylist()
    assert captioner(rows).column("synthetic_caption").to_pylist() == first
    other_seed = SyntheticCaption(sample.model_copy(update={"seed": 1}))(rows)
    assert other_seed.column("synthetic_caption").to_pylist() != first
    assert first != greedy[1][:16]


def test_exported_mllama_directory_gives_the_same_captions(
    recipe, config, heldout, tmp_path, torch_one_thread
):
    # Stage 1: stage 2 reads tiles with a thumbnail, which the Mllama format cannot hold (export refuses it).
    with pytest.raises(ValueError, match="tile_grid"):
        export_mllama(load_captioner(config.checkpoint)[0], tmp_path / "stage2")
    stage1 = config.model_copy(update={"checkpoint": str(recipe["stage1"].output)})
    model, tok = load_captioner(stage1.checkpoint)
    export_mllama(model, tmp_path)
    shutil.copy(tok.path, tmp_path / "tokenizer.json")
    rows = heldout.slice(0, 16).select(["id", "image"])
    expected = SyntheticCaption(stage1)(rows).column("synthetic_caption").to_pylist()
    out = SyntheticCaption(stage1.model_copy(update={"checkpoint": str(tmp_path)}))(rows)
    assert out.column("synthetic_caption").to_pylist() == expected


def test_checkpoint_of_another_task_is_refused(recipe):
    with pytest.raises(ValueError, match="neither a vlm training run"):
        SyntheticCaption(SyntheticCaptionConfig(checkpoint=str(recipe["clip"].output)))


class _IdsAsText:
    """A tokenizer stand-in for a captioner built without a run directory: the caption is the ids."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def test_model_with_tiles_reads_images_as_mllama_tiles(torch_one_thread):
    model = open_tiled_model()  # gates open: the image path reaches the logits
    cfg = model.config
    captioner = object.__new__(SyntheticCaption)
    captioner.cfg = SyntheticCaptionConfig(checkpoint="unused", max_new_tokens=6, temperature=0.0)
    captioner.model, captioner.tokenizer = model, _IdsAsText()
    captioner.device, captioner.dtype = torch.device("cpu"), torch.float32
    captioner.eos_ids = [cfg.decoder.eos_token_id]
    captioner.prompt = [cfg.image_token_id, cfg.decoder.bos_token_id]
    captioner.image_size, captioner.max_num_tiles = cfg.vision.image_size, 4
    captioner.counters = Counter()

    rng = np.random.default_rng(0)
    sizes = [(30, 70), (64, 64), (70, 20)]  # (h, w): 1x3, 2x2 and 3x1 tiles of 32 px
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    data = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        data.append(buf.getvalue())
    loaded = [captioner.load(d) for d in data]
    assert [t.grid for t in loaded] == [(1, 3), (2, 2), (3, 1)]
    together = captioner.caption(loaded, seed=0)
    alone = [captioner.caption([t], seed=0)[0] for t in loaded]
    assert together == alone  # an image's padding tiles and its neighbours' tiles do not leak in
    assert len(set(alone)) > 1  # the captions depend on the image
    out = captioner(pa.table({"id": ["a", "broken", "b"], "image": [data[0], data[2][:40], data[1]]}))
    assert out.column("synthetic_caption").to_pylist() == [alone[0], None, alone[1]]
    assert captioner.counters["bad_image"] == 1
