"""HTTP front of the Stripe test server: auth, routing, idempotency, fault injection.

API (``/v1``, ``Authorization: Bearer sk_test_...``)::

    POST /v1/customers                  GET  /v1/customers[?email=&limit=]
    GET  /v1/customers/{id}             POST /v1/customers/{id}
    GET  /v1/customers/search?query=metadata['tenant_id']:'X'
    POST /v1/invoices                   GET  /v1/invoices[?customer=&status=&limit=]
    GET  /v1/invoices/{id}              GET  /v1/invoices/{id}/lines
    POST /v1/invoices/{id}/finalize     POST /v1/invoices/{id}/pay
    POST /v1/invoices/{id}/void
    POST /v1/invoiceitems               GET  /v1/invoiceitems[?invoice=&customer=&pending=]
    GET  /v1/invoiceitems/{id}

Test controls (``/_test``, no auth)::

    POST /_test/fail/clear  drop every pending fault
    POST /_test/fail      {"count": N, "mode": "500"|"drop"|"drop_after",
                           "path_prefix": "/v1/...", "method": "POST"}
    GET  /_test/state     every object, the request log, webhook deliveries
    POST /_test/reset     forget all objects, keys, faults and logs (config stays)
    POST /_test/config    {"webhook_url": ..., "search_delay": s, "idempotency_ttl": s}
    POST /_test/invoices/{id}/payment_failed
    GET  /_test/hosted/{id}[/pdf]        what hosted_invoice_url / invoice_pdf point at

Fault modes: ``500`` answers an ``api_error`` without executing; ``drop`` closes the
connection without executing; ``drop_after`` executes (and stores the idempotent
result) and then closes the connection, losing the response.  Injected failures are
never stored under the request's ``Idempotency-Key``: they model failures before the
endpoint began executing, which Stripe documents as safe to retry with the same key.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError
from .forms import parse_params
from .params import Params
from .store import DEFAULT_API_VERSION, Obj, RequestContext, Store, new_id
from .webhooks import WebhookDispatcher

IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60
MAX_IDEMPOTENCY_KEY_LENGTH = 255
FAULT_MODES = ("500", "drop", "drop_after")

# What each response kind lets clients ``expand``.
EXPANDABLE: dict[str, dict[str, str]] = {
    "customer": {},
    "invoice": {"customer": "customer"},
    "invoiceitem": {"customer": "customer", "invoice": "invoice"},
    "line_item": {},
}

Handler = Callable[["StripeTestServer", str | None, Obj, RequestContext], Obj]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: str
    is_list: bool
    handler: Handler


def _route(method: str, path: str, kind: str, handler: Handler, *, is_list: bool = False) -> Route:
    regex = "^" + path.replace("{id}", "(?P<id>[A-Za-z0-9_]+)") + "$"
    return Route(method, re.compile(regex), kind, is_list, handler)


def _need_id(object_id: str | None) -> str:
    assert object_id is not None
    return object_id


@dataclass
class Fault:
    count: int
    mode: str
    path_prefix: str = "/v1/"
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.method in (None, method)


@dataclass(frozen=True)
class StoredResponse:
    method: str
    path: str
    params: Obj
    status: int
    body: bytes
    request_id: str
    stored_at: float


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    drop: bool = False


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode("utf-8")


def _error_reply(error: ApiError, headers: dict[str, str] | None = None) -> Reply:
    return Reply(error.status, _json(error.body()), dict(headers or {}))


class StripeTestServer:
    """The server; ``serve_forever`` in the foreground or ``start()`` on a thread."""

    def __init__(
        self,
        *,
        webhook_secret: str,
        webhook_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_version: str = DEFAULT_API_VERSION,
        log_requests: bool = True,
    ) -> None:
        self.store = Store(api_version=api_version)
        self.store.webhook_url = webhook_url
        self.idempotency_ttl: float = IDEMPOTENCY_TTL_SECONDS
        self.log_requests = log_requests
        self.faults: list[Fault] = []
        self.responses: dict[str, StoredResponse] = {}
        self.request_log: list[Obj] = []
        self.deliveries: list[Obj] = []
        self.webhooks = WebhookDispatcher(webhook_secret, self._delivery_result)
        self.store.event_sink = self.webhooks.enqueue
        self.httpd = _HTTPServer((host, port), _RequestHandler, self)
        self.store.base_url = self.base_url
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def start(self) -> StripeTestServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="stripe-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.webhooks.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StripeTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reads that need expansion or plain lookups -----------------------------------

    def get_customer(self, object_id: str | None, raw: Obj) -> Obj:
        Params(raw, ())
        return copy.deepcopy(self.store.customer(_need_id(object_id)))

    def get_invoice(self, object_id: str | None, raw: Obj) -> Obj:
        Params(raw, ())
        return self.store.render_invoice(self.store.invoice(_need_id(object_id)))

    def get_invoiceitem(self, object_id: str | None, raw: Obj) -> Obj:
        Params(raw, ())
        return self.store.render_invoiceitem(self.store.invoiceitem(_need_id(object_id)))

    # -- request processing ----------------------------------------------------------

    def _delivery_result(self, event: Obj, result: Obj) -> None:
        with self.store.lock:
            self.deliveries.append(result)
            stored = self.store.events.get(event["id"])
            if stored is not None and result["error"] is None:
                stored["pending_webhooks"] = max(0, stored["pending_webhooks"] - 1)

    def take_fault(self, method: str, path: str) -> str | None:
        with self.store.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    mode = fault.mode
                    self.faults = [f for f in self.faults if f.count > 0]
                    return mode
        return None

    def _log(self, entry: Obj) -> None:
        with self.store.lock:
            self.request_log.append(entry)
        if self.log_requests:
            print(
                f"stripe-test-server: {entry['method']} {entry['path']} -> "
                f"{entry['status']} ({entry['outcome']})",
                file=sys.stderr,
                flush=True,
            )

    def handle_api(self, method: str, path: str, query: str, body: bytes, headers: Any) -> Reply:
        request_id = new_id("req", 14)
        base_headers = {
            "Request-Id": request_id,
            "Stripe-Version": headers.get("Stripe-Version") or self.store.api_version,
        }
        key = headers.get("Idempotency-Key") if method == "POST" else None
        if key is not None:
            base_headers["Idempotency-Key"] = key
        log: Obj = {
            "method": method,
            "path": path,
            "idempotency_key": key,
            "request_id": request_id,
            "status": None,
            "outcome": None,
            "at": time.time(),
        }

        fault = self.take_fault(method, path)
        if fault == "500":
            log.update(status=500, outcome="injected_500")
            self._log(log)
            return _error_reply(
                ApiError.server("An error occurred with our connection to Stripe. (injected)"),
                base_headers,
            )
        if fault == "drop":
            log.update(outcome="dropped_before_execution")
            self._log(log)
            return Reply(0, b"", {}, drop=True)

        reply = self._execute(method, path, query, body, headers, key, base_headers, log)
        if fault == "drop_after":
            reply.drop = True
            log["outcome"] = f"{log['outcome']}+dropped_response"
        self._log(log)
        return reply

    def _authenticate(self, headers: Any) -> ApiError | None:
        header = headers.get("Authorization") or ""
        api_key = ""
        if header.startswith("Bearer "):
            api_key = header[7:].strip()
        elif header.startswith("Basic "):
            try:
                api_key = base64.b64decode(header[6:]).decode("utf-8").split(":", 1)[0]
            except ValueError:
                api_key = ""
        if not api_key:
            return ApiError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                saved=False,
            )
        if not re.fullmatch(r"(sk|rk)_test_[A-Za-z0-9_]+", api_key):
            shown = api_key[:8] + "*" * max(0, len(api_key) - 12) + api_key[-4:]
            return ApiError(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {shown} (this test server accepts sk_test_ keys)",
                code="api_key_invalid" if api_key.startswith(("sk_", "rk_")) else None,
                saved=False,
            )
        return None

    def _execute(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        headers: Any,
        key: str | None,
        base_headers: dict[str, str],
        log: Obj,
    ) -> Reply:
        auth_error = self._authenticate(headers)
        if auth_error is not None:
            log.update(status=401, outcome="unauthenticated")
            reply = _error_reply(auth_error, base_headers)
            reply.headers["WWW-Authenticate"] = 'Bearer realm="Stripe"'
            return reply

        route, object_id = None, None
        for candidate in ROUTES:
            match = candidate.pattern.match(path)
            if match and candidate.method == method:
                route, object_id = candidate, match.groupdict().get("id")
                break
        if route is None:
            log.update(status=404, outcome="unrecognized_url")
            return _error_reply(
                ApiError(
                    404,
                    "invalid_request_error",
                    f"Unrecognized request URL ({method}: {path}). This Stripe test server "
                    "implements only the endpoints listed in tests/stripe_server/server.py.",
                    saved=False,
                ),
                base_headers,
            )

        try:
            if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
                raise ApiError.invalid(
                    f"Idempotency keys may be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
                    saved=False,
                )
            text = query if method == "GET" else body.decode("utf-8")
            params = parse_params(text)
            if method == "POST" and query:
                params = {**parse_params(query), **params}
        except (ApiError, UnicodeDecodeError) as exc:
            error = exc if isinstance(exc, ApiError) else ApiError.invalid("Invalid UTF-8 body")
            log.update(status=error.status, outcome="rejected")
            return _error_reply(error, base_headers)

        ctx = RequestContext(request_id=base_headers["Request-Id"], idempotency_key=key)
        with self.store.lock:
            if key is not None:
                replay = self._replay(key, method, path, params, base_headers, log)
                if replay is not None:
                    return replay
            try:
                expand = self._check_expand(route, params)
                result = route.handler(self, object_id, params, ctx)
                self._expand(result, route, expand)
                status, payload = 200, _json(result)
                saved = True
                log["outcome"] = "executed"
            except ApiError as error:
                status, payload, saved = error.status, _json(error.body()), error.saved
                log["outcome"] = "executed_error" if saved else "rejected"
            except Exception as exc:  # a bug here: answer like Stripe's 500
                print(f"stripe-test-server: internal error: {exc!r}", file=sys.stderr)
                internal = ApiError.server(f"Internal error in the Stripe test server: {exc!r}")
                status, payload, saved = 500, _json(internal.body()), True
                log["outcome"] = "internal_error"
            if key is not None and saved:
                self.responses[key] = StoredResponse(
                    method, path, params, status, payload, ctx.request_id or "", time.time()
                )
        log["status"] = status
        return Reply(status, payload, base_headers)

    def _replay(
        self,
        key: str,
        method: str,
        path: str,
        params: Obj,
        base_headers: dict[str, str],
        log: Obj,
    ) -> Reply | None:
        stored = self.responses.get(key)
        if stored is not None and time.time() - stored.stored_at > self.idempotency_ttl:
            del self.responses[key]
            stored = None
        if stored is None:
            return None
        if (stored.method, stored.path) != (method, path):
            error = ApiError.idempotency(
                "Keys for idempotent requests can only be used for the same endpoint they "
                f"were first used for ('{stored.method} {stored.path}' vs '{method} {path}'). "
                f"Try using a key other than '{key}' if you meant to execute a different "
                "request."
            )
        elif stored.params != params:
            error = ApiError.idempotency(
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request."
            )
        else:
            log.update(status=stored.status, outcome="replayed")
            headers = dict(base_headers)
            headers["Idempotent-Replayed"] = "true"
            headers["Original-Request"] = stored.request_id
            return Reply(stored.status, stored.body, headers)
        log.update(status=error.status, outcome="idempotency_error")
        return _error_reply(error, base_headers)

    @staticmethod
    def _check_expand(route: Route, params: Obj) -> list[str]:
        expand = Params({"expand": params.get("expand")}, ()).expand()
        allowed = EXPANDABLE[route.kind]
        for path in expand:
            field = path
            if route.is_list:
                field = path[5:] if path.startswith("data.") else ""
            if field not in allowed:
                raise ApiError.bad_param(f"This property cannot be expanded ({path}).", "expand")
        return [p[5:] if route.is_list else p for p in expand]

    def _expand(self, result: Obj, route: Route, expand: list[str]) -> None:
        if not expand:
            return
        targets = result["data"] if route.is_list else [result]
        for obj in targets:
            for field in expand:
                value = obj.get(field)
                if not isinstance(value, str):
                    continue
                kind = EXPANDABLE[route.kind][field]
                if kind == "customer":
                    obj[field] = copy.deepcopy(self.store.customer(value))
                elif kind == "invoice":
                    obj[field] = self.store.render_invoice(self.store.invoice(value))

    # -- test controls ---------------------------------------------------------------

    def handle_control(self, method: str, path: str, body: bytes) -> Reply:
        try:
            data: Any = json.loads(body) if body.strip() else {}
        except ValueError:
            return _error_reply(ApiError.invalid("Test control bodies must be JSON."))
        if not isinstance(data, dict):
            return _error_reply(ApiError.invalid("Test control bodies must be JSON objects."))
        try:
            return self._control(method, path, data)
        except ApiError as error:
            return _error_reply(error)

    def _control(self, method: str, path: str, data: Obj) -> Reply:
        hosted = re.fullmatch(r"/_test/hosted/([A-Za-z0-9_]+)(/pdf)?", path)
        if method == "GET" and hosted:
            with self.store.lock:
                invoice = self.store.render_invoice(self.store.invoice(hosted.group(1)))
            if hosted.group(2):
                pdf = f"%PDF-1.4\n% test invoice {invoice['number']}\n%%EOF\n".encode()
                return Reply(200, pdf, {"Content-Type": "application/pdf"})
            html = (
                f"<html><body><h1>Invoice {invoice['number']}</h1>"
                f"<p>Status: {invoice['status']}</p>"
                f"<p>Amount due: {invoice['amount_due']} {invoice['currency']}</p>"
                "</body></html>"
            )
            return Reply(200, html.encode(), {"Content-Type": "text/html; charset=utf-8"})

        if method == "GET" and path == "/_test/state":
            with self.store.lock:
                state = self.store.snapshot()
                state.update(
                    {
                        "faults": [asdict(f) for f in self.faults],
                        "idempotency_keys": sorted(self.responses),
                        "requests": copy.deepcopy(self.request_log),
                        "webhook_deliveries": copy.deepcopy(self.deliveries),
                        "webhooks_pending": self.webhooks.pending(),
                        "config": self._config(),
                    }
                )
            return Reply(200, _json(state), {})

        if method == "POST" and path == "/_test/reset":
            self.webhooks.wait_idle()
            with self.store.lock:
                self.store.reset()
                self.faults.clear()
                self.responses.clear()
                self.request_log.clear()
                self.deliveries.clear()
            return Reply(200, _json({"reset": True}), {})

        if method == "POST" and path == "/_test/fail/clear":
            with self.store.lock:
                self.faults.clear()
            return Reply(200, _json({"faults": []}), {})

        if method == "POST" and path == "/_test/fail":
            count, mode = data.get("count", 1), str(data.get("mode", "500"))
            prefix, only = data.get("path_prefix", "/v1/"), data.get("method")
            if not isinstance(count, int) or count < 1:
                raise ApiError.invalid("count must be a positive integer", param="count")
            if mode not in FAULT_MODES:
                raise ApiError.invalid(f"mode must be one of {FAULT_MODES}", param="mode")
            if not isinstance(prefix, str) or (only is not None and not isinstance(only, str)):
                raise ApiError.invalid("path_prefix and method must be strings")
            with self.store.lock:
                self.faults.append(Fault(count, mode, prefix, only.upper() if only else None))
                faults = [asdict(f) for f in self.faults]
            return Reply(200, _json({"faults": faults}), {})

        if method == "POST" and path == "/_test/config":
            with self.store.lock:
                if "webhook_url" in data:
                    url = data["webhook_url"]
                    if url is not None and not isinstance(url, str):
                        raise ApiError.invalid("webhook_url must be a string or null")
                    self.store.webhook_url = url
                if "search_delay" in data:
                    self.store.search_delay = float(data["search_delay"])
                if "idempotency_ttl" in data:
                    self.idempotency_ttl = float(data["idempotency_ttl"])
                return Reply(200, _json(self._config()), {})

        failed = re.fullmatch(r"/_test/invoices/([A-Za-z0-9_]+)/payment_failed", path)
        if method == "POST" and failed:
            with self.store.lock:
                invoice = self.store.fail_payment(failed.group(1))
            return Reply(200, _json(invoice), {})

        raise ApiError(404, "invalid_request_error", f"Unknown test control: {method} {path}")

    def _config(self) -> Obj:
        return {
            "webhook_url": self.store.webhook_url,
            "search_delay": self.store.search_delay,
            "idempotency_ttl": self.idempotency_ttl,
            "api_version": self.store.api_version,
        }


ROUTES: tuple[Route, ...] = (
    _route("POST", "/v1/customers", "customer", lambda s, i, p, c: s.store.create_customer(p)),
    _route(
        "GET",
        "/v1/customers",
        "customer",
        lambda s, i, p, c: s.store.list_customers(p),
        is_list=True,
    ),
    _route(
        "GET",
        "/v1/customers/search",
        "customer",
        lambda s, i, p, c: s.store.search_customers(p),
        is_list=True,
    ),
    _route("GET", "/v1/customers/{id}", "customer", lambda s, i, p, c: s.get_customer(i, p)),
    _route(
        "POST",
        "/v1/customers/{id}",
        "customer",
        lambda s, i, p, c: s.store.update_customer(_need_id(i), p),
    ),
    _route("POST", "/v1/invoices", "invoice", lambda s, i, p, c: s.store.create_invoice(p)),
    _route(
        "GET",
        "/v1/invoices",
        "invoice",
        lambda s, i, p, c: s.store.list_invoices(p),
        is_list=True,
    ),
    _route("GET", "/v1/invoices/{id}", "invoice", lambda s, i, p, c: s.get_invoice(i, p)),
    _route(
        "GET",
        "/v1/invoices/{id}/lines",
        "line_item",
        lambda s, i, p, c: s.store.list_invoice_lines(_need_id(i), p),
        is_list=True,
    ),
    _route(
        "POST",
        "/v1/invoices/{id}/finalize",
        "invoice",
        lambda s, i, p, c: s.store.finalize_invoice(_need_id(i), p, c),
    ),
    _route(
        "POST",
        "/v1/invoices/{id}/pay",
        "invoice",
        lambda s, i, p, c: s.store.pay_invoice(_need_id(i), p, c),
    ),
    _route(
        "POST",
        "/v1/invoices/{id}/void",
        "invoice",
        lambda s, i, p, c: s.store.void_invoice(_need_id(i), p, c),
    ),
    _route(
        "POST", "/v1/invoiceitems", "invoiceitem", lambda s, i, p, c: s.store.create_invoiceitem(p)
    ),
    _route(
        "GET",
        "/v1/invoiceitems",
        "invoiceitem",
        lambda s, i, p, c: s.store.list_invoiceitems(p),
        is_list=True,
    ),
    _route(
        "GET", "/v1/invoiceitems/{id}", "invoiceitem", lambda s, i, p, c: s.get_invoiceitem(i, p)
    ),
)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        app: StripeTestServer,
    ) -> None:
        self.app = app
        super().__init__(address, handler)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stripe-test-server"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by the app (with their outcome), not here."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        assert isinstance(self.server, _HTTPServer)
        app = self.server.app
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if parts.path.startswith("/_test/"):
            reply = app.handle_control(method, parts.path, body)
        else:
            reply = app.handle_api(method, parts.path, parts.query, body, self.headers)
        if reply.drop:
            # Lose the response: close the socket without writing a byte.
            self.close_connection = True
            return
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


def start_in_thread(
    *,
    webhook_secret: str,
    webhook_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_requests: bool = False,
) -> StripeTestServer:
    """Start a server on a daemon thread; use ``.base_url`` and ``.stop()`` (or ``with``)."""
    return StripeTestServer(
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
        host=host,
        port=port,
        log_requests=log_requests,
    ).start()
