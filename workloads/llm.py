"""LLM and API calls over real HTTP: a local OpenAI-compatible server and a small client.

Configuration
-------------
``LLMClient`` (and ``chat_once``) take their endpoint from arguments, else
from these environment variables, read when the client is built (never at
import):

``ENGINE_LLM_BASE_URL``
    The API root that ``/chat/completions`` is appended to, e.g.
    ``https://api.openai.com/v1``, or ``http://127.0.0.1:8000/v1`` for the
    local server. Required unless ``base_url`` is passed.
``ENGINE_LLM_API_KEY``
    Sent as ``Authorization: Bearer <key>``. Optional: the local server needs
    none unless started with ``api_key=``.
``ENGINE_LLM_MODEL``
    The ``model`` of each request. Default: ``engine-local``.

The local server
----------------
``LLMServer`` answers ``POST /v1/chat/completions`` (plain JSON, or
server-sent events with ``"stream": true``) and ``GET /v1/models`` on
127.0.0.1. It waits ``latency_s`` before answering, as a remote model would
(the wait is real I/O from the client's side: the request is in flight),
and replies with deterministic pseudo-English of ``max_tokens`` words
derived from the prompt. A request may set its own wait with the
``X-Engine-Latency-S`` header (``LLMClient(..., latency_s=...)`` sends it).
Run it on its own with::

    python -m workloads.llm --port 8000 --latency 1.0

Calls belong on an event loop (the engine's io lane): clients hold sockets
bound to one loop and are not picklable, so they never travel to a worker
process. Build one per node call (cheap for ``http://``) or use
``chat_once``. Retries are the engine's job (``RetryPolicy``): errors come
back as httpx raises them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import itertools
import json
import math
import os
import signal
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, NoReturn, Self

import httpx
from aiohttp import web

from engine.streaming import get_message_writer

from .genai import corpus

__all__ = [
    "DEFAULT_MODEL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "LATENCY_HEADER",
    "LLMClient",
    "LLMConfigError",
    "LLMResponseError",
    "LLMServer",
    "chat_once",
    "completion_text",
    "main",
]

ENV_BASE_URL = "ENGINE_LLM_BASE_URL"
ENV_API_KEY = "ENGINE_LLM_API_KEY"
ENV_MODEL = "ENGINE_LLM_MODEL"
DEFAULT_MODEL = "engine-local"
LATENCY_HEADER = "X-Engine-Latency-S"
_MAX_TOKENS_LIMIT = 8192
_MAX_LATENCY_S = 600.0


class LLMConfigError(ValueError):
    """No usable endpoint configuration (no base URL, or a malformed one)."""


class LLMResponseError(ValueError):
    """The endpoint answered 2xx but not with a chat completion we can read."""


def completion_text(prompt: str, max_tokens: int) -> str:
    """The local server's reply to ``prompt``: ``max_tokens`` words, same prompt same words."""
    return corpus(max_tokens, seed=zlib.crc32(prompt.encode()))


# -- the server ------------------------------------------------------------


class _State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


