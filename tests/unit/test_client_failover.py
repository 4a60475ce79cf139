"""Clients given several dispatchers follow the active one, and never send a change twice."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from corral import AsyncClient, Client
from corral.errors import Unavailable

Behaviour = Callable[[httpx.Request], httpx.Response]
URLS = "http://a:1,http://b:2/, http://c:3"


def standby(request: httpx.Request) -> httpx.Response:
    body = {"error": {"type": "Unavailable", "message": "this corral dispatcher is standing by"}}
    return httpx.Response(503, json=body, headers={"Corral-Role": "standby"})


def active(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"host": request.url.host})


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def cut(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset", request=request)


class Dispatchers:
    """A transport routing each request to the behaviour of its host; logs who was asked."""

    def __init__(self, **hosts: Behaviour) -> None:
        self.hosts = hosts
        self.asked: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append((request.method, request.url.host))
        return self.hosts[request.url.host](request)


def client(world: Dispatchers, urls: str = URLS) -> Client:
    return Client(urls, "tok", transport=httpx.MockTransport(world))


def test_a_client_follows_the_active_dispatcher_past_dead_and_standing_by_ones() -> None:
    world = Dispatchers(a=unreachable, b=standby, c=active)
    with client(world) as corral:
        assert corral.describe_process("p") == {"host": "c"}
        assert corral.url == "http://c:3"
        world.asked.clear()
        assert corral.describe_process("p") == {"host": "c"}
    assert world.asked == [("GET", "c")], "the last active dispatcher was not asked first"


def test_after_a_takeover_the_client_moves_to_the_new_active_dispatcher() -> None:
    world = Dispatchers(a=active, b=standby, c=unreachable)
    with client(world) as corral:
        assert corral.health() == {"host": "a"}
        world.hosts.update(a=unreachable, b=active)
        assert corral.terminate_process("p") == {"host": "b"}
        assert corral.url == "http://b:2"


def test_with_no_active_dispatcher_the_error_names_each_ones_trouble() -> None:
    world = Dispatchers(a=unreachable, b=standby, c=unreachable)
    with client(world) as corral, pytest.raises(Unavailable) as caught:
        corral.list_nodes()
    message = caught.value.message
    assert message.startswith("no active corral dispatcher among 3: ")
    assert "http://a:1 (connection refused)" in message
    assert "http://b:2: this corral dispatcher is standing by" in message
    assert "http://c:3" in message


def test_a_change_that_may_have_arrived_is_not_sent_to_another_dispatcher() -> None:
    world = Dispatchers(a=cut, b=active, c=active)
    with client(world) as corral, pytest.raises(Unavailable, match=r"http://a:1 \(connection"):
        corral.terminate_process("p")
    assert world.asked == [("POST", "a")]


def test_a_read_is_asked_again_of_the_next_dispatcher_after_a_cut() -> None:
    world = Dispatchers(a=cut, b=active, c=active)
    with client(world) as corral:
        assert corral.describe_process("p") == {"host": "b"}


def test_a_single_standby_url_answers_with_the_standby_s_own_message() -> None:
    world = Dispatchers(b=standby)
    with client(world, "http://b:2") as corral, pytest.raises(Unavailable, match="standing by"):
        corral.list_nodes()


@pytest.mark.anyio
async def test_the_async_client_follows_the_active_dispatcher_too() -> None:
    world = Dispatchers(a=unreachable, b=standby, c=active)
    async with AsyncClient(URLS, "tok", transport=httpx.MockTransport(world)) as corral:
        assert await corral.describe_process("p") == {"host": "c"}
        assert corral.url == "http://c:3"
        world.hosts.update(c=cut)
        with pytest.raises(Unavailable, match=r"http://c:3 \(connection reset\)"):
            await corral.schedule_process("p", "d")
        assert [asked for asked in world.asked if asked[0] == "POST"] == [("POST", "c")]


@pytest.mark.anyio
async def test_the_event_stream_opens_on_the_active_dispatcher() -> None:
    def events(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text='data: {"upid": "p"}\n\n')

    world = Dispatchers(a=standby, b=events, c=unreachable)
    async with AsyncClient(URLS, "tok", transport=httpx.MockTransport(world)) as corral:
        assert [event async for event in corral.events()] == [{"upid": "p"}]
    with client(world) as corral:
        assert list(corral.events()) == [{"upid": "p"}]


def test_corral_url_may_list_several_dispatchers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_URL", "http://a:1/, http://b:2")
    world = Dispatchers(a=standby, b=active)
    with Client(token="tok", transport=httpx.MockTransport(world)) as corral:
        assert corral.url == "http://a:1"
        assert corral.health() == {"host": "b"}
