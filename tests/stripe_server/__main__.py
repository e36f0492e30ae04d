"""``python -m tests.stripe_server --port PORT --webhook-secret whsec_... [--webhook-url URL]``."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from .server import StripeTestServer
from .store import DEFAULT_API_VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stripe_server", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--webhook-secret", required=True, help="whsec_... signing secret")
    parser.add_argument("--webhook-url", default=None, help="where to POST events")
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION)
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)

    server = StripeTestServer(
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
        api_version=args.api_version,
        log_requests=not args.quiet,
    )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    print(f"READY {server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        server.webhooks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
