"""Test models served by a real Triton via PyTriton: ``python -m tests.triton_models``."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.pytriton_host import ModelBinding, serve

# KServe datatype -> numpy dtype of the test tensors
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.bytes_,
}


def bindings() -> list[ModelBinding]:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.proxy.types import Request

    def all_types(requests: list[Request]) -> list[dict[str, NDArray[Any]]]:
        # Identity per datatype: OUT_<DT> = IN_<DT>, for the inputs the request carries.
        return [
            {f"OUT_{name[3:]}": arr for name, arr in r.data.items() if name.startswith("IN_")}
            for r in requests
        ]

    def echo_params(requests: list[Request]) -> list[dict[str, NDArray[Any]]]:
        out = []
        for r in requests:
            text = json.dumps(r.parameters or {}, sort_keys=True).encode()
            out.append({"PARAMS": np.array([text], dtype=np.bytes_), "X": r["X"]})
        return out

    @batch
    def double(INPUT0: NDArray[Any]) -> dict[str, NDArray[Any]]:
        return {"OUTPUT0": INPUT0 * 2}

    @batch
    def slow(SECONDS: NDArray[Any]) -> dict[str, NDArray[Any]]:
        time.sleep(float(SECONDS.max()))
        return {"DONE": SECONDS}

    @batch
    def fail(X: NDArray[Any]) -> dict[str, NDArray[Any]]:
        raise RuntimeError("this model always fails")

    no_batch = ModelConfig(batching=False)
    batching = ModelConfig(
        max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=1000)
    )
    return [
        ModelBinding(
            "all_types",
            all_types,
            [
                Tensor(name=f"IN_{dt}", dtype=npt, shape=(-1,), optional=True)
                for dt, npt in DATATYPES.items()
            ],
            [Tensor(name=f"OUT_{dt}", dtype=npt, shape=(-1,)) for dt, npt in DATATYPES.items()],
            no_batch,
        ),
        ModelBinding(
            "echo_params",
            echo_params,
            [Tensor(name="X", dtype=np.float32, shape=(-1,))],
            [
                Tensor(name="PARAMS", dtype=np.bytes_, shape=(1,)),
                Tensor(name="X", dtype=np.float32, shape=(-1,)),
            ],
            no_batch,
        ),
        ModelBinding(
            "double",
            double,
            [Tensor(name="INPUT0", dtype=np.float32, shape=(-1,))],
            [Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,))],
            batching,
        ),
        ModelBinding(
            "slow",
            slow,
            [Tensor(name="SECONDS", dtype=np.float32, shape=(1,))],
            [Tensor(name="DONE", dtype=np.float32, shape=(1,))],
            ModelConfig(max_batch_size=8),
        ),
        ModelBinding(
            "fail",
            fail,
            [Tensor(name="X", dtype=np.float32, shape=(1,))],
            [Tensor(name="Y", dtype=np.float32, shape=(1,))],
            ModelConfig(max_batch_size=8),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--access-token", default=None)
    args = parser.parse_args()
    serve(
        bindings(),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        access_token=args.access_token,
    )


if __name__ == "__main__":
    main()
