"""OpenAIBackend against a real HTTP server (tests/openai_server.py) serving the nano model."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from openai_server import OpenAIServer
from steadylm.errors import BackendError, ConfigError, SteadyError
from steadylm.evaluate.backends import GenerationCache, generate_cached, open_backend
from steadylm.evaluate.backends.base import DecodingSettings, Request, whole_characters
from steadylm.evaluate.backends.openai import OpenAIBackend

GREEDY = DecodingSettings(temperature=0.0, max_new_tokens=8)
SAMPLED = DecodingSettings(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8)
PROMPTS = ["The", "def f(x):\n    return", "import os", "class A:", "梯度裁剪", "Return the"]
KEY_ENV = "STEADYLM_TEST_OPENAI_KEY"


@pytest.fixture(scope="module")
def server(nano_model_dir):
    with OpenAIServer(nano_model_dir, slow_seconds=1.5) as s:
        yield s


@pytest.fixture
def srv(server, monkeypatch):
    """The shared server, with counters, faults, delay and key cleared for each test."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.reset()
    yield server
    server.reset()


def backend(server, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 20.0)
    kw.setdefault("api_key_env", KEY_ENV)
    return OpenAIBackend.from_spec(server.spec(), **kw)


def reqs(prompts, settings=GREEDY, seed=0, sample=0):
    return [Request(prompt_id=f"p{i}", sample=sample, seed=seed, settings=settings, prompt=p) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def reference(nano_model_dir):
    """Greedy continuations from transformers' own ``generate``, decoded as the server decodes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(nano_model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(nano_model_dir), local_files_only=True).eval()

    def run(prompt: str, max_new_tokens: int = 8) -> str:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        new = [t for t in out[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
        return tok.decode(new, skip_special_tokens=True)

    return run


# ---------------------------------------------------------------------- the wire format
def test_greedy_completion_equals_transformers_generate(srv, reference):
    gens = backend(srv).generate(reqs(PROMPTS))
    # what the server sent; a row cut at the token limit drops a partial character's U+FFFD, as local rows do
    assert [g.text for g in gens] == [whole_characters(reference(p), g.finish_reason) for p, g in zip(PROMPTS, gens)]
    assert all(g.finish_reason in ("stop", "length") and 1 <= g.completion_tokens <= 8 for g in gens)
    assert any(g.text for g in gens)  # a random model still says something
    body = srv.bodies[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 8 and body["n"] == 1 and body["seed"] == 0
    assert body["model"] == srv.model_name
    # every sampling field is sent, at its "off" value: no server default decides the sample
    assert (body["top_k"], body["min_p"], body["repeat_penalty"], body["repetition_penalty"]) == (-1, 0.0, 1.0, 1.0)
    assert body["presence_penalty"] == body["frequency_penalty"] == 0.0


def test_server_defaults_never_apply(srv, nano_model_dir):
    """A llama.cpp-style server fills fields a request leaves out with its own defaults (top_k 40,
    min_p 0.05). Sent explicitly at their neutral values, the samples are the unrestricted ones
    the local backend draws; left out (the old wire format), they were not."""
    srv.missing_defaults = {"top_k": 3}  # a small k makes the server's default visible in 8 tokens
    st = DecodingSettings(temperature=1.0, max_new_tokens=8)
    rq = [Request(prompt_id=f"p{i}", sample=k, seed=1, settings=st, prompt="<|endoftext|>" + p)
          for i, p in enumerate(PROMPTS[:3]) for k in range(3)]
    local = [g.text for g in open_backend(str(nano_model_dir)).generate(rq)]
    assert [g.text for g in backend(srv).generate(rq)] == local
    assert backend(srv).signature()["fields_sent"]["top_k"] == -1
    # the standard wire format leaves top_k out, so this server's default applies: different samples
    assert [g.text for g in backend(srv, sampling_fields="standard").generate(rq)] != local


def test_standard_sampling_fields_for_openai(srv):
    """api.openai.com answers an unknown field with 400, transformers serve with 422: the message
    names --sampling-fields, and the standard wire format sends OpenAI's own fields only."""
    srv.unknown_field_error = "min_p"
    for status in (400, 422):
        srv.unknown_field_status = status
        with pytest.raises(BackendError, match=f"HTTP {status}: .*--sampling-fields standard"):
            backend(srv).generate(reqs(PROMPTS[:1]))
    srv.bodies.clear()
    assert backend(srv, sampling_fields="standard").generate(reqs(PROMPTS[:1]))[0].finish_reason
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & set(srv.bodies[0])
    with pytest.raises(ConfigError, match="--top-k"):
        backend(srv, sampling_fields="standard").generate(
            [Request(prompt_id="p", sample=0, seed=0, settings=SAMPLED, prompt="The")])


def test_chat_uses_chat_route_and_matches_the_rendered_prompt(srv):
    be = backend(srv)
    chat = Request(prompt_id="c", sample=0, seed=0, settings=GREEDY, messages=(("system", "Be brief."), ("user", "def f(x):")))
    plain = Request(prompt_id="c", sample=0, seed=0, settings=GREEDY, prompt="system: Be brief.\nuser: def f(x):\nassistant:")
    got_chat, got_plain = be.generate([chat, plain])
    assert got_chat.text == got_plain.text
    assert got_chat.finish_reason in ("stop", "length")
    bodies = sorted(srv.bodies, key=lambda b: "messages" in b)
    assert bodies[1]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):"}]
    assert "prompt" not in bodies[1]


