"""Hostile inputs to every reader: FIFOs and devices, over-long lines, JSON nested absurdly deep,
lone surrogates, a cache torn by a kill, a prompt of megabytes, a hand-edited key file.

Each case is one the readers got wrong before `steadylm.io` (a hang, unbounded memory, a
traceback, a lost cache entry); each now gets one line naming the file (and line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import one_line_error as _one_line
from steadylm.errors import DataError
from steadylm.io import MAX_JSON_DEPTH, MAX_LINE_BYTES, iter_jsonl, loads_json

DEEP = "[" * 1000 + "]" * 1000  # nested 1,000 levels: RecursionError in json.loads before


# --------------------------------------------------------------------------- FIFOs and devices

def test_fifo_and_dev_zero_are_refused_at_once(tmp_path):
    """A FIFO with no writer blocked open() forever, and /dev/zero grew memory without bound: in a
    child process with a memory cap and a time limit, every reader must answer with an error."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        from steadylm.data.sources import load_documents
        from steadylm.evaluate.prompts import load_prompts
        from steadylm.errors import SteadyError
        from steadylm import cli
        for path in ({str(fifo)!r}, "/dev/zero"):
            for name, call in (("data", load_documents), ("prompts", load_prompts)):
                try:
                    call(path)
                    print(name, path, "ACCEPTED")
                except SteadyError as e:
                    print(name, path, "->", e)
            print("perturb", path, "rc", cli.main(["perturb", "--kind", "typo", path]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 6, r.stdout
    for line in out[:2]:
        assert "is a FIFO" in line, line
    assert "is a device" in out[3] and "is a device" in out[4], r.stdout
    assert out[2].endswith("rc 2") and out[5].endswith("rc 2"), r.stdout
    assert r.stderr.count("steadylm: error:") == 2 and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- over-long lines

def test_over_long_line_is_refused_with_the_limit(tmp_path, capsys):
    big = "x" * (MAX_LINE_BYTES + 10)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "' + big + '"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:2: line longer than 16 MiB"):
        from steadylm.evaluate.prompts import read_prompts_jsonl

        read_prompts_jsonl(prompts)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "' + big + '"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:1: line longer than 16 MiB"):
        from steadylm.data.sources import load_documents

        load_documents(str(data))
    text = tmp_path / "lines.txt"
    text.write_text("short\n" + big, encoding="utf-8")
    _one_line(capsys, ["perturb", "--kind", "typo", str(text)], "lines.txt:2: line longer than 16 MiB")


def test_a_line_of_exactly_the_limit_is_read():
    import io as stdio

    from steadylm.io import _raw_lines

    f = stdio.BytesIO(b"a" * 8 + b"\n" + b"b" * 8)
    assert [(n, len(raw), ended) for n, raw, ended in _raw_lines(f, "x", DataError, 8)] == [(1, 8, True), (2, 8, False)]
    with pytest.raises(DataError, match="x:1: line longer"):
        list(_raw_lines(stdio.BytesIO(b"a" * 9 + b"\n"), "x", DataError, 8))


# --------------------------------------------------------------------------- deep JSON and surrogates

def test_loads_json_limits():
    value, depth = loads_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x"), 1
    while value:
        [value] = value
        depth += 1
    assert value == [] and depth == MAX_JSON_DEPTH  # read whole: lists nested exactly that deep
    for text in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), DEEP, "[" * 100_000 + "]" * 100_000,
                 '{"a": ' * 500 + "1" + "}" * 500):
        with pytest.raises(DataError, match=r"^x: JSON nested deeper than 100 levels"):
            loads_json(text, "x")
    assert loads_json('"\\ud83d\\ude00"', "x") == "\U0001f600"  # a surrogate pair is a character
    with pytest.raises(DataError, match="x: text holds a lone surrogate"):
        loads_json('{"t": ["ok", "a\\udc00b"]}', "x")
    with pytest.raises(DataError, match="lone surrogate"):
        loads_json('{"\\ud800": 1}', "x")  # in a key too
    assert loads_json('{"t": "a\\ud800b"}', "x", surrogates="replace") == ({"t": "a\ufffdb"}, 1)


