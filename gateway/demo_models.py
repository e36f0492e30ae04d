"""Demo models for ``maas demo-model`` (CPU, Python, served by a real Triton via PyTriton)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.pytriton_host import ModelBinding


def demo_bindings() -> list[ModelBinding]:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    @batch
    def add_sub(INPUT0: NDArray[Any], INPUT1: NDArray[Any]) -> dict[str, Any]:
        return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}

    @batch
    def text_length(TEXT: NDArray[Any]) -> dict[str, Any]:
        lengths = [
            [len(bytes(t).decode("utf-8", "replace"))] for t in TEXT.reshape(len(TEXT), -1)[:, 0]
        ]
        return {"LENGTH": np.asarray(lengths, dtype=np.int64)}

    batching = ModelConfig(
        max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=500)
    )
    return [
        ModelBinding(
            "add_sub",
            add_sub,
            [
                Tensor(name="INPUT0", dtype=np.float32, shape=(-1,)),
                Tensor(name="INPUT1", dtype=np.float32, shape=(-1,)),
            ],
            [
                Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,)),
                Tensor(name="OUTPUT1", dtype=np.float32, shape=(-1,)),
            ],
            batching,
        ),
        ModelBinding(
            "text_length",
            text_length,
            [Tensor(name="TEXT", dtype=np.bytes_, shape=(1,))],
            [Tensor(name="LENGTH", dtype=np.int64, shape=(1,))],
            batching,
        ),
    ]
