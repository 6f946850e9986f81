"""Generation through an OpenAI-compatible HTTP endpoint (vLLM, SGLang, llama.cpp, TGI, OpenAI).

Spec: ``openai:http://host:port/v1#MODEL`` - the base URL the server's routes hang under, then the
served model name. The API key comes from an environment variable (``OPENAI_API_KEY`` unless told
otherwise) and is sent as ``Authorization: Bearer ...`` only when that variable is set, since local
servers need none. The key never appears in the identity, the signature, errors or logs: a server
that quotes it back in an error message, a non-JSON body or a redirect target has it masked as
``***`` before the text is shortened and shown (`OpenAIBackend._quote`, the one way server and
socket text enters a message).

Redirects are not followed. A 3xx answer to a POST is a one-line `BackendError` that names the
target: following it would send the key to wherever the server points (urllib keeps the
``Authorization`` header across hosts), and a 301/302 would silently turn the POST into a GET.
The user writes the final URL instead.

Wire format (one HTTP request per `Request`, ``n = 1``):

* text prompt -> ``POST {base}/completions`` with ``{"model", "prompt", "max_tokens",
  "temperature", "top_p", "n": 1, "seed"}``; the answer's ``choices[0].text``;
* chat -> ``POST {base}/chat/completions`` with ``"messages": [{"role", "content"}, ...]`` in place
  of ``"prompt"``; the answer's ``choices[0].message.content``.

Greedy is ``temperature = 0``. ``seed`` is `Request.stream_seed` for sampled requests (so a sample
is reproducible on its own, as in the local backend) and the run seed for greedy ones.
Sampling fields are all sent, every time. A server applies its own defaults to a field a request
leaves out - llama.cpp's are top_k 40, min_p 0.05 and (older builds) repeat_penalty 1.1 - so a
request that says nothing about them samples from a distribution the run never chose, while its
signature claims ``top_k:0``. With ``sampling_fields="extended"`` (the default) every request
therefore carries ``top_k`` (the user's value, else -1: "off" for llama.cpp, vLLM and SGLang
alike), ``min_p`` 0, ``repeat_penalty`` 1 (llama.cpp's name) and ``repetition_penalty`` 1
(vLLM's and SGLang's), beside the standard ``presence_penalty`` and ``frequency_penalty`` 0.
``sampling_fields="standard"`` sends only OpenAI's own fields, for api.openai.com, which answers
an unknown field with 400, and ``transformers serve``, which answers it with 422 (either error
names the way out); ``--top-k`` is then refused.
`OpenAIBackend.signature` records the fields sent, so results say what the server was told.
``finish_reason`` and ``usage.completion_tokens`` are kept when the server sends them.

Retry policy. Retried, with exponential backoff (``backoff * 2**k`` plus up to 25 % jitter so that
parallel workers do not retry in lockstep, capped at ``max_backoff``; a numeric ``Retry-After``
header replaces the computed delay): HTTP 408, 429 and every 5xx; timeouts; a connection reset or
closed before the whole answer arrived; and malformed answers (a body that is not JSON, or JSON
without ``choices[0].text`` / ``message.content``) - overloaded servers and proxies produce all
of these, and all of them go away on a second try. A body that is not UTF-8, not JSON, or JSON
nested deeper than `steadylm.io.MAX_JSON_DEPTH` (which would otherwise be a ``RecursionError``)
is malformed. Lone UTF-16 surrogates in the answer (JSON ``"\\ud800"``) cannot be written to
``cache.jsonl`` as UTF-8; they become U+FFFD, are counted (``surrogates_replaced``) and warned
about once on stderr. After ``max_retries`` retries the request
fails with a one-line `BackendError`. Not retried, because a second try gets the same answer:
401/403 (the key; the message names the environment variable), other 4xx such as 400 and 404
(a bad request or an unknown model; the message carries the server's own text). A refused
connection is retried twice, quickly, in case the server is just starting, then reported as
``cannot reach URL``. When one request fails for good, no new request is sent; those in flight
finish and are handed to ``on_result`` (so the cache keeps them), then the error is raised.

Timeouts. ``timeout`` bounds a whole attempt - connecting, sending, the status line, headers and
body - not one socket read: a server that drips a byte every half second would otherwise keep a
request alive for hours with a 60 s timeout. Each attempt has a deadline; a timer shuts the
attempt's socket down when it passes, which wakes the worker blocked reading it (a socket timeout
cannot do that: it restarts with every byte). The attempt then counts as timed out and is
retried. An interrupt (Ctrl-C in the calling thread) shuts down every socket in flight the same
way, so the workers end at once instead of holding the interpreter's exit until their reads give
up; what finished is already with ``on_result``.

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

import functools
import http.client
import json
import logging
import math
import os
import random
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence

from ...errors import BackendError, ConfigError, DataError
from ...io import loads_json
from .base import Backend, Capabilities, Generation, OnResult, Request, whole_characters

log = logging.getLogger(__name__)

SPEC_FORM = "openai:http(s)://HOST[:PORT]/PATH#MODEL (e.g. openai:http://127.0.0.1:8000/v1#my-model)"

# a refused connection: retried this many times, after these short delays (seconds), in case the
# server is still starting; a server that is down should be reported at once, not after minutes
REFUSED_RETRIES = 2
SAMPLING_FIELDS = ("extended", "standard")
# neutral ("off") values: the server's own defaults never decide how a sample is drawn
STANDARD_NEUTRAL: dict[str, Any] = {"presence_penalty": 0.0, "frequency_penalty": 0.0}
EXTENDED_NEUTRAL: dict[str, Any] = {"min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}
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
    """A request given up because another one failed for good, or the run was interrupted."""


def check_timeout(value: Any) -> float:
    """``value`` as seconds if it is a finite number > 0, else a one-line `ConfigError`: ``inf``
    would wait forever on a hung server, ``nan`` compares false with everything, 0 never waits.
    The one check of ``--timeout``, for the constructor and the CLI flags alike."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"--timeout must be a finite number of seconds > 0, got {value}")
    return t


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _server_message(body: bytes) -> str:
    """The human part of an error body: OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``, a plain ``{"message"}`` or ``{"error": "..."}``, else the raw text. Unshortened
    and unmasked: callers pass it through `OpenAIBackend._quote`."""
    text = body.decode("utf-8", errors="replace")
    try:
        obj, _ = loads_json(text, "error body", surrogates="replace")
    except DataError:
        return text if text.strip() else "no message"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for k in ("message", "detail", "error"):
            if obj.get(k):
                v = obj[k]
                return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return text if text.strip() else "no message"


