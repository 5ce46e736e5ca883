"""Liveness, and loading/unloading adapters at run time (vLLM's names; they need a server with --api-key)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..inference.engine import CallJob
from .schemas import APIError, LoadAdapterRequest
from .service import Service

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "adapters": len(request.app.state.service.predictor.adapter_names)}


@router.post("/v1/load_adapter")
async def load_adapter(body: LoadAdapterRequest, request: Request):
    service: Service = request.app.state.service
    service.require_admin()
    name, path = body.lora_name or body.adapter_name, body.lora_path or body.adapter_path
    if not name or not path:
        raise APIError(
            400,
            "Give lora_name and lora_path (or adapter_name and adapter_path).",
            "lora_name" if not name else "lora_path",
        )
    if name == service.base_name or name in service.predictor.adapter_names:
        raise APIError(
            400, f"An adapter named {name!r} is already loaded: unload it first, or pick another name.", "lora_name"
        )
    try:
        await service.run(CallJob(lambda: service.predictor.load_adapter(path, name)))
    except APIError as error:
        raise APIError(400, f"Could not load adapter {name!r} from {path!r}: {error.message}", "lora_path") from error
    return {"status": "ok", "loaded": name}


@router.post("/v1/unload_adapter")
async def unload_adapter(body: LoadAdapterRequest, request: Request):
    service: Service = request.app.state.service
    service.require_admin()
    name = body.lora_name or body.adapter_name
    if not name:
        raise APIError(400, "Give lora_name (or adapter_name).", "lora_name")
    service.adapter_for(name)  # 404 if unknown
    await service.run(CallJob(lambda: service.predictor.unload_adapter(name)))
    return {"status": "ok", "unloaded": name}
