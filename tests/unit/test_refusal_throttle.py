"""Key guessing slows down: refused keys per address, with a burst and a refill."""

from __future__ import annotations

import pytest

from gateway.auth import RefusalThrottle


def test_an_address_gets_its_allowance_then_waits() -> None:
    throttle = RefusalThrottle(per_minute=3)
    assert [throttle.refuse("10.0.0.7", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.refuse("10.0.0.7", 0.0) == pytest.approx(20.0)  # one refill: 60 s / 3
    assert throttle.refuse("10.0.0.8", 0.0) == 0.0, "another address is not held back"
    assert throttle.refuse("10.0.0.7", 20.0) == 0.0, "refilled"


def test_zero_means_no_limit_and_memory_stays_bounded() -> None:
    assert RefusalThrottle(per_minute=0).refuse("a", 0.0) == 0.0
    throttle = RefusalThrottle(per_minute=1, max_clients=2)
    for client in ("a", "b", "c"):
        throttle.refuse(client, 0.0)
    assert throttle.refuse("a", 0.0) == 0.0, "the oldest address was forgotten"
    assert throttle.refuse("c", 0.0) > 0.0


def test_an_ipv6_host_is_counted_by_its_64_and_ipv4_by_its_address() -> None:
    from gateway.auth import client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("203.0.113.7") == "203.0.113.7" != client_key("203.0.113.8")
    assert client_key("unknown") == "unknown"
    # IPv4 as a dual-stack proxy forwards it: each address its own, not one shared ::/64.
    assert (
        client_key("::ffff:198.51.100.66") == "198.51.100.66" != client_key("::ffff:198.51.100.7")
    )


async def test_a_throttled_address_cannot_tell_a_lucky_guess_while_its_users_keep_working() -> None:
    """Past its allowance an address gets 429 for a key it had not used before (a 200
    among the 429s would tell a guesser it had found one), while a key its clients were
    using goes on working."""
    import httpx

    from tests.support.gateway import DEMO_KEY, gateway_app

    app, _ = gateway_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:

        async def status(key: str) -> int:
            answer = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            return answer.status_code

        assert await status(DEMO_KEY) == 200  # a client of this address, in use
        for i in range(40):  # a guesser past its 30 refusals a minute
            await status(f"rk-guess-{i}")
        assert await status("rk-guess-again") == 429
        assert await status(DEMO_KEY) == 200, "the key in use here goes on working"
        relay = app.state.relay
        relay.refusals._used.clear()  # as if the guesser had just found DEMO_KEY
        assert await status(DEMO_KEY) == 429, "a found key looks like any wrong guess"
