"""Health, the debugging dump, nodes and engines."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from corral.api.routes import Service

router = APIRouter(tags=["system"])


@router.get("/health", summary="health (no token needed)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/dump", summary="dump")
async def dump(service: Service) -> dict[str, Any]:
    return service.dump()


@router.get("/nodes", summary="list_nodes")
async def list_nodes(service: Service) -> list[dict[str, Any]]:
    return service.list_nodes()


@router.get("/engines", summary="list_engines")
async def list_engines(service: Service) -> list[dict[str, Any]]:
    return service.list_engines()
