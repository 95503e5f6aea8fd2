"""CFT training sequences: the mask and targets match what the block-diffusion decoder computes."""

import copy

import torch

from dgr2.model.kv_cache import KVCache
from dgr2.recipe.block_diffusion import CLEAN, COPY_A, COPY_B, attention_mask, collate_diffusion, row
from dgr2.recipe.data import eval_examples
from dgr2.recipe.sft import encode


def encoded(vocab, synth, k=6, trace_len=20):
    ex = eval_examples(synth.sequences, synth.item_ids, "valid", k)[0]
    return encode(vocab, synth, ex, trace_len)


def test_attention_rule_on_a_row(tiny, synth):
    _, vocab = tiny
    enc = encoded(vocab, synth)
    S, P = 4, enc.prompt_len
    ids, pos, stream, blocks, _, _ = row(enc, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(0))
    m = attention_mask(pos, stream, blocks, S, P)
    L = len(ids)
    for q in range(L):
        for k in range(L):
            if stream[q] == CLEAN:
                expect = bool(stream[k] == CLEAN and pos[k] <= pos[q])
            else:
                start = P + int(blocks[q]) * S
                expect = bool((stream[k] == CLEAN and pos[k] < start)
                              or (stream[k] == stream[q] and blocks[k] == blocks[q]))
            assert bool(m[q, k]) == expect, (q, k)
    # spot checks that would catch the classic bugs
    a = (stream == COPY_A).nonzero().squeeze(1)
    b = (stream == COPY_B).nonzero().squeeze(1)
    assert not m[a][:, b].any(), "a noisy copy sees the other copy"
    later = blocks[a][None, :] > blocks[a][:, None]
    assert not (m[a][:, a] & later).any(), "a block sees a later block"
    clean_completion = (stream == CLEAN) & (pos >= P)
    for q in a.tolist():
        start = P + int(blocks[q]) * S
        assert not m[q][clean_completion & (pos >= start)].any(), "a noisy block sees its own clean tokens"


def test_complementary_targets_supervise_every_token(tiny, synth):
    _, vocab = tiny
    enc = encoded(vocab, synth)
    S, P, T = 4, enc.prompt_len, len(enc.ids)
    ids, pos, stream, blocks, targets, weights = row(enc, S, vocab.mask, vocab.pad, torch.Generator().manual_seed(3))
    x0 = torch.tensor(enc.ids)
    supervised = torch.zeros(T, dtype=torch.int)
    for i in range(len(ids)):
        if weights[i] > 0:
            p = int(pos[i]) + 1  # the output at index i predicts position pos + 1
            assert targets[i] == x0[p]
            if stream[i] != CLEAN:
                j = (stream == stream[i]) & (pos == p)
                assert ids[j].item() == vocab.mask, "a loss on a token the copy can see"
                assert blocks[j].item() == blocks[i].item()
            supervised[p] += 1
    assert (supervised[P:] >= 1).all()
    # every completion token is masked in exactly one copy
    a = ids[stream == COPY_A] == vocab.mask
    b = ids[stream == COPY_B] == vocab.mask
    assert torch.equal(a, ~b)


def test_training_logits_equal_decoder_block_step(tiny, synth):
    """The noisy copy's outputs under the training mask are exactly the decoder's denoising step."""
    model, vocab = tiny
    model = copy.deepcopy(model).double()
    enc = encoded(vocab, synth, k=4, trace_len=12)
    S, P = 4, enc.prompt_len
    b = collate_diffusion([enc], S, vocab.mask, vocab.pad, torch.Generator().manual_seed(1))
    with torch.no_grad():
        train_logits = model(b.ids, positions=b.positions, mask=b.mask)[0]
        T = len(enc.ids)
        C = T - P
        block = 1  # the second block of the completion
        start = P + block * S
        cache = KVCache(model.config, 1, T + S, dtype=torch.float64)
        model(torch.tensor([enc.ids[:start]]), cache=cache)
        cache.commit(start)
        noisy = b.ids[0, T + block * S: T + block * S + S]  # copy A's tokens of that block
        step_logits = model(noisy[None], cache=cache, causal=torch.tensor([False]))[0]
    got = train_logits[T + block * S: T + block * S + S]
    assert C >= 2 * S
    assert torch.allclose(got, step_logits, atol=1e-6)
