"""Synthetic captions from a training run vs the held-out captions: word-set F1 with the row's own caption
and with the next row's (issue 7).

    .venv/bin/python benchmarks/synthetic_captions.py CURATED_DIR RUN_DIR [--rows 384]

RUN_DIR is a `vlmforge train` output (model.safetensors with its config). The held-out rows are the ones
every training stage leaves out (a hash of the id, fraction 0.05).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vlmforge.pipeline.config import SyntheticCaptionConfig
from vlmforge.pipeline.enrich.synthetic_caption import SyntheticCaption
from vlmforge.training.data import is_heldout
from vlmforge.training.eval import word_f1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curated", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--rows", type=int, default=384, help="first N held-out rows")
    ap.add_argument("--heldout-fraction", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted((args.curated / "data").glob("*.parquet"))
    table = pa.concat_tables(pq.read_table(f, columns=["id", "image", "caption"]) for f in files)
    ids = table.column("id").to_pylist()
    table = table.filter(pa.array([is_heldout(i, args.heldout_fraction) for i in ids])).slice(0, args.rows)
    captioner = SyntheticCaption(SyntheticCaptionConfig(checkpoint=str(args.run), batch_rows=64))
    captions = captioner(table.select(["id", "image"])).column("synthetic_caption").to_pylist()
    truth = table.column("caption").to_pylist()
    other = truth[1:] + truth[:1]
    diff = [word_f1(c, t) - word_f1(c, o) for c, t, o in zip(captions, truth, other, strict=True)]
    t_stat = statistics.mean(diff) / (statistics.stdev(diff) / len(diff) ** 0.5)
    print(f"rows {len(captions)}, non-empty {sum(bool(c) for c in captions)}, distinct {len(set(captions))}")
    own = statistics.mean(word_f1(c, t) for c, t in zip(captions, truth, strict=True))
    next_row = statistics.mean(word_f1(c, o) for c, o in zip(captions, other, strict=True))
    print(f"word F1 with the own caption {own:.3f}, with the next row's {next_row:.3f}")
    print(f"paired difference {statistics.mean(diff):.4f} ± {statistics.stdev(diff):.4f} (t {t_stat:.2f}); "
          f"own higher on {sum(d > 0 for d in diff)} rows, lower on {sum(d < 0 for d in diff)}")


if __name__ == "__main__":
    main()
