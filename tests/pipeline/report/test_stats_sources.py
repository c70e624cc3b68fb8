"""`vlmforge stats` over several outputs: the per-source counts of a training mix."""

from __future__ import annotations

import json
from pathlib import Path

from vlmforge.pipeline.cli import main


def fake_output(path: Path, rows_in: int, kept: int, reasons: dict[str, int]) -> Path:
    """The manifest parts the per-source table reads (a real one also lists files, phases, config ...)."""
    path.mkdir(parents=True)
    manifest = {
        "totals": {"input_rows": rows_in, "output_rows": kept, "rejected_rows": rows_in - kept},
        "stages": [{"stage": "near_dedup", "rows_in": rows_in, "rows_out": kept, "rejected": rows_in - kept,
                    "reasons": reasons}],
    }  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_several_outputs_give_a_table_of_sources(tmp_path, capsys):
    web = fake_output(tmp_path / "web", 1000, 600, {"near_duplicate_caption": 300, "wrong_language": 100})
    tables = fake_output(tmp_path / "tables", 200, 200, {})
    assert main(["stats", str(web), str(tables), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert [s["source"] for s in counts["sources"]] == [str(web), str(tables)]
    assert counts["total"] == {"input_rows": 1200, "output_rows": 800, "rejected_rows": 400}
    assert [s["kept_share"] for s in counts["sources"]] == [0.75, 0.25]
    assert list(counts["sources"][0]["top_reasons"]) == ["near_dedup/near_duplicate_caption",
                                                         "near_dedup/wrong_language"]  # fmt: skip
    assert main(["stats", str(web), str(tables)]) == 0
    table = capsys.readouterr().out
    assert "Sources" in table and "75.0" in table and "1200" in table


def test_several_outputs_refuse_html_and_a_missing_one(tmp_path, capsys):
    web = fake_output(tmp_path / "web", 10, 5, {})
    assert main(["stats", str(web), str(web), "--html", str(tmp_path / "r.html")]) == 2
    assert "take one DIR" in capsys.readouterr().err
    assert main(["stats", str(web), str(tmp_path / "nowhere")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
