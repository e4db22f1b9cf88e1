"""Delivery's pacer alone: Microsoft's sending limits kept on a clock the test moves.

Most tests drive the pacer with a manual clock; the last two run it on compressed real time
and assert only what a slow machine cannot change: arrival order, and waits that happened.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from relay365.config import ConnectionSettings
from relay365.delivery import Pacer, sending_mailbox


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(**changes: Any) -> ConnectionSettings:
    values: dict[str, Any] = {"name": "contoso", "tenant": "contoso.onmicrosoft.com", "client_id": "app",
                              "account": "admin@contoso.com",
                              "senders": ["admin@contoso.com", "info@contoso.com"],
                              "messages_per_minute": 3, "recipients_per_day": 10, "concurrent_requests": 2}
    values.update(changes)
    return ConnectionSettings(**values)


async def through(pacer: Pacer, conn: ConnectionSettings, sender: str, n: int = 1) -> None:
    async with pacer.slot(conn, sender, n):
        pass


def test_the_minute_window_counts_message_starts() -> None:
    clock, conn = ManualClock(), limits()
    pacer = Pacer(clock)

    async def main() -> None:
        for _ in range(3):
            await through(pacer, conn, "info@contoso.com")
        assert pacer.wait_time(conn, "info@contoso.com", 1) == 60
        clock.now += 59.5
        assert pacer.wait_time(conn, "info@contoso.com", 1) == pytest.approx(0.5)
        clock.now += 0.5
        assert pacer.wait_time(conn, "info@contoso.com", 1) == 0

    asyncio.run(main())


def test_a_message_counts_at_its_end_because_microsoft_counted_it_in_between() -> None:
    clock, conn = ManualClock(), limits(messages_per_minute=1)
    pacer = Pacer(clock)

    async def main() -> None:
        async with pacer.slot(conn, "info@contoso.com", 1):
            clock.now += 10  # a slow send
        assert pacer.wait_time(conn, "info@contoso.com", 1) == 60  # from its end, not its start

    asyncio.run(main())


def test_a_delegated_connection_is_one_mailbox_and_app_only_senders_are_each_their_own() -> None:
    delegated = limits()
    app_only = limits(name="contoso-app", mode="app-only", account=None)
    assert sending_mailbox(delegated, "info@contoso.com") == sending_mailbox(delegated, "admin@contoso.com")
    assert sending_mailbox(app_only, "info@contoso.com") == "info@contoso.com"
    clock = ManualClock()
    pacer = Pacer(clock)

    async def main() -> None:
        for sender in ("admin@contoso.com", "info@contoso.com", "info@contoso.com"):
            await through(pacer, delegated, sender)
            await through(pacer, app_only, sender)
        assert pacer.wait_time(delegated, "admin@contoso.com", 1) == 60  # /me: all three counted
        assert pacer.wait_time(app_only, "admin@contoso.com", 1) == 0  # one of three
        assert pacer.wait_time(app_only, "info@contoso.com", 1) == 0  # two of three

    asyncio.run(main())


def test_concurrency_is_held_until_a_send_ends() -> None:
    conn = limits(messages_per_minute=100)
    pacer = Pacer(ManualClock())

    async def main() -> None:
        release = asyncio.Event()
        entered: list[int] = []

        async def send(n: int) -> None:
            async with pacer.slot(conn, "info@contoso.com", 1):
                entered.append(n)
                await release.wait()

        tasks = [asyncio.create_task(send(n)) for n in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert entered == [0, 1]
        assert math.isinf(pacer.wait_time(conn, "info@contoso.com", 1))
        release.set()
        await asyncio.gather(*tasks)
        assert entered == [0, 1, 2]

    asyncio.run(main())


def test_the_day_window_counts_recipients_and_a_huge_message_waits_for_an_empty_day() -> None:
    clock, conn = ManualClock(), limits(messages_per_minute=100)
    pacer = Pacer(clock)

    async def main() -> None:
        await through(pacer, conn, "info@contoso.com", 6)
        clock.now += 100
        await through(pacer, conn, "info@contoso.com", 3)
        assert pacer.wait_time(conn, "info@contoso.com", 1) == 0
        assert pacer.wait_time(conn, "info@contoso.com", 2) == 86400 - 100  # the 6 must leave
        assert pacer.wait_time(conn, "info@contoso.com", 7) == 86400 - 100
        assert pacer.wait_time(conn, "info@contoso.com", 8) == 86400  # the 3 must leave too
        assert pacer.wait_time(conn, "info@contoso.com", 25) == 86400  # more than a day allows
        clock.now += 86400
        assert pacer.wait_time(conn, "info@contoso.com", 25) == 0
        await through(pacer, conn, "info@contoso.com", 25)  # alone in its window, it may go

    asyncio.run(main())


def test_a_cool_down_pauses_the_mailbox_in_real_seconds() -> None:
    clock, conn = ManualClock(), limits()
    pacer = Pacer(clock, time_scale=60)
    pacer.cool_down(conn, "info@contoso.com", 2)  # Retry-After: 2 (real seconds)
    assert pacer.wait_time(conn, "admin@contoso.com", 1) == 120  # the same mailbox, clock seconds
    clock.now += 120
    assert pacer.wait_time(conn, "admin@contoso.com", 1) == 0


def test_waiters_start_in_arrival_order_and_a_big_message_is_not_starved() -> None:
    conn = limits(messages_per_minute=1000, recipients_per_day=10)
    pacer = Pacer(time_scale=86400 * 20)  # a day lasts 50 ms

    async def main() -> None:
        order: list[str] = []

        async def send(name: str, n: int) -> None:
            async with pacer.slot(conn, "info@contoso.com", n):
                order.append(name)

        await send("first", 8)
        big = asyncio.create_task(send("big", 5))  # waits for the 8 to leave the day
        await asyncio.sleep(0)
        small = asyncio.create_task(send("small", 1))  # would fit now, but comes after
        await asyncio.gather(big, small)
        assert order == ["first", "big", "small"]

    asyncio.run(main())


def test_compressed_time_paces_real_sends() -> None:
    conn = limits(messages_per_minute=5, concurrent_requests=4, recipients_per_day=10_000)
    pacer = Pacer(time_scale=600)  # a minute lasts 0.1 s

    async def main() -> list[float]:
        starts: list[float] = []

        async def send() -> None:
            async with pacer.slot(conn, "info@contoso.com", 1):
                starts.append(time.monotonic())
                await asyncio.sleep(0.001)  # a send that takes time

        await asyncio.gather(*(send() for _ in range(15)))
        return starts

    starts = sorted(asyncio.run(main()))
    assert starts[-1] - starts[0] >= 0.2  # three windows' worth
    for i in range(len(starts) - 5):
        assert starts[i + 5] - starts[i] >= 0.1 - 0.005  # never six in any window