@pytest.mark.parametrize("line,fragment", [
    (json.dumps({"text": "a"})[:-1] + ', "x": ' + DEEP + "}", "data.jsonl:2: JSON nested deeper than 100 levels"),
    ('{"text": "caf\\ud800"}', "data.jsonl:2: text holds a lone surrogate"),
])
def test_training_data_hostile_lines(tmp_path, line, fragment):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    from steadylm.data.sources import load_documents

    with pytest.raises(DataError, match=fragment.replace(".", r"\.")):
        load_documents(str(data))


@pytest.mark.parametrize("row,fragment", [
    ('{"prompt": "x", "meta": ' + DEEP + "}", "p.jsonl:2: JSON nested deeper"),
    ('{"prompt": "bad \\udfff text"}', "p.jsonl:2: text holds a lone surrogate"),
    ('{"id": "\\ud800", "prompt": "x"}', "p.jsonl:2: text holds a lone surrogate"),
])
def test_prompt_file_hostile_lines(tmp_path, row, fragment):
    from steadylm.evaluate.prompts import read_prompts_jsonl

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n' + row + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=fragment):
        read_prompts_jsonl(p)


def _results_dir(root: Path, results_text: str) -> Path:
    d = root / "gen"
    d.mkdir()
    (d / "results.json").write_text(results_text, encoding="utf-8")
    (d / "generations.jsonl").write_text(json.dumps({"prompt_id": "a", "seed": 0, "sample": 0, "text": "t"}) + "\n",
                                         encoding="utf-8")
    (d / "prompts.jsonl").write_text(json.dumps({"id": "a", "prompt": "p"}) + "\n", encoding="utf-8")
    return d


@pytest.mark.parametrize("results_text,fragment", [
    ('{"signature": ' + DEEP + "}", "JSON nested deeper than 100 levels"),
    ('{"signature": {"string": "\\ud800"}}', "lone surrogate"),
])
def test_results_files_hostile(tmp_path, capsys, results_text, fragment):
    d = _results_dir(tmp_path, results_text)
    line = _one_line(capsys, ["report", str(d), "-o", str(tmp_path / "r.html")], fragment)
    assert "results.json" in line
    (tmp_path / "b").mkdir()
    other = _results_dir(tmp_path / "b", "{}")
    _one_line(capsys, ["compare", str(d), str(other)], fragment)


def test_ratings_key_and_candidates_hostile(tmp_path, capsys):
    key = tmp_path / "ratings.key.json"
    key.write_text('{"format": "steadylm-human-key/1", "items": ' + DEEP + "}", encoding="utf-8")
    ratings = tmp_path / "alice.json"
    ratings.write_text('{"format": "steadylm-human-ratings/1", "export_id": "e", "items": {}}', encoding="utf-8")
    _one_line(capsys, ["human", "import", str(ratings), "--key", str(key), "-o", str(tmp_path / "h.json")],
              "JSON nested deeper than 100 levels")
    cands = tmp_path / "c.jsonl"
    cands.write_text('{"id": 1, "candidates": ["a", "b"]}\n{"id": 2, "candidates": ' + DEEP + "}\n", encoding="utf-8")
    _one_line(capsys, ["ensemble", "select", "--candidates", str(cands)], "c.jsonl:2: JSON nested deeper")


@pytest.mark.parametrize("items", [
    {"i1": 5},                           # an item that is not an object
    {"i1": {"prompt_id": "a"}},          # an item without its system
])
def test_malformed_key_file_is_one_line(tmp_path, capsys, items):
    key = tmp_path / "ratings.key.json"
    key.write_text(json.dumps({"format": "steadylm-human-key/1", "export_id": "e", "items": items}), encoding="utf-8")
    ratings = tmp_path / "alice.json"
    ratings.write_text(json.dumps({"format": "steadylm-human-ratings/1", "export_id": "e",
                                   "items": {"i1": {"fluency": 4, "consistency": 4, "logic": 4}}}), encoding="utf-8")
    _one_line(capsys, ["human", "import", str(ratings), "--key", str(key), "-o", str(tmp_path / "h.json")],
              "malformed ratings key: item 'i1'")
    assert not (tmp_path / "h.json").exists()


# --------------------------------------------------------------------------- the generation cache

