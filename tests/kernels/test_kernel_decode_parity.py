"""Both decoders through the dispatch: the Triton path (interpreted on CPU) decodes the same tokens
as the reference path, so a GPU run uses the kernels end to end with the same behaviour."""

import copy

import pytest

from dgr2.kernels import use_backend
from dgr2.model.ar_decoder import decode_ar
from dgr2.model.decoding import DecodeConfig
from dgr2.model.diffusion_decoder import decode_diffusion
from dgr2.model.prompt import render_prompt

pytestmark = pytest.mark.usefixtures("triton")


@pytest.mark.parametrize("decode", [decode_ar, decode_diffusion])
def test_triton_and_reference_paths_decode_the_same_tokens(tiny, synth, decode, device):
    model, vocab = copy.deepcopy(tiny[0]).to(device), tiny[1]  # the kernels run where the model is
    ids = synth.catalog.ids()
    users = list(synth.sequences)[:2]
    prompts = [render_prompt(vocab, synth.catalog, synth.sequences[u][:3 + 2 * i], ids[i: i + 3 + i])
               for i, u in enumerate(users)]
    cfg = DecodeConfig(max_new_tokens=10, block_size=4, threshold=0.3)
    args = (model, vocab, [p.ids for p in prompts], [p.num_slots for p in prompts], cfg)
    with use_backend("torch"):
        ref = decode(*args)
    with use_backend("triton"):
        tri = decode(*args)
    for r, t in zip(ref, tri, strict=True):
        assert r.tokens == t.tokens
        assert r.forward_passes == t.forward_passes
