"""Ensembles: token-level averaging, voting / MBR selection, weight soups, and their commands."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import CHINESE, one_line_error as _one_line
from steadylm.errors import CheckpointError, ConfigError, ModelError

PROMPTS = ["def parse(", "The module", "x", "import os and then the function returns"]


def _reqs(settings, prompts=PROMPTS, samples=2, seed=0):
    from steadylm.evaluate.backends import Request

    return [Request(f"p{i}", s, seed, settings, prompt=p) for i, p in enumerate(prompts) for s in range(samples)]


def _texts(backend, reqs):
    return [g.text for g in backend.generate(reqs)]


def _save(tmp_path_factory, tokenizer, preset, seed, name, context=64, sharpen=1.0):
    import torch

    from steadylm.models import build_model, save_model

    m = build_model(preset, vocab_size=len(tokenizer), context=context, seed=seed,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():  # random models predict almost uniformly; a sharper one makes averaging visible
        m.lm_head.weight.mul_(sharpen)
    return save_model(m, tokenizer, tmp_path_factory.mktemp("ens") / name)


@pytest.fixture(scope="module")
def nano_b(tmp_path_factory, tokenizer):
    """A second nano, different (and more confident) weights, same tokenizer."""
    return _save(tmp_path_factory, tokenizer, "nano", 1, "nano-b", sharpen=40.0)


@pytest.fixture(scope="module")
def qknorm(tmp_path_factory, tokenizer):
    """A bigger member of another architecture (Qwen3 QK-norm, tiny size), same tokenizer."""
    return _save(tmp_path_factory, tokenizer, "tiny-qknorm", 2, "tiny-qknorm", context=48)


# --------------------------------------------------------------------------- token-level

@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 20, 0.9)])
def test_ensemble_of_one_equals_local_backend(nano_model_dir, temperature, top_k, top_p):
    from steadylm.ensemble.token import EnsembleBackend
    from steadylm.evaluate.backends import DecodingSettings
    from steadylm.evaluate.backends.local import LocalBackend

    st = DecodingSettings(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=10)
    reqs = _reqs(st, samples=3)
    # batch_size 5 mixes prompt lengths inside a batch (left padding) and splits the work in two
    local = LocalBackend(str(nano_model_dir), batch_size=5)
    ens = EnsembleBackend([nano_model_dir], batch_size=5)
    a, b = local.generate(reqs), ens.generate(reqs)
    assert [g.text for g in a] == [g.text for g in b]
    assert [(g.completion_tokens, g.finish_reason) for g in a] == [(g.completion_tokens, g.finish_reason) for g in b]
    assert ens.kind == "ensemble" and ens.identity.startswith("ensemble:prob:" + local.hash)


@pytest.mark.parametrize("mode", ["prob", "logprob"])
def test_two_copies_equal_the_single_model(nano_model_dir, tmp_path, mode):
    from steadylm.ensemble.token import EnsembleBackend
    from steadylm.evaluate.backends import DecodingSettings
    from steadylm.evaluate.backends.local import LocalBackend

    copy = tmp_path / "copy"
    shutil.copytree(nano_model_dir, copy)
    reqs = _reqs(DecodingSettings(temperature=0.0, max_new_tokens=12), samples=1)
    ens = EnsembleBackend([nano_model_dir, copy], mode=mode, batch_size=3)
    assert _texts(ens, reqs) == _texts(LocalBackend(str(nano_model_dir)), reqs)


def test_prob_and_logprob_match_a_hand_computation(nano_model_dir, nano_b):
    import torch

    from steadylm.ensemble.token import EnsembleBackend

    w = (0.25, 0.75)
    ens = EnsembleBackend([nano_model_dir, nano_b], weights=(1, 3))
    assert ens.weights == [0.25, 0.75]
    lps = []
    with torch.inference_mode():
        for m in ens.models:  # each prompt alone, no padding: the plain definition
            lps.append(torch.stack([torch.log_softmax(m(torch.tensor([ens.encode_prompt(t, 1)])).logits[0, -1], -1)
                                    for t in PROMPTS]))  # (B, V)
    p = w[0] * lps[0].exp() + w[1] * lps[1].exp()
    geo = torch.exp(w[0] * lps[0] + w[1] * lps[1])
    geo = geo / geo.sum(-1, keepdim=True)
    got_prob = ens.next_token_logprobs(PROMPTS)  # one left-padded batch
    ens.mode = "logprob"
    got_log = ens.next_token_logprobs(PROMPTS)
    torch.testing.assert_close(got_prob.exp(), p, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got_log.exp(), geo, atol=1e-6, rtol=1e-4)
    assert (p - geo).abs().max() > 0.01  # the two modes really differ
    torch.testing.assert_close(got_log.exp().sum(-1), torch.ones(len(PROMPTS)))


def test_members_of_different_architecture_and_size(nano_model_dir, qknorm):
    import torch

    from steadylm.ensemble.token import EnsembleBackend
    from steadylm.evaluate.backends import DecodingSettings, open_backend

    ens = open_backend(f"ensemble:{nano_model_dir},{qknorm}#logprob", batch_size=4)
    assert isinstance(ens, EnsembleBackend) and ens.mode == "logprob"
    sig = ens.signature()
    assert [m["model_type"] for m in sig["members"]] == ["llama", "qwen3"]
    assert sig["context"] == 48 and sig["model_hash"] == ens.hash and len(ens.hash) == 12
    first = ens.next_token_logprobs(PROMPTS)  # (B, V)
    toks, scores = ens.greedy_logits(PROMPTS, DecodingSettings(temperature=0.0, max_new_tokens=6))
    # the first greedy token is the argmax of the combined distribution, which the scores are
    assert [t[0] for t in toks] == first.argmax(-1).tolist()
    torch.testing.assert_close(torch.log_softmax(scores[:, 0], -1), first, atol=1e-5, rtol=1e-4)
    greedy = ens.generate(_reqs(DecodingSettings(temperature=0.0, max_new_tokens=6), samples=1))
    assert all(g.completion_tokens <= 6 for g in greedy)
    sampled = ens.generate(_reqs(DecodingSettings(temperature=1.0, max_new_tokens=6), samples=2))
    # each stops at the end-of-sequence token or at the 6-token budget, and the two samples differ somewhere
    assert all(g.finish_reason in ("stop", "length") and (g.finish_reason == "length") == (g.completion_tokens == 6)
               for g in sampled)
    assert [g.text for g in sampled[0::2]] != [g.text for g in sampled[1::2]]
    # and a third, mixed-weight ensemble stays a distribution
    ens3 = EnsembleBackend([nano_model_dir, qknorm, nano_model_dir], weights=[2, 1, 1])
    torch.testing.assert_close(ens3.next_token_logprobs(PROMPTS[:2]).exp().sum(-1), torch.ones(2))


def test_sampled_output_does_not_depend_on_the_batch(nano_model_dir, nano_b):
    from steadylm.ensemble.token import EnsembleBackend
    from steadylm.evaluate.backends import DecodingSettings

    st = DecodingSettings(temperature=1.0, max_new_tokens=8)
    reqs = _reqs(st, samples=2, seed=7)
    ens = EnsembleBackend([nano_model_dir, nano_b], batch_size=8)
    together = _texts(ens, reqs)
    ens.batch_size = 1
    alone = _texts(ens, reqs)
    ens.batch_size = 3
    mixed = _texts(ens, reqs[::-1])[::-1]
    assert together == alone == mixed
    assert len(set(together)) > 1  # really sampled


def test_different_vocabularies_are_refused(tmp_path_factory, tokenizer, nano_model_dir, pydoc_docs, capsys):
    from steadylm.data.tokenizer import train_bpe
    from steadylm.ensemble.token import EnsembleBackend

    small = _save(tmp_path_factory, train_bpe(pydoc_docs[:20], 300), "nano", 0, "v300")
    with pytest.raises(ModelError, match=re.escape(f"vocabularies differ: {nano_model_dir} has 400 tokens, {small} has 300")):
        EnsembleBackend([nano_model_dir, small])
    remapped = _save(tmp_path_factory, train_bpe(pydoc_docs[20:40] + [CHINESE], 400), "nano", 0, "v400")
    with pytest.raises(ModelError, match="tokens map differently between"):
        EnsembleBackend([nano_model_dir, remapped])
    # and on the command line: one line, exit 2
    _one_line(capsys, ["eval", "generation", "--model", f"ensemble:{nano_model_dir},{small}", "--out",
                       str(tmp_path_factory.mktemp("ev")), "--json"], "vocabularies differ")


def test_bad_ensemble_specs():
    from steadylm.ensemble.token import EnsembleBackend, parse_spec

    assert parse_spec("ensemble:a,b") == (["a", "b"], "prob")
    assert parse_spec("ensemble:a, b#logprob") == (["a", "b"], "logprob")
    with pytest.raises(ConfigError, match="must be one of prob, logprob"):
        parse_spec("ensemble:a,b#mean")
    with pytest.raises(ConfigError, match="name the members"):
        parse_spec("ensemble:")
    with pytest.raises(ConfigError, match="at least one"):
        EnsembleBackend([])
    with pytest.raises(ConfigError, match="2 weights for 1 models"):
        EnsembleBackend(["x"], weights=[1, 2])
    with pytest.raises(ConfigError, match="positive"):
        EnsembleBackend(["x", "y"], weights=[1, 0])


# --------------------------------------------------------------------------- voting and MBR

@pytest.mark.parametrize("outputs, answer, share, index", [
    (["Paris. It is the capital.", "London.", "paris", "The Paris!"], "paris", 0.75, 0),
    (["  \n4\nbecause 2+2", "four", "4.", "5"], "4", 0.5, 0),
    (["北京。它是首都。", "上海", "北京！", "北京"], "北京", 0.75, 0),
    (["ｂｅｒｌｉｎ。", "Berlin", "Bonn."], "berlin", 2 / 3, 0),  # full-width letters, Chinese full stop
    (["a", "b", "b", "a"], "b", 0.5, 1),  # "a" is an article: it normalises to nothing and votes for nothing
    (["", "  ", "\n"], None, 0.0, None),
])
def test_majority_vote(outputs, answer, share, index):
    from steadylm.evaluate.select import majority_vote

    assert majority_vote(outputs) == {"answer": answer, "share": pytest.approx(share), "index": index}


def test_majority_vote_tie_goes_to_the_first_seen():
    from steadylm.evaluate.select import majority_vote

    assert majority_vote(["red", "blue", "blue", "red"]) == {"answer": "red", "share": 0.5, "index": 0}


def test_mbr_picks_the_consensus_candidate():
    import sacrebleu

    from steadylm.evaluate.select import mbr_select

    cands = ["a dog ran in the park", "the cat sat on the mat", "the cat sat on a mat", "the cat is on the mat"]
    r = mbr_select(cands)
    assert r["index"] == 1 and r["text"] == cands[1]
    chrf = sacrebleu.metrics.CHRF()
    want = [sum(chrf.sentence_score(cands[i], [cands[j]]).score for j in range(4) if j != i) / 3 for i in range(4)]
    assert r["expected_utility"] == pytest.approx(want)
    rb = mbr_select(cands, utility="bleu")
    assert rb["index"] == 1 and min(rb["expected_utility"]) == rb["expected_utility"][0]
    # identical candidates tie: the earliest wins
    assert mbr_select(["same words", "same words", "other"])["index"] == 0


def test_mbr_chinese_uses_the_zh_tokenizer():
    import sacrebleu

    from steadylm.evaluate.select import mbr_select

    cands = ["猫坐在垫子上。", "狗在公园里跑。", "猫坐在垫子上了。", "一只猫坐在垫子上。"]
    r = mbr_select(cands, utility="bleu")
    assert r["index"] == 0
    bleu = sacrebleu.metrics.BLEU(tokenize="zh", effective_order=True)
    want0 = sum(bleu.sentence_score(cands[0], [c]).score for c in cands[1:]) / 3
    assert r["expected_utility"][0] == pytest.approx(want0) and want0 > 20  # unspaced Chinese would score ~0


def test_mbr_edge_cases():
    from steadylm.evaluate.select import majority_vote, mbr_select

    assert mbr_select(["only one"]) == {"index": 0, "text": "only one", "expected_utility": [None]}
    with pytest.raises(ConfigError, match="the candidate set is empty"):
        mbr_select([])
    with pytest.raises(ConfigError, match="the candidate set is empty"):
        majority_vote([])
    with pytest.raises(ConfigError, match="--utility must be one of chrf, bleu"):
        mbr_select(["a", "b"], utility="ter")


def test_ensemble_select_command(tmp_path, capsys):
    from steadylm.cli import main

    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": "q1", "candidates": ["Paris.", "paris!", "Lyon"]}) + "\n"
                 + json.dumps({"id": 2, "candidates": ["北京。", "上海", "北京"]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    assert main(["ensemble", "select", "--candidates", str(f)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["answer"], r["text"], r["n"]) for r in rows] == [("q1", "paris", "Paris.", 3), (2, "北京", "北京。", 3)]
    # a generations.jsonl: texts grouped by prompt_id, written to a file
    g = tmp_path / "generations.jsonl"
    g.write_text("".join(json.dumps({"prompt_id": p, "seed": 0, "sample": s, "text": t}) + "\n" for p, s, t in
                         [("a", 0, "the cat sat"), ("b", 0, "x y z"), ("a", 1, "the cat sat down"), ("a", 2, "dogs")]))
    out = tmp_path / "chosen.jsonl"
    assert main(["ensemble", "select", "--candidates", str(g), "--method", "mbr", "--utility", "bleu", "-o", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["n"], r["index"]) for r in rows] == [("a", 3, 0), ("b", 1, 0)]
    assert rows[0]["method"] == "mbr" and rows[0]["utility"] == "bleu" and len(rows[0]["expected_utility"]) == 3
    # errors: one line, exit 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "q1", "candidates": ["a"]}) + "\n" + json.dumps({"id": "q2", "candidates": []}) + "\n")
    _one_line(capsys, ["ensemble", "select", "--candidates", str(bad)], f"{bad}:2: item 'q2' has an empty candidate set")
    _one_line(capsys, ["ensemble", "select", "--candidates", str(tmp_path / "nope.jsonl")], "no such file")
    (tmp_path / "junk.jsonl").write_text("{oops\n")
    _one_line(capsys, ["ensemble", "select", "--candidates", str(tmp_path / "junk.jsonl")], "junk.jsonl:1: not valid JSON")


# --------------------------------------------------------------------------- soups

def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_soup_of_two_models_is_the_elementwise_mean(nano_model_dir, nano_b, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from steadylm.ensemble.soup import uniform_soup

    out = uniform_soup([nano_model_dir, nano_b], tmp_path / "soup")
    a, b, s = _tensors(nano_model_dir), _tensors(nano_b), _tensors(out)
    assert set(s) == set(a)
    for k in a:
        assert torch.equal(s[k], (a[k] + b[k]) / 2), k
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (nano_model_dir / name).read_bytes()
    assert json.loads((out / "soup.json").read_text())["members"] == [str(nano_model_dir), str(nano_b)]
    assert not (tmp_path / "soup.tmp").exists()
    m = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, use_safetensors=True)
    torch.testing.assert_close(m.state_dict()["lm_head.weight"], s["lm_head.weight"])


def test_soup_of_identical_folders_is_the_folder(nano_model_dir, tmp_path):
    import torch

    from steadylm.ensemble.soup import uniform_soup

    copy = tmp_path / "copy"
    shutil.copytree(nano_model_dir, copy)
    out = uniform_soup([nano_model_dir, copy, nano_model_dir], tmp_path / "soup")
    a, s = _tensors(nano_model_dir), _tensors(out)
    assert all(torch.equal(a[k], s[k]) for k in a) and set(a) == set(s)


def test_soup_refuses_mismatched_models(nano_model_dir, tmp_path_factory, tokenizer, tmp_path):
    from steadylm.ensemble.soup import uniform_soup
    from steadylm.models import build_model, save_model

    qk = _save(tmp_path_factory, tokenizer, "nano-qknorm", 0, "nano-qk")
    with pytest.raises(ModelError, match=r"cannot average .*nano-qk.* with .*nano: it has an extra tensor '.*norm"):
        uniform_soup([nano_model_dir, qk], tmp_path / "x")
    wide = build_model("nano", vocab_size=len(tokenizer), context=64, overrides={"intermediate_size": 96},
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    wide_dir = save_model(wide, tokenizer, tmp_path / "wide")
    with pytest.raises(ModelError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape"):
        uniform_soup([nano_model_dir, wide_dir], tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    with pytest.raises(ConfigError, match="is one of the members"):
        uniform_soup([nano_model_dir, wide_dir], wide_dir)
    with pytest.raises(ModelError, match="no such model folder"):
        uniform_soup([tmp_path / "missing"], tmp_path / "y")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real 6-step `steadylm train` run with checkpoints at steps 2, 4, 6 and an EMA model (the
    command run in this process: the same code path as a subprocess, without a second torch import)."""
    from steadylm.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", "builtin:pydoc", "--preset", "nano", "--vocab-size", "300", "--context", "32",
                 "--batch-size", "4", "--steps", "6", "--checkpoint-every", "2", "--keep-checkpoints", "3",
                 "--ema", "0.9", "--no-plots", "--json", "--out", str(out)]) == 0
    return out


