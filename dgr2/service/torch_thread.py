"""Where the service runs torch: one long-lived thread for every decode, plus short-lived side threads.

Why one thread. On CPU, torch's intra-op parallelism is OpenMP (libgomp), which keeps a team of
worker threads for each thread that ran a parallel region. When it manages more threads than there
are CPUs, its workers spin only ~100 times before sleeping between parallel regions (GCC libgomp
manual, GOMP_SPINCOUNT), so a denoising pass, made of many small parallel operators, pays a wake-up
for each: a diffusion decode on a thread other than the one that loaded the model is markedly slower
(measured in docs/design.md, "Service"). All decodes of both decoders therefore go through one thread: on a CPU two
concurrent decodes would only share the same cores anyway.

A reload loads and warms the new checkpoints in a side thread that ends with it (serving goes on
meanwhile, at the contended speed for those seconds), so its OpenMP team is gone once the swap is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def torch_thread() -> ThreadPoolExecutor:
    """The executor of every decode (both decoders' batches, start-up load and warm-up)."""
    return ThreadPoolExecutor(1, thread_name_prefix="dgr2-torch")


async def in_side_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a thread of its own that exits when it returns."""
    side = ThreadPoolExecutor(1, thread_name_prefix="dgr2-side")
    try:
        return await asyncio.get_running_loop().run_in_executor(side, fn, *args)
    finally:
        side.shutdown(wait=False)
