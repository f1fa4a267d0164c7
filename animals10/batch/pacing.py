"""How far listing may run ahead of classification (no Ray here; the job runs it as an async actor).

Ray Data holds an operator back only when its outputs fill a share of the object store, and a listed
shard (its paths) is a few tens of kB against the decoded shard's tens of MB: left alone, the listing
tasks walk a bucket of a million photos in the first minutes, on the CPUs that decode and classify,
and the driver tracks a thousand queued blocks. `ListingGate` holds each new shard back until fewer
than `limit` shards are listed and not yet finished, so the work ahead of the replicas stays a few
shards a CPU whatever the size of the input.

A unit is listed in order by one task at a time, so a shard numbered no higher than one its unit
already passed comes from a retried listing task listing the unit again: it passes at once (it is in
the pipeline or finished), and a retry never eats into the limit. The gate holds the open shards (at
most `limit`) and one number per unit.
"""

from __future__ import annotations

import asyncio

from animals10.batch.sources import shard_number


class ListingGate:
    """Admits shards (by id) while fewer than `limit` admitted ones are unfinished."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: set[str] = set()  # admitted, not yet finished
        self.highest: dict[str, int] = {}  # unit key -> the highest shard number admitted
        self._changed: asyncio.Condition | None = None  # made in the actor's event loop

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def admit(self, shard: str) -> None:
        """Returns once `shard` may go on into the pipeline."""
        unit, number = shard.rsplit("-", 1)[0], shard_number(shard)
        if number <= self.highest.get(unit, -1):
            return
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: len(self.open) < self.limit)
            self.highest[unit] = number
            self.open.add(shard)

    async def finish(self, shards: list[str]) -> None:
        """Records that these shards' parts are written (each reported once, by the driver)."""
        changed = self._condition()
        async with changed:
            self.open.difference_update(shards)
            changed.notify_all()
