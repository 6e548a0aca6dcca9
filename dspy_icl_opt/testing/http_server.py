"""A loopback OpenAI-style LM server for fault-injection tests: it answers through a fake engine.

`LoopbackLMServer` serves ``POST /v1/chat/completions`` on 127.0.0.1 (never another interface) and
answers each request with a fake engine (``simulated_task_lm(...).engine``, ``scripted_lm(...).engine``),
so a ``dspy.LM("openai/<name>", api_base=server.url, api_key="test")`` goes through the real HTTP
client stack. Faults are injected from outside, as in production: `stop` closes the port
(connection refused), `start` brings it back on the same port, ``mode`` makes it answer with
HTTP 500 or 429 instead, and ``die_after`` makes it hang up without an answer after that many
answered calls (until ``die_after`` is reset to None).

Example:
    >>> from dspy_icl_opt.testing import scripted_lm
    >>> with LoopbackLMServer(scripted_lm(lambda request: "pong").engine) as server:
    ...     server.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dspy.lm15 import Message, Request

from dspy_icl_opt.testing.chat import estimate_tokens

HOST = "127.0.0.1"
MODES = ("ok", "error500", "error429")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def to_request(body: dict[str, Any]) -> Request:
    """An OpenAI chat-completions body as the ``dspy.lm15.Request`` a fake engine reads."""
    system = [_text(m.get("content")) for m in body.get("messages", []) if m.get("role") in ("system", "developer")]
    messages = []
    for m in body.get("messages", []):
        role, text = m.get("role"), _text(m.get("content"))
        if role == "user":
            messages.append(Message.user(text))
        elif role == "assistant":
            messages.append(Message.assistant(text))
    return Request(model=str(body.get("model", "fake")), messages=tuple(messages),
                   system="\n".join(system) if system else None)


class LoopbackLMServer:
    """An OpenAI-compatible chat server on 127.0.0.1 backed by a fake engine (see the module docstring).

    Args:
        engine: answers each request (``engine.complete(request) -> Response``).
        port: 0 picks a free port; it is kept across `stop` / `start`.
    """

    def __init__(self, engine: Any, *, port: int = 0, die_after: int | None = None) -> None:
        self.engine = engine
        self.port = port
        self.die_after = die_after
        self.mode = "ok"
        self.answered = 0
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> LoopbackLMServer:
        if self._server is not None:
            return self
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if owner._dead():  # hang up without a response, as a crashed server does
                    self.close_connection = True
                    return
                status, payload = owner._answer(body)
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: clients get "connection refused" until `start`."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LoopbackLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _dead(self) -> bool:
        with self._lock:
            dead = self.die_after is not None and self.answered >= self.die_after
            self.refused += int(dead)
        return dead

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        mode = self.mode
        if mode != "ok":
            with self._lock:
                self.refused += 1
            code = 429 if mode == "error429" else 500
            return code, {"error": {"message": f"injected {code}", "type": "server_error", "code": code}}
        request = to_request(body)
        response = self.engine.complete(request)
        text = response.text or ""
        with self._lock:
            self.answered += 1
        prompt_tokens = sum(estimate_tokens(_text(m.get("content"))) for m in body.get("messages", []))
        completion_tokens = estimate_tokens(text)
        return 200, {"id": f"chatcmpl-{self.answered}", "object": "chat.completion", "created": 0,
                     "model": body.get("model", "fake"),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}}
