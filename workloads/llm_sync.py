"""A blocking chat-completions call on the standard library alone, for plain ``def`` nodes.

What a synchronous node that calls an API does: it blocks its thread (or
worker process) until the answer arrives, holding no CPU while it waits.
Same endpoint and configuration as ``workloads.llm`` (``ENGINE_LLM_BASE_URL``,
``ENGINE_LLM_API_KEY``, ``ENGINE_LLM_MODEL``, read at each call), and the same
``X-Engine-Latency-S`` header for the local server.

Only ``http.client`` and ``json``: importing ``workloads.llm`` (aiohttp and
httpx) costs about half a second of CPU, which the first call of such a node
in each worker process would otherwise spend, and which would make a node
that waits look CPU-bound to the engine's profile on its first run.
"""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlsplit

ENV_BASE_URL = "ENGINE_LLM_BASE_URL"
ENV_API_KEY = "ENGINE_LLM_API_KEY"
ENV_MODEL = "ENGINE_LLM_MODEL"
DEFAULT_MODEL = "engine-local"
LATENCY_HEADER = "X-Engine-Latency-S"


class SyncLLMError(RuntimeError):
    """The endpoint is not configured, answered with an error, or not with a completion."""


def chat_once_sync(
    base_url: str | None,
    prompt: str,
    *,
    max_tokens: int = 64,
    latency_s: float | None = None,
    api_key: str | None = None,
    model: str | None = None,
    timeout_s: float = 120.0,
) -> str:
    """One chat completion, blocking; returns the reply text."""
    url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/")
    if not url:
        raise SyncLLMError(f"no LLM endpoint configured: pass base_url=... or set {ENV_BASE_URL}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SyncLLMError(f"LLM base URL must be http(s)://host[:port]/path, got {url!r}")
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    headers = {"Content-Type": "application/json"}
    key = api_key or os.environ.get(ENV_API_KEY)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if latency_s is not None:
        headers[LATENCY_HEADER] = repr(float(latency_s))
    body = json.dumps(
        {
            "model": model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": False,
        }
    )
    conn = conn_type(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("POST", f"{parts.path}/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    if response.status >= 400:
        raise SyncLLMError(f"{url}: HTTP {response.status}: {raw[:200]!r}")
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise SyncLLMError(f"not a chat completion from {url}: {raw[:200]!r}") from exc
    return content if isinstance(content, str) else ""
