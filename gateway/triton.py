"""Triton gRPC client: one long-lived ``grpc.aio`` channel per process, a deadline on every call,
gRPC status codes mapped to the gateway's errors in one table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway import errors

T = TypeVar("T")

_ACCESS_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"  # noqa: S105 (a header name)

# gRPC status -> gateway error (DESIGN.md section 1, step 3).
_STATUS_ERRORS: dict[grpc.StatusCode, type[errors.GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.BackendRejected,
    grpc.StatusCode.NOT_FOUND: errors.BackendNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.BackendOverloaded,
    grpc.StatusCode.UNAVAILABLE: errors.BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.BackendTimeout,
}


def map_rpc_error(exc: grpc.aio.AioRpcError) -> errors.GatewayError:
    cls = _STATUS_ERRORS.get(exc.code(), errors.BackendError)
    if cls is errors.BackendUnavailable:
        return cls("the inference backend is unavailable; retry shortly")
    if cls is errors.BackendTimeout:
        return cls("the inference backend did not answer within the deadline")
    if cls is errors.BackendNotFound:
        return cls("model not found")
    return cls(f"inference backend: {exc.details() or exc.code().name}")


class TritonClient:
    """Narrow interface in front of Triton's KServe v2 gRPC service."""

    def __init__(self, target: str, *, timeout_s: float, access_token: str | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._restricted_md: tuple[tuple[str, str], ...] = (
            ((_ACCESS_TOKEN_HEADER, access_token),) if access_token else ()
        )

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: Any, **kw: Any) -> T:
        try:
            return await rpc(request, timeout=kw.pop("timeout", self.timeout_s), **kw)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc

    async def infer(
        self,
        request: service_pb2.ModelInferRequest,
        *,
        timeout_s: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> service_pb2.ModelInferResponse:
        result: service_pb2.ModelInferResponse = await self._call(
            self._stub.ModelInfer,
            request,
            timeout=timeout_s or self.timeout_s,
            metadata=metadata or None,
        )
        return result

    async def model_metadata(
        self, name: str, version: str = ""
    ) -> service_pb2.ModelMetadataResponse:
        result: service_pb2.ModelMetadataResponse = await self._call(
            self._stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=name, version=version)
        )
        return result

    async def model_ready(self, name: str, version: str = "") -> bool:
        result = await self._call(
            self._stub.ModelReady, service_pb2.ModelReadyRequest(name=name, version=version)
        )
        return bool(result.ready)

    async def server_ready(self, timeout_s: float = 2.0) -> bool:
        try:
            result = await self._call(
                self._stub.ServerReady, service_pb2.ServerReadyRequest(), timeout=timeout_s
            )
        except errors.GatewayError:
            return False
        return bool(result.ready)

    async def model_statistics(self, name: str = "", version: str = "") -> Any:
        """Cumulative per-model statistics (a restricted protocol under PyTriton)."""
        return await self._call(
            self._stub.ModelStatistics,
            service_pb2.ModelStatisticsRequest(name=name, version=version),
            metadata=self._restricted_md or None,
        )
