"""eval generation against an OpenAI-compatible server started by the test (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import one_line_error, run_in_process
from openai_server import OpenAIServer
from steadylm.evaluate.backends import DecodingSettings, Request


@pytest.fixture(scope="module")
def server(nano_model_dir):
    with OpenAIServer(nano_model_dir, model_name="nano") as s:
        yield s


@pytest.fixture()
def prompts(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [{"id": "a", "prompt": "The module", "reference": "A module is a file."},
            {"id": "b", "prompt": "大语言模型", "reference": "稳定性"},
            {"id": "c", "messages": [{"role": "user", "content": "What is a loop?"}], "answer": "repetition"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_sampled_http_equals_local(server, nano_model_dir):
    """The same request, served over HTTP or generated locally, gives the same sample: both draw
    from the request's own stream seed."""
    from steadylm.evaluate.backends import open_backend

    # a served model gets the tokenizer's own special-token rule (as vLLM does), and steadylm's
    # tokenizer adds none, so the prompts carry the BOS the local backend puts in front

    st = DecodingSettings(temperature=0.9, top_k=40, max_new_tokens=8)
    reqs = [Request(f"p{i}", k, 3, st, prompt="<|endoftext|>" + p)
            for i, p in enumerate(["The loop", "Hello", "大语言"]) for k in range(2)]
    http = [g.text for g in open_backend(server.spec(), concurrency=3).generate(reqs)]
    local = [g.text for g in open_backend(str(nano_model_dir)).generate(reqs)]
    assert http == local


def test_eval_generation_over_http_resumes(server, prompts, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "generation", "--model", server.spec(), "--prompts", str(prompts), "--samples", "2",
            "--max-new-tokens", "6", "--determinism-prompts", "2", "--determinism-runs", "2", "--bootstrap", "200",
            "--concurrency", "3", "--out", str(out), "--json"]
    server.reset()
    r = run_in_process(*args)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["signature"]["backend"]["backend"] == "openai" and res["counts"]["generations"] == 6
    assert res["reference"]["measured"] and res["consistency"]["across_samples"]["measured"]
    assert res["degeneration"]["next_token"]["measured"] is False  # no logits over HTTP: said, not faked
    assert res["determinism"]["batch_invariance"]["measured"] and res["determinism"]["environments"]["measured"] is False
    assert server.max_in_flight <= 3
    seen = server.requests_seen
    # the same command again: every request comes from the cache, none reaches the server
    r2 = run_in_process(*args)
    assert r2.returncode == 0, r2.stderr
    assert server.requests_seen == seen
    assert json.loads(r2.stdout)["counts"]["from_cache"] == 6


def test_server_failure_keeps_finished_work(server, prompts, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "generation", "--model", server.spec(), "--prompts", str(prompts), "--samples", "2",
            "--max-new-tokens", "6", "--no-determinism", "--concurrency", "1", "--out", str(out)]
    server.reset()
    server.fail_next("401", n=10, after=3)
    r = run_in_process(*args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "OPENAI_API_KEY" in r.stderr and "finished generations are kept" in r.stderr
    assert len((out / "cache.jsonl").read_text().splitlines()) == 3
    server.reset()
    r = run_in_process(*args)
    assert r.returncode == 0, r.stderr
    assert server.requests_seen == 6 - 3  # only what was missing


def test_unreachable_endpoint(tmp_path, prompts, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    one_line_error(capsys, ["eval", "generation", "--model", f"openai:http://127.0.0.1:{port}/v1#m", "--prompts", str(prompts),
                            "--out", str(tmp_path / "o")], "cannot reach")
    one_line_error(capsys, ["eval", "generation", "--model", "openai:localhost:8000", "--prompts", str(prompts)],
                   "bad endpoint spec 'openai:localhost:8000': no '#MODEL'")


def test_a_server_that_ignores_sampling_is_flagged(server, prompts, tmp_path):
    """A server decoding greedily at T = 1 makes every sample identical and every consistency score
    perfect: results.json, the terminal and the report say so; a sampling server gets no warning."""
    args = ["eval", "generation", "--model", server.spec(), "--prompts", str(prompts), "--samples", "2", "--seeds", "0,1",
            "--max-new-tokens", "6", "--no-determinism", "--bootstrap", "200", "--concurrency", "2"]
    server.reset()
    server.greedy_always = True
    r = run_in_process(*args, "--out", str(tmp_path / "greedy"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "greedy" / "results.json").read_text())
    assert len(res["warnings"]) == 1 and "identical" in res["warnings"][0]
    assert "warning:" in r.stdout and "ignoring the sampling settings" in " ".join(r.stdout.split())
    rep = run_in_process("report", str(tmp_path / "greedy"), "-o", str(tmp_path / "r.html"))
    assert rep.returncode == 0, rep.stderr
    assert "ignoring the sampling settings" in (tmp_path / "r.html").read_text()
    server.reset()
    r = run_in_process(*args, "--out", str(tmp_path / "sampled"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "sampled" / "results.json").read_text())["warnings"] == []


def test_sweep_decoding_takes_the_endpoint_flags(server, prompts, tmp_path):
    """sweep decoding evaluates served models too, so it sends requests the way the endpoint flags say."""
    server.reset()
    r = run_in_process("sweep", "decoding", "--model", server.spec(), "--prompts", str(prompts), "--temperatures", "0.7",
                       "--top-ps", "1.0", "--samples", "2", "--max-new-tokens", "4", "--bootstrap", "100",
                       "--concurrency", "1", "--sampling-fields", "standard", "--out", str(tmp_path / "dec"), "--json")
    assert r.returncode == 0, r.stderr
    assert server.max_in_flight == 1 and server.bodies
    assert all("min_p" not in b and "repetition_penalty" not in b for b in server.bodies)
