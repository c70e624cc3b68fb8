"""Reading sample data back: its images with the text drawn in them, for the OCR test and benchmark."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def images_with_text(directory: Path) -> list[tuple[str, bytes, str | None]]:
    """(key, image bytes, text drawn in it or None) of every sample image that decodes, in shard order."""
    truth = {}
    for line in (directory / "ground_truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth[row["key"]] = row["text_in_image"]
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
