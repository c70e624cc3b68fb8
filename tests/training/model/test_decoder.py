"""Llama decoder: KV cache, generation (greedy, top-p), Llama 3 RoPE scaling. CPU, tiny shapes."""

import dataclasses
import math

import pytest
import torch

from vlmforge.training.model.config import get_config
from vlmforge.training.model.decoder import Decoder, rope_frequencies, sample_next_token

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    torch.manual_seed(0)
    cfg = get_config("tiny").decoder
    model = Decoder(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init so that logits are far from ties
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model


def test_kv_cache_prefill_in_chunks_matches_one_pass(decoder):
    ids = torch.randint(0, decoder.cfg.vocab_size, (2, 20))
    full = decoder(ids)
    caches = decoder.new_caches()
    parts = [decoder(ids[:, :7], caches), decoder(ids[:, 7:8], caches), decoder(ids[:, 8:], caches)]
    assert caches[0].length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_generation_matches_full_recomputation(decoder):
    prompt = torch.randint(0, decoder.cfg.vocab_size, (3, 6))
    cached = decoder.generate(prompt, max_new_tokens=12, use_cache=True)
    recomputed = decoder.generate(prompt, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 18)
    assert torch.equal(cached[:, :6], prompt)
    assert torch.equal(cached, recomputed)

    sampled = [
        decoder.generate(
            prompt,
            12,
            use_cache=use_cache,
            temperature=1.0,
            top_p=0.9,
            generator=torch.Generator().manual_seed(1),
        )
        for use_cache in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], cached)  # sampling at temperature 1 is not the greedy path


def test_generation_stops_at_eos(decoder):
    prompt = torch.randint(0, decoder.cfg.vocab_size, (1, 4))
    greedy = decoder.generate(prompt, max_new_tokens=8)
    eos = int(greedy[0, 6])  # make the third generated token the end-of-sequence token
    first = int((greedy[0, 4:] == eos).nonzero()[0])
    stopped = decoder.generate(prompt, max_new_tokens=8, eos_token_id=eos)
    assert stopped.shape[1] == 4 + first + 1
    assert torch.equal(stopped, greedy[:, : 4 + first + 1])


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(4000, 3)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next_token(logits, 1.0, top_p=0.6, generator=g), minlength=3)
    assert counts[2] == 0 and counts[0] > 0 and counts[1] > 0
    assert abs(counts[0] / counts[:2].sum() - 0.5 / 0.8) < 0.05
    only_top = sample_next_token(logits, 1.0, top_p=0.5, generator=g)
    assert torch.equal(only_top, torch.zeros_like(only_top))
    everything = torch.bincount(sample_next_token(logits, 1.0, top_p=1.0, generator=g), minlength=3)
    assert everything[2] > 0


def test_llama3_rope_scaling_stretches_only_low_frequencies():
    cfg = get_config("tiny").decoder
    scaled = rope_frequencies(cfg)
    plain = rope_frequencies(dataclasses.replace(cfg, rope_scaling=None))
    s = cfg.rope_scaling
    wavelen = 2 * math.pi / plain
    high = wavelen < s.original_max_position_embeddings / s.high_freq_factor
    low = wavelen > s.original_max_position_embeddings / s.low_freq_factor
    assert high.any() and low.any() and (~high & ~low).any()  # the tiny config exercises all three bands
    assert torch.equal(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / s.factor)
    mid = ~high & ~low
    assert ((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / s.factor)).all()


def test_tied_decoder_state_dict_holds_the_table_once():
    """DeepSpeed's exclude_frozen_parameters goes by named_parameters, which lists a tied table once: the
    state dict must too, or a frozen tied decoder lands in every checkpoint as lm_head.weight."""
    cfg = dataclasses.replace(get_config("tiny").decoder, tie_embeddings=True)
    model = Decoder(cfg)
    state = model.state_dict()
    assert "lm_head.weight" not in state and "embed_tokens.weight" in state
    assert set(state) == {n for n, _ in model.named_parameters()}
    fresh = Decoder(cfg)
    fresh.load_state_dict(state)  # strict: the head is the table again
    assert fresh.lm_head.weight is fresh.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, model.embed_tokens.weight)
