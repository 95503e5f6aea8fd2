"""The decode settings a conversion stores: the flags given, else a diffusion parent's, else the defaults
for an AR parent (a graft keeps its answer threshold when the flag is left out)."""

import argparse

from dgr2.model.config import preset
from dgr2.recipe.train_cft import NEW_DECODE, add_arguments, decode_settings


def flags(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_an_ar_parent_gets_the_defaults_and_the_flags_given():
    ar = preset("tiny", vocab_size=300, decoder="ar", block_size=8, threshold=0.5, answer_threshold=0.0)
    assert decode_settings(ar, flags()) == NEW_DECODE
    assert decode_settings(ar, flags("--threshold", "0.7")) == {**NEW_DECODE, "threshold": 0.7}


def test_a_diffusion_parent_keeps_its_settings_unless_a_flag_replaces_one():
    graft = preset("tiny", vocab_size=300, decoder="diffusion", block_size=16, threshold=0.8, answer_threshold=0.0)
    assert decode_settings(graft, flags()) == {"block_size": 16, "threshold": 0.8, "answer_threshold": 0.0}
    assert decode_settings(graft, flags("--answer-threshold", "0.9", "--block-size", "32")) == {
        "block_size": 32, "threshold": 0.8, "answer_threshold": 0.9}
