"""The model config: what it refuses, and the fields of our own that ride in Hugging Face's config.json."""

import pytest

from dgr2.model.config import ModelConfig


def test_our_fields_round_trip_through_the_hf_dict():
    config = ModelConfig(decoder="diffusion", answer_ties="slot", trace_len=300, answer_threshold=0.0)
    d = config.to_hf_dict()
    assert d["model_type"] == "qwen3" and "decoder" not in d  # transformers would read it as a sub-config
    assert ModelConfig.from_hf_dict(d) == config


def test_a_config_written_before_answer_ties_existed_reads_as_shuffled():
    d = ModelConfig().to_hf_dict()
    del d["answer_ties"]
    assert ModelConfig.from_hf_dict(d).answer_ties == "shuffled"


@pytest.mark.parametrize(("field", "value", "named"), [("answer_ties", "random", "answer_ties"),
                                                       ("decoder", "beam", "decoder")])
def test_unknown_values_are_refused_by_name(field, value, named):
    with pytest.raises(ValueError, match=named):
        ModelConfig(**{field: value})
