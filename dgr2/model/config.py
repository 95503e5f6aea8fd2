"""Model configuration: a Qwen3 decoder config plus the fields our decoders need.

The config serialises to a Hugging Face ``config.json`` (``model_type: qwen3``) so that
``transformers.Qwen3ForCausalLM`` opens our checkpoints; our own fields ride along as extra keys
that Hugging Face ignores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

DecoderKind = Literal["ar", "diffusion"]
DECODERS: tuple[DecoderKind, ...] = get_args(DecoderKind)  # the one list of decoder names, in this order
HF_DECODER_KEY = "dgr2_decoder"
# trace tokens a model writes before its answer: ~all 100 candidates (3 tokens each, more with
# evidence); the answer is 103 more
DEFAULT_TRACE_LEN = 420
# how the SFT answer orders candidates of equal trace strength (recipe.traces.sft_target): a random order per
# example, or ascending slot (the order the trace lists them in)
AnswerTies = Literal["shuffled", "slot"]
ANSWER_TIES: tuple[AnswerTies, ...] = get_args(AnswerTies)
DEFAULT_ANSWER_TIES: AnswerTies = "shuffled"  # every checkpoint written before the choice existed


@dataclass
class ModelConfig:
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # GQA: each KV head serves num_attention_heads // num_key_value_heads queries
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096  # prompt (history + 100 candidates) + trace + answer
    tie_word_embeddings: bool = True  # halves the parameters: the shipped pair must fit in 25 MB
    # --- our fields (ignored by transformers) ---
    mask_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 0
    block_size: int = 32  # block-diffusion block length (Fast-dLLM v2 default)
    threshold: float = 0.9  # confidence threshold for parallel unmasking
    answer_threshold: float | None = None  # the threshold after <answer> (None: threshold; see DecodeConfig)
    trace_len: int = DEFAULT_TRACE_LEN  # the trace length it was trained with: caps each decode's budget
    # the evidence rule its traces were trained on when fitted to its catalog (recipe.traces.EvidenceRule as
    # a dict); None: the prompt version's own rule
    evidence_rule: dict[str, Any] | None = None
    answer_ties: AnswerTies = DEFAULT_ANSWER_TIES  # how its answers were trained to order equal strengths
    decoder: DecoderKind = "ar"

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for RoPE")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be 'ar' or 'diffusion', not {self.decoder!r}")
        if self.answer_ties not in ANSWER_TIES:
            raise ValueError(f"answer_ties must be one of {', '.join(ANSWER_TIES)}, not {self.answer_ties!r}")

    # ------------------------------------------------------------------ HF round trip
    def to_hf_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # transformers reads a top-level ``decoder`` key as an encoder-decoder sub-config and fails to
        # load; the decoder kind is therefore stored as ``dgr2_decoder``.
        d[HF_DECODER_KEY] = d.pop("decoder")
        d.update(
            model_type="qwen3",
            architectures=["Qwen3ForCausalLM"],
            hidden_act="silu",
            attention_bias=False,
            attention_dropout=0.0,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=self.num_hidden_layers,
            initializer_range=0.02,
            use_cache=True,
            bos_token_id=None,
            torch_dtype="float32",
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in names}
        if HF_DECODER_KEY in d:
            fields["decoder"] = d[HF_DECODER_KEY]
        return cls(**fields)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# Presets: the architecture only; vocab and special ids come from the tokenizer at build time.
PRESETS: dict[str, ModelConfig] = {
    # unit tests: a forward pass in milliseconds
    "tiny": ModelConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    # the CPU recipe: trains within the hour budget on 2 cores; with the ~14k-token Beauty vocabulary
    # (~4.5M parameters) the AR + diffusion pair ships under the 25 MB budget in bf16. Six heads
    # with a KV head per pair: the trace and the answer are lookups (a slot's evidence window, the
    # strongest open slot), and separate keys per head are cheap next to the vocabulary.
    "small": ModelConfig(hidden_size=192, intermediate_size=576, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=3, head_dim=32),
    # a GPU-sized variant of the same recipe
    "base": ModelConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=64),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
