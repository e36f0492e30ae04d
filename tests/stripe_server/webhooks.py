"""Delivers events to the configured webhook URL, signed like Stripe, one at a time.

Delivery happens on a background thread, in the order events were created, so an API
call never waits for the receiver.  A failed delivery is logged and recorded; it is
not retried (Stripe retries for days, which no test wants to wait for).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .signing import sign_payload

Obj = dict[str, Any]
ResultCallback = Callable[[Obj, Obj], None]

# Ignore any HTTP(S)_PROXY in the environment: receivers are local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class WebhookDispatcher:
    def __init__(self, secret: str, on_result: ResultCallback, timeout: float = 5.0) -> None:
        self.secret = secret
        self.timeout = timeout
        self._on_result = on_result
        self._queue: queue.Queue[tuple[Obj, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stripe-webhooks", daemon=True)
        self._thread.start()

    def enqueue(self, event: Obj, url: str) -> None:
        self._queue.put((event, url))

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout + 1)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._deliver(*job)
            finally:
                self._queue.task_done()

    def _deliver(self, event: Obj, url: str) -> None:
        payload = json.dumps(event, indent=2).encode("utf-8")
        timestamp = int(time.time())
        request = urllib.request.Request(  # noqa: S310 - URL is set by the test
            url,
            data=payload,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign_payload(payload, self.secret, timestamp),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )
        result: Obj = {
            "event": event["id"],
            "type": event["type"],
            "url": url,
            "status": None,
            "error": None,
            "attempted_at": timestamp,
        }
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                result["status"] = response.status
        except urllib.error.HTTPError as exc:
            result["status"] = exc.code
            result["error"] = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        if result["error"] is not None:
            print(
                f"stripe-test-server: webhook {event['type']} {event['id']} to {url} "
                f"failed: {result['error']}",
                file=sys.stderr,
                flush=True,
            )
        self._on_result(event, result)
