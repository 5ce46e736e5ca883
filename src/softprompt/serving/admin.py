"""Liveness, and loading/unloading adapters at run time with vLLM's routes and bodies (they need --api-key).

/v1/load_lora_adapter and /v1/unload_lora_adapter answer as vLLM does: 200 with a plain-text sentence, or an error
(400: missing field, name taken, adapter files that do not load; 404: no adapter at the path, or unloading an
unknown name). The older
/v1/load_adapter and /v1/unload_adapter stay as deprecated aliases that answer JSON.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from . import responses
from .schemas import (
    APIError,
    LoadAdapterRequest,
    LoadLoRAAdapterRequest,
    UnloadAdapterRequest,
    UnloadLoRAAdapterRequest,
    errors,
)
from .service import Service

router = APIRouter()


@router.get("/health", response_model=responses.Health)
async def health(request: Request):
    return {"status": "ok", "adapters": len(request.app.state.service.predictor.adapter_names)}


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=errors(400, 403, 404))
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request):
    """Load an adapter under `lora_name`; requests name it in `model`."""
    await request.app.state.service.load_adapter(body.lora_name, body.lora_path)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=errors(400, 403, 404))
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request):
    await request.app.state.service.unload_adapter(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


@router.post(
    "/v1/load_adapter", response_model=responses.AdapterLoaded, responses=errors(400, 403, 404), deprecated=True
)
async def load_adapter(body: LoadAdapterRequest, request: Request):
    """Deprecated: use /v1/load_lora_adapter (the same body; this one also takes adapter_name/adapter_path)."""
    service: Service = request.app.state.service
    service.require_admin()
    name, path = body.lora_name or body.adapter_name, body.lora_path or body.adapter_path
    if not name or not path:
        missing = "lora_name" if not name else "lora_path"
        raise APIError(400, "Give lora_name and lora_path (or adapter_name and adapter_path).", missing)
    await service.load_adapter(name, path)
    return {"status": "ok", "loaded": name}


@router.post(
    "/v1/unload_adapter", response_model=responses.AdapterUnloaded, responses=errors(400, 403, 404), deprecated=True
)
async def unload_adapter(body: UnloadAdapterRequest, request: Request):
    """Deprecated: use /v1/unload_lora_adapter."""
    service: Service = request.app.state.service
    service.require_admin()
    name = body.lora_name or body.adapter_name
    if not name:
        raise APIError(400, "Give lora_name (or adapter_name).", "lora_name")
    await service.unload_adapter(name)
    return {"status": "ok", "unloaded": name}
