"""KServe v2 inference and model endpoints (authenticated; unentitled models are 404).

``maas serve`` answers the two inference routes in ``gateway.fastpath`` before Litestar routes;
these handlers give them their OpenAPI description and serve in-process apps.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway import errors
from gateway.admission import admit_model
from gateway.app import services_of
from gateway.fastpath import HEADER_LENGTH, respond_infer
from gateway.openapi import API_KEY, InferOperation, ModelMetadata, ModelReady, error_responses, ok


async def _infer(request: Request[Any, Any, Any], model: str, version: str) -> Response[bytes]:
    result = await respond_infer(
        services_of(request),
        request.headers.get("authorization"),
        request.headers.get(HEADER_LENGTH),
        model,
        version,
        await request.body(),
    )
    if result.json_header_length is None:
        return Response(content=result.body, media_type="application/json", headers=result.headers)
    return Response(
        content=result.body,
        media_type="application/octet-stream",
        headers={
            **result.headers,
            "Inference-Header-Content-Length": str(result.json_header_length),
        },
    )


_INFER_ERRORS = error_responses(400, 401, 404, 413, 429, 502, 503, 504)
_MODEL_ERRORS = error_responses(400, 401, 404, 429, 502, 503, 504)


@post(
    "/v2/models/{model:str}/infer",
    status_code=200,
    summary="Run inference (KServe v2)",
    operation_class=InferOperation,
    security=API_KEY,
    responses=_INFER_ERRORS,
)
async def infer(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[bytes]:
    return await _infer(request, model, "")


@post(
    "/v2/models/{model:str}/versions/{version:str}/infer",
    status_code=200,
    summary="Run inference on one model version (KServe v2)",
    operation_class=InferOperation,
    security=API_KEY,
    responses=_INFER_ERRORS,
)
async def infer_version(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> Response[bytes]:
    return await _infer(request, model, version)


async def _metadata(request: Request[Any, Any, Any], model: str, version: str) -> dict[str, Any]:
    svc = services_of(request)
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    admit_model(principal, model)
    meta = await svc.triton.model_metadata(model, version)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


@get(
    "/v2/models/{model:str}",
    summary="Model metadata",
    security=API_KEY,
    responses={**ok(ModelMetadata), **_MODEL_ERRORS},
)
async def model_metadata(request: Request[Any, Any, Any], model: FromPath[str]) -> dict[str, Any]:
    return await _metadata(request, model, "")


@get(
    "/v2/models/{model:str}/versions/{version:str}",
    summary="Model version metadata",
    security=API_KEY,
    responses={**ok(ModelMetadata), **_MODEL_ERRORS},
)
async def model_version_metadata(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> dict[str, Any]:
    return await _metadata(request, model, version)


async def _ready(request: Request[Any, Any, Any], model: str, version: str) -> Response[Any]:
    svc = services_of(request)
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    admit_model(principal, model)
    if await svc.triton.model_ready(model, version):
        return Response(content={"name": model, "ready": True}, status_code=200)
    # Triton answers "not ready" for versions it does not have: those are 404 (metadata raises).
    await svc.triton.model_metadata(model, version)
    raise errors.BackendUnavailable(f"model {model!r} is not ready")


@get(
    "/v2/models/{model:str}/ready",
    summary="Is the model ready",
    security=API_KEY,
    responses={**ok(ModelReady), **_MODEL_ERRORS},
)
async def model_ready(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[Any]:
    return await _ready(request, model, "")


@get(
    "/v2/models/{model:str}/versions/{version:str}/ready",
    summary="Is the model version ready",
    security=API_KEY,
    responses={**ok(ModelReady), **_MODEL_ERRORS},
)
async def model_version_ready(
    request: Request[Any, Any, Any], model: FromPath[str], version: FromPath[str]
) -> Response[Any]:
    return await _ready(request, model, version)


handlers = [
    infer,
    infer_version,
    model_metadata,
    model_version_metadata,
    model_ready,
    model_version_ready,
]