class _Attempt:
    """One HTTP attempt and its deadline. The TCP socket is registered as soon as it connects
    (`track`); `cut` shuts it down - from the deadline's timer, or from an interrupt - which wakes
    a worker blocked reading it, TLS or not. ``expired`` tells the worker why its read failed."""

    def __init__(self, timeout: float):
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # a duplicate descriptor: shutdown acts on the connection
        self._cut = False
        self._timer = threading.Timer(timeout, self.cut, kwargs={"expired": True})
        self._timer.daemon = True  # never holds the interpreter's exit
        self._timer.start()

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self._cut:  # the deadline passed, or an interrupt came, while connecting
                _shutdown(sock)
            else:
                self._sock = sock.dup()
        return sock

    def cut(self, expired: bool = False) -> None:
        with self._lock:
            if self._cut:
                return
            self._cut, self.expired = True, expired
            if self._sock is not None:
                _shutdown(self._sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._cut = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


class _InFlight:
    """The attempts of one `OpenAIBackend.generate` call: ``abort`` stops new requests and retries
    (a fatal error: in-flight ones may finish); `interrupt` also cuts every attempt in flight and
    refuses new ones (Ctrl-C: nothing may keep a worker blocked)."""

    def __init__(self) -> None:
        self.abort = threading.Event()
        self._lock = threading.Lock()
        self._attempts: set[_Attempt] = set()
        self._interrupted = False

    def start(self, timeout: float) -> _Attempt:
        with self._lock:
            if self._interrupted:
                raise _Cancelled()
            attempt = _Attempt(timeout)
            self._attempts.add(attempt)
            return attempt

    def end(self, attempt: _Attempt) -> None:
        attempt.close()
        with self._lock:
            self._attempts.discard(attempt)

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            self.abort.set()  # wakes workers sleeping between retries
            for attempt in self._attempts:
                attempt.cut()


def _tracking(conn_class: type) -> type:
    """``conn_class`` (http.client's HTTP or HTTPS connection) that hands its TCP socket to an
    `_Attempt` the moment it connects, before any TLS handshake or byte of the answer."""

    class Tracked(conn_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, attempt: _Attempt, **kw: Any):
            super().__init__(*args, **kw)
            self._create_connection = lambda *a, **k: attempt.track(socket.create_connection(*a, **k))

    Tracked.__name__ = f"Tracked{conn_class.__name__}"
    return Tracked


_TRACKED = {c: _tracking(c) for c in (http.client.HTTPConnection, getattr(http.client, "HTTPSConnection", None)) if c}


class _TrackedOpen:
    """urllib's HTTP(S) handler, opening with `_tracking` connections; the attempt rides on the
    request (``req.attempt``)."""

    def do_open(self, http_class: type, req: urllib.request.Request, **kw: Any) -> Any:
        return super().do_open(functools.partial(_TRACKED[http_class], attempt=req.attempt), req, **kw)  # type: ignore[misc, attr-defined]


class _HTTPHandler(_TrackedOpen, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_TrackedOpen, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer stays an `urllib.error.HTTPError` (reported by `OpenAIBackend._http_error`):
    following it would carry the ``Authorization`` header to wherever the server points."""

    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


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
    # no log-probabilities, and the server may ignore the seed it is sent
    capabilities = Capabilities(chat=True)

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0,
                 sampling_fields: str = "extended"):
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
        timeout = check_timeout(timeout)
        if max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")
        if not backoff >= 0 or not max_backoff >= 0:
            raise ConfigError(f"backoff must be >= 0 seconds, got {backoff} (max {max_backoff})")
        if sampling_fields not in SAMPLING_FIELDS:
            raise ConfigError(f"--sampling-fields must be one of {', '.join(SAMPLING_FIELDS)}, got {sampling_fields!r}")
        self.sampling_fields = sampling_fields
        self.base_url = base_url.rstrip("/")
        self.model = model.strip()
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = int(concurrency), float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._rng = random.Random()
        self.surrogates_replaced = 0  # lone UTF-16 surrogates in answers, replaced by U+FFFD
        self._counts = threading.Lock()
        # a proxy from the environment cannot reach this machine's loopback; urllib would still use it
        handlers: list[urllib.request.BaseHandler] = [_HTTPHandler(), _HTTPSHandler(), _NoRedirects()]
        if parsed.hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))
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
                "concurrency": self.concurrency, "max_retries": self.max_retries,
                "sampling_fields": self.sampling_fields, "fields_sent": self._neutral(top_k=0)}

    def _neutral(self, top_k: int) -> dict[str, Any]:
        """The sampling fields every request carries beside temperature/top_p/seed (module docstring)."""
        if self.sampling_fields == "standard":
            return dict(STANDARD_NEUTRAL)
        return {**STANDARD_NEUTRAL, **EXTENDED_NEUTRAL, "top_k": top_k if top_k > 0 else -1}

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        if not requests:
            return []
        if self.sampling_fields == "standard" and any(r.settings.top_k > 0 and not r.settings.greedy for r in requests):
            raise ConfigError("--top-k is not an OpenAI field: it needs --sampling-fields extended "
                              "(vLLM, SGLang, llama.cpp servers)")
        flight = _InFlight()
        abort = flight.abort
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
                pending[pool.submit(self._generate_one, requests[i], flight)] = i

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
        except BaseException:  # Ctrl-C, or on_result/progress failed: unblock every worker, then leave
            flight.interrupt()
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
            **self._neutral(0 if s.greedy else s.top_k),
        }
        if req.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in req.messages]
            return "/chat/completions", body
        body["prompt"] = req.prompt
        return "/completions", body

    def _generate_one(self, req: Request, flight: _InFlight) -> Generation:
        """One request, retried per the policy in the module docstring. Runs in a worker thread."""
        route, body = self._body(req)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        chat = req.messages is not None
        attempts = refused = 0
        abort = flight.abort
        while True:
            attempts += 1
            try:
                return self._parse(req, self._post(route, data, flight), chat)
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

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "").strip()

    def _quote(self, text: str, limit: int = 200) -> str:
        """Text from the server or the socket layer, fit for a message: the key masked as ``***``
        (before shortening, so that no prefix of it survives a cut), on one line, at most
        ``limit`` characters."""
        key = self._key()
        return _short(text.replace(key, "***") if key else text, limit)

    def _headers(self) -> dict[str, str]:
        from ... import __version__

        h = {"Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": f"steadylm/{__version__}"}
        key = self._key()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _post(self, route: str, data: bytes, flight: _InFlight) -> bytes:
        """POST and return the body of a 2xx answer within ``timeout`` seconds all told; raise
        `_Retry`, `_Refused`, `_Cancelled` or `BackendError`."""
        attempt = flight.start(self.timeout)
        http_req = urllib.request.Request(self.base_url + route, data=data, headers=self._headers(), method="POST")
        http_req.attempt = attempt  # type: ignore[attr-defined]  # for _TrackedOpen
        try:
            body = self._exchange(http_req)
        except (_Retry, _Refused, BackendError):
            if not attempt.expired:
                raise
            body = b""
        finally:
            flight.end(attempt)
        if attempt.expired:  # cut at the deadline: whatever the read saw, it is a timeout
            raise _Retry("timed out", f"no answer within {self.timeout:g}s")
        return body

    def _exchange(self, http_req: urllib.request.Request) -> bytes:
        """`_post`'s wire part: open, read, classify what went wrong."""
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
            headers = e.headers or {}
            self._http_error(e.code, body, headers.get("Retry-After"), headers.get("Location"))
        except urllib.error.URLError as e:
            # urllib wraps errors raised while connecting and sending; unwrap to classify them
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                raise _Refused() from None
            if isinstance(reason, socket.gaierror):
                raise BackendError(f"cannot reach {self.base_url}: unknown host ({self._quote(str(reason))})") from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise BackendError(f"cannot reach {self.base_url}: TLS certificate not trusted ({self._quote(str(reason))})") from None
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retry("timed out", f"no answer within {self.timeout:g}s") from None
            if isinstance(reason, OSError):
                raise _Retry("connection failed", self._quote(f"{type(reason).__name__}: {reason}")) from None
            raise BackendError(f"cannot reach {self.base_url}: {self._quote(str(reason))}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry("timed out", f"no answer within {self.timeout:g}s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            # RemoteDisconnected, ConnectionResetError, IncompleteRead, BadStatusLine, ...
            raise _Retry("connection closed mid-answer", self._quote(f"{type(e).__name__}: {e}")) from None
        raise AssertionError("unreachable")  # pragma: no cover - _http_error always raises

    def _http_error(self, code: int, body: bytes, retry_after: str | None, location: str | None = None) -> None:
        msg = self._quote(_server_message(body))
        if 300 <= code < 400:
            where = f" redirect to {self._quote(location)}" if location else " redirect (no Location)"
            raise BackendError(f"{self.identity}: endpoint answered HTTP {code}{where}; steadylm does not follow "
                               f"redirects on POST (the API key must not leave for another host): use the final URL")
        if code == 429 or code == 408 or code >= 500:
            raise _Retry(f"HTTP {code}", msg, _retry_after(retry_after))
        if code in (401, 403):
            if self._key():
                raise BackendError(f"{self.identity}: endpoint refused the key (HTTP {code}): ${self.api_key_env} "
                                   f"is set but refused ({msg})")
            raise BackendError(f"{self.identity}: endpoint refused the request (HTTP {code}); "
                               f"set ${self.api_key_env} to its API key ({msg})")
        hint = ""
        if code in (400, 422) and self.sampling_fields == "extended" and any(
                f in msg for f in ("top_k", *EXTENDED_NEUTRAL)):
            hint = " (this server refuses the extended sampling fields: pass --sampling-fields standard)"
        raise BackendError(f"{self.identity}: HTTP {code}: {msg}{hint}")

    def _parse(self, req: Request, raw: bytes, chat: bool) -> Generation:
        try:
            obj, replaced = loads_json(raw.decode("utf-8"), "body", surrogates="replace")
        except (UnicodeDecodeError, DataError) as e:
            what = "body: not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
            raise _Retry("malformed answer", f"{what}: {self._quote(raw.decode('utf-8', 'replace'), 80)!r}") from None
        if replaced:
            self._surrogates(replaced)
        where = "choices[0].message.content" if chat else "choices[0].text"
        choices = obj.get("choices") if isinstance(obj, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            extra = f" ({self._quote(_server_message(raw))})" if isinstance(obj, dict) and "error" in obj else ""
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
        finish = finish if isinstance(finish, str) else None
        return Generation(req, whole_characters(text, finish), completion_tokens=tokens if isinstance(tokens, int) else None,
                          finish_reason=finish)

    def _surrogates(self, n: int) -> None:
        """Count lone surrogates replaced in an answer; say so once per backend."""
        with self._counts:
            first = self.surrogates_replaced == 0
            self.surrogates_replaced += n
        if first:
            sys.stderr.write(f"steadylm: warning: {self.identity} answered text with lone UTF-16 surrogates (not "
                             f"characters, e.g. \\ud800); replaced by U+FFFD so the outputs can be saved\n")
