"""Run a real Triton Inference Server on the CPU via PyTriton, serving Python models.

Used by ``maas demo-model`` and by the test suite (with its own models). PyTriton's Python
backend stub links the system ``libpython3.11``; the interpreter's own ``LIBDIR`` must come first
on ``LD_LIBRARY_PATH`` or models fail to load.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def fix_library_path() -> None:
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


@dataclass(frozen=True)
class ModelBinding:
    """Arguments of ``Triton.bind`` for one model."""

    name: str
    infer_func: Callable[..., Any]
    inputs: Sequence[Any]
    outputs: Sequence[Any]
    config: Any


def serve(
    bindings: Sequence[ModelBinding],
    *,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    access_token: str | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Start Triton with ``bindings`` and block until SIGINT/SIGTERM."""
    fix_library_path()
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        log_verbose=0,
    )
    security = TritonSecurityConfig(access_token=access_token) if access_token else None
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    kwargs: dict[str, Any] = {"config": config}
    if security is not None:
        kwargs["security_config"] = security
    with Triton(**kwargs) as triton:
        for b in bindings:
            triton.bind(
                model_name=b.name,
                infer_func=b.infer_func,
                inputs=list(b.inputs),
                outputs=list(b.outputs),
                config=b.config,
                strict=False,
            )
        triton.run()
        if on_ready is not None:
            on_ready()
        print(f"READY grpc=127.0.0.1:{grpc_port}", flush=True)
        while not stop.wait(0.5):
            pass
    sys.stdout.flush()
