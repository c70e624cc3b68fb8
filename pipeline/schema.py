"""Arrow schemas of the rows that flow between readers, stages and writers."""

from __future__ import annotations

import pyarrow as pa

# What every reader yields. `read_error` set means the pair could not be assembled (missing half, bad bytes).
RAW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("image", pa.binary()),
        ("caption", pa.string()),
        ("read_error", pa.string()),
        ("read_detail", pa.string()),
    ]
)

# The curated output row. Columns later stages fill stay null until those stages run.
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("image_format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("caption", pa.string()),
        ("original_caption", pa.string()),
        ("ocr_text", pa.string()),
        ("synthetic_caption", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("caption_words", pa.int32()),
        ("clip_score", pa.float32()),
        ("diversity_keep_prob", pa.float32()),
        ("diversity_score", pa.float32()),
        ("dup_cluster", pa.string()),
        ("dup_cluster_size", pa.int32()),
        ("source", pa.string()),
        ("url", pa.string()),
        # Video rows (null for images): JPEG frames sampled at `video.fps`, their times in seconds from the
        # clip's first frame, the clip's duration, frame rate and codec. `image` is null for a video row.
        ("frames", pa.list_(pa.binary())),
        ("frame_times", pa.list_(pa.float32())),
        ("duration_s", pa.float32()),
        ("fps", pa.float32()),
        ("video_codec", pa.string()),
    ]
)

# What the video readers yield: the raw row plus the encoded clip and its container's file extension.
VIDEO_RAW_SCHEMA = pa.schema(list(RAW_SCHEMA) + [("video", pa.binary()), ("video_ext", pa.string())])

# Columns phase 1 adds for phase 2 and drops before the final write. Near-dup keys: the caption's MinHash
# signature (num_perm little-endian uint32: phase 2 derives from it the LSH band keys it shuffles, and reads
# whole signatures back only for candidate pairs) and the image's 64-bit perceptual hash.
WORK_COLUMNS = pa.schema(
    [
        ("caption_key", pa.string()),
        ("part", pa.string()),
        ("minhash", pa.binary()),
        ("phash", pa.uint64()),
        ("frame_phashes", pa.list_(pa.uint64())),  # a video's sampled frames' pHashes, in time order
    ]
)

PHASE1_SCHEMA = pa.schema(list(OUTPUT_SCHEMA) + list(WORK_COLUMNS))

REJECTED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("caption", pa.string()),
        # A ~96 px JPEG for the report's gallery: only a bounded sample per reason (output.gallery_per_reason)
        # gets one; null for the rest and for images that do not decode.
        ("thumbnail", pa.binary()),
    ]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select, order and cast `table` to `schema`, adding absent columns as nulls."""
    n = table.num_rows
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(cols, schema=schema)
