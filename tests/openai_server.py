"""A real OpenAI-compatible server for tests: a Hugging Face causal LM behind ``http.server``.

``OpenAIServer(model_dir)`` serves ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a daemon thread, in the wire format
vLLM speaks: prompts encoded with the tokenizer's own special-token rule, greedy decoding at
``temperature == 0``, else sampling from a ``torch.Generator`` seeded with the request's
``seed`` after HF's temperature / top-k / top-p warpers (the local backend samples the same way);
generation stops at EOS (``finish_reason = "stop"``) or after ``max_tokens`` (``"length"``).
A prompt that does not fit the context gets a 400, an unknown model a 404, as in vLLM.

Decoding is a hand-written KV-cache loop rather than ``model.generate`` so that the greedy test,
which compares against ``generate``, checks this server rather than comparing generate to itself.

Knobs for tests: ``delay`` (seconds each request waits, to measure concurrency),
``required_key`` (a bearer token; other requests get 401), ``fail_next(kind, n, after=)`` to inject
faults, and counters ``requests_seen`` and ``max_in_flight``.
"""

from __future__ import annotations

import collections
import inspect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS = ("429", "500", "garbage", "missing", "slow", "reset", "400", "401", "404")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "steadylm-test-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length else b"")

    def _serve(self, raw: bytes) -> None:
        owner: OpenAIServer = self.server.owner  # type: ignore[attr-defined]
        owner._enter()
        try:
            answer = owner._answer(self.command, self.path, dict(self.headers.items()), raw)
        finally:
            # counted out before the answer is written: the client cannot start its next request
            # before it has read this answer, so the peak here never exceeds the client's own
            owner._leave()
        if answer is None:  # "reset": close the connection without a word
            self.close_connection = True
            return
        status, headers, body = answer
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left ("slow")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # no tracebacks on stderr
        pass