def test_sampling_follows_the_stream_seed(srv):
    be = backend(srv)
    a = Request(prompt_id="p", sample=3, seed=7, settings=SAMPLED, prompt="The")
    again = Request(prompt_id="p", sample=3, seed=7, settings=SAMPLED, prompt="The", repeat=1)
    others = [Request(prompt_id="p", sample=s, seed=7, settings=SAMPLED, prompt="The") for s in range(5)]
    gens = be.generate([a, again, *others])
    assert gens[0].text == gens[1].text == gens[2 + 3].text  # same stream seed, same text
    assert len({g.text for g in gens[2:]}) >= 3  # five streams rarely collide on a random model
    sent = {b["seed"] for b in srv.bodies}
    assert a.stream_seed in sent and all(b["top_k"] == 50 and b["top_p"] == 0.95 for b in srv.bodies)


def test_models_route(srv):
    with urllib.request.urlopen(srv.url + "/models", timeout=10) as r:
        data = json.load(r)
    assert data["data"][0]["id"] == srv.model_name


# ---------------------------------------------------------------------- retries
@pytest.mark.parametrize("kind", ["429", "500", "garbage", "missing", "reset", "slow"])
def test_each_transient_fault_is_retried_then_succeeds(srv, reference, kind):
    n = 1 if kind == "slow" else 2  # "slow" costs a client timeout per fault
    srv.fail_next(kind, n)
    be = backend(srv, max_retries=3, timeout=0.75 if kind == "slow" else 20.0)
    [gen] = be.generate(reqs(["The"]))
    assert gen.text == reference("The")
    assert srv.requests_seen == 1 + n


def test_exhausted_retries_raise_one_line_error(srv):
    srv.fail_next("500", 10)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as ei:
        backend(srv, max_retries=2).generate(reqs(["The"]))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"openai:{srv.url}#{srv.model_name}: HTTP 500 after 3 attempts")
    assert "internal server error" in msg  # the server's own words
    assert srv.requests_seen == 3 and time.monotonic() - t0 < 5


def test_retry_after_is_honoured_over_a_long_backoff(srv):
    srv.fail_next("429", 2)  # Retry-After: 0
    t0 = time.monotonic()
    backend(srv, backoff=5.0).generate(reqs(["The"]))
    assert time.monotonic() - t0 < 4 and srv.requests_seen == 3


def test_malformed_answer_after_retries_says_what_is_missing(srv):
    srv.fail_next("missing", 5)
    with pytest.raises(BackendError, match=r"malformed answer after 2 attempts: no choices\[0\]\.text"):
        backend(srv, max_retries=1).generate(reqs(["The"]))


# ---------------------------------------------------------------------- fatal errors
def test_401_without_key_names_the_variable(srv):
    srv.required_key = "sekrit-123"
    with pytest.raises(BackendError, match=f"HTTP 401.*set \\${KEY_ENV}") as ei:
        backend(srv).generate(reqs(["The"]))
    assert "\n" not in str(ei.value) and srv.requests_seen == 1  # not retried


def test_401_with_wrong_key_says_it_is_set_but_refused(srv, monkeypatch):
    srv.required_key = "sekrit-123"
    monkeypatch.setenv(KEY_ENV, "wrong-key-456")
    with pytest.raises(BackendError, match=f"\\${KEY_ENV} is set but refused") as ei:
        backend(srv).generate(reqs(["The"]))
    assert "wrong-key-456" not in str(ei.value) and srv.requests_seen == 1


def test_right_key_is_sent_as_bearer_and_kept_out_of_identity(srv, monkeypatch, reference):
    srv.required_key = "sekrit-123"
    monkeypatch.setenv(KEY_ENV, "sekrit-123")
    be = backend(srv)
    [gen] = be.generate(reqs(["The"]))
    assert gen.text == reference("The")
    assert "sekrit" not in be.identity and "sekrit" not in json.dumps(be.signature())


def test_unknown_model_is_a_fatal_404_with_the_server_message(srv):
    be = OpenAIBackend.from_spec(f"openai:{srv.url}#no-such-model", backoff=0.01, api_key_env=KEY_ENV)
    with pytest.raises(BackendError, match="HTTP 404: The model `no-such-model` does not exist"):
        be.generate(reqs(["The"]))
    assert srv.requests_seen == 1


