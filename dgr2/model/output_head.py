"""Logits over the output vocabulary only.

A completion (trace, answer, ``<eos>``) draws from a few hundred tokens, while the vocabulary also
holds one token per catalog item, brand and category (about 14k for Beauty). Projecting onto the
output rows of ``lm_head`` alone makes every decode step and every training step cheaper and keeps
prompt-only tokens out of the answer by construction. Logits live in *column* space (index into
``ids``); :meth:`OutputHead.token` maps columns back to token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgr2.model.tokenizer import Vocab
from dgr2.model.transformer import Transformer


class OutputHead:
    def __init__(self, model: Transformer, vocab: Vocab, differentiable: bool = False) -> None:
        dev = model.device
        self.model = model
        self.ids = torch.tensor(vocab.output_ids, dtype=torch.long, device=dev)  # [n_out]
        self.col_of = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=dev)
        self.col_of[self.ids] = torch.arange(self.ids.numel(), device=dev)
        self.slot_cols = self.cols(vocab.slot_ids)  # [MAX_SLOTS]: column of <c1>..<c100>
        self.differentiable = differentiable
        self._weight = None if differentiable else model.lm_head.weight.detach().index_select(0, self.ids)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` hidden states -> ``[..., n_out]`` fp32 logits."""
        w = self.model.lm_head.weight.index_select(0, self.ids) if self.differentiable else self._weight
        return F.linear(h, w.to(h.dtype)).float()

    def slot_mask(self, banned: torch.Tensor) -> torch.Tensor:
        """``[N, MAX_SLOTS]`` banned slots -> ``[N, n_out]`` banned columns (every other token allowed)."""
        mask = torch.zeros(banned.shape[0], self.ids.numel(), dtype=torch.bool, device=banned.device)
        mask[:, self.slot_cols] = banned
        return mask

    def col(self, token_id: int) -> int:
        return int(self.col_of[token_id])

    def cols(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        return self.col_of[torch.as_tensor(token_ids, device=self.col_of.device)]

    def token(self, cols: torch.Tensor) -> torch.Tensor:
        return self.ids[cols]