def test_latest_k_and_the_soup_command(short_run, tmp_path, capsys):
    import torch

    from steadylm.cli import main
    from steadylm.ensemble.soup import latest_k

    ck = short_run / "checkpoints"
    assert latest_k(short_run, 2) == [ck / "step-4", ck / "step-6"]
    assert latest_k(short_run, 3) == [ck / "step-2", ck / "step-4", ck / "step-6"]
    out = tmp_path / "lawa"
    assert main(["soup", str(short_run), "--last", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lawa soup of 2 models" in printed and str(ck / "step-6") in printed and str(out) in printed
    a, b, s = _tensors(ck / "step-4"), _tensors(ck / "step-6"), _tensors(out)
    assert all(torch.equal(s[k], (a[k] + b[k]) / 2) for k in a)
    assert not (out / "optimizer.pt").exists() and not (out / "state.json").exists()  # a model, not a checkpoint
    # the EMA model is a member like any other
    assert main(["soup", str(short_run / "model"), str(short_run / "model-ema"), "-o", str(tmp_path / "ema")]) == 0
    assert "uniform soup of 2 models" in capsys.readouterr().out
    # errors: one line, exit 2
    _one_line(capsys, ["soup", str(short_run), "--last", "5", "-o", str(tmp_path / "e")], "has only 3 checkpoints")
    _one_line(capsys, ["soup", str(tmp_path / "nope"), "--last", "2", "-o", str(tmp_path / "e")], "no such run folder")
    (tmp_path / "empty-run").mkdir()
    _one_line(capsys, ["soup", str(tmp_path / "empty-run"), "--last", "1", "-o", str(tmp_path / "e")], "no checkpoints")
    _one_line(capsys, ["soup", str(short_run), "-o", str(tmp_path / "e")], "pass --last K")
    _one_line(capsys, ["soup", str(short_run), "--last", "0", "-o", str(tmp_path / "e")], "--last must be >= 1")
    with pytest.raises(CheckpointError):
        latest_k(tmp_path / "empty-run", 1)
    assert not (tmp_path / "e").exists()



def test_ensemble_perplexity(nano_model_dir, nano_b, tmp_path):
    """`eval perplexity` scores an ensemble as one model: two copies of a model score exactly as it
    does, and a probability-averaging ensemble is never worse than the geometric mean of its
    members' perplexities (log of a mean >= mean of logs, token by token)."""
    import math

    from steadylm.evaluate.perplexity import evaluate_perplexity

    docs = tmp_path / "d.txt"
    docs.write_text("The for statement is used to iterate over the elements of a sequence. " * 3, encoding="utf-8")
    a = evaluate_perplexity(str(nano_model_dir), str(docs), progress=False)
    b = evaluate_perplexity(str(nano_b), str(docs), progress=False)
    same = evaluate_perplexity(f"ensemble:{nano_model_dir},{nano_model_dir}", str(docs), progress=False)
    assert same.token_perplexity == pytest.approx(a.token_perplexity, rel=1e-5)
    ens = evaluate_perplexity(f"ensemble:{nano_model_dir},{nano_b}", str(docs), progress=False)
    assert ens.token_perplexity <= math.sqrt(a.token_perplexity * b.token_perplexity) * (1 + 1e-6)
    assert ens.signature != a.signature and "ensemble:prob" in ens.signature


def test_robustness_measures_the_ensembles_perplexity_shift(nano_model_dir, nano_b, tmp_path):
    """An ensemble scores text (`eval perplexity` scores it), so `eval robustness` measures its prompt
    perplexity shift too - with the numbers `compute_perplexity` gives on the combined model."""
    from steadylm.evaluate.backends import DecodingSettings, open_backend
    from steadylm.evaluate.perplexity import compute_perplexity
    from steadylm.evaluate.prompts import PromptItem
    from steadylm.evaluate.robustness import RobustnessConfig, RobustnessEval

    items = [PromptItem("a", prompt="The module is imported once"), PromptItem("b", prompt="A loop runs over the list")]
    cfg = RobustnessConfig(kinds=("upper",), decoding=DecodingSettings(temperature=0.0, max_new_tokens=3),
                           budget=1, queries=1, adv_items=0, bootstrap=100)
    backend = open_backend(f"ensemble:{nano_model_dir},{nano_b}", batch_size=4)
    ev = RobustnessEval(backend, items, cfg, tmp_path / "o", progress=False)
    try:
        res = ev.run()
    finally:
        ev.close()
    ps = res["kinds"]["upper"]["perplexity_shift"]
    assert ps["measured"] is True, ps
    lines = [json.loads(x) for x in (tmp_path / "o" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = {v: [g["prompt"] for g in lines if g["set"] == "in" and g["variant"] == v] for v in ("clean", "upper")}
    assert prompts["upper"] == [p.upper() for p in prompts["clean"]]
    bpb = {v: compute_perplexity(backend.scoring_model(), backend.tokenizer, p, window=64, progress=False).bits_per_byte
           for v, p in prompts.items()}
    assert ps["clean_bits_per_byte"] == pytest.approx(bpb["clean"], abs=1e-4)
    assert ps["delta_bits_per_byte"] == pytest.approx(bpb["upper"] - bpb["clean"], abs=1e-4)
    assert res["clean"]["perplexity"]["measured"] is True
    assert res["signature"]["perplexity"]["window"] == 64
