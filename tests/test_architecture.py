"""The layout rules of docs/architecture.md: one installed namespace, one-way imports, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import ROOT

FOLDERS = {"pipeline": "vlmforge.pipeline", "training": "vlmforge.training", "common": "vlmforge.common"}
# The only modules directly in pipeline/: entry point, config, job and its registry, schema.
PIPELINE_TOP = {"__init__", "cli", "config", "job", "registry", "schema"}


def modules() -> dict[str, Path]:
    """Every module of the three folders by its dotted name."""
    out = {}
    for folder, name in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((name, *rel))] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth of the file, except under `if TYPE_CHECKING`."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_the_wheel_holds_only_the_vlmforge_namespace(tmp_path):
    """What `pip install .` installs: vlmforge/ (with the report's CSS and the sample data's JSON) and the
    dist-info, no top-level `pipeline` or `training`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w",
         str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("vlmforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vlmforge", wheel.name.split("-py")[0] + ".dist-info"}
    assert "vlmforge/pipeline/report/report.css" in names
    assert "vlmforge/pipeline/sample_data/captions_i18n.json" in names
    assert "vlmforge/pipeline/registry.py" in names and "vlmforge/training/model/fusion.py" in names


def test_imports_run_one_way():
    g = graph()
    for mod, deps in g.items():
        if mod.startswith("vlmforge.training"):
            assert not {d for d in deps if d.startswith("vlmforge.pipeline")}, f"{mod} imports curation"
        if mod.startswith("vlmforge.common"):
            assert all(d.startswith("vlmforge.common") for d in deps), f"{mod} imports a wing: {deps}"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_pipeline_top_level_holds_only_the_entry_points():
    top = {p.stem for p in (ROOT / "pipeline").glob("*.py")}
    assert top <= PIPELINE_TOP, f"modules to move into a phase folder: {sorted(top - PIPELINE_TOP)}"


def test_no_reference_to_files_outside_the_repository():
    for folder in ("pipeline", "training", "common", "tests", "docs", "benchmarks", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".yaml", ".json"} and path.name != "test_architecture.py":
                text = path.read_text(errors="replace")
                assert "DESIGN.md" not in text and "../shared" not in text, path
