"""Merging the batches `@serve.batch` hands over while the model is busy into full model batches.

`@serve.batch` closes a batch after batch_wait_timeout_s and starts the next one while the model is
still busy, so under load several small batches wait for the model at once. They queue here, and the
model takes as many of them as fit in max_batch_size whenever it is free: batches fill from the
backlog under load, while a lone request waits only the timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable


class BatchMerger:
    """Runs `run_batch(items) -> results` (one result per item, in order) on merged batches of at most
    `max_batch_size()` items; a batch larger than that on its own runs alone."""

    def __init__(self, run_batch: Callable[[list], Awaitable[list]], max_batch_size: Callable[[], int]):
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._waiting: deque = deque()  # (items of one handed-over batch, future of their results)
        self._runner: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        """The results of `items`, once the model has run on them."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Runs the model on the oldest waiting batches until none is left."""
        while self._waiting:
            limit = self._max_batch_size()
            taken = [self._waiting.popleft()]
            while self._waiting and sum(len(items) for items, _ in taken) + len(self._waiting[0][0]) <= limit:
                taken.append(self._waiting.popleft())
            try:
                results = await self._run_batch([item for items, _ in taken for item in items])
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for items, future in taken:
                if not future.done():  # a request whose client went away is cancelled
                    future.set_result(results[start : start + len(items)])
                start += len(items)
