"""Request validation: every malformed body is a 422 ``InvalidRequest`` naming the field.

Also the property the API promises: no body, however wrong, produces a 500.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api_fake_service import BASE_URL, TOKEN, FakeService, PortalTransport

from corral.api import create_app

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXECUTABLE = {"exec": "/bin/echo", "argv": ["hello"]}
DEFINITION = {"definition_id": "echo", "definition_type": "supd", "executable": EXECUTABLE}


async def post(path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(FakeService(), TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
        return await http.post(path, **kwargs)


async def invalid(path: str, **kwargs: Any) -> dict[str, Any]:
    response = await post(path, **kwargs)
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "InvalidRequest"
    return error


async def test_a_wrong_type_names_the_field_path_and_what_was_expected() -> None:
    body = {**DEFINITION, "executable": {"exec": "/bin/echo", "argv": [1]}}
    error = await invalid("/definitions", json=body)
    assert error["field"] == "executable.argv.0"
    assert error["message"] == "executable.argv.0: Input should be a valid string"


async def test_an_unknown_field_is_named() -> None:
    error = await invalid("/definitions", json={**DEFINITION, "colour": "blue"})
    assert error["field"] == "colour"
    assert error["message"] == "colour: unknown field (extra fields are not permitted)"


async def test_a_missing_field_is_named() -> None:
    body = {"definition_id": "echo", "executable": EXECUTABLE}
    error = await invalid("/definitions", json=body)
    assert (error["field"], error["message"]) == (
        "definition_type",
        "definition_type: field required",
    )


async def test_several_problems_are_all_reported_and_the_first_is_the_field() -> None:
    error = await invalid("/definitions", json={"definition_type": "rpm", "executable": {}})
    assert error["field"] == "definition_id"
    assert "definition_type: Input should be 'supd' or 'exec'" in error["message"]
    assert "executable.exec: field required" in error["message"]


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        ({"queueing_mode": "SOMETIMES"}, "queueing_mode", "'START_ONLY' or 'RESTART_ONLY'"),
        ({"restart_mode": "never"}, "restart_mode", "'ALWAYS' or 'ABNORMAL'"),
        ({"constraints": {"zone": {"a": 1}}}, "constraints.zone", "a list of them"),
        ({"subscribers": "http://one"}, "subscribers", "valid list"),
        ({"configuration": [1]}, "configuration", "valid dictionary"),
        ({"definition_id": 7}, "definition_id", "valid string"),
        ({"definition_id": ""}, "definition_id", "at least 1 character"),
    ],
)
async def test_schedule_fields_are_checked_for_shape(
    body: dict[str, Any], field: str, expected: str
) -> None:
    error = await invalid("/processes/p1/schedule", json=body)
    assert error["field"] == field
    assert expected in error["message"]


async def test_an_empty_exec_is_refused() -> None:
    body = {**DEFINITION, "executable": {"exec": ""}}
    error = await invalid("/definitions", json=body)
    assert error["field"] == "executable.exec"


async def test_a_body_that_is_not_json_says_so() -> None:
    headers = {"Content-Type": "application/json"}
    error = await invalid("/definitions", content=b"{not json", headers=headers)
    assert error["message"].startswith("the request body is not valid JSON: ")
    assert "field" not in error


async def test_a_body_sent_as_another_content_type_says_to_send_json() -> None:
    headers = {"Content-Type": "text/plain"}
    error = await invalid("/definitions", content=b'{"a": 1}', headers=headers)
    assert "not JSON" in error["message"]
    assert "application/json" in error["message"]


async def test_a_missing_body_says_so() -> None:
    error = await invalid("/definitions")
    assert error["message"] == "the request body is missing: send a JSON object"


async def test_a_body_that_is_not_an_object_says_so() -> None:
    error = await invalid("/processes", json=["upid", "definition_id"])
    assert error["message"].startswith("the request body must be a JSON object")


async def test_a_body_that_is_not_utf8_is_422() -> None:
    headers = {"Content-Type": "application/json"}
    error = await invalid("/processes", content=b'{"upid": "\xff\xfe"}', headers=headers)
    assert "could not be read" in error["message"] or "not valid JSON" in error["message"]


async def test_non_finite_numbers_in_a_body_are_refused() -> None:
    # Python's JSON parser accepts these extensions; the answer must still be well formed
    headers = {"Content-Type": "application/json"}
    body = b'{"definition_id": "echo", "configuration": {"a": Infinity, "b": NaN}}'
    transport = httpx.ASGITransport(app=create_app(FakeService(), TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
        await http.post("/definitions", json=DEFINITION)
        response = await http.post("/processes/p1/schedule", content=body, headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "configuration"
    assert "finite" in error["message"]


# -- the property --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = (
    "definition_id",
    "definition_type",
    "executable",
    "name",
    "description",
    "upid",
    "configuration",
    "subscribers",
    "constraints",
    "queueing_mode",
    "restart_mode",
    "execution_engine_id",
    "node_exclusive",
)
executables = st.fixed_dictionaries(
    {}, optional={"exec": json_values | st.text(), "argv": json_values, "env": json_values}
)
near_misses = st.fixed_dictionaries(
    {}, optional={name: json_values | executables | st.text() for name in FIELDS}
)
ROUTES = [
    ("POST", "/definitions"),
    ("PUT", "/definitions/echo"),
    ("POST", "/processes"),
    ("POST", "/processes/p1/schedule"),
    ("POST", "/processes/p1/restart"),
    ("POST", "/processes/p1/terminate"),
]


@pytest.mark.timeout(300)
def test_no_json_body_produces_a_500() -> None:
    with anyio.from_thread.start_blocking_portal() as portal:
        fake = FakeService()
        transport = PortalTransport(create_app(fake, TOKEN), portal)
        with httpx.Client(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
            http.post("/definitions", json=DEFINITION).raise_for_status()

            @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(route=st.sampled_from(ROUTES), body=json_values | near_misses)
            def check(route: tuple[str, str], body: Any) -> None:
                response = http.request(*route, json=body)
                assert response.status_code < 500, response.text
                assert response.status_code in (200, 404, 409, 422)

            @settings(max_examples=100, deadline=None)
            @given(route=st.sampled_from(ROUTES), body=st.binary(max_size=64))
            def check_bytes(route: tuple[str, str], body: bytes) -> None:
                headers = {"Content-Type": "application/json"}
                response = http.request(*route, content=body, headers=headers)
                assert response.status_code < 500, response.text

            check()
            check_bytes()


async def test_a_query_parameter_given_twice_is_refused_naming_it() -> None:
    transport = httpx.ASGITransport(app=create_app(FakeService(), TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
        response = await http.get("/events", params=[("upid", "a"), ("upid", "b")])
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "upid"
        assert "given more than once" in response.json()["error"]["message"]
        # a parameter that is a list may repeat
        waited = await http.get("/processes/p/wait", params=[("state", "A"), ("state", "B")])
        assert waited.status_code != 422 or waited.json()["error"]["field"] != "state"


async def test_the_repeatable_query_parameters_are_the_lists_of_the_schema() -> None:
    from corral.api.routes import REPEATABLE

    transport = httpx.ASGITransport(app=create_app(FakeService(), TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
        schema = (await http.get("/openapi.json")).json()
    lists = {
        parameter["name"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query" and "array" in str(parameter["schema"])
    }
    assert lists == REPEATABLE


async def test_a_definition_states_its_resources_through_the_api() -> None:
    service = FakeService()
    transport = httpx.ASGITransport(app=create_app(service, TOKEN))
    executable = {**EXECUTABLE, "resources": {"cpus": 1.5, "memory": 512}}
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as http:
        created = await http.post("/definitions", json={**DEFINITION, "executable": executable})
        assert created.status_code == 200, created.text
        assert service.definitions["echo"]["executable"]["resources"] == {
            "cpus": 1.5,
            "memory": 512,
        }
        wrong = {**EXECUTABLE, "resources": {"cpus": -1}}
        refused = await http.post("/definitions", json={**DEFINITION, "executable": wrong})
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "executable.resources.cpus"
