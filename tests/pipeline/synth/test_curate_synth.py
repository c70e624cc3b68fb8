"""Each synth kind curated with configs/curate/synthetic.yaml: input = kept + rejected, and the language
stage drops nothing."""

from __future__ import annotations

import tarfile
from collections import Counter

import pyarrow.dataset as pads
from helpers import ROOT, outcomes

from vlmforge.pipeline.config import load_config
from vlmforge.pipeline.job import run_curation
from vlmforge.pipeline.synth import KINDS, write_synth
from vlmforge.pipeline.synth.screenshots import chromium_path

N = 8


def test_every_kind_curates_without_language_drops(tmp_path, ray_local):
    kinds = [k for k in KINDS if k != "screenshots" or chromium_path() is not None]
    for kind in kinds:
        write_synth(kind, tmp_path / "in" / kind, N, seed=1, shard_size=N, workers=1)
    cfg = load_config(
        ROOT / "configs/curate/synthetic.yaml",
        [f"input.path={tmp_path / 'in'}/*/*.tar", f"output.path={tmp_path / 'out'}"],
    )
    manifest = run_curation(cfg, progress=False, log=lambda _: None)
    totals = manifest["totals"]
    assert totals["input_rows"] == N * len(kinds) == totals["output_rows"] + totals["rejected_rows"]
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert stages["language"]["rows_in"] == N * len(kinds) and stages["language"]["rejected"] == 0
    kept, rejected = outcomes(tmp_path / "out")
    assert len(kept) + len(rejected) == N * len(kinds)
    assert not [r for r in rejected.values() if r["stage"] in ("read", "caption", "language", "image")]
    per_kind = Counter(i.split("_", 1)[0] for i in kept)
    assert set(per_kind) == set(kinds)  # every kind has survivors
    # the kept caption is the generated target, line breaks included (caption.keep_newlines)
    targets = {}
    for shard in (tmp_path / "in").glob("*/*.tar"):
        with tarfile.open(shard) as tar:
            targets |= {
                m.name[:-4]: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")
            }
    data = pads.dataset(tmp_path / "out" / "data").to_table(columns=["id", "caption", "lang"]).to_pylist()
    assert {r["id"]: r["caption"] for r in data} == {r["id"]: targets[r["id"]] for r in data}
    assert any("\n|---|" in r["caption"] for r in data)
    assert {r["lang"] for r in data} == {"en", "structured"}
