"""Generation through an OpenAI-compatible HTTP endpoint (vLLM, SGLang, llama.cpp, TGI, OpenAI).

Spec: ``openai:http://host:port/v1#MODEL`` - the base URL the server's routes hang under, then the
served model name. The API key comes from an environment variable (``OPENAI_API_KEY`` unless told
otherwise) and is sent as ``Authorization: Bearer ...`` only when that variable is set, since local
servers need none. The key never appears in the identity, the signature, errors or logs.

Wire format (one HTTP request per `Request`, ``n = 1``):

* text prompt -> ``POST {base}/completions`` with ``{"model", "prompt", "max_tokens",
  "temperature", "top_p", "n": 1, "seed"}``; the answer's ``choices[0].text``;
* chat -> ``POST {base}/chat/completions`` with ``"messages": [{"role", "content"}, ...]`` in place
  of ``"prompt"``; the answer's ``choices[0].message.content``.

Greedy is ``temperature = 0``. ``seed`` is `Request.stream_seed` for sampled requests (so a sample
is reproducible on its own, as in the local backend) and the run seed for greedy ones.
``top_k`` is sent only when set (> 0): it is a vLLM/SGLang extension that OpenAI itself rejects.
``finish_reason`` and ``usage.completion_tokens`` are kept when the server sends them.

Retry policy. Retried, with exponential backoff (``backoff * 2**k`` plus up to 25 % jitter so that
parallel workers do not retry in lockstep, capped at ``max_backoff``; a numeric ``Retry-After``
header replaces the computed delay): HTTP 408, 429 and every 5xx; timeouts; a connection reset or
closed before the whole answer arrived; and malformed answers (a body that is not JSON, or JSON
without ``choices[0].text`` / ``message.content``) - overloaded servers and proxies produce all
of these, and all of them go away on a second try. After ``max_retries`` retries the request
fails with a one-line `BackendError`. Not retried, because a second try gets the same answer:
401/403 (the key; the message names the environment variable), other 4xx such as 400 and 404
(a bad request or an unknown model; the message carries the server's own text). A refused
connection is retried twice, quickly, in case the server is just starting, then reported as
``cannot reach URL``. When one request fails for good, no new request is sent; those in flight
finish and are handed to ``on_result`` (so the cache keeps them), then the error is raised.

Concurrency: a thread pool of ``concurrency`` workers, with at most ``concurrency`` requests
submitted at a time; a new one is submitted as soon as one finishes, so the server always has
``concurrency`` requests to batch. ``on_result`` and ``progress`` run on the calling thread.

Why the standard library (``urllib.request``) and not the ``openai`` or ``httpx`` packages: the
two routes and the JSON they take are a few lines, the retry policy above has to be ours anyway
(to count attempts, honour ``Retry-After``, stop on a fatal error and keep what finished), and a
base install stays free of an HTTP stack it would use for this file only. Proxies from the
environment are honoured as ``urllib`` does, except for loopback addresses, which a proxy
cannot reach.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence

from ...errors import BackendError, ConfigError
from .base import Backend, Generation, OnResult, Request

log = logging.getLogger(__name__)

SPEC_FORM = "openai:http(s)://HOST[:PORT]/PATH#MODEL (e.g. openai:http://127.0.0.1:8000/v1#my-model)"

# a refused connection: retried this many times, after these short delays (seconds), in case the
# server is still starting; a server that is down should be reported at once, not after minutes
REFUSED_RETRIES = 2
REFUSED_DELAY = 0.1

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class _Retry(Exception):
    """One attempt failed in a way a later attempt may not: ``what`` for the final message."""

    def __init__(self, what: str, detail: str = "", retry_after: float | None = None):
        super().__init__(what)
        self.what, self.detail, self.retry_after = what, detail, retry_after


class _Refused(Exception):
    """The connection was refused: nobody listens there (yet)."""


class _Cancelled(Exception):
    """A request given up because another one failed for good."""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _server_message(body: bytes) -> str:
    """The human part of an error body: OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``, a plain ``{"message"}`` or ``{"error": "..."}``, else the raw text."""
    text = body.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return _short(text) or "no message"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return _short(str(err["message"]))
        for k in ("message", "detail", "error"):
            if obj.get(k):
                v = obj[k]
                return _short(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
    return _short(text) or "no message"


def _retry_after(value: str | None) -> float | None:
    """A numeric ``Retry-After`` (seconds); the HTTP-date form is rare from LLM servers and falls
    back to our own backoff."""
    if not value:
        return None
    try:
        s = float(value.strip())
    except ValueError:
        return None
    return s if s >= 0 else None


class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible ``/completions`` and ``/chat/completions`` endpoint."""

    kind = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"bad endpoint {base_url!r}: expected {SPEC_FORM}")
        if parsed.username or parsed.password:
            # the URL lands in results.json and in every cache key; a key belongs in the environment
            raise ConfigError(f"endpoint URL must not carry credentials; put the key in ${api_key_env}")
        if parsed.query or parsed.fragment:
            raise ConfigError(f"bad endpoint {base_url!r}: no ?query or #fragment in the URL; expected {SPEC_FORM}")
        if not model or not model.strip():
            raise ConfigError(f"no model name in the endpoint spec: expected {SPEC_FORM}")
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
        if not timeout > 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")
        if not backoff >= 0 or not max_backoff >= 0:
            raise ConfigError(f"backoff must be >= 0 seconds, got {backoff} (max {max_backoff})")
        self.base_url = base_url.rstrip("/")
        self.model = model.strip()
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = int(concurrency), float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._rng = random.Random()
        # a proxy from the environment cannot reach this machine's loopback; urllib would still use it
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    @classmethod
    def from_spec(cls, spec: str, **kw: Any) -> "OpenAIBackend":
        """``openai:http://host:port/v1#MODEL`` -> an `OpenAIBackend`; keyword arguments as in
        the constructor."""
        rest = spec[len("openai:"):] if spec.startswith("openai:") else spec
        url, sep, model = rest.partition("#")
        if not sep:
            raise ConfigError(f"bad endpoint spec {spec!r}: no '#MODEL'; expected {SPEC_FORM}")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"bad endpoint spec {spec!r}: the URL must start with http:// or https://; expected {SPEC_FORM}")
        if not model.strip():
            raise ConfigError(f"bad endpoint spec {spec!r}: empty model name after '#'; expected {SPEC_FORM}")
        return cls(url, model, **kw)

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}#{self.model}"

    def signature(self) -> dict[str, Any]:
        return {"backend": "openai", "url": self.base_url, "model": self.model,
                "concurrency": self.concurrency, "max_retries": self.max_retries}

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        if not requests:
            return []
        abort = threading.Event()
        failure: BaseException | None = None
        pending: dict[Future, int] = {}
        upcoming = iter(range(len(requests)))
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="steadylm-openai")

        def top_up() -> None:
            # only `concurrency` submitted at a time: a fatal error then stops new work at once,
            # and the pool's queue never holds requests that would run after we meant to stop
            while len(pending) < self.concurrency and not abort.is_set():
                i = next(upcoming, None)
                if i is None:
                    return
                pending[pool.submit(self._generate_one, requests[i], abort)] = i

        try:
            top_up()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        gen = fut.result()
                    except _Cancelled:
                        continue
                    except Exception as e:  # BackendError, or a bug: stop either way, keep what finished
                        if failure is None:
                            failure = e
                        abort.set()
                        continue
                    results[i] = gen
                    if on_result is not None:
                        on_result(i, gen)
                    if progress is not None:
                        progress(1)
                top_up()
        except BaseException:
            abort.set()  # wakes workers sleeping between retries
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if failure is not None:
            raise failure
        return results  # type: ignore[return-value]

    def _body(self, req: Request) -> tuple[str, dict[str, Any]]:
        s = req.settings
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_new_tokens,
            "temperature": 0.0 if s.greedy else s.temperature,
            "top_p": 1.0 if s.greedy else s.top_p,
            "n": 1,
            "seed": req.seed if s.greedy else req.stream_seed,
        }
        if s.top_k > 0 and not s.greedy:
            body["top_k"] = s.top_k
        if req.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in req.messages]
            return "/chat/completions", body
        body["prompt"] = req.prompt
        return "/completions", body

    def _generate_one(self, req: Request, abort: threading.Event) -> Generation:
        """One request, retried per the policy in the module docstring. Runs in a worker thread."""
        route, body = self._body(req)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        chat = req.messages is not None
        attempts = refused = 0
        while True:
            attempts += 1
            try:
                return self._parse(req, self._post(route, data), chat)
            except _Retry as e:
                if attempts > self.max_retries:
                    tail = f": {e.detail}" if e.detail else ""
                    raise BackendError(f"{self.identity}: {e.what} after {attempts} attempts{tail}") from None
                delay = e.retry_after if e.retry_after is not None else self._backoff_delay(attempts)
                delay = min(delay, self.max_backoff)
                log.debug("%s: %s (%s); retry %d in %.2fs", self.identity, e.what, e.detail, attempts, delay)
            except _Refused:
                refused += 1
                if refused > REFUSED_RETRIES or attempts > self.max_retries:
                    raise BackendError(f"cannot reach {self.base_url}: connection refused "
                                       f"(is the server running? tried {attempts} times)") from None
                delay = min(REFUSED_DELAY, self.backoff) * 2 ** (refused - 1)
            if abort.wait(delay):  # another request failed for good: do not keep retrying this one
                raise _Cancelled()

    def _backoff_delay(self, attempts: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (attempts - 1) * (1.0 + 0.25 * self._rng.random()))

    def _headers(self) -> dict[str, str]:
        from ... import __version__

        h = {"Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": f"steadylm/{__version__}"}
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _post(self, route: str, data: bytes) -> bytes:
        """POST and return the body of a 2xx answer; raise `_Retry`, `_Refused` or `BackendError`."""
        url = self.base_url + route
        http_req = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
        try:
            with self._opener.open(http_req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            try:
                body = e.read()
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                e.close()
            self._http_error(e.code, body, e.headers.get("Retry-After") if e.headers else None)
        except urllib.error.URLError as e:
            # urllib wraps errors raised while connecting and sending; unwrap to classify them
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                raise _Refused() from None
            if isinstance(reason, socket.gaierror):
                raise BackendError(f"cannot reach {self.base_url}: unknown host ({_short(str(reason))})") from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise BackendError(f"cannot reach {self.base_url}: TLS certificate not trusted ({_short(str(reason))})") from None
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retry("timed out", f"no answer within {self.timeout:g}s") from None
            if isinstance(reason, OSError):
                raise _Retry("connection failed", _short(f"{type(reason).__name__}: {reason}")) from None
            raise BackendError(f"cannot reach {self.base_url}: {_short(str(reason))}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry("timed out", f"no answer within {self.timeout:g}s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            # RemoteDisconnected, ConnectionResetError, IncompleteRead, BadStatusLine, ...
            raise _Retry("connection closed mid-answer", _short(f"{type(e).__name__}: {e}")) from None
        raise AssertionError("unreachable")  # pragma: no cover - _http_error always raises

    def _http_error(self, code: int, body: bytes, retry_after: str | None) -> None:
        msg = _server_message(body)
        if code == 429 or code == 408 or code >= 500:
            raise _Retry(f"HTTP {code}", msg, _retry_after(retry_after))
        if code in (401, 403):
            if os.environ.get(self.api_key_env, "").strip():
                raise BackendError(f"{self.identity}: endpoint refused the key (HTTP {code}): ${self.api_key_env} "
                                   f"is set but refused ({msg})")
            raise BackendError(f"{self.identity}: endpoint refused the request (HTTP {code}); "
                               f"set ${self.api_key_env} to its API key ({msg})")
        raise BackendError(f"{self.identity}: HTTP {code}: {msg}")

    def _parse(self, req: Request, raw: bytes, chat: bool) -> Generation:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Retry("malformed answer", f"body is not JSON: {_short(raw.decode('utf-8', 'replace'), 80)!r}") from None
        where = "choices[0].message.content" if chat else "choices[0].text"
        choices = obj.get("choices") if isinstance(obj, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            extra = f" ({_server_message(raw)})" if isinstance(obj, dict) and "error" in obj else ""
            raise _Retry("malformed answer", f"no {where} in the JSON{extra}")
        if chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise _Retry("malformed answer", f"no {where} in the JSON")
        usage = obj.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        finish = choice.get("finish_reason")
        return Generation(req, text, completion_tokens=tokens if isinstance(tokens, int) else None,
                          finish_reason=finish if isinstance(finish, str) else None)
