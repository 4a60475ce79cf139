"""A dispatcher standing by: 503 naming the active one, after auth; health tells the role."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from test_api_fake_service import TOKEN, FakeService

from corral.api import create_app

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Role:
    active: bool
    epoch: int | None = None
    active_url: str | None = None


def client(role: Role, service: FakeService | None = None) -> httpx.AsyncClient:
    app = create_app(service, TOKEN, role=role)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://corral.test", headers=AUTH)


async def test_a_standby_answers_503_naming_the_active_dispatcher() -> None:
    async with client(Role(False, 4, "http://10.0.0.1:7480")) as http:
        response = await http.get("/processes")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "Unavailable"
    assert "standing by" in error["message"]
    assert "http://10.0.0.1:7480 (epoch 4)" in error["message"]
    assert response.headers["Corral-Role"] == "standby"
    assert response.headers["Corral-Active"] == "http://10.0.0.1:7480"


async def test_a_standby_that_knows_no_active_dispatcher_says_one_is_coming() -> None:
    async with client(Role(False)) as http:
        response = await http.post("/definitions", json={})
    assert response.status_code == 503
    assert "no dispatcher is active" in response.json()["error"]["message"]
    assert "Corral-Active" not in response.headers


async def test_a_standby_tells_nothing_to_a_request_without_the_token() -> None:
    async with client(Role(False, 4, "http://10.0.0.1:7480")) as http:
        response = await http.get("/processes", headers={"Authorization": ""})
    assert response.status_code == 401
    assert "Corral-Active" not in response.headers


async def test_health_reports_the_role_and_epoch() -> None:
    role = Role(False, 4, "http://10.0.0.1:7480")
    async with client(role) as http:
        standby = (await http.get("/health", headers={})).json()
        role.active, role.epoch, role.active_url = True, 5, "http://corral.test"
        active = (await http.get("/health", headers={})).json()
    assert standby == {
        "status": "ok",
        "role": "standby",
        "epoch": 4,
        "active": "http://10.0.0.1:7480",
    }
    assert active == {"status": "ok", "role": "active", "epoch": 5, "active": "http://corral.test"}


async def test_a_dispatcher_that_becomes_active_serves_the_api() -> None:
    role = Role(False)
    app = create_app(None, TOKEN, role=role)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://corral.test", headers=AUTH
    ) as http:
        assert (await http.get("/processes")).status_code == 503
        app.state.service = FakeService()
        role.active = True
        response = await http.get("/processes")
    assert response.status_code == 200
    assert response.json() == []
