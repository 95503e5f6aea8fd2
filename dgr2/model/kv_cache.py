"""Preallocated KV cache with one committed length per sequence.

Shape rule: ``k[layer]`` and ``v[layer]`` are ``[batch, capacity, n_kv_heads, head_dim]``; sequence
``b`` has ``lens[b]`` committed entries at ``[0, lens[b])``. A forward pass writes its block of
``S`` keys/values at ``[lens[b], lens[b] + S)`` and attends to ``[0, lens[b] + S)``; only
:meth:`commit` moves ``lens``. Entries at or past ``lens[b]`` are therefore scratch: a denoising
step may overwrite them freely, and attention never reads them unless the current block wrote them
in this very pass (that is what makes a stale entry harmless, and a test checks it).

Storage is head-major: each tensor is a ``[batch, n_kv_heads, capacity, head_dim]`` buffer seen
through a transpose, so one (sequence, head)'s keys are one contiguous run in time. A decode step
reads the whole committed prefix for one new query per sequence; with the token-major layout the
CPU attention gathered that prefix with a stride of ``n_kv_heads * head_dim``, and head-major
reads it straight: the same values, so the same decode, in less attention time on CPU
(measured in ``docs/design.md``). The Triton
kernel takes strides and reads either layout.
"""

from __future__ import annotations

import torch

from dgr2.model.config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, capacity: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        storage = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.k, self.v = ([_head_major(torch.zeros(storage, device=device, dtype=dtype))
                           for _ in range(config.num_hidden_layers)] for _ in range(2))
        self.lens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.capacity = capacity
        self._max_len = 0  # host-side upper bound of lens, for capacity checks without a device sync

    @property
    def batch_size(self) -> int:
        return self.lens.shape[0]

    def block_positions(self, block_len: int) -> torch.Tensor:
        """Absolute positions ``[B, S]`` of a block placed right after each sequence's committed prefix."""
        if self._max_len + block_len > self.capacity:
            raise RuntimeError(f"KV cache full: {self._max_len} + {block_len} > capacity {self.capacity}")
        return self.lens[:, None] + torch.arange(block_len, device=self.lens.device)[None, :]

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # positions: [B, S]; k, v: [B, S, Hkv, D]
        rows = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(positions)
        self.k[layer][rows, positions] = k.to(self.k[layer].dtype)
        self.v[layer][rows, positions] = v.to(self.v[layer].dtype)

    def commit(self, n: torch.Tensor | int) -> None:
        """Append ``n[b]`` entries (written by the last pass) to sequence ``b``'s committed prefix."""
        if isinstance(n, int):  # every sequence advances alike: the bound moves without a device sync
            self.lens += n
            self._max_len += n
        else:
            self.lens += n.to(self.lens)
            self._max_len = int(self.lens.max())

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only (and reorder to) the sequences in ``index``: used to drop finished requests."""
        # on the head-major buffers: index_select of the view would return a token-major copy
        self.k, self.v = ([_head_major(_head_major(t).index_select(0, index)) for t in ts] for ts in (self.k, self.v))
        self.lens = self.lens.index_select(0, index)
        self._max_len = int(self.lens.max()) if index.numel() else 0


def _head_major(t: torch.Tensor) -> torch.Tensor:
    """Swap dims 1 and 2 (a view): the logical ``[B, T, Hkv, D]`` of a ``[B, Hkv, T, D]`` buffer, and back."""
    return t.transpose(1, 2)