class _BadRequest(Exception):
    """A request the server rejects with 400 and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


def _prompt_of(messages: object) -> str:
    """The whole conversation as one string, so every message shapes the reply."""
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    lines: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _BadRequest(f"messages[{i}] must be an object with a 'role'", "messages")
        content = msg.get("content")
        if isinstance(content, list):  # multi-part content: keep the text parts
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if not isinstance(content, str):
            raise _BadRequest(f"messages[{i}].content must be a string", "messages")
        lines.append(f"{msg['role']}: {content}")
    return "\n".join(lines)


class LLMServer:
    """An OpenAI-compatible chat-completions server on this machine, for benchmarks and tests.

    In a running loop::

        async with LLMServer(latency_s=1.0) as srv:
            text = await chat_once(srv.base_url, "hello")

    From synchronous code, or to keep it off the loop under test::

        srv = LLMServer.start_in_thread(latency_s=1.0)
        ...
        srv.stop()

    # Invariant: ``_runner`` is set exactly while the state is RUNNING, and
    # ``_loop`` is the loop serving it. ``_thread`` is set only for a server
    # made by ``start_in_thread``, and then only that thread runs its loop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 1.0,
        token_interval_s: float = 0.0,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        if not 0 <= latency_s <= _MAX_LATENCY_S:
            raise ValueError(f"latency_s must be in [0, {_MAX_LATENCY_S}], got {latency_s}")
        if token_interval_s < 0:
            raise ValueError(f"token_interval_s must be >= 0, got {token_interval_s}")
        self.host = host
        self.latency_s = latency_s
        self.token_interval_s = token_interval_s
        self.model = model
        self._requested_port = port
        self._api_key = api_key
        self._shutdown_timeout_s = shutdown_timeout_s
        self._state = _State.CREATED
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._requests = 0
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        where = f" url={self.base_url}" if self._state is _State.RUNNING else ""
        hosted = " thread" if self._thread is not None else ""
        return (
            f"<LLMServer {self._state.value}{hosted}{where} latency_s={self.latency_s} "
            f"requests={self._requests}>"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{self!r} owns sockets on this machine's event loop and cannot be pickled; "
            "pass its base_url to other processes instead"
        )

    @property
    def requests(self) -> int:
        """Requests received so far (chat completions and model listings)."""
        return self._requests

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError(f"{self!r} is not running: start it before asking for its port")
        return self._port

    @property
    def base_url(self) -> str:
        """The API root to give clients: ``http://HOST:PORT/v1``."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(
                f"{self!r} is not running: use 'async with LLMServer() as srv' "
                "or LLMServer.start_in_thread()"
            )
        return f"http://{self.host}:{self.port}/v1"

    # -- lifecycle in the running loop ------------------------------------

    async def start(self) -> None:
        """Bind and start serving on the running loop."""
        if self._state is not _State.CREATED:
            raise RuntimeError(f"{self!r} has already been started; a server starts once")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        try:
            # A deep backlog: hundreds of clients may connect in the same instant.
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._state = _State.CLOSED
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Stop serving: in-flight requests get ``shutdown_timeout_s`` to finish. Idempotent."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            # Thread-hosted: its own loop must do the closing.
            await asyncio.to_thread(self.stop)
            return
        await self._close()

    async def _close(self) -> None:
        if self._state is _State.CREATED:
            self._state = _State.CLOSED
        if self._state is _State.CLOSED:
            return
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(f"{self!r} must be closed from the loop it was started on")
        runner, self._runner = self._runner, None
        self._state = _State.CLOSED
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- lifecycle on a thread of its own -----------------------------------

    @classmethod
    def start_in_thread(cls, *, startup_timeout_s: float = 30.0, **config: Any) -> LLMServer:
        """Start a server (``config``: the constructor's arguments) on a daemon thread's own loop.

        Returns once it is accepting connections; ``stop()`` ends it and its thread.
        """
        server = cls(**config)
        ready = threading.Event()
        failure: list[BaseException] = []
        server._thread = threading.Thread(
            target=server._thread_main,
            args=(ready, failure),
            name=f"LLMServer-{server.host}",
            daemon=True,
        )
        server._thread.start()
        if not ready.wait(startup_timeout_s):
            raise RuntimeError(f"{server!r} did not start within {startup_timeout_s} s")
        if failure:
            server._thread.join()
            raise RuntimeError(f"{server!r} failed to start: {failure[0]}") from failure[0]
        return server

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        async def serve() -> None:
            self._stop_event = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            try:
                await self._stop_event.wait()
            finally:
                await self._close()

        # asyncio.run closes the loop after cancelling leftover tasks and
        # shutting down async generators and the default executor: nothing leaks.
        asyncio.run(serve())

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop a server made by ``start_in_thread`` and join its thread. Idempotent."""
        thread = self._thread
        if thread is None:
            raise RuntimeError(
                f"{self!r} was not started with start_in_thread(); use 'await srv.aclose()'"
            )
        if threading.current_thread() is thread:
            raise RuntimeError(f"{self!r}.stop() called from its own thread would deadlock")
        loop, stop_event = self._loop, self._stop_event
        if thread.is_alive() and loop is not None and stop_event is not None:
            # The loop may close between the check and the call (the thread is
            # already finishing): then there is nothing left to signal.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"{self!r} did not stop within {timeout_s} s")

    # -- handlers -------------------------------------------------------------

    def _latency_for(self, request: web.Request) -> float:
        raw = request.headers.get(LATENCY_HEADER)
        if raw is None:
            return self.latency_s
        try:
            latency = float(raw)
        except ValueError:
            raise _BadRequest(f"{LATENCY_HEADER} must be a number, got {raw!r}") from None
        if not (math.isfinite(latency) and 0 <= latency <= _MAX_LATENCY_S):
            raise _BadRequest(f"{LATENCY_HEADER} must be in [0, {_MAX_LATENCY_S}], got {raw}")
        return latency

    def _authorised(self, request: web.Request) -> bool:
        return self._api_key is None or (
            request.headers.get("Authorization") == f"Bearer {self._api_key}"
        )

    async def _models(self, request: web.Request) -> web.Response:
        self._requests += 1
        if not self._authorised(request):
            return _error(401, "invalid or missing API key", "invalid_request_error")
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "engine"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._requests += 1
        if not self._authorised(request):
            return _error(401, "invalid or missing API key", "invalid_request_error")
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _BadRequest("the request body is not JSON") from None
            if not isinstance(body, dict):
                raise _BadRequest("the request body must be a JSON object")
            prompt = _prompt_of(body.get("messages"))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 64))
            if (
                not isinstance(max_tokens, int)
                or isinstance(max_tokens, bool)
                or not 1 <= max_tokens <= _MAX_TOKENS_LIMIT
            ):
                raise _BadRequest(
                    f"max_tokens must be an integer in [1, {_MAX_TOKENS_LIMIT}]", "max_tokens"
                )
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise _BadRequest("'stream' must be a boolean", "stream")
            latency = self._latency_for(request)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error", exc.param)
        requested = body.get("model")
        model = requested if isinstance(requested, str) and requested else self.model
        text = completion_text(prompt, max_tokens)
        # The "remote model" thinking: a real wait during which this loop
        # serves every other request.
        await asyncio.sleep(latency)
        ident = f"chatcmpl-{next(self._ids)}"
        created = int(time.time())
        if not stream:
            n_out = len(text.split())
            return web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": n_out,
                        "total_tokens": len(prompt.split()) + n_out,
                    },
                }
            )
        return await self._stream(request, ident, created, model, text)

    async def _stream(
        self, request: web.Request, ident: str, created: int, model: str, text: str
    ) -> web.StreamResponse:
        """Server-sent events: a role chunk, one chunk per word, a finish chunk, [DONE]."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        def event(delta: dict[str, str], finish: str | None = None) -> bytes:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        words = text.split(" ")
        # Words after the first carry their leading space: the chunks join back to ``text``.
        pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)] if text else []
        try:
            await resp.write(event({"role": "assistant", "content": ""}))
            for piece in pieces:
                if self.token_interval_s:
                    await asyncio.sleep(self.token_interval_s)
                await resp.write(event({"content": piece}))
            await resp.write(event({}, "length"))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream: nothing left to tell it
        return resp


# -- the client ------------------------------------------------------------


class LLMClient:
    """An async chat-completions client over one ``httpx.AsyncClient``.

    ::

        async with LLMClient() as client:          # ENGINE_LLM_* from the environment
            text = await client.chat("Summarise Q3", max_tokens=128)

    Arguments win over the environment, which is read here, at construction.

    # Invariant: ``_http`` is set exactly while the state is RUNNING (open);
    # it belongs to the loop that entered the client.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        latency_s: float | None = None,
        max_connections: int | None = None,
        verify: ssl.SSLContext | bool | None = None,
    ) -> None:
        url = base_url or os.environ.get(ENV_BASE_URL)
        if not url:
            raise LLMConfigError(
                f"no LLM endpoint configured: pass base_url=... or set {ENV_BASE_URL} "
                "(e.g. https://api.openai.com/v1); for a local one, start "
                "'async with LLMServer() as srv' and pass srv.base_url"
            )
        url = url.rstrip("/")
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("http", "https"):
            raise LLMConfigError(f"LLM base URL must start with http:// or https://, got {url!r}")
        self.base_url = url
        self.model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        self._api_key = api_key or os.environ.get(ENV_API_KEY) or None
        self.timeout_s = timeout_s
        self.latency_s = latency_s
        # No pool limit by default: how many calls run at once is the graph's
        # decision. httpx's default of 100 would quietly queue the 101st call
        # and make a "parallel" graph serial without saying so.
        self.max_connections = max_connections
        # Plain http never negotiates TLS (and redirects are not followed), so
        # skip building the CA context: ~20 ms of CPU on the event loop per
        # client, which per-call clients would pay on every call.
        self._verify: ssl.SSLContext | bool = (scheme == "https") if verify is None else verify
        self._state = _State.CREATED
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        state = {_State.CREATED: "created", _State.RUNNING: "open", _State.CLOSED: "closed"}
        key = " key=***" if self._api_key else ""
        return f"<LLMClient {state[self._state]} {self.base_url} model={self.model}{key}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{self!r} holds connections bound to one event loop and cannot be pickled: "
            "build it inside the io node that uses it, or call chat_once()"
        )

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an ``Authorization`` header."""
        return self._api_key is not None

    async def __aenter__(self) -> Self:
        if self._state is not _State.CREATED:
            raise RuntimeError(f"{self!r} has already been entered; build a new client")
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        if self.latency_s is not None:
            headers[LATENCY_HEADER] = repr(float(self.latency_s))
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=self.max_connections),
            verify=self._verify,
        )
        self._state = _State.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections. Idempotent."""
        http, self._http = self._http, None
        self._state = _State.CLOSED
        if http is not None:
            await http.aclose()

    def _open(self) -> httpx.AsyncClient:
        if self._http is None:
            if self._state is _State.CLOSED:
                raise RuntimeError(f"{self!r} is closed; build a new client")
            raise RuntimeError(
                f"{self!r} is not open: use 'async with LLMClient(...) as client', "
                "or chat_once() for a single call"
            )
        return self._http

    async def models(self) -> list[str]:
        """The model ids the endpoint lists (``GET /models``)."""
        response = await self._open().get("/models")
        response.raise_for_status()
        data = response.json()
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise LLMResponseError(f"not a model list from {self.base_url}: {data!r}") from exc

    async def chat(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        stream: bool = False,
        system: str | None = None,
    ) -> str:
        """Send one user message (after an optional system message); return the reply text."""
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": stream,
        }
        http = self._open()
        if not stream:
            response = await http.post("/chat/completions", json=body)
            response.raise_for_status()
            data = response.json()
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise LLMResponseError(
                    f"not a chat completion from {self.base_url}: {str(data)[:200]}"
                ) from exc
            return content if isinstance(content, str) else ""
        async with http.stream("POST", "/chat/completions", json=body) as response:
            if response.is_error:
                await response.aread()  # so the error carries the body
                response.raise_for_status()
            return await _read_stream(response.aiter_lines(), self.base_url)


