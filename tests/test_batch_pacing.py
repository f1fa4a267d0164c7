"""How far listing runs ahead (animals10.batch.pacing), without Ray: the gate's rules on their own."""

from __future__ import annotations

import asyncio

from animals10.batch.pacing import ListingGate


async def admitted_within(gate: ListingGate, shard: str, seconds: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(gate.admit(shard), seconds)
        return True
    except TimeoutError:
        return False


def test_a_shard_waits_until_fewer_than_the_limit_are_unfinished():
    async def scenario():
        gate = ListingGate(limit=2)
        assert await admitted_within(gate, "a-000000") and await admitted_within(gate, "b-000000")
        waiting = asyncio.ensure_future(gate.admit("a-000001"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await gate.finish(["b-000000"])
        await asyncio.wait_for(waiting, 1)
        assert gate.open == {"a-000000", "a-000001"}

    asyncio.run(scenario())


def test_a_unit_listed_again_by_a_retried_task_passes_without_taking_room():
    async def scenario():
        gate = ListingGate(limit=2)
        for shard in ("a-000000", "a-000001"):
            assert await admitted_within(gate, shard)
        await gate.finish(["a-000000"])
        # The retry lists shard 0 (finished) and 1 (still open) again: both pass at once, and the room
        # that finishing shard 0 made is still there for the unit's next new shard.
        assert await admitted_within(gate, "a-000000") and await admitted_within(gate, "a-000001")
        assert await admitted_within(gate, "a-000002")
        assert not await admitted_within(gate, "a-000003")

    asyncio.run(scenario())


def test_finishing_a_shard_the_gate_never_admitted_changes_nothing():
    async def scenario():
        gate = ListingGate(limit=1)
        assert await admitted_within(gate, "a-000000")
        await gate.finish(["b-000007"])
        assert not await admitted_within(gate, "a-000001")

    asyncio.run(scenario())