def test_unreachable_port_fails_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    be = OpenAIBackend.from_spec(f"openai:http://127.0.0.1:{port}/v1#m")  # default backoff
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}/v1: connection refused"):
        be.generate(reqs(["The", "import os"]))
    assert time.monotonic() - t0 < 3


def test_fatal_error_keeps_in_flight_results_in_the_cache(srv, tmp_path):
    srv.delay = 0.2
    srv.fail_next("400")  # the first request to arrive fails at once; three others are in flight
    cache = GenerationCache(tmp_path / "gen.jsonl")
    with pytest.raises(BackendError, match="HTTP 400: bad request"):
        generate_cached(backend(srv, concurrency=4), reqs(PROMPTS * 2), cache)
    cache.close()
    assert srv.requests_seen == 4  # nothing new submitted after the failure
    assert len(GenerationCache(tmp_path / "gen.jsonl")) == 3


def test_fatal_error_part_way_keeps_what_finished(srv, tmp_path):
    srv.fail_next("401", after=3)
    cache = GenerationCache(tmp_path / "gen.jsonl")
    rs = reqs(PROMPTS)
    be = backend(srv, concurrency=1)
    with pytest.raises(BackendError, match="HTTP 401"):
        generate_cached(be, rs, cache)
    cache.close()
    reopened = GenerationCache(tmp_path / "gen.jsonl")
    assert [reopened.get(r.key(be.identity)) is not None for r in rs] == [True] * 3 + [False] * 3
    # the rest are generated on the next run; the first three come from the cache
    srv.reset()
    gens = generate_cached(be, rs, reopened)
    assert [g.cached for g in gens] == [True] * 3 + [False] * 3 and srv.requests_seen == 3


# ---------------------------------------------------------------------- concurrency and cache
def test_concurrency_is_bounded_and_reached(srv):
    srv.delay = 0.2
    rs = reqs(PROMPTS * 2)
    done: list[int] = []
    ticks: list[int] = []
    gens = backend(srv, concurrency=4).generate(rs, on_result=lambda i, g: done.append(i), progress=ticks.append)
    assert srv.max_in_flight == 4 and srv.requests_seen == 12
    assert [g.request for g in gens] == rs and sorted(done) == list(range(12)) and ticks == [1] * 12
    assert [g.text for g in gens[:6]] == [g.text for g in gens[6:]]  # in the order given


def test_second_cached_run_sends_nothing(srv, tmp_path):
    be = backend(srv)
    rs = reqs(PROMPTS[:3]) + reqs(PROMPTS[:2], settings=SAMPLED, seed=1)
    cache = GenerationCache(tmp_path / "gen.jsonl")
    first = generate_cached(be, rs, cache)
    cache.close()
    assert srv.requests_seen == 5
    cache = GenerationCache(tmp_path / "gen.jsonl")
    ticks: list[int] = []
    second = generate_cached(be, rs, cache, progress=ticks.append)
    cache.close()
    assert srv.requests_seen == 5 and sum(ticks) == 5
    assert [g.text for g in second] == [g.text for g in first] and all(g.cached for g in second)
    assert [g.finish_reason for g in second] == [g.finish_reason for g in first]


# ---------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec", [
    "openai:http://127.0.0.1:8000/v1",          # no model
    "openai:http://127.0.0.1:8000/v1#",         # empty model
    "openai:http://127.0.0.1:8000/v1#  ",       # blank model
    "openai:127.0.0.1:8000/v1#m",               # no scheme
    "openai:ftp://127.0.0.1/v1#m",              # wrong scheme
    "openai:http://#m",                         # no host
    "openai:http://user:pw@127.0.0.1/v1#m",     # credentials in the URL
])
def test_bad_specs_are_config_errors(spec):
    with pytest.raises(ConfigError) as ei:
        open_backend(spec)
    msg = str(ei.value)
    assert "\n" not in msg and isinstance(ei.value, SteadyError)
    assert "pw" not in msg
    assert "openai:http(s)://HOST" in msg or "credentials" in msg


def test_spec_identity_and_signature():
    be = OpenAIBackend.from_spec("openai:https://api.example.com/v1/#gpt-x", concurrency=3, max_retries=2)
    assert be.kind == "openai" and be.identity == "openai:https://api.example.com/v1#gpt-x"
    assert be.signature() == {"backend": "openai", "url": "https://api.example.com/v1", "model": "gpt-x",
                              "concurrency": 3, "max_retries": 2, "sampling_fields": "extended",
                              "fields_sent": {"presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0,
                                              "repeat_penalty": 1.0, "repetition_penalty": 1.0, "top_k": -1}}
    with pytest.raises(ConfigError, match="--concurrency"):
        OpenAIBackend.from_spec("openai:http://h/v1#m", concurrency=0)
