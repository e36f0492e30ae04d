"""Fixtures of the fault-injection suite: result rows (printed and collected for the README)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

HEADER = (
    "| injected fault | requests sent | 200 | 503/504 | no response or other | lost "
    "| double-counted |"
)


@pytest.fixture(scope="session")
def result_row(artifacts: Path) -> Callable[..., None]:
    path = artifacts / "reliability.md"
    path.write_text(HEADER + "\n|---|---:|---:|---:|---:|---:|---:|\n")

    def row(
        fault: str, sent: int, ok: int, unavailable: int, other: int, lost: int, double: int
    ) -> None:
        line = f"| {fault} | {sent} | {ok} | {unavailable} | {other} | {lost} | {double} |"
        print(f"\nRELIABILITY {line}")
        with path.open("a") as f:
            f.write(line + "\n")

    return row
