"""`vlmforge synth`: every kind's shards read back through the webdataset reader, deterministic from the seed,
captions that follow from the structure sidecar, and legible tables and charts."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlmforge.pipeline.cli import main
from vlmforge.pipeline.config import InputConfig
from vlmforge.pipeline.readers.common import InputPart
from vlmforge.pipeline.readers.webdataset import read_webdataset
from vlmforge.pipeline.synth import KINDS, SUMMARY, generator, write_synth
from vlmforge.pipeline.synth.legibility import cell_recall, text_values
from vlmforge.pipeline.synth.markdown import markdown_table
from vlmforge.pipeline.synth.screenshots import chromium_path

N, SHARD = 6, 4
BOX = re.compile(r"<box>(\d\.\d{3}),(\d\.\d{3}),(\d\.\d{3}),(\d\.\d{3})</box>")


def _kinds() -> list:
    """Every kind; screenshots skip without Debian's chromium (the report test does the same)."""
    no_browser = pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed")
    return [pytest.param(k, marks=no_browser) if k == "screenshots" else k for k in KINDS]


def _members(out: Path) -> dict[str, bytes]:
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar})
    return members


@pytest.mark.parametrize("kind", _kinds())
def test_shards_read_back_and_repeat_exactly(kind, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert write_synth(kind, a, N, seed=3, shard_size=SHARD, workers=1) == ["00000.tar", "00001.tar"]
    write_synth(kind, b, N, seed=3, shard_size=SHARD, workers=1)
    members = _members(a)
    if kind != "screenshots":  # Chromium's pixels are its own; the page and the target are ours
        assert (a / "00000.tar").read_bytes() == (b / "00000.tar").read_bytes()
    other = _members(b)
    assert {k: v for k, v in members.items() if not k.endswith(".png")} == {
        k: v for k, v in other.items() if not k.endswith(".png")
    }
    rows = []
    for shard in sorted(a.glob("*.tar")):
        part = InputPart(shard.name, str(shard), "webdataset")
        for batch in read_webdataset(part, InputConfig(), 100):
            rows += batch.to_pylist()
    assert len(rows) == N
    assert all(r["read_error"] is None for r in rows), [r["read_error"] for r in rows]
    for r in rows:
        key = r["id"]
        assert r["caption"] == members[f"{key}.txt"].decode()
        assert Image.open(io.BytesIO(r["image"])).mode == "RGB"
        meta = json.loads(members[f"{key}.json"])
        assert meta["kind"] == kind and meta["key"] == key
    assert len({r["caption"] for r in rows}) == N  # no two samples alike
    assert json.loads((a / SUMMARY).read_text())["n"] == N
    # another seed, another stream
    assert generator(kind)(4, 0).caption != generator(kind)(3, 0).caption


def test_captions_follow_from_the_structure():
    for i in range(8):
        t = generator("tables")(0, i)
        assert t.caption == markdown_table(t.structure["header"], t.structure["rows"])
        c = generator("charts")(0, i)
        assert markdown_table(c.structure["header"], c.structure["rows"]) in c.caption
        assert c.caption.startswith(c.structure["title"])
        e = generator("equations")(0, i)
        assert e.caption == e.structure["latex"]
        g = generator("grounding")(0, i)
        w, h = g.structure["width"], g.structure["height"]
        boxes = [tuple(float(v) for v in m) for m in BOX.findall(g.caption)]
        assert len(boxes) == len(g.structure["objects"]) >= 2
        for box, obj in zip(boxes, g.structure["objects"], strict=True):
            x0, y0, x1, y1 = obj["box"]
            assert box == pytest.approx((x0 / w, y0 / h, x1 / w, y1 / h), abs=5e-4)
            assert f"{obj['colour']} {obj['shape']}<box>" in g.caption
            # the box is tight: the shape's pixels reach each of its edges
            img = Image.open(io.BytesIO(g.image)).convert("RGB")
            bg = img.getpixel((0, 0))  # shapes keep 4 px from the edges
            if i < 5:
                crop = img.crop(obj["box"])
                ink = [
                    (x, y)
                    for x in range(crop.width)
                    for y in range(crop.height)
                    if crop.getpixel((x, y)) != bg
                ]
                xs, ys = [p[0] for p in ink], [p[1] for p in ink]
                assert (min(xs), min(ys)) == (0, 0) and (max(xs), max(ys)) == (
                    crop.width - 1,
                    crop.height - 1,
                )


NODE = r"(\w)(?:\(\[(.+)\]\)|\[(.+)\]|\{(.+)\})?"  # an id, then its label as a terminal, step or question
MERMAID = re.compile(rf"{NODE} -->(?:\|(yes|no)\|)? {NODE}")


def test_flowchart_captions_are_the_graph_in_mermaid():
    shapes = {1: "terminal", 2: "step", 3: "question"}
    for i in range(12):
        f = generator("flowcharts")(0, i)
        lines = f.caption.split("\n")
        assert lines[0] == "flowchart TD"
        nodes, edges = {}, []
        for line in lines[1:]:
            m = MERMAID.fullmatch(line)
            assert m, line
            for at in (0, 5):  # the source, then the target; each written with its shape once
                groups = m.groups()[at : at + 4]
                for k, label in enumerate(groups[1:], 1):
                    if label is not None:
                        assert groups[0] not in nodes
                        nodes[groups[0]] = {"id": groups[0], "label": label, "shape": shapes[k]}
            edges.append({"src": m[1], "dst": m[6], "label": m[5] or ""})
        by_id = sorted(f.structure["nodes"], key=lambda n: n["id"])
        assert sorted(nodes.values(), key=lambda n: n["id"]) == by_id
        assert edges == f.structure["edges"]
        # from Start every node is reached, and every node but the end goes on: a question by yes and no
        out = Counter(e["src"] for e in edges)
        assert all(out[n["id"]] == (2 if n["shape"] == "question" else 1) for n in f.structure["nodes"][:-1])
        reached, todo = {"A"}, ["A"]
        while todo:
            here = todo.pop()
            for e in edges:
                if e["src"] == here and e["dst"] not in reached:
                    reached.add(e["dst"])
                    todo.append(e["dst"])
        assert reached == set(nodes) and nodes["A"]["label"] == "Start"


def test_qa_answers_are_true_of_the_scene():
    checked = Counter()
    for i in range(40):
        s = generator("qa")(0, i)
        objs = s.structure["objects"]
        assert s.caption == " ".join(
            f"Question: {p['question']} Answer: {p['answer']}." for p in s.structure["qa"]
        )
        for p in s.structure["qa"]:
            q, a = p["question"], p["answer"]
            if m := re.fullmatch(r"How many (\w+) shapes are there\?", q):
                assert int(a) == sum(o["colour"] == m[1] for o in objs)
                checked["colour count"] += 1
            elif q == "How many shapes are there?":
                assert int(a) == len(objs)
            elif m := re.fullmatch(r"How many (\w+) are there\?", q):
                assert int(a) == sum(o["shape"] + "s" == m[1] for o in objs)
                checked["shape count"] += 1
            elif m := re.fullmatch(r"What colour is the (\w+)\?", q):
                assert [o["colour"] for o in objs if o["shape"] == m[1]] == [a]
                checked["colour"] += 1
            elif m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
                assert (a == "yes") == any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objs)
                checked["presence"] += 1
            elif m := re.fullmatch(r"What shape is (\w+)\?", q):
                assert [f"a {o['shape']}" for o in objs if o["colour"] == m[1]] == [a]
            elif m := re.fullmatch(r"What is in the ([\w ]+) of the image\?", q):
                assert [f"{o['colour']} {o['shape']}" for o in objs if _where(o, s.structure) == m[1]] == [
                    a.split(" ", 1)[1]
                ]
                checked["where"] += 1
            elif m := re.fullmatch(r"Where is the (\w+)\?", q):
                assert [o["shape"] for o in objs].count(m[1]) == 1 and a
            else:
                raise AssertionError(f"unchecked question {q!r}")
    assert checked["shape count"] and checked["colour"] and checked["presence"] and checked["where"]


