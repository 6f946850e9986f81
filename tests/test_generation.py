"""eval generation: prompt sets, the local backend's seeding and batching, the whole command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CHINESE, one_line_error, run_in_process
from steadylm.errors import ConfigError, DataError
from steadylm.evaluate.backends import DecodingSettings, GenerationCache, Request, generate_cached
from steadylm.evaluate.backends.base import whole_characters
from steadylm.evaluate.prompts import builtin_prompts, load_prompts, read_prompts_jsonl


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------- prompt sets

def test_prompt_file_fields(tmp_path):
    p = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "What is 2+2?", "answer": "4"},
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                      {"role": "user", "content": "今天星期几？"}], "references": ["星期六", "周六"]},
        "",
        {"source": "Der Hund bellt.", "reference": "The dog barks."},
    ])
    items = read_prompts_jsonl(p)
    assert [i.id for i in items] == ["a", "2", "4"]  # ids default to the line number
    assert items[0].answer == "4" and items[0].prompt == "What is 2+2?"
    assert items[1].is_chat and items[1].last_user_turn() == "今天星期几？" and items[1].references == ("星期六", "周六")
    assert items[2].prompt == "Der Hund bellt." and items[2].source == "Der Hund bellt."


@pytest.mark.parametrize("rows, msg", [
    ([], "empty"),
    (["{not json"], ":1: not valid JSON"),
    ([{"prompt": "ok"}, {"text": "x"}], ":2: needs exactly one of 'prompt' or 'messages'"),
    ([{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}], "exactly one"),
    ([{"messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}], "last message must be a 'user'"),
    ([{"messages": [{"role": "robot", "content": "b"}]}], "role 'robot'"),
    ([{"prompt": "a", "reference": 3}], "'reference' must be a string"),
    ([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}], "duplicate id 'x'"),
    ([{"prompt": "  "}], "non-empty"),
])
def test_prompt_file_errors(tmp_path, rows, msg):
    p = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace("+", r"\+")):
        read_prompts_jsonl(p)


def test_prompt_file_not_utf8_and_missing(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_prompts_jsonl(p)
    with pytest.raises(DataError, match="no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_builtin_prompts_are_held_out(pydoc_docs):
    from steadylm.data.sources import load_documents, split_documents

    train, _ = split_documents(load_documents("builtin:pydoc"), 0.1)
    items = builtin_prompts(12)
    assert len(items) == 12 and all(i.references for i in items)
    joined = "\n".join(train)
    # a prompt + reference is a held-out paragraph: it does not occur in any training document
    assert not any(f"{i.prompt} {i.references[0]}" in " ".join(joined.split()) for i in items)
    assert len({i.id.rsplit('-', 1)[0] for i in items}) > 1  # spread over documents


# --------------------------------------------------------------------------- local backend

@pytest.fixture(scope="module")
def local(nano_model_dir):
    from steadylm.evaluate.backends.local import LocalBackend

    return LocalBackend(str(nano_model_dir), batch_size=4)


PROMPTS = ["The loop", "Hello world, this is a longer prompt", CHINESE[:10], "a"]


def _reqs(settings, seeds=(0,), k=3):
    return [Request(f"p{i}", j, s, settings, prompt=p) for i, p in enumerate(PROMPTS) for s in seeds for j in range(k)]


def test_sampled_output_depends_on_seed_not_on_batch(local):
    st = DecodingSettings(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=10)
    reqs = _reqs(st, seeds=(0, 1))
    base = [g.text for g in local.generate(reqs)]
    old = local.batch_size
    try:
        local.batch_size = 1
        alone = [g.text for g in local.generate(reqs)]
        local.batch_size = 7
        shuffled = [g.text for g in local.generate(reqs[::-1])][::-1]
    finally:
        local.batch_size = old
    assert base == alone == shuffled
    # different samples and different seeds draw different streams
    assert len(set(base)) > len(base) // 2


def test_greedy_matches_plain_generate(local, nano_model_dir):
    import torch

    st = DecodingSettings(temperature=0, max_new_tokens=12)
    gens = local.generate([Request(f"p{i}", 0, 0, st, prompt=p) for i, p in enumerate(PROMPTS)])
    tok = local.tokenizer
    for g, p in zip(gens, PROMPTS):
        ids = torch.tensor([[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = local.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        assert g.finish_reason in ("stop", "length") and g.completion_tokens == len(new)
        # the same tokens; a row cut at the token limit drops a partial character's U+FFFD (whole_characters)
        assert g.text == whole_characters(tok.decode(new, skip_special_tokens=True), g.finish_reason)


def test_chat_uses_role_lines_without_template(local):
    st = DecodingSettings(temperature=0, max_new_tokens=4)
    r = Request("c", 0, 0, st, messages=(("user", "hi"),))
    assert local.render(r) == "user: hi\nassistant:"
    # what is generated is what render() shows: the same greedy tokens as that text given as a prompt
    [chat], [plain] = local.generate([r]), local.generate([Request("p", 0, 0, st, prompt="user: hi\nassistant:")])
    assert (chat.text, chat.completion_tokens, chat.finish_reason) == (plain.text, plain.completion_tokens, plain.finish_reason)
    assert chat.completion_tokens == 4 or chat.finish_reason == "stop"


def test_too_long_prompt_is_refused_or_truncated(local, nano_model_dir):
    from steadylm.evaluate.backends.local import LocalBackend

    long = "word " * 200
    st = DecodingSettings(temperature=0, max_new_tokens=8)
    with pytest.raises(DataError, match="exceeds the model's context of 64.*--truncate-left"):
        local.generate([Request("long", 0, 0, st, prompt=long)])
    cut = LocalBackend(str(nano_model_dir), truncate_left=True)
    ids = cut.encode_prompt(long, 8)
    assert len(ids) == 64 - 8


def test_decoding_settings_validate():
    for kw in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ConfigError):
            DecodingSettings(**kw)


def test_cache_serves_finished_requests(local, tmp_path):
    st = DecodingSettings(temperature=1.0, max_new_tokens=6)
    reqs = _reqs(st, k=2)
    cache = GenerationCache(tmp_path / "cache.jsonl")
    first = generate_cached(local, reqs, cache)
    cache.close()
    # a torn last line (a run killed while writing) is ignored
    with open(tmp_path / "cache.jsonl", "a") as f:
        f.write('{"key": "abc", "te')
    cache = GenerationCache(tmp_path / "cache.jsonl")
    calls = []
    orig = local.generate
    local.generate = lambda *a, **k: calls.append(1) or orig(*a, **k)  # type: ignore[method-assign]
    try:
        second = generate_cached(local, reqs, cache)
    finally:
        del local.generate
    assert not calls and all(g.cached for g in second)
    assert [g.text for g in first] == [g.text for g in second]


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    return _write_jsonl(d / "p.jsonl", [
        {"id": "q1", "prompt": "The module", "reference": "The module object is a namespace.", "answer": "namespace"},
        {"id": "q2", "prompt": "A loop", "references": ["A loop runs again.", "It repeats."]},
        {"id": "zh", "prompt": CHINESE[:12], "reference": CHINESE[12:30]},
        {"id": "chat", "messages": [{"role": "user", "content": "What is a module?"},
                                    {"role": "assistant", "content": "A file."},
                                    {"role": "user", "content": "what is a module"}]},
    ])


@pytest.fixture(scope="module")
def gen_run(nano_model_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    r = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "3",
                       "--seeds", "0,1", "--max-new-tokens", "8", "--temperature", "1.0", "--top-p", "0.95",
                       "--determinism-prompts", "3", "--determinism-runs", "3", "--bootstrap", "200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out, r


def test_generation_outputs(gen_run):
    out, r = gen_run
    res = json.loads((out / "results.json").read_text())
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    main = [g for g in lines if "@" not in g["prompt_id"]]
    assert len(main) == 4 * 3 * 2
    assert {(g["prompt_id"], g["seed"], g["sample"]) for g in main} == {
        (p, s, k) for p in ("q1", "q2", "zh", "chat") for s in (0, 1) for k in range(3)}
    # an output stops at the end-of-sequence token or at the 8-token budget, never elsewhere
    assert all((g["finish_reason"] == "length") == (g["completion_tokens"] == 8) for g in lines)
    assert {g["finish_reason"] for g in lines} <= {"stop", "length"}
    assert len({g["text"] for g in main}) > len(main) // 2  # sampled at T=1: samples and seeds differ
    # the repeated chat question produced its earlier-turn probe
    assert any(g["prompt_id"] == "chat@turn0" for g in lines)
    sig = res["signature"]
    assert sig["backend"]["backend"] == "local" and sig["seeds"] == [0, 1] and sig["samples"] == 3
    assert sig["decoding"] == {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "max_new_tokens": 8}
    ref = res["reference"]
    assert ref["measured"] and ref["items"] == 3
    assert ref["bleu"]["signature"].startswith("nrefs:") and "|tok:" in ref["bleu"]["signature"]
    assert 0 <= ref["bleu"]["score"] <= 100 and 0 <= ref["chrf"]["score"] <= 100  # values: see the recompute test
    cons = res["consistency"]
    for scope in ("across_samples", "across_seeds"):
        d = cons[scope]
        assert d["measured"]
        for m in ("self_bleu", "self_chrf", "semantic"):
            assert d[m]["ci_low"] <= d[m]["mean"] <= d[m]["ci_high"]
    assert cons["answers"]["items"] == 1
    assert res["contradiction"]["measured"] is False and "--nli-model" in res["contradiction"]["reason"]
    dg = res["degeneration"]
    assert 0 <= dg["seq_rep_1"] <= 1 and 0 <= dg["distinct_2"] <= 1 and 0 <= dg["loop_share"] <= 1
    assert dg["next_token"]["measured"] and 0 <= dg["next_token"]["wrep"] <= dg["next_token"]["rep"] <= 1
    rel = res["relevance"]
    assert rel["repeated_question"]["measured"] and rel["repeated_question"]["pairs"] == 1
    det = res["determinism"]
    # same request, same seed -> same text, for greedy and sampled decoding
    assert det["greedy_repeat"]["unique_completions_max"] == 1
    assert det["same_seed_sampled"]["same_output_share"] == 1.0
    bi = det["batch_invariance"]
    assert bi["measured"] and len(bi["per_prompt"]) == 3
    assert bi["max_logit_diff"] == max(p["max_logit_diff"] for p in bi["per_prompt"]) < 1e-3  # float32 on CPU
    env = det["environments"]
    assert "float32_vs_bfloat16" in env and 0 <= env["float32_vs_bfloat16"]["identical_share"] <= 1
    assert "consistency across samples" in r.stdout and "BLEU" in r.stdout
    per = {p["prompt_id"]: p for p in res["per_prompt"]}
    assert set(per) == {"q1", "q2", "zh", "chat"} and "reference" in per["q1"] and "reference" not in per["chat"]


def test_generation_resumes_from_cache(gen_run, nano_model_dir, prompt_file):
    out, first = gen_run
    r = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "3",
                       "--seeds", "0,1", "--max-new-tokens", "8", "--temperature", "1.0", "--top-p", "0.95",
                       "--determinism-prompts", "3", "--determinism-runs", "3", "--bootstrap", "200", "--out", str(out),
                       "--json", "--no-environments")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["counts"]["from_cache"] == res["counts"]["generations"] == 4 * 3 * 2 + 1


def test_reference_metric_recomputes_from_generations(gen_run, prompt_file):
    """Every number can be recomputed from generations.jsonl: corpus BLEU, chrF and TER on sample 0
    of seed 0."""
    import sacrebleu

    out, _ = gen_run
    res = json.loads((out / "results.json").read_text())
    gens = {(g["prompt_id"], g["seed"], g["sample"]): g["text"]
            for g in map(json.loads, (out / "generations.jsonl").read_text().splitlines())}
    items = [i for i in read_prompts_jsonl(prompt_file) if i.references]
    hyps = [gens[(i.id, 0, 0)] for i in items]
    nref = max(len(i.references) for i in items)
    streams = [[(i.references[k] if k < len(i.references) else None) for i in items] for k in range(nref)]
    ref = res["reference"]
    # Han characters are over a fifth of the references (the zh item): BLEU and TER tokenize as Chinese
    assert ref["tokenize"] == "zh" and "|tok:zh|" in ref["bleu"]["signature"]
    assert ref["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="zh").score, abs=1e-9)
    assert ref["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=1e-9)
    assert ref["ter"]["score"] == pytest.approx(
        sacrebleu.corpus_ter(hyps, streams, normalized=True, asian_support=True).score, abs=1e-9)


def test_k1_gives_reference_metrics_only(nano_model_dir, prompt_file, tmp_path):
    r = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "1",
                       "--temperature", "0", "--max-new-tokens", "6", "--no-determinism", "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["consistency"]["across_samples"]["measured"] is False
    assert "K = 1" in res["consistency"]["across_samples"]["reason"]
    assert res["reference"]["measured"]


def test_compare_two_runs(gen_run, nano_model_dir, prompt_file, tmp_path):
    out, _ = gen_run
    same = run_in_process("compare", str(out), str(out), "--json")
    assert same.returncode == 0, same.stderr
    s = json.loads(same.stdout)
    assert s["generations"]["identical_share"] == 1.0 and s["generations"]["matched"] == 4 * 3 * 2 + 1
    assert all(v["diff"] == 0 for v in s["metrics"].values()) and not s["signature_differences"]
    # a bfloat16 run of the same prompts: lined up output by output, the dtype named as a difference
    other = tmp_path / "bf16"
    r = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "3",
                       "--seeds", "0,1", "--max-new-tokens", "8", "--temperature", "1.0", "--top-p", "0.95",
                       "--dtype", "bfloat16", "--no-determinism", "--bootstrap", "200", "--out", str(other))
    assert r.returncode == 0, r.stderr
    c = run_in_process("compare", str(out), str(other))
    assert c.returncode == 0, c.stderr
    assert "backend.dtype" in c.stdout and "matched" in c.stdout
    bad = run_in_process("compare", str(out), str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "results.json" in bad.stderr


@pytest.mark.parametrize("case", ["empty", "malformed", "too_long", "bad_seeds", "no_model", "bad_temp"])
def test_generation_bad_input(case, nano_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    args = ["eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    expect = {"empty": "empty", "malformed": "p.jsonl:2: not valid JSON", "too_long": "exceeds the model's context",
              "bad_seeds": "--seeds", "no_model": "no such model folder", "bad_temp": "--temperature"}[case]
    prompts.write_text('{"prompt": "ok"}\n' if case != "empty" else "", encoding="utf-8")
    if case == "malformed":
        prompts.write_text('{"prompt": "ok"}\n{"prompt": \n', encoding="utf-8")
    if case == "too_long":
        prompts.write_text(json.dumps({"prompt": "word " * 300}) + "\n", encoding="utf-8")
    if case == "bad_seeds":
        args += ["--seeds", "0,x"]
    if case == "no_model":
        args[3] = str(tmp_path / "missing")
    if case == "bad_temp":
        args += ["--temperature", "-1"]
    one_line_error(capsys, args, expect)


def test_contradiction_measured_with_nli_model(nano_model_dir, prompt_file, tmp_path):
    """--nli-model runs SelfCheckGPT-NLI over the samples (a tiny random classifier: the path, not the quality)."""
    from test_textmetrics import NLI_LABELS, _tiny_classifier

    from steadylm.evaluate.contradiction import NLIScorer

    nli = _tiny_classifier(tmp_path / "nli", NLI_LABELS)
    out = tmp_path / "o"
    r = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "2",
                       "--max-new-tokens", "6", "--no-determinism", "--bootstrap", "200", "--nli-model", str(nli),
                       "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    c = res["contradiction"]
    assert c["measured"] and 0 <= c["score"]["mean"] <= 1
    # recompute one prompt's score from generations.jsonl
    texts = [g["text"] for g in map(json.loads, (out / "generations.jsonl").read_text().splitlines())
             if g["prompt_id"] == "q1"]
    per = {p["prompt_id"]: p for p in json.loads((out / "results.json").read_text())["per_prompt"]}
    assert per["q1"]["contradiction"] == pytest.approx(NLIScorer(nli).contradiction_scores(texts), abs=1e-6)
    bad = run_in_process("eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompt_file), "--samples", "2",
                         "--max-new-tokens", "4", "--no-determinism", "--nli-model", str(nano_model_dir), "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_data_parallel_ranks_equal_one_process(gen_run, nano_model_dir, prompt_file, tmp_path):
    """Two processes with RANK/WORLD_SIZE (what accelerate launch and torchrun set) split the
    requests; rank 0 gathers them and its results equal the one-process run's generations."""
    import os
    import subprocess
    import sys

    single, _ = gen_run
    out = tmp_path / "dp"
    args = [sys.executable, "-m", "steadylm", "eval", "generation", "--model", str(nano_model_dir), "--prompts",
            str(prompt_file), "--samples", "3", "--seeds", "0,1", "--max-new-tokens", "8", "--temperature", "1.0",
            "--top-p", "0.95", "--no-determinism", "--bootstrap", "200", "--threads", "1", "--out", str(out), "--json"]
    procs = [subprocess.Popen(args, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", PYTHONWARNINGS="ignore"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "rank 1/2" in outs[0][1]
    n_rank1 = len((out / "cache.rank-1.jsonl").read_text().splitlines())
    assert n_rank1 == (4 * 3 * 2 + 1) // 2
    read = lambda d: {(g["prompt_id"], g["seed"], g["sample"]): g["text"]  # noqa: E731
                      for g in map(json.loads, (d / "generations.jsonl").read_text().splitlines())}
    assert read(out) == read(single)
    res = json.loads(outs[1][0])
    assert res["counts"]["generations"] == res["counts"]["from_cache"] == 4 * 3 * 2 + 1  # all gathered from the shards
