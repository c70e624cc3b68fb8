"""The sample-data generator: layout, determinism, kind mix, and that every defect is what it claims."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from vlmforge.pipeline.sample_data import (
    EXPECTED,
    MIN_PHASH_DISTANCE,
    PROPORTIONS,
    normalise_caption,
    write_sample_data,
)
from vlmforge.pipeline.sample_data.captions import (
    MAX_REPEATED_WORD_RATIO,
    MAX_SYMBOL_RATIO,
    caption_variant,
    english_long,
    english_short,
    load_i18n,
    plausible,
    reads_as_english,
)
from vlmforge.pipeline.sample_data.encoding import decoded_phash, to_rgb
from vlmforge.pipeline.sample_data.generator import Guards, RowFactory, allocate, plan_kinds, plan_originals
from vlmforge.pipeline.sample_data.neardup import (
    ESTIMATE_SLACK,
    NEAR_DUP_JACCARD,
    NearDupIndex,
    _bands,
    _signature,
    jaccard,
    shingles,
)
from vlmforge.pipeline.sample_data.scenes import NO_TEXTURE_SHAPES, Obj, Scene, render, sample_scene
from vlmforge.pipeline.sample_data.vocab import BASIC_COLOURS, BASIC_SHAPES, CELLS, SHAPES, TEXTURES

N, SEED, SHARD = 400, 0, 150
IMAGE_EXTS = ("jpg", "png")


class Sample:
    """One sample read back from the shards, with its ground truth line."""

    def __init__(self, key: str, members: dict[str, bytes], truth: dict) -> None:
        self.key = key
        self.truth = truth
        self.kind: str = truth["kind"]
        self.ext = next(e for e in IMAGE_EXTS if e in members)
        self.image: bytes = members[self.ext]
        self.meta: dict = json.loads(members["json"])
        self.caption: str = members["txt"].decode("utf-8")

    def decode(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.image))
        image.load()
        return image


def read_shards(out: Path) -> tuple[list[tuple[str, list[str]]], dict[str, dict[str, bytes]]]:
    """(shard name, member names) per shard, and key -> ext -> bytes."""
    layout, members = [], defaultdict(dict)
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            for info in tar.getmembers():
                key, ext = info.name.split(".", 1)
                members[key][ext] = tar.extractfile(info).read()
        layout.append((path.name, names))
    return layout, dict(members)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sample") / "raw"
    summary = write_sample_data(out, N, seed=SEED, shard_size=SHARD)
    truth = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text("utf-8").splitlines()]
    layout, members = read_shards(out)
    by_key = {t["key"]: t for t in truth}
    samples = {k: Sample(k, m, by_key[k]) for k, m in members.items()}
    return {"out": out, "summary": summary, "truth": truth, "layout": layout, "samples": samples}


def of_kind(run: dict, kind: str) -> list[Sample]:
    return [s for s in run["samples"].values() if s.kind == kind]


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    write_sample_data(tmp_path / "a", 90, seed=7, shard_size=40)
    write_sample_data(tmp_path / "b", 90, seed=7, shard_size=40)
    write_sample_data(tmp_path / "c", 90, seed=8, shard_size=40)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    shards = ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(a) == [*shards, "ground_truth.jsonl", "ground_truth_summary.json"]
    assert a == b
    assert sorted(a) == sorted(c)
    assert all(a[name] != c[name] for name in a)


def test_shards_hold_adjacent_members_in_key_order(run: dict) -> None:
    keys = []
    for i, (name, names) in enumerate(run["layout"]):
        assert name == f"{i:05d}.tar"
        assert len(names) == 3 * min(SHARD, N - i * SHARD)
        for j in range(0, len(names), 3):
            key = names[j].split(".")[0]
            assert key == f"{i:05d}{j // 3:04d}"
            exts = [n.split(".", 1)[1] for n in names[j : j + 3]]
            assert exts in (["jpg", "json", "txt"], ["png", "json", "txt"])
            assert all(n.startswith(key + ".") for n in names[j : j + 3])
            keys.append(key)
    assert len(keys) == N == len(set(keys))


def test_tar_headers_are_fixed(run: dict) -> None:
    with tarfile.open(run["out"] / "00000.tar") as tar:
        infos = tar.getmembers()
    headers = {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos}
    assert headers == {(1_700_000_000, 0, 0, "", "", 0o644)}


def test_sample_json_is_img2dataset_like(run: dict) -> None:
    for s in run["samples"].values():
        assert set(s.meta) == {"url", "key", "status", "error_message", "width", "height", "caption"}
        assert s.meta["key"] == s.key and s.meta["caption"] == s.caption
        assert s.meta["status"] == "success" and s.meta["error_message"] is None
        url = s.meta["url"]
        assert re.fullmatch(r"https://[a-z.]*example\.(com|org|net)/\w+/[0-9a-f]{12}\.(jpg|png)", url)


def test_ground_truth_covers_every_key_once(run: dict) -> None:
    keys = [t["key"] for t in run["truth"]]
    assert len(keys) == len(set(keys)) == N
    assert set(keys) == set(run["samples"])
    assert keys == sorted(keys)
    for t in run["truth"]:
        assert (t["expected_stage"], t["expected_reason"]) == EXPECTED[t["kind"]]
        assert t["n_words"] == len(run["samples"][t["key"]].caption.split())


def test_summary_matches_ground_truth(run: dict) -> None:
    on_disk = json.loads((run["out"] / "ground_truth_summary.json").read_text("utf-8"))
    assert on_disk == run["summary"]
    assert on_disk["counts"] == dict(Counter(t["kind"] for t in run["truth"]))
    assert sum(on_disk["counts"].values()) == on_disk["n"] == N


def test_kind_counts_follow_proportions(run: dict) -> None:
    counts = Counter(t["kind"] for t in run["truth"])
    assert set(counts) == set(PROPORTIONS)
    for kind, share in PROPORTIONS.items():
        assert abs(counts[kind] / N - share) <= 0.005, kind


@pytest.mark.parametrize("n", [1, 7, 50, 1234, 20_000])
def test_plan_puts_every_duplicate_after_an_unused_clean_row(n: int) -> None:
    kinds = plan_kinds(n, random.Random(n))
    assert Counter(kinds) == +Counter(allocate(n, PROPORTIONS))
    originals = plan_originals(kinds, random.Random(n))
    duplicates = [i for i, k in enumerate(kinds) if k in ("exact_duplicate", "near_duplicate_caption")]
    assert sorted(originals) == duplicates
    assert len(set(originals.values())) == len(originals)
    assert all(kinds[o] == "clean" and o < i for i, o in originals.items())


def test_kinds_are_interleaved_across_shards(run: dict) -> None:
    for _, names in run["layout"]:
        keys = {n.split(".")[0] for n in names}
        kinds = {run["samples"][k].kind for k in keys}
        assert {"clean", "non_english"} <= kinds and len(kinds) >= 6


def test_non_english_rows_span_many_languages_and_scripts(run: dict) -> None:
    langs = Counter(s.truth["lang"] for s in of_kind(run, "non_english"))
    assert len(langs) >= 10 and "en" not in langs
    assert set(langs) <= set(load_i18n())
    assert not any(reads_as_english(s.caption) for s in of_kind(run, "non_english"))
    assert reads_as_english("Triangle orange") and reads_as_english("two tiny teal stars")
    assert all(reads_as_english(s.caption) for s in of_kind(run, "clean") if s.truth["text_in_image"] is None)
    scripts = {lang: load_i18n()[lang]["script"] for lang in langs}
    assert "Latin" in scripts.values() and len(set(scripts.values())) >= 4
    for s in of_kind(run, "non_english"):
        assert bool(re.search("[a-zA-Z]", s.caption)) == (scripts[s.truth["lang"]] == "Latin"), s.caption
    assert {s.truth["lang"] for s in of_kind(run, "clean")} == {"en"}


@pytest.mark.parametrize("kind", ["clean", "non_english"])
def test_short_captions_are_common_but_not_everything(run: dict, kind: str) -> None:
    rows = of_kind(run, kind)
    short = sum(1 <= len(s.caption.split()) <= 4 for s in rows) / len(rows)
    assert 0.25 <= short <= 0.5


def test_short_foreign_captions_never_pass_for_english() -> None:
    factory = RowFactory(0)
    captions = [factory.foreign(random.Random(i), "fr", 200, 200, short=True)[1] for i in range(300)]
    assert not any(reads_as_english(c) for c in captions)
    assert len({normalise_caption(c) for c in captions}) == 300
    assert 150 <= sum(len(c.split()) <= 4 for c in captions) < 300  # short ones run out, long ones follow


def test_translations_cover_the_basic_vocabulary() -> None:
    i18n = load_i18n()
    assert len(i18n) >= 10
    for lang, cfg in i18n.items():
        genders = {gender for _, gender in cfg["shapes"].values()}
        assert set(cfg["shapes"]) == set(BASIC_SHAPES), lang
        assert set(cfg["colours"]) == set(BASIC_COLOURS) == set(cfg["bg"]), lang
        assert set(cfg["positions"]) == set(CELLS), lang
        entries = [*cfg["colours"].values(), *cfg["sizes"].values(), cfg["articles"] or ""]
        for entry in entries:
            assert isinstance(entry, str) or genders <= set(entry), lang
        assert len(set(cfg["bg"].values())) == len(BASIC_COLOURS), lang


def test_captions_are_unique_except_intended_duplicates(run: dict) -> None:
    groups = defaultdict(list)
    for s in run["samples"].values():
        if normalise_caption(s.caption):
            groups[normalise_caption(s.caption)].append(s)
    for rows in groups.values():
        originals = [s for s in rows if s.truth["duplicate_of"] is None]
        assert len(originals) == 1, [s.caption for s in rows]
        assert all(s.truth["duplicate_of"] == originals[0].key for s in rows if s is not originals[0])
    empties = [s for s in run["samples"].values() if not normalise_caption(s.caption)]
    assert {s.kind for s in empties} == {"empty_caption"}


def test_clean_captions_are_not_near_duplicates(run: dict) -> None:
    sets = [shingles(s.caption) for s in of_kind(run, "clean")]
    for a, b in combinations(sets, 2):
        assert jaccard(a[0], b[0]) < NEAR_DUP_JACCARD and jaccard(a[1], b[1]) < NEAR_DUP_JACCARD


def test_guards_reject_repeated_captions_bytes_and_lookalike_images() -> None:
    guards = Guards()
    guards.add_caption("A red circle on blue")
    assert not guards.caption_free("a red circle, on BLUE!") and guards.caption_free("a red square on blue")
    guards.add_bytes(b"abc")
    assert not guards.bytes_free(b"abc") and guards.bytes_free(b"abd")
    base = 0x0F0F_0000_FFFF_1234
    guards.add_phash(base)
    assert not guards.phash_free(base ^ ((1 << (MIN_PHASH_DISTANCE - 1)) - 1))
    assert guards.phash_free(base ^ ((1 << MIN_PHASH_DISTANCE) - 1))


def test_near_duplicate_index_rejects_reordered_and_extended_captions() -> None:
    index = NearDupIndex()
    assert index.try_add("a red circle in the top left on a blue background")
    assert not index.try_add("a blue circle in the top left on a red background")  # same words
    assert index.try_add("big orange octagon")
    assert not index.try_add("A big orange octagon.")  # one word added
    assert index.try_add("two tiny teal stars at the bottom")
    assert len(index.sets) == 3


def test_near_duplicate_index_answers_as_the_plain_lsh_check() -> None:
    """The Jaccard screen on token ids, the bit rows and the memory of rejected texts only make the index
    faster: every answer equals that of checking each band candidate's MinHash estimate, then its exact
    Jaccard, against all captions added so far."""
    rng = random.Random(3)
    captions = []
    for _ in range(1500):
        scene = sample_scene(rng, 200, 200, rng.choice((1, 1, 2, 3)), with_text=rng.random() < 0.15)
        captions.append(english_short(scene, rng) if rng.random() < 0.4 else english_long(scene, rng))
    captions += captions[::7]  # texts drawn again, whether they were added or rejected
    index = NearDupIndex()
    sets: list[tuple[frozenset[str], ...]] = []
    sigs: list[list[np.ndarray]] = []
    buckets: list[defaultdict] = [defaultdict(set), defaultdict(set)]
    answers = Counter()
    for caption in captions:
        items, sig = shingles(caption), [_signature(x) for x in shingles(caption)]
        near = any(
            (sigs[i][s] == sig[s]).mean() >= NEAR_DUP_JACCARD - ESTIMATE_SLACK
            and jaccard(items[s], sets[i][s]) >= NEAR_DUP_JACCARD
            for s in range(2)
            for i in set().union(*(buckets[s][b] for b in _bands(sig[s])))
        )
        assert index.try_add(caption) is (not near), caption
        answers[near] += 1
        if not near:
            for s in range(2):
                for b in _bands(sig[s]):
                    buckets[s][b].add(len(sets))
            sets.append(items)
            sigs.append(sig)
    assert answers[True] > 300 and answers[False] > 300  # both answers well exercised
    assert len(index.sets) == len(sets)


def test_image_bytes_are_unique_except_exact_duplicates(run: dict) -> None:
    groups = defaultdict(list)
    for s in run["samples"].values():
        groups[hashlib.sha256(s.image).hexdigest()].append(s)
    for rows in groups.values():
        if len(rows) > 1:
            original, *copies = sorted(rows, key=lambda s: s.key)
            assert original.kind == "clean" and {c.kind for c in copies} == {"exact_duplicate"}


def test_exact_duplicates_copy_an_earlier_clean_row(run: dict) -> None:
    rows = of_kind(run, "exact_duplicate")
    assert rows
    for s in rows:
        original = run["samples"][s.truth["duplicate_of"]]
        assert original.kind == "clean" and original.key < s.key and original.truth["n_words"] > 4
        assert (s.image, s.caption, s.ext) == (original.image, original.caption, original.ext)


def test_near_duplicates_vary_an_earlier_clean_caption_on_a_new_image(run: dict) -> None:
    rows = of_kind(run, "near_duplicate_caption")
    assert rows
    for s in rows:
        original = run["samples"][s.truth["duplicate_of"]]
        assert original.kind == "clean" and original.key < s.key and original.truth["n_words"] > 4
        assert s.caption != original.caption
        assert normalise_caption(s.caption) == normalise_caption(original.caption)
        assert s.image != original.image and s.decode().size == original.decode().size
    assert all(s.truth["duplicate_of"] is None for s in run["samples"].values() if "duplicate" not in s.kind)


def test_caption_variant_keeps_the_normalised_form() -> None:
    rng = random.Random(0)
    caption = 'a red circle next to the word "HELLO" on a blue background'
    for _ in range(50):
        variant = caption_variant(caption, rng)
        assert variant != caption and normalise_caption(variant) == normalise_caption(caption)
    assert normalise_caption("  A Red_Circle,\ton  BLUE!! ") == "a red circle on blue"


def test_english_captions_have_no_punctuation_inside_words(run: dict) -> None:
    """Stripping punctuation and replacing it by spaces then give the same dedup key."""
    for s in run["samples"].values():
        if s.truth["lang"] == "en" and s.kind != "near_duplicate_caption":
            assert not re.search(r"\w[^\w\s]+\w", s.caption), s.caption


def test_captions_stay_clear_of_the_caption_heuristics(run: dict) -> None:
    for s in run["samples"].values():
        if s.kind not in ("boilerplate", "empty_caption"):
            text = " ".join(s.caption.split())
            words = [w.lower() for w in re.findall(r"\w+", text)]
            assert sum(not (c.isalnum() or c.isspace()) for c in text) <= MAX_SYMBOL_RATIO * len(text), text
            assert len(words) < 4 or 1 - len(set(words)) / len(words) <= MAX_REPEATED_WORD_RATIO, text
    assert not plausible('"42"!!') and not plausible("a a a a b") and plausible('the word "42"')


def test_boilerplate_and_empty_captions(run: dict) -> None:
    boilerplate = of_kind(run, "boilerplate")
    assert boilerplate
    for s in boilerplate:
        assert len(s.caption.split()) <= 3 and s.truth["lang"] is None
        assert re.search(r"\.(jpe?g|png)$|^\D*\d*$", s.caption, re.I), s.caption
    for s in of_kind(run, "empty_caption"):
        assert s.caption.strip() == "" and s.truth["n_words"] == 0


def test_valid_images_decode_to_their_recorded_size(run: dict) -> None:
    for s in run["samples"].values():
        if s.kind in ("corrupt_image", "truncated_image"):
            continue
        image = s.decode()
        assert image.size == (s.meta["width"], s.meta["height"])
        w, h = image.size
        if s.kind not in ("too_small", "extreme_aspect"):
            assert 128 <= min(w, h) and max(w, h) <= 384 and 0.5 <= w / h <= 2.0


def test_clean_variants_are_odd_formats(run: dict) -> None:
    modes = {"png_rgba": ("PNG", "RGBA"), "png_palette": ("PNG", "P"), "png_16bit": ("PNG", "I;16"),
             "png_grey": ("PNG", "L"), "jpeg_cmyk": ("JPEG", "CMYK"), None: ("JPEG", "RGB")}
    seen = set()
    for s in of_kind(run, "clean"):
        image = s.decode()
        assert (image.format, image.mode) == modes[s.truth["variant"]]
        assert s.ext == ("png" if image.format == "PNG" else "jpg")
        seen.add(s.truth["variant"])
    assert seen == set(modes)


def test_too_small_and_extreme_aspect_sizes(run: dict) -> None:
    for s in of_kind(run, "too_small"):
        w, h = s.decode().size
        assert max(w, h) < 48 and min(w, h) >= 16
    for s in of_kind(run, "extreme_aspect"):
        w, h = s.decode().size
        assert max(w, h) / min(w, h) >= 5 and min(w, h) >= 64
        assert s.truth["variant"] == ("wide" if w > h else "tall")


def test_corrupt_images_are_not_images(run: dict) -> None:
    rows = of_kind(run, "corrupt_image")
    assert rows
    for s in rows:
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(s.image))
        assert s.ext == "jpg" and s.meta["width"] is None


def test_truncated_images_open_but_fail_to_load(run: dict) -> None:
    rows = of_kind(run, "truncated_image")
    assert rows
    for s in rows:
        image = Image.open(io.BytesIO(s.image))
        assert image.format == "JPEG" and image.size == (s.meta["width"], s.meta["height"])
        with pytest.raises(OSError):
            image.load()


def test_defect_rows_otherwise_look_clean(run: dict) -> None:
    for kind in ("too_small", "extreme_aspect", "corrupt_image", "truncated_image"):
        for s in of_kind(run, kind):  # long captions: language ID must not reject them first
            assert s.truth["lang"] == "en" and s.truth["n_words"] > 4
    for kind in ("non_english", "boilerplate", "empty_caption"):
        for s in of_kind(run, kind):
            w, h = s.decode().size
            assert 128 <= min(w, h) and max(w, h) <= 384


def test_text_in_image_is_quoted_in_the_caption_when_mentioned(run: dict) -> None:
    english = [s for s in run["samples"].values() if s.kind not in ("non_english", "corrupt_image")]
    with_text = [s for s in english if s.truth["text_in_image"]]
    assert 0.05 <= len(with_text) / len(english) <= 0.3
    for s in english:
        quoted = re.findall(r'"([^"]+)"', s.caption)
        if quoted and s.kind != "near_duplicate_caption":
            assert quoted == [s.truth["text_in_image"]], s.caption


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_and_texture_is_drawn(shape: str) -> None:
    textures = ["solid"] if shape in NO_TEXTURE_SHAPES else sorted(TEXTURES)
    empty = np.asarray(render(Scene(200, 150, "cream", False, ()), random.Random(0)), dtype=int)
    for texture, size in [(t, s) for t in textures for s in ("tiny", "large")]:
        scene = Scene(200, 150, "cream", False, (Obj(shape, "navy", size, 1, texture, "centre"),))
        drawn = np.asarray(render(scene, random.Random(0)), dtype=int)
        changed = int((np.abs(drawn - empty).sum(axis=2) > 150).sum())
        assert changed >= 20, (shape, texture, size, changed)


def test_clean_images_are_perceptually_distinct(run: dict) -> None:
    hashes = np.array([decoded_phash(s.image) for s in of_kind(run, "clean")], dtype=np.uint64)
    distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    np.fill_diagonal(distances, 64)
    assert int(distances.min()) >= MIN_PHASH_DISTANCE


def test_decoding_scales_16_bit_and_flattens_alpha_over_white() -> None:
    grey = Image.fromarray(np.full((4, 4), 128 * 257, dtype=np.uint16))
    assert to_rgb(grey).getpixel((0, 0)) == (128, 128, 128)  # PIL's own convert would clip to 255
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_rerun_with_fewer_rows_removes_stale_shards(tmp_path: Path) -> None:
    write_sample_data(tmp_path, 60, shard_size=20)
    (tmp_path / "notes.txt").write_text("kept")
    summary = write_sample_data(tmp_path, 30, shard_size=20)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == summary["shards"] == ["00000.tar", "00001.tar"]
    assert (tmp_path / "notes.txt").exists()


def test_zero_rows_and_bad_arguments(tmp_path: Path) -> None:
    summary = write_sample_data(tmp_path, 0)
    assert summary["n"] == 0 and summary["shards"] == [] and not list(tmp_path.glob("*.tar"))
    assert (tmp_path / "ground_truth.jsonl").read_text() == ""
    with pytest.raises(ValueError):
        write_sample_data(tmp_path, 10, shard_size=10_001)
