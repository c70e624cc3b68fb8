"""Tokenizer: a local ``tokenizer.json`` (Llama 3's, or one trained here) through the ``tokenizers`` package.

Training sequences are ``<|begin_of_text|> <|image|> caption <|end_of_text|>`` (image first with
``data.image_first``). The image token is not part of the text vocabulary: its id is the first id past it
(the model's ``image_token_id``, 128256 in Llama 3.2 Vision), learned in the fused model's small table of
new tokens. ``train_tokenizer`` makes a byte-level BPE on the curated captions with the same layout, for the
offline tiny recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from vlmforge.common.files import atomic_path

BOS, EOS, IMAGE = "<|begin_of_text|>", "<|end_of_text|>", "<|image|>"


class TextTokenizer:
    """Caption text to ids, plus the ids of the special tokens the training sequences use."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (set `tokenizer` in the train config)")
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        self.bos_id = self._special(BOS)
        self.eos_id = self._special(EOS)
        self.image_id = self._tok.token_to_id(IMAGE)  # None in text-only tokenizers such as Llama 3.1's

    def _special(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.path}: tokenizer has no {token} token")
        return token_id

    @property
    def vocab_size(self) -> int:
        """Ids of the text vocabulary and the special tokens, the image token excluded."""
        size = self._tok.get_vocab_size(with_added_tokens=True)
        return size - 1 if self.image_id is not None and self.image_id == size - 1 else size

    def encode(self, text: str) -> list[int]:
        """Text ids, no special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Text ids (as ``encode``) and each id's character span [start, end) in ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def check_model(
        self, vocab_size: int, image_token_id: int, bos: int | None, eos: int | list[int] | None
    ) -> None:
        """Raise ValueError unless this tokenizer and the model's decoder agree on ids."""
        problems = []
        if self.vocab_size > vocab_size:
            problems.append(f"tokenizer has {self.vocab_size} ids, the model's vocabulary {vocab_size}")
        if self.image_id is not None and self.image_id != image_token_id:
            problems.append(f"{IMAGE} is id {self.image_id}, the model's image token {image_token_id}")
        if bos is not None and bos != self.bos_id:
            problems.append(f"{BOS} is id {self.bos_id}, the model's bos_token_id {bos}")
        eos_ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and self.eos_id not in eos_ids:
            problems.append(f"{EOS} is id {self.eos_id}, the model's eos_token_id {eos}")
        if problems:
            raise ValueError(f"tokenizer {self.path} does not fit the model: " + "; ".join(problems))


def caption_texts(curated_dir: str | Path, batch_rows: int = 4096) -> Iterator[str]:
    """Every non-empty caption (and synthetic caption) of a curated output, shard by shard."""
    import pyarrow.parquet as pq

    files = sorted(Path(curated_dir, "data").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet shards in {Path(curated_dir, 'data')}")
    for file in tqdm(files, desc="reading captions", unit="shard", leave=False):
        parquet = pq.ParquetFile(file)
        columns = [c for c in ("caption", "synthetic_caption") if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            for column in batch.columns:
                yield from (text for text in column.to_pylist() if text)


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | Path) -> TextTokenizer:
    """Train a byte-level BPE with exactly `vocab_size` text ids (BOS = 0, EOS = 1) and write it.

    ``<|image|>`` is added after them, at id `vocab_size`: the model's image token id.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise ValueError(
            f"the captions support only {got} BPE ids, not --vocab-size {vocab_size}: "
            "use a smaller vocabulary (and model vocab_size) or more text"
        )
    tok.add_special_tokens([IMAGE])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return TextTokenizer(path)