async def _read_stream(lines: AsyncIterator[str], base_url: str) -> str:
    """Join the ``delta.content`` of choice 0 over an SSE stream, up to ``[DONE]``; each
    piece goes to the engine's ``messages`` stream mode as it comes, when the run streams."""
    parts: list[str] = []
    write_token = get_message_writer()
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise LLMResponseError(f"bad stream chunk from {base_url}: {payload[:200]}") from exc
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    write_token(piece)
                parts.append(piece)
    return "".join(parts)


async def chat_once(
    base_url: str | None,
    prompt: str,
    *,
    max_tokens: int = 64,
    stream: bool = False,
    system: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    timeout_s: float = 120.0,
    latency_s: float | None = None,
    verify: ssl.SSLContext | bool | None = None,
) -> str:
    """Open a client, make one chat call, close it: the per-node-call form.

    ``base_url=None`` reads ``ENGINE_LLM_BASE_URL``. For ``https`` endpoints
    pass a shared ``verify=ssl.create_default_context()``: building one per
    call costs ~20 ms of CPU on the loop.
    """
    async with LLMClient(
        base_url,
        api_key=api_key,
        model=model,
        timeout_s=timeout_s,
        latency_s=latency_s,
        verify=verify,
    ) as client:
        return await client.chat(prompt, max_tokens=max_tokens, stream=stream, system=system)


# -- standalone ------------------------------------------------------------


async def _serve(server: LLMServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available off the main thread or on Windows: Ctrl-C still works there.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"serving {server.base_url} (latency {server.latency_s} s); Ctrl-C stops", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workloads.llm``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m workloads.llm",
        description="A local OpenAI-compatible chat-completions server for benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument(
        "--token-interval", type=float, default=0.0, help="seconds between streamed words"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    server = LLMServer(
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        token_interval_s=args.token_interval,
        model=args.model,
        api_key=args.api_key,
    )
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
