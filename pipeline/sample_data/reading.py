"""Reading sample data back for the OCR test and benchmark: its images with the text drawn in them, and the
edit distance that scores what OCR read against that text."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def read_ground_truth(directory: Path) -> dict[str, dict]:
    """The ground-truth line of every sample key in `directory`."""
    with open(directory / "ground_truth.jsonl") as f:
        return {row["key"]: row for row in map(json.loads, f)}


def images_with_text(directory: Path) -> list[tuple[str, bytes, str | None]]:
    """(key, image bytes, text drawn in it or None) of every sample image that decodes, in shard order."""
    truth = {key: row["text_in_image"] for key, row in read_ground_truth(directory).items()}
    out = []
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                if ext in ("json", "txt"):
                    continue
                data = tar.extractfile(member).read()
                try:
                    Image.open(io.BytesIO(data)).load()
                except Exception:  # noqa: BLE001 - the sample's corrupt rows
                    continue
                out.append((key, data, truth[key]))
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest character insertions, deletions and substitutions from a to b."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
