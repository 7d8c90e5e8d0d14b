"""The progress buffer between the engine and an SSE reader: ordered, bounded, finished for good."""

from __future__ import annotations

import asyncio

import numpy as np

from service.backends.base import PROGRESS_BUFFER, GenerationProgress, ProgressStream


async def drain(stream: ProgressStream) -> list[int]:
    return [event.steps_done async for event in stream]


def test_a_reader_that_stops_reading_costs_at_most_the_buffer_newest_kept() -> None:
    stream = ProgressStream()
    preview = np.zeros((28, 28, 1), np.uint8)
    for step in range(1, 4001):  # a K = 4000 request, every step with a preview, nobody reading
        stream.put(GenerationProgress(0, step, 4000, preview))
    assert len(stream) == PROGRESS_BUFFER and stream.dropped == 4000 - PROGRESS_BUFFER
    stream.finish()
    assert asyncio.run(drain(stream)) == list(range(4001 - PROGRESS_BUFFER, 4001))


def test_events_arrive_in_order_then_the_stream_stays_finished() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        stream = ProgressStream()
        reader = asyncio.create_task(drain(stream))
        for step in (1, 2, 3):
            stream.put(GenerationProgress(0, step, 3))
            await asyncio.sleep(0)
        stream.finish()
        stream.put(GenerationProgress(0, 4, 3))  # after the end: ignored
        return await reader, await drain(stream)

    first, again = asyncio.run(scenario())
    assert first == [1, 2, 3] and again == []


def test_a_timed_out_wait_leaves_the_stream_usable() -> None:
    async def scenario() -> int:
        stream = ProgressStream()
        try:
            async with asyncio.timeout(0.01):
                await stream.__anext__()
        except TimeoutError:
            pass
        stream.put(GenerationProgress(1, 5, 9))
        return (await stream.__anext__()).steps_done

    assert asyncio.run(scenario()) == 5