class OpenAIServer:
    """Serve the causal LM in ``model_dir`` over the OpenAI wire format; a context manager."""

    def __init__(self, model_dir: str | Path, *, model_name: str | None = None, slow_seconds: float = 2.0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.model_name = model_name or Path(model_dir).name
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)
        # transformers 5.x renamed the KV-cache argument and output `past_key_values` -> `cache`
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.slow_seconds = slow_seconds
        self.delay = 0.0
        self.required_key: str | None = None
        # fields a request leaves out get these values, as llama.cpp's server does (top_k 40, ...)
        self.missing_defaults: dict[str, Any] = {}
        self.unknown_field_error: str | None = None  # refuse this field with 400, as api.openai.com does
        self.unknown_field_status = 400  # transformers serve (FastAPI's validation) answers 422
        self.greedy_always = False  # decode greedily whatever the request says (transformers serve's default)
        self.requests_seen = 0
        self.max_in_flight = 0
        self.in_flight = 0
        self.bodies: list[dict[str, Any]] = []  # the JSON bodies received, for wire-format checks
        self._faults: collections.deque[str | None] = collections.deque()
        self._state = threading.Lock()
        self._model_lock = threading.Lock()  # one generation at a time; the test process keeps its threads
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "OpenAIServer":
        self._httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def spec(self, model: str | None = None) -> str:
        return f"openai:{self.url}#{model or self.model_name}"

    # ------------------------------------------------------------------ test knobs
    def reset(self) -> None:
        """Forget counters, faults, delay and key (between tests sharing one server), once the
        requests of the test before have left (a "slow" answer a client gave up on is still
        sleeping here, and would count as in flight for the next test)."""
        for _ in range(200):  # at most 10 s
            with self._state:
                if self.in_flight == 0:
                    break
            threading.Event().wait(0.05)
        with self._state:
            self.requests_seen = self.max_in_flight = 0
            self._faults.clear()
            self.bodies.clear()
        self.delay, self.required_key = 0.0, None
        self.missing_defaults, self.unknown_field_error, self.greedy_always = {}, None, False
        self.unknown_field_status = 400

    def fail_next(self, kind: str, n: int = 1, *, after: int = 0) -> None:
        """Answer the next ``n`` requests (after ``after`` normal ones) with fault ``kind``:
        "429" (with Retry-After: 0), "500", "garbage" (200, not JSON), "missing" (200 JSON without
        choices), "slow" (answer after ``slow_seconds``), "reset" (close without answering),
        "400", "401", "404"."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._state:
            self._faults.extend([None] * after + [kind] * n)

    # ------------------------------------------------------------------ handling
    def _enter(self) -> None:
        with self._state:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._state:
            self.in_flight -= 1

    def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes):
        with self._state:
            self.requests_seen += 1
            fault = self._faults.popleft() if self._faults else None
        if fault == "reset":
            return None
        if fault == "slow":
            time.sleep(self.slow_seconds)
        elif fault == "429":
            status, h, body = _error(429, "rate limited, slow down", "rate_limit_error")
            return status, {**h, "Retry-After": "0"}, body
        elif fault == "500":
            return _error(500, "internal server error (injected)", "server_error")
        elif fault == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"
        elif fault == "missing":
            return 200, {"Content-Type": "application/json"}, json.dumps({"id": "cmpl-x", "object": "text_completion"}).encode()
        elif fault == "400":
            return _error(400, "bad request (injected)")
        elif fault == "401":
            return _error(401, "invalid API key (injected)", "authentication_error")
        elif fault == "404":
            return _error(404, "not found (injected)", "NotFoundError")

        if self.required_key is not None:
            auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
            if auth != f"Bearer {self.required_key}":
                return _error(401, "Incorrect API key provided.", "authentication_error")
        if self.delay:
            time.sleep(self.delay)

        route = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and route == "/v1/models":
            data = [{"id": self.model_name, "object": "model", "owned_by": "steadylm-tests", "max_model_len": self.context}]
            return 200, {"Content-Type": "application/json"}, json.dumps({"object": "list", "data": data}).encode()
        if method != "POST" or route not in ("/v1/completions", "/v1/chat/completions"):
            return _error(404, f"no route {method} {path}", "NotFoundError")
        try:
            body = json.loads(raw.decode("utf-8"))
            assert isinstance(body, dict)
        except Exception:
            return _error(400, "request body is not a JSON object")
        with self._state:
            self.bodies.append(body)
        chat = route.endswith("/chat/completions")
        return self._complete(body, chat)

    def _complete(self, body: dict[str, Any], chat: bool):
        if body.get("model") != self.model_name:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("n", 1) != 1:
            return _error(400, "only n=1 is supported")
        if self.unknown_field_error is not None and self.unknown_field_error in body:
            return _error(self.unknown_field_status, f"Unrecognized request argument supplied: {self.unknown_field_error}")
        body = {**self.missing_defaults, **body, **({"temperature": 0.0} if self.greedy_always else {})}
        try:
            max_tokens = int(body.get("max_tokens", 16))
            temperature = float(body.get("temperature", 1.0))
            top_p = float(body.get("top_p", 1.0))
            top_k = int(body.get("top_k", 0) or 0)
            seed = body.get("seed")
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError) as e:
            return _error(400, f"bad sampling parameter: {e}")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return _error(400, "messages must be a list of {role, content}")
            if getattr(self.tokenizer, "chat_template", None):
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict):  # newer transformers return a BatchEncoding
                    ids = ids["input_ids"]
                ids = list(ids)
            else:
                text = "".join(f"{m.get('role')}: {m.get('content')}\n" for m in messages) + "assistant:"
                ids = self.tokenizer(text)["input_ids"]
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return _error(400, "prompt must be a string")
            ids = self.tokenizer(prompt)["input_ids"]  # the tokenizer's own special-token rule, as vLLM
        if not ids:
            ids = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else next(iter(self.eos_ids))]
        if len(ids) + max_tokens > self.context:
            return _error(400, f"This model's maximum context length is {self.context} tokens. However, you "
                               f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
                               f"{max_tokens} in the completion).")
        with self._model_lock:
            out, finish = self.generate_ids(ids, max_tokens, temperature, top_p, top_k, seed)
        text = self.tokenizer.decode([t for t in out if t not in self.eos_ids], skip_special_tokens=True)
        with self._state:
            self._ids += 1
            rid = self._ids
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1_700_000_000,  # a fixed wire-format timestamp: nothing reads it
            "model": self.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)},
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(answer, ensure_ascii=False).encode("utf-8")

    def generate_ids(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, top_k: int,
                     seed: int | None) -> tuple[list[int], str]:
        """Token ids after ``ids`` (EOS included when reached) and the finish reason."""
        torch = self.torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        gen = None
        warpers = LogitsProcessorList()
        if temperature > 0:
            gen = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns()) & (2**63 - 1))
            warpers.append(TemperatureLogitsWarper(temperature))
            if top_k > 0:
                warpers.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
        seq = torch.tensor([ids])  # (1, T)
        step_input, past, out = seq, {}, []
        with torch.no_grad():
            for _ in range(max_tokens):
                mask = torch.ones(1, seq.shape[1], dtype=torch.long)  # (1, T so far)
                o = self.model(input_ids=step_input, attention_mask=mask, use_cache=True, logits_to_keep=1, **past)
                past = {self._cache_kw: getattr(o, self._cache_kw)}
                logits = o.logits[:, -1, :].float()  # (1, V)
                if gen is None:
                    nxt = int(logits.argmax(dim=-1))
                else:
                    probs = torch.softmax(warpers(seq, logits), dim=-1)  # (1, V)
                    nxt = int(torch.multinomial(probs[0], 1, generator=gen))
                out.append(nxt)
                if nxt in self.eos_ids:
                    return out, "stop"
                step_input = torch.tensor([[nxt]])  # (1, 1)
                seq = torch.cat([seq, step_input], dim=1)
        return out, "length"
