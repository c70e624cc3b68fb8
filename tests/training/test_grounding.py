"""Grounding evaluation: boxes parsed from captions and from generated text, IoU, the share found with the
row's image against the guesses without it."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import open_tiled_model, write_curated

from vlmforge.training.data import SampleFormat, build_index
from vlmforge.training.grounding import box_prompts, grounding_eval, iou, read_box
from vlmforge.training.model.config import get_config
from vlmforge.training.model.fusion import FusionModel


def test_boxes_from_captions_and_from_generated_text():
    caption = (
        "We can see a red circle<box>0.100,0.200,0.300,0.400</box> and a blue square<box>0.5,0.5,0.9,1</box>."
    )
    prompts = box_prompts(caption)
    assert [p for p, _ in prompts] == [
        "We can see a red circle<box>",
        "We can see a red circle<box>0.100,0.200,0.300,0.400</box> and a blue square<box>",
    ]
    assert [b for _, b in prompts] == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 1.0)]
    assert box_prompts("no boxes <box>1,2</box>") == []
    assert read_box(" 0.1, 0.2,0.3 ,0.4</box> and") == (0.1, 0.2, 0.3, 0.4)
    assert read_box("a square") is None and read_box("0.1.2,3,4,5") is None


def test_iou():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 0.5, 1), (0, 0, 1, 1)) == pytest.approx(0.5)
    assert iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0
    assert iou(None, (0, 0, 1, 1)) == 0.0 and iou((1, 1, 0, 0), (0, 0, 1, 1)) == 0.0


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def row(row_id: str, color: tuple[int, int, int], caption: str) -> dict:
    return {"id": row_id, "image": png(color), "image_format": "png", "caption": caption}


BOXES = [
    [(0.1, 0.1, 0.4, 0.4), (0.6, 0.6, 0.9, 0.9)],
    [(0.5, 0.1, 0.9, 0.5)],
    [(0.1, 0.5, 0.5, 0.9), (0.3, 0.3, 0.7, 0.7)],
]


def grounding_data(tmp_path):
    rows = []
    for i, boxes in enumerate(BOXES):
        caption = "We can see " + " and ".join(
            f"shape {k}<box>{','.join(f'{v:.3f}' for v in b)}</box>" for k, b in enumerate(boxes)
        )
        rows.append(row(f"g{i}", (60 * i, 100, 200), caption))
    rows.append(row("plain", (0, 0, 0), "a plain caption"))
    return build_index(write_curated(tmp_path, [rows]), "train", 0.0)


CHARS = SampleFormat(0, 1, 512, 32, 200, encode=lambda t: [ord(c) for c in t])


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids if i > 1)


class Oracle:
    """A model that writes the true box when it sees the row's own image, and a far corner otherwise: the
    evaluation must count the first as found and the second as not."""

    def __init__(self, index) -> None:
        from vlmforge.training.data import heldout_rows, load_image

        self.truth = {}
        for row in heldout_rows(index, 10):
            image = load_image(row["image"], 32)
            self.truth[round(float(image.sum()), 2)] = [b for _, b in box_prompts(row["caption"])]

    def generate(self, ids, images, max_new_tokens, eos_token_id):
        out = []
        for k in range(ids.shape[0]):
            asked = decode(ids[k].tolist()).count("<box>") - 1
            boxes = self.truth[round(float(images[k].sum()), 2)]
            box = boxes[asked] if asked < len(boxes) else (0.95, 0.95, 1.0, 1.0)
            text = ",".join(f"{v:.3f}" for v in box) + "</box>"
            out.append(ids[k].tolist() + [ord(c) for c in text])
        width = max(map(len, out))
        return torch.tensor([o + [1] * (width - len(o)) for o in out])


def test_grounding_eval_counts_boxes_found_with_the_image_only(tmp_path):
    index = grounding_data(tmp_path)
    result = grounding_eval(Oracle(index), index, CHARS, decode, max_rows=10)
    assert result["boxes"] == 5
    assert result["box_iou50"] == 1.0 and result["box_mean_iou"] == pytest.approx(1.0)
    # another row's image: its box at the same position, when it has one; those overlap < 0.5 here
    assert result["box_iou50_other_image"] == 0.0
    truth = [b for boxes in BOXES for b in boxes]
    mean = tuple(np.mean(truth, axis=0))
    assert result["box_iou50_mean_box"] == pytest.approx(np.mean([iou(mean, b) >= 0.5 for b in truth]))


def test_grounding_eval_runs_a_real_model(tmp_path):
    index = grounding_data(tmp_path)
    torch.manual_seed(0)
    model = FusionModel(get_config("tiny")).eval()
    result = grounding_eval(model, index, CHARS, decode, max_rows=10, max_new_tokens=6)
    assert result["boxes"] == 5 and 0.0 <= result["box_iou50"] <= 1.0
    plain = [row(f"p{i}", (i, 0, 0), "a cat") for i in range(3)]
    no_boxes = build_index(write_curated(tmp_path / "plain", [plain]), "train", 0.0)
    assert grounding_eval(model, no_boxes, CHARS, decode, 10) == {}


def test_grounding_eval_on_mllama_tiles(tmp_path):
    """A tiled model (vision.max_num_tiles 4) reads each row's image as its tiles."""
    index = grounding_data(tmp_path)
    model = open_tiled_model(4)
    fmt = dataclasses.replace(CHARS, max_num_tiles=4)
    result = grounding_eval(model, index, fmt, decode, max_rows=10, max_new_tokens=6)
    assert result["boxes"] == 5 and 0.0 <= result["box_iou50"] <= 1.0
    with pytest.raises(ValueError, match="aspect_ratio_ids"):  # square images are not what it takes
        grounding_eval(model, index, CHARS, decode, max_rows=10, max_new_tokens=6)