def test_torn_cache_line_is_cut_not_glued_to_the_next_entry(tmp_path):
    from steadylm.evaluate.backends.base import DecodingSettings, Generation, GenerationCache, Request

    path = tmp_path / "cache.jsonl"
    req = Request(prompt_id="p", prompt="x", settings=DecodingSettings(), seed=0, sample=0)
    cache = GenerationCache(path)
    cache.put("k1", Generation(req, "first"))
    cache.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "k2", "te')  # a kill in the middle of writing the second entry
    cache = GenerationCache(path)
    assert cache.repaired and len(cache) == 1
    cache.put("k3", Generation(req, "third"))
    cache.close()
    again = GenerationCache(path)
    assert not again.repaired
    assert again.get("k1")["text"] == "first" and again.get("k3")["text"] == "third"
    again.close()
    assert [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()] == ["k1", "k3"]


def test_complete_last_cache_line_without_newline_is_kept(tmp_path):
    from steadylm.evaluate.backends.base import DecodingSettings, Generation, GenerationCache, Request

    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "k1", "text": "kept"}), encoding="utf-8")  # no newline
    cache = GenerationCache(path)
    req = Request(prompt_id="p", prompt="x", settings=DecodingSettings(), seed=0, sample=0)
    cache.put("k2", Generation(req, "new"))
    cache.close()
    assert [k for _, o in iter_jsonl(path) for k in [o["key"]]] == ["k1", "k2"]


# --------------------------------------------------------------------------- a prompt of megabytes

def test_prompt_longer_than_the_context_is_refused_before_tokenizing_it_whole(nano_model_dir):
    from steadylm.evaluate.backends.local import LocalBackend

    backend = LocalBackend(str(nano_model_dir))
    seen: list[int] = []
    tok = backend.tokenizer
    orig = type(tok).__call__

    def spy(self, text, *a, **k):
        seen.append(len(text))
        return orig(self, text, *a, **k)

    text = "word " * 400_000  # 2 MB
    type(tok).__call__ = spy
    try:
        with pytest.raises(DataError, match="exceeds the model's context"):
            backend.encode_prompt(text, 8, label="huge")
    finally:
        type(tok).__call__ = orig
    assert seen and max(seen) < len(text) // 10, seen
    assert backend.context * backend.max_token_chars >= max(seen)
    # a prompt that fits is still encoded whole, as before
    assert backend.encode_prompt("word " * 3, 8) == backend.encode_prompt("word " * 3, 8)


def test_batch_invariance_ignores_what_follows_eos():
    """A prompt that stops at EOS alone is padded inside the batch while a longer one goes on: the
    pad tokens after its EOS are no output, so they neither crash the check (they did: the solo
    logits are shorter than the span compared) nor count as a divergence. Found on SmolLM2."""
    import types

    import torch

    from steadylm.evaluate.backends.base import DecodingSettings
    from steadylm.evaluate.generation import GenerationEval
    from steadylm.evaluate.prompts import PromptItem

    EOS, V = 1, 8
    solo = {"short": [5, EOS], "long": [6, 7, 4, 3]}
    batch = {"short": [5, EOS, EOS, EOS], "long": [6, 7, 4, 3]}

    def logits(rows):  # one-hot logits of each row's own tokens: (B, T, V)
        t = torch.zeros(len(rows), max(map(len, rows)), V)
        for i, r in enumerate(rows):
            t[i, torch.arange(len(r)), torch.tensor(r)] = 10.0
        return t

    class Fake:
        eos_id = EOS

        def render(self, req):
            return req.prompt

        def greedy_logits(self, texts, settings):
            rows = [(solo if len(texts) == 1 else batch)[t] for t in texts]
            return rows, logits(rows)

    items = [PromptItem(id="s", prompt="short"), PromptItem(id="l", prompt="long")]
    res = GenerationEval._batch_invariance_local(types.SimpleNamespace(backend=Fake()), items,
                                                 DecodingSettings(temperature=0.0, max_new_tokens=4))
    assert res["identical_share"] == 1.0 and res["max_logit_diff"] == 0.0
    assert [r["first_divergence"] for r in res["per_prompt"]] == [None, None]
    # a real divergence inside the output still counts
    batch["long"] = [6, 2, 4, 3]
    res = GenerationEval._batch_invariance_local(types.SimpleNamespace(backend=Fake()), items,
                                                 DecodingSettings(temperature=0.0, max_new_tokens=4))
    assert [r["first_divergence"] for r in res["per_prompt"]] == [None, 1] and res["max_logit_diff"] == 10.0
