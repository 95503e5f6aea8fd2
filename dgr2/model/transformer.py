"""A Qwen3-style decoder-only transformer (RMSNorm, RoPE, GQA, SwiGLU, q/k-norm).

Parameter names follow Hugging Face's ``Qwen3ForCausalLM`` exactly, so a ``state_dict`` saved here
is a Hugging Face checkpoint. Two attention paths share the weights:

* training / scoring (``cache=None``): full sequences with an explicit ``[B, T, T]`` visibility
  mask (causal for AR, the ``[x_t ; x_0]`` block mask for diffusion training);
* decoding (``cache`` given): a block of ``S`` tokens per sequence placed right after its committed
  prefix, attended through :func:`kernels.block_attention` (see :mod:`model.kv_cache`).
The model knows nothing about tokens' meaning, prompts or decoding policy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dgr2.kernels import block_attention
from dgr2.kernels.block_attention import BlockPlan, plan_block_attention
from dgr2.model.config import ModelConfig
from dgr2.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # statistics in fp32 (fp64 in tests)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(config: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[max_positions, head_dim]`` in the rotate-half layout Qwen3 uses."""
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim))
    t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, S, H, D]; cos/sin: [B, S, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, positions, mask=None, cache: KVCache | None = None, plan: BlockPlan | None = None):
        B, S, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, S, self.n_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(B, S, self.n_kv, self.head_dim))
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            # mask: [B or 1, S, S] bool, True = may attend
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                attn_mask=mask[:, None], scale=1.0 / math.sqrt(self.head_dim),
                enable_gqa=self.n_heads != self.n_kv,
            ).transpose(1, 2)
        else:
            cache.write(self.layer_idx, positions, k, v)
            out = block_attention(q, cache.k[self.layer_idx], cache.v[self.layer_idx], *plan)
        return self.o_proj(out.reshape(B, S, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, positions, mask=None, cache=None, plan=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask, cache, plan)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """``model.*`` in Hugging Face naming."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # fp32 whatever the weights' dtype
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @torch.no_grad()
    def grow_vocab(self, vocab_size: int) -> None:
        """Append embedding rows (newly initialised) up to ``vocab_size``: a warm start onto a
        vocabulary that extends this model's (``model.tokenizer.Vocab.extends``)."""
        old = self.model.embed_tokens.weight
        if vocab_size < old.shape[0]:
            raise ValueError(f"cannot shrink the vocabulary from {old.shape[0]} to {vocab_size}")
        grown = nn.Embedding(vocab_size, old.shape[1], device=old.device, dtype=old.dtype)
        nn.init.normal_(grown.weight, std=0.02)
        grown.weight[: old.shape[0]] = old
        self.model.embed_tokens = grown
        self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = grown.weight
        else:
            raise ValueError("grow_vocab supports tied embeddings only (every preset ties them)")
        self.config = self.config.replace(vocab_size=vocab_size)

    def rope(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._rope:
            self._rope[device] = rope_tables(self.config, device)
        return self._rope[device]

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def hidden_states(self, input_ids, positions=None, mask=None, cache: KVCache | None = None, causal=None,
                      visible=None, query_index=None, block_len=None):
        """Final-norm hidden states ``[B, S, H]``.

        Without a cache: ``positions`` default to ``0..S-1`` and ``mask`` to causal.
        With a cache: the block goes right after each sequence's committed prefix; ``causal [B]``
        (and ``visible [B]``) pick the attention inside the block per sequence
        (:mod:`kernels.block_attention`). With ``query_index [B, S]`` only those positions of a block
        ``block_len`` wide are computed; the other positions' keys and values are read from the cache
        as an earlier pass left them.
        """
        B, S = input_ids.shape
        plan = None
        if cache is not None:
            width = S if query_index is None else block_len
            positions = cache.block_positions(width)
            if query_index is not None:
                positions = positions.gather(1, query_index)
            if causal is None:
                causal = torch.ones(B, dtype=torch.bool, device=input_ids.device)
            # the lengths do not move within a pass (only commit moves them): one plan for all layers
            plan = plan_block_attention(cache.lens, causal, visible, width, cache.k[0].shape[1], query_index)
        else:
            if positions is None:
                positions = torch.arange(S, device=input_ids.device)[None, :].expand(B, S)
            if mask is None:
                mask = torch.ones(S, S, dtype=torch.bool, device=input_ids.device).tril()[None]
        cos, sin = self.rope(input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = cos[positions].to(x.dtype), sin[positions].to(x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask, cache, plan)
        return self.model.norm(x)

    def forward(self, input_ids, positions=None, mask=None, cache: KVCache | None = None, causal=None):
        """Logits ``[B, S, V]`` (fp32)."""
        return self.lm_head(self.hidden_states(input_ids, positions, mask, cache, causal)).float()
