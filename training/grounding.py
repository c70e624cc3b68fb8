"""Grounding evaluation: does the model put an object's box where the object is?

Grounding captions name each object with its box as normalised ``<box>x0,y0,x1,y1</box>`` coordinates.
For every box of a held-out caption the model is prompted with the caption up to and including that
``<box>`` and decodes greedily; the first four numbers it writes are its box. A box counts as found at
IoU >= 0.5 with the true one. Two guesses without the image set the bar: the same model given another
row's image, and the mean true box (the best single box for every prompt, in the mean).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from vlmforge.training.data import SampleFormat, ShardIndex, caption_prefix, heldout_rows, load_image
from vlmforge.training.eval import batch_images, to_device
from vlmforge.training.model.tiling import collate_tiles, load_tiled_image

BOX = re.compile(r"<box>\s*([-0-9.]+)\s*,\s*([-0-9.]+)\s*,\s*([-0-9.]+)\s*,\s*([-0-9.]+)\s*</box>")
NUMBERS = re.compile(r"^\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)")
Box = tuple[float, float, float, float]


def box_prompts(caption: str) -> list[tuple[str, Box]]:
    """(caption up to and including each ``<box>``, that box) for every well-formed box of a caption."""
    out = []
    for m in BOX.finditer(caption):
        try:
            box = tuple(float(v) for v in m.groups())
        except ValueError:
            continue
        out.append((caption[: m.start()] + "<box>", box))
    return out


def read_box(text: str) -> Box | None:
    """The box a model wrote after ``<box>``: its first four comma-separated numbers, or None."""
    m = NUMBERS.match(text)
    if not m:
        return None
    try:
        return tuple(float(v) for v in m.groups())
    except ValueError:
        return None


def iou(a: Box | None, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 for no box or an empty one."""
    if a is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def image_pair(a: Any, b: Any, fmt: SampleFormat) -> dict[str, Any]:
    """Two images as one batch of the model's image inputs (Mllama tiles: padded, with ids and mask)."""
    if fmt.max_num_tiles == 1:
        return {"images": torch.stack([a, b])}
    flat = collate_tiles([a, b], fmt.image_size)
    return batch_images({"images": flat.pop("tiles"), **flat, "max_num_tiles": fmt.max_num_tiles})


@torch.no_grad()
def grounding_eval(
    model: Any, index: ShardIndex, fmt: SampleFormat, decode: Any, max_rows: int, max_new_tokens: int = 24
) -> dict[str, float]:
    """Share of held-out boxes found (IoU >= 0.5) with the row's image, with another row's image and by the
    mean true box; {} when the rows hold no boxes. ``decode``: ids -> text (the run's tokenizer)."""
    rows = heldout_rows(index, max_rows)
    rows = [r for r in rows if r.get("image") and box_prompts(r.get("caption") or "")]
    if len(rows) < 2:
        return {}
    if fmt.max_num_tiles > 1:
        images = [load_tiled_image(r["image"], fmt.image_size, fmt.max_num_tiles) for r in rows]
    else:
        images = [load_image(r["image"], fmt.image_size) for r in rows]
    prefix = caption_prefix(fmt.bos_id, fmt.image_token_id, fmt.image_first)
    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")  # where the prompts and images go
    truth, found, other = [], [], []
    for i, row in enumerate(rows):
        pair = image_pair(images[i], images[(i + 1) % len(rows)], fmt)  # its image, and the next row's
        pair = to_device(pair, device)
        for text, box in box_prompts(row["caption"]):
            ids = torch.tensor([prefix + fmt.encode(text)] * 2, device=device)
            out = model.generate(ids, **pair, max_new_tokens=max_new_tokens, eos_token_id=fmt.eos_id)
            mine, theirs = (read_box(decode(out[k, ids.shape[1] :].tolist())) for k in range(2))
            truth.append(box)
            found.append(iou(mine, box))
            other.append(iou(theirs, box))
    mean_box = tuple(np.mean(truth, axis=0).tolist())
    prior = [iou(mean_box, b) for b in truth]
    return {
        "boxes": float(len(truth)),
        "box_iou50": float(np.mean(np.array(found) >= 0.5)),
        "box_iou50_other_image": float(np.mean(np.array(other) >= 0.5)),
        "box_iou50_mean_box": float(np.mean(np.array(prior) >= 0.5)),
        "box_mean_iou": float(np.mean(found)),
    }
