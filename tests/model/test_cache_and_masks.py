"""The cache and attention masks: cached decoding must equal a full forward with the right mask.

These would catch a block attending to a later block, a sequence reading another's length, or a
stale cache entry (scratch space past the committed prefix) leaking into attention.
"""

import copy

import pytest
import torch

from dgr2.kernels.block_attention import visible_keys
from dgr2.model.kv_cache import KVCache


@pytest.fixture()
def model64(tiny):
    model, vocab = tiny
    return copy.deepcopy(model).double(), vocab


def full_forward(model, ids, mask):
    return model(ids[None], mask=mask[None])[0]


def block_mask(n_prefix: int, block: int, causal_block: bool) -> torch.Tensor:
    """Causal over the prefix; the block sees the whole prefix and (bi- or uni-directionally) itself."""
    n = n_prefix + block
    m = torch.ones(n, n, dtype=torch.bool).tril()
    if not causal_block:
        m[n_prefix:, n_prefix:] = True
    return m


def test_visibility_rule_never_reaches_past_the_block():
    lens = torch.tensor([0, 3, 7])
    causal = torch.tensor([True, False, True])
    m = visible_keys(lens, causal, block_len=4, n_keys=16)
    for b, L in enumerate(lens.tolist()):
        assert not m[b, :, L + 4:].any(), "a key past the block is visible"
        assert m[b, :, :L].all(), "a committed key is hidden"
        blk = m[b, :, L:L + 4]
        expected = torch.ones(4, 4, dtype=torch.bool)
        assert torch.equal(blk, expected.tril() if causal[b] else expected)


def test_ar_cached_steps_equal_causal_forward(model64):
    model, _ = model64
    ids = torch.randint(5, model.config.vocab_size, (20,))
    ref = full_forward(model, ids, block_mask(0, 20, True))
    cache = KVCache(model.config, 1, 32, dtype=torch.float64)
    out = [model(ids[None, :12], cache=cache)[0]]
    cache.commit(12)
    for t in range(12, 20):
        out.append(model(ids[None, t:t + 1], cache=cache)[0])
        cache.commit(1)
    assert torch.allclose(torch.cat(out), ref, atol=1e-6)


def test_diffusion_block_equals_masked_forward_with_stale_scratch(model64):
    model, vocab = model64
    prefix = torch.randint(5, model.config.vocab_size, (13,))
    block = torch.full((6,), vocab.mask)
    block[[1, 4]] = torch.randint(5, model.config.vocab_size, (2,))
    ref = full_forward(model, torch.cat([prefix, block]), block_mask(13, 6, causal_block=False))[13:]

    cache = KVCache(model.config, 1, 40, dtype=torch.float64)
    model(prefix[None], cache=cache)
    cache.commit(13)
    for layer in range(model.config.num_hidden_layers):  # garbage in the scratch space past the prefix
        cache.k[layer][:, 13:] = 1e3
        cache.v[layer][:, 13:] = -1e3
    # a first step with other tokens writes the scratch; the second must not see its leftovers
    model(torch.randint(5, model.config.vocab_size, (1, 9)), cache=cache, causal=torch.tensor([False]))
    got = model(block[None], cache=cache, causal=torch.tensor([False]))[0]
    assert torch.allclose(got, ref, atol=1e-6)


def test_mixed_batch_rows_match_single_sequences(model64):
    """Different committed lengths, one row committing (causal) and one denoising (bidirectional)."""
    model, _ = model64
    V = model.config.vocab_size
    prefixes = [torch.randint(5, V, (n,)) for n in (4, 11)]
    blocks = torch.randint(5, V, (2, 5))
    causal = torch.tensor([True, False])
    cache = KVCache(model.config, 2, 32, dtype=torch.float64)
    padded = torch.zeros(2, 11, dtype=torch.long)
    for i, p in enumerate(prefixes):
        padded[i, : len(p)] = p
    model(padded, cache=cache)
    cache.commit(torch.tensor([4, 11]))
    got = model(blocks, cache=cache, causal=causal)
    for i, p in enumerate(prefixes):
        mask = block_mask(len(p), 5, causal_block=bool(causal[i]))
        ref = full_forward(model, torch.cat([p, blocks[i]]), mask)[len(p):]
        assert torch.allclose(got[i], ref, atol=1e-6), f"row {i}"


def test_cache_refuses_to_overflow(tiny):
    model, _ = tiny
    cache = KVCache(model.config, 1, 8)
    cache.commit(6)
    with pytest.raises(RuntimeError, match="KV cache full"):
        cache.block_positions(4)


@torch.no_grad()
def test_cache_stays_head_major_through_reorder(model64):
    """Dropping finished rows keeps the head-major storage (the fast CPU attention path) and each
    kept row's entries, and later passes read them exactly as a cache that never dropped a row."""
    model, _ = model64
    V = model.config.vocab_size
    ids = torch.randint(5, V, (3, 6))
    step = torch.randint(5, V, (3, 1))
    whole = KVCache(model.config, 3, 16, dtype=torch.float64)
    model(ids, cache=whole)
    whole.commit(6)
    dropped = copy.deepcopy(whole)
    dropped.reorder(torch.tensor([2, 0]))
    for layer in range(model.config.num_hidden_layers):
        for t in (dropped.k[layer], dropped.v[layer]):
            assert t.shape == (2, 16, model.config.num_key_value_heads, model.config.head_dim)
            assert t.transpose(1, 2).is_contiguous(), "reorder fell back to token-major storage"
        assert torch.equal(dropped.k[layer], whole.k[layer][[2, 0]])
    assert torch.equal(model(step[[2, 0]], cache=dropped), model(step, cache=whole)[[2, 0]])
