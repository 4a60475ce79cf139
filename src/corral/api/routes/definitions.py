"""``/definitions``: create, list, describe, update and remove process definitions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from corral.api import redact
from corral.api.responses import DefinitionOut, answers, json_body
from corral.api.routes import Actor, Caller, Service
from corral.api.schemas import DefinitionBody, DefinitionCreate
from corral.errors import InvalidRequest

router = APIRouter(prefix="/definitions", tags=["definitions"])


@router.post(
    "",
    summary="create_definition",
    response_model=None,
    responses=answers(DefinitionOut, 409, 422, 507),
)
async def create_definition(
    body: DefinitionCreate, service: Service, actor: Actor
) -> dict[str, Any]:
    return await service.create_definition(
        body.definition_id,
        body.definition_type,
        body.executable.as_doc(),
        body.name,
        body.description,
        actor=actor,
    )


@router.get(
    "", summary="list_definitions", response_model=None, responses=answers(list[DefinitionOut])
)
async def list_definitions(service: Service, caller: Caller) -> Response:
    return json_body(redact.definitions(caller, service.list_definitions()))


@router.get(
    "/{definition_id}",
    summary="describe_definition",
    response_model=None,
    responses=answers(DefinitionOut, 404, 422),
)
async def describe_definition(
    definition_id: str, service: Service, caller: Caller
) -> dict[str, Any]:
    return redact.definition(caller, service.describe_definition(definition_id))


@router.put(
    "/{definition_id}",
    summary="update_definition",
    response_model=None,
    responses=answers(DefinitionOut, 404, 422, 507),
)
async def update_definition(
    definition_id: str, body: DefinitionBody, service: Service, actor: Actor
) -> dict[str, Any]:
    # the body may repeat the id (a describe_definition result sent back as is), not change it
    if body.definition_id not in (None, definition_id):
        raise InvalidRequest(
            f"definition_id {body.definition_id!r} in the body differs from "
            f"{definition_id!r} in the path",
            field="definition_id",
        )
    return await service.update_definition(
        definition_id,
        body.definition_type,
        body.executable.as_doc(),
        body.name,
        body.description,
        actor=actor,
    )


@router.delete(
    "/{definition_id}",
    summary="remove_definition",
    status_code=204,
    response_class=Response,
    responses=answers(None, 404, 409, 422),
)
async def remove_definition(definition_id: str, service: Service, actor: Actor) -> Response:
    await service.remove_definition(definition_id, actor=actor)
    return Response(status_code=204)
