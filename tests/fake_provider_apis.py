"""A local fake of Anthropic's Admin API usage and cost reports and OpenAI's organization usage
and costs, written from their documented shapes (/work/shared/notes/provider-usage-apis.md, the
official examples and the SDKs' types): daily UTC buckets, `has_more` / `next_page` pagination
with the cursor sent back as `page`, dimension fields `null` unless grouped by, group_by and
filters honoured, the auth headers checked. Failures on demand: a 429 with Retry-After, 5xx, a
slow page.

It runs as an HTTP server on 127.0.0.1 (a random port) in a thread; tests point
ANTHROPIC_BASE_URL / OPENAI_BASE_URL (or the run's options) at `.anthropic_url` / `.openai_url`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests import fake_anthropic_reports as anthropic
from tests import fake_openai_reports as openai
from tests.fake_anthropic_reports import AnthropicCost, AnthropicUsage
from tests.fake_openai_reports import OpenAICost, OpenAIUsage
from tests.fake_report_pages import error

__all__ = [
    "AnthropicCost",
    "AnthropicUsage",
    "Failure",
    "FakeProviderApis",
    "OpenAICost",
    "OpenAIUsage",
]


@dataclass
class Failure:
    """An answer to give instead of the real one, to the next request whose path starts with
    `path` (a 429 with Retry-After, a 503, ...)."""

    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class FakeProviderApis:
    """Both providers' report APIs over one local server."""

    def __init__(
        self, anthropic_key: str = "sk-ant-admin01-fake", openai_key: str = "sk-admin-fake"
    ) -> None:
        self.anthropic_key = anthropic_key
        self.openai_key = openai_key
        self.anthropic_usage: list[AnthropicUsage] = []
        self.anthropic_costs: list[AnthropicCost] = []
        self.openai_usage: list[OpenAIUsage] = []
        self.openai_costs: list[OpenAICost] = []
        self.failures: list[Failure] = []
        #: Seconds to wait before answering a page that carries a `page` cursor.
        self.slow_page_s = 0.0
        #: Every request: (path, query as parsed, headers).
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> FakeProviderApis:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, path: str, status: int, **headers: str) -> None:
        """Answer the next request to `path` with `status` (and these headers)."""
        with self._lock:
            self.failures.append(
                Failure(path, status, {k.replace("_", "-"): v for k, v in headers.items()})
            )

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    # --- answering -----------------------------------------------------------------------

    def answer(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.requests.append((path, query, headers))
            for failure in self.failures:
                if path.startswith(failure.path):
                    self.failures.remove(failure)
                    return failure.status, failure.headers, error("rate_limit_error", "slow down")
        if query.get("page") and self.slow_page_s:
            time.sleep(self.slow_page_s)
        if path.startswith("/v1/organizations/"):
            if headers.get("x-api-key") != self.anthropic_key:
                return 401, {}, error("authentication_error", "invalid x-api-key")
            if not headers.get("anthropic-version"):
                return 400, {}, error("invalid_request_error", "anthropic-version: required")
            if path == "/v1/organizations/usage_report/messages":
                return anthropic.answer(
                    self.anthropic_usage, self.anthropic_costs, query, usage=True
                )
            if path == "/v1/organizations/cost_report":
                return anthropic.answer(
                    self.anthropic_usage, self.anthropic_costs, query, usage=False
                )
        elif path.startswith("/v1/organization/"):
            if headers.get("authorization") != f"Bearer {self.openai_key}":
                return (
                    401,
                    {},
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                        }
                    },
                )
            if path in ("/v1/organization/usage/completions", "/v1/organization/usage/embeddings"):
                return openai.answer(
                    self.openai_usage, self.openai_costs, query, path.rsplit("/", 1)[-1]
                )
            if path == "/v1/organization/costs":
                return openai.answer(self.openai_usage, self.openai_costs, query, None)
        return 404, {}, error("not_found_error", f"no route {path}")


def _handler(fake: FakeProviderApis) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = fake.answer(parts.path, query, headers)
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    return Handler
