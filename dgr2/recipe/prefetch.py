"""Build training batches in worker processes ahead of the step that uses them.

On a GPU the small re-ranker's step takes tens of milliseconds while encoding 64 prompts, traces
and exclusion masks in Python takes ~0.2 s, so the loop would wait on the CPU. ``Prefetcher``
runs ``make(step)`` for the coming steps in ``workers`` forked processes (a ``DataLoader`` over the
step range: worker ``i`` builds the steps ``i, i + workers, ...`` and batches come back in step
order). With ``workers=0`` it calls ``make`` inline, which is what a 2-core CPU run wants.

``make`` must depend on the step alone (every stage's batches are seeded by the step), so a
resumed or prefetched run sees exactly the batches of an inline one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class _Steps(IterableDataset):
    def __init__(self, make: Callable[[int], Any], start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        info = get_worker_info()
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + first, self.stop, stride):
            yield step, self.make(step)


class Prefetcher:
    """``get(step)`` returns ``make(step)``. The workers start at the first step asked for (a resumed
    run's), and steps must then be asked for in order up to ``stop``."""

    def __init__(self, make: Callable[[int], Any], stop: int, workers: int = 0) -> None:
        self.make, self.stop, self.workers = make, stop, workers
        self._it = None

    def get(self, step: int) -> Any:
        if self.workers == 0:
            return self.make(step)
        if self._it is None:
            # fork: the workers inherit ``make`` and its data without pickling; they never touch CUDA
            loader = DataLoader(_Steps(self.make, step, self.stop), batch_size=None, num_workers=self.workers,
                                prefetch_factor=4, multiprocessing_context="fork",
                                pin_memory=torch.cuda.is_available())
            self._it = iter(loader)
        got, batch = next(self._it)
        if got != step:
            raise RuntimeError(f"prefetched batch of step {got} where step {step} was asked for")
        return batch
