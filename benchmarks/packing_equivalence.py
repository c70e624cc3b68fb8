"""Packed vs unpacked: the loss and every gradient of the same samples, on the GPU when there is one.

The training tests check this on the CPU (tests/training/test_packing.py); this runs the same comparison on
whatever device PyTorch has (fp32, TF32 off): the first ``--n`` rows of a curated output, packed into rows
of ``--max-tokens`` vs one sample a row, through the tiny preset with its adapters' gates open (so images
and adapters change the loss). Exits 1 when the loss differs by more than 1e-4 or a gradient by more than
1e-3 of its largest entry.

    python benchmarks/packing_equivalence.py --curated DIR --tokenizer FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.training import vlm  # noqa: E402
from vlmforge.training.config import load_train_config  # noqa: E402
from vlmforge.training.data import collate, collate_packed, make_sample, pack_rows  # noqa: E402
from vlmforge.training.eval import to_device  # noqa: E402
from vlmforge.training.model.fusion import FusionModel  # noqa: E402
from vlmforge.training.tokenizer import TextTokenizer  # noqa: E402
from vlmforge.training.train import model_config  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curated", type=Path, required=True, help="a curated output dir (data/*.parquet)")
    p.add_argument("--tokenizer", type=Path, required=True, help="its tokenizer.json")
    p.add_argument("--n", type=int, default=40, help="samples compared")
    p.add_argument("--max-tokens", type=int, default=128, help="packed row length")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cfg = load_train_config(
        "configs/train/stage1.yaml",
        ["model.preset=tiny", "model.image_size=32", "model.init_from=[]", f"data.path={args.curated}",
         f"tokenizer={args.tokenizer}"],  # fmt: skip
    )
    mc, tok = model_config(cfg), TextTokenizer(args.tokenizer)
    fmt = vlm.sample_format(cfg, mc, tok)
    shard = sorted((args.curated / "data").glob("*.parquet"))[0]
    rows = pq.read_table(shard).slice(0, args.n).to_pylist()
    samples = [make_sample(r, fmt, np.random.default_rng(0)) for r in rows]
    torch.manual_seed(0)
    model = FusionModel(mc).to(device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(0.7)
    model.requires_grad_(True)
    size, image = mc.vision.input_size, mc.image_token_id
    packed = collate_packed(pack_rows(samples, args.max_tokens), tok.eos_id, size, image)
    unpacked = collate(samples, tok.eos_id, size)
    results = []
    for batch in (packed, unpacked):
        model.zero_grad()
        loss = vlm.loss(model, to_device(batch, device))
        loss.backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        results.append((float(loss), grads))
    (packed_loss, packed_grads), (loss, grads) = results
    worst = max(float((packed_grads[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in grads.items())
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "samples": len(samples),
        "packed_rows": list(packed["input_ids"].shape),
        "loss_packed": packed_loss,
        "loss_unpacked": loss,
        "gradients": len(grads),
        "worst_relative_gradient_difference": worst,
    }
    print(json.dumps(report, indent=2))
    return 0 if abs(packed_loss - loss) < 1e-4 and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