def _where(obj: dict, scene: dict) -> str:
    x0, y0, x1, y1 = obj["box"]
    cx, cy = (x0 + x1) / 2 / scene["width"], (y0 + y1) / 2 / scene["height"]
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "centre"


@pytest.mark.parametrize("kind", ["tables", "charts", "flowcharts"])
def test_ocr_reads_back_the_cell_values(kind):
    """At the generated size, tesseract recovers >= 90% of the cell values or node labels
    (benchmarks/synth.py: more)."""
    hits = total = 0
    for i in range(6):
        s = generator(kind)(0, i)
        values = text_values(s.structure)
        hits += cell_recall(s.image, values) * len(values)
        total += len(values)
    assert hits / total >= 0.9


def test_cli_writes_and_refuses_bad_arguments(tmp_path, capsys):
    assert main(["synth", "grounding", str(tmp_path / "g"), "--n", "3", "--workers", "1"]) == 0
    assert "wrote 3 grounding pairs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["00000.tar", SUMMARY]
    assert main(["synth", "tables", str(tmp_path / "t"), "--n", "0"]) == 2
    assert "--n must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "diagrams", str(tmp_path / "f")])
    assert "invalid choice: 'diagrams'" in capsys.readouterr().err


def test_parallel_workers_write_the_same_shards(tmp_path):
    write_synth("grounding", tmp_path / "one", 8, shard_size=3, workers=1)
    write_synth("grounding", tmp_path / "two", 8, shard_size=3, workers=2)
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
