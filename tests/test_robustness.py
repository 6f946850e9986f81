"""eval robustness: the stdlib-code source, metrics under perturbed prompts, PDR and worst case
recomputed from generations.jsonl, the perplexity shift, the adversarial search's budget, domain
shift, resuming from the cache, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import one_line_error, run_in_process
from steadylm.evaluate.robustness import performance_drop_rate, worst_case

KINDS = ("upper", "typo", "swap")


# --------------------------------------------------------------------------- builtin:stdlib-code

def test_stdlib_code_source_and_prompts():
    import sysconfig

    from steadylm.data.sources import (BUILTINS, STDLIB_CODE_FILES, STDLIB_CODE_MAX_BYTES, load_documents,
                                       split_documents, stdlib_code_files)
    from steadylm.evaluate.prompts import load_prompts

    assert "builtin:stdlib-code" in BUILTINS
    a, b = load_documents("builtin:stdlib-code"), load_documents("builtin:stdlib-code")
    assert a.documents == b.documents and 100 <= len(a) <= STDLIB_CODE_FILES
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_code_files()
    assert files == sorted(files, key=lambda p: p.relative_to(root).as_posix())  # deterministic order
    for p in files:
        parts = p.relative_to(root).parts
        assert p.suffix == ".py" and p.stat().st_size <= STDLIB_CODE_MAX_BYTES
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts)
    assert sum("def " in d for d in a.documents) > len(a) // 2

    items = load_prompts("builtin:stdlib-code", n_builtin=6)
    assert len(items) == 6 and all(i.references and i.id.startswith("stdlib-code-") for i in items)
    assert any("\n" in i.prompt + i.references[0] for i in items)  # code keeps its line breaks
    train, _ = split_documents(a, 0.1)
    seen = " ".join(" ".join(train).split())
    assert not any(" ".join(f"{i.prompt} {i.references[0]}".split()) in seen for i in items)  # held out
    # pydoc prompts are unchanged: single-spaced prose
    assert all(" ".join(i.prompt.split()) == i.prompt for i in load_prompts("builtin", n_builtin=4))


# --------------------------------------------------------------------------- formulas

def test_pdr_and_worst_case_formulas():
    assert performance_drop_rate([1.0, 0.5], [0.5, 0.5]) == pytest.approx(1 - 1.0 / 1.5)
    assert performance_drop_rate([1.0, None], [0.0, 1.0]) == pytest.approx(1.0)  # unpaired items are left out
    assert performance_drop_rate([0.0, 0.0], [1.0, 1.0]) is None
    assert performance_drop_rate([2.0], [3.0]) == pytest.approx(-0.5)  # a perturbation that helps: negative
    assert worst_case([0.5, None, 1.0], [[0.7, None, 0.2], [0.4, None, 0.9]]) == [0.4, None, 0.2]
    assert worst_case([0.1], [[0.7], [0.4]]) == [0.1]  # the original counts too (HELM)


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("rob-prompts") / "p.jsonl"
    rows = [
        {"id": "q1", "prompt": "The capital of France is", "answer": "Paris"},
        {"id": "q2", "prompt": "A loop runs", "reference": "A loop runs again and again."},
        {"id": "tr", "source": "Der Hund bellt.", "prompt": "Translate: Der Hund bellt.", "reference": "The dog barks."},
        {"id": "chat", "messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"},
                                    {"role": "user", "content": "What is a module?"}]},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _args(model, prompts, out) -> list[str]:
    return ["eval", "robustness", "--model", str(model), "--prompts", str(prompts), "--kinds", ",".join(KINDS),
            "--max-new-tokens", "6", "--budget", "2", "--queries", "5", "--adv-items", "2",
            "--ood", "builtin:stdlib-code", "--builtin-prompts", "3", "--truncate-left", "--bootstrap", "200",
            "--threads", "1", "--out", str(out)]


@pytest.fixture(scope="module")
def rob_run(nano_model_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("rob") / "run"
    r = run_in_process(*_args(nano_model_dir, prompt_file, out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    return out, r, res, lines


def _outs(lines, variant, set_="in"):
    return {g["prompt_id"]: g for g in lines if g["set"] == set_ and g["variant"] == variant and g["sample"] == 0}


def test_results_layout(rob_run):
    out, r, res, lines = rob_run
    sig = res["signature"]
    assert sig["backend"]["backend"] == "local" and sig["decoding"]["temperature"] == 0
    assert sig["perturbation"]["kinds"] == list(KINDS)
    assert sig["perturbation"]["rates"] == {"upper": 1.0, "typo": 0.1, "swap": 0.05}
    assert sig["search"]["queries_per_search"] == 4 and sig["search"]["queries_given"] == 5
    assert sig["search"]["kinds"] == ["typo", "swap"]  # the character-level kinds of --kinds
    assert sig["perplexity"]["window"] == 64 and sig["ood"]["source"] == "builtin:stdlib-code"
    assert "kinds:upper,typo,swap" in sig["string"] and "B:2" in sig["string"]
    assert list(res["kinds"]) == list(KINDS)
    for kind, d in res["kinds"].items():
        for m in ("bleu", "chrf", "semantic"):
            s = d["similarity"][m]
            assert s["n"] == 4 and s["ci_low"] <= s["mean"] <= s["ci_high"]
        assert d["perplexity_shift"]["measured"] and d["perplexity_shift"]["per_item_delta"]["n"] == 4
        assert d["answers"]["measured"] and d["answers"]["items"] == 1 and 0 <= d["answers"]["flip_rate"]["mean"] <= 1
        assert d["reference"]["measured"] and d["reference"]["items"] == 2
        assert set(d["pdr"]) == {"accuracy", "reference_chrf", "reference_bleu", "similarity_chrf"}
        assert 0 <= d["changed_share"] <= 1
    assert res["kinds"]["upper"]["changed_share"] == 1.0
    agg = res["aggregate"]
    assert agg["kinds"] == list(KINDS) and agg["primary_metric"] in agg["pdr"]
    assert {"accuracy", "reference_chrf", "similarity_chrf"} <= set(agg["worst_case"])
    assert res["clean"]["perplexity"]["measured"] and res["clean"]["reference"]["items"] == 2
    assert len(res["per_prompt"]) == 4 and set(res["per_prompt"][0]["kinds"]) == set(KINDS)
    # generations.jsonl: clean and every kind for each item, the OOD set, both searches
    count = lambda **kw: sum(all(g.get(k) == v for k, v in kw.items()) for g in lines)  # noqa: E731
    assert count(set="in", variant="clean") == 4 and all(count(set="in", variant=k) == 4 for k in KINDS)
    assert count(set="ood", variant="clean") == 3
    assert count(variant="adv-greedy") == count(variant="adv-random") == 2 * 4
    # the perturbation targets: a translation's source (inside its prompt), a chat's last user turn
    up = _outs(lines, "upper")
    assert up["tr"]["prompt"] == "Translate: DER HUND BELLT."
    assert up["chat"]["prompt"] == "hello there\nhi\nWHAT IS A MODULE?"
    assert "eval robustness" in r.stdout and "adversarial search" in r.stdout and "domain shift" in r.stdout


def test_pdr_and_worst_case_recomputed_from_generations(rob_run, prompt_file):
    import sacrebleu

    from steadylm.evaluate.prompts import read_prompts_jsonl

    _, _, res, lines = rob_run
    items = {i.id: i for i in read_prompts_jsonl(prompt_file)}
    refd = [k for k, i in items.items() if i.references]
    outs = {v: _outs(lines, v) for v in ("clean", *KINDS)}

    def chrf(hyp, refs):
        return sacrebleu.sentence_chrf(hyp, refs).score

    ref_chrf = {v: [chrf(outs[v][k]["text"], list(items[k].references)) for k in refd] for v in outs}
    pdr = 1 - sum(ref_chrf["typo"]) / sum(ref_chrf["clean"])
    assert res["kinds"]["typo"]["pdr"]["reference_chrf"]["pdr"] == pytest.approx(pdr, abs=1e-9)
    # over all kinds: every kind's items over the clean sum once per kind
    allk = 1 - sum(sum(ref_chrf[k]) for k in KINDS) / (len(KINDS) * sum(ref_chrf["clean"]))
    assert res["aggregate"]["pdr"]["reference_chrf"]["pdr"] == pytest.approx(allk, abs=1e-9)
    wc = [min(ref_chrf[v][n] for v in outs) for n in range(len(refd))]
    assert res["aggregate"]["worst_case"]["reference_chrf"]["worst_case"]["mean"] == pytest.approx(sum(wc) / len(wc))
    # corpus chrF of the perturbed outputs (sample 0), as sacrebleu computes it
    corpus = sacrebleu.corpus_chrf([outs["typo"][k]["text"] for k in refd], [[items[k].references[0] for k in refd]])
    assert res["kinds"]["typo"]["reference"]["chrf"]["perturbed"] == pytest.approx(corpus.score, abs=1e-9)
    # similarity to the clean output: chrF, 100 for identical outputs; PDR = 1 - mean / 100
    sim = [100.0 if outs["typo"][k]["text"] == outs["clean"][k]["text"]
           else chrf(outs["typo"][k]["text"], [outs["clean"][k]["text"]]) for k in items]
    assert res["kinds"]["typo"]["similarity"]["chrf"]["mean"] == pytest.approx(sum(sim) / len(sim))
    assert res["kinds"]["typo"]["pdr"]["similarity_chrf"]["pdr"] == pytest.approx(1 - sum(sim) / (100 * len(sim)))


def test_perplexity_shift_matches_compute_perplexity(rob_run, nano_model_dir):
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.evaluate.perplexity import compute_perplexity
    from steadylm.models.presets import load_model

    _, _, res, lines = rob_run
    model, tok = load_model(str(nano_model_dir)), load_tokenizer(str(nano_model_dir))
    bpb = {v: compute_perplexity(model, tok, [g["prompt"] for g in _outs(lines, v).values()], window=64,
                                 progress=False).bits_per_byte for v in ("clean", "upper")}
    ps = res["kinds"]["upper"]["perplexity_shift"]
    assert ps["clean_bits_per_byte"] == pytest.approx(bpb["clean"], abs=1e-4)
    assert ps["delta_bits_per_byte"] == pytest.approx(bpb["upper"] - bpb["clean"], abs=1e-4)
    # upper case breaks the BPE (learnt on mostly lower-case prose) into more tokens per byte
    assert ps["delta_bits_per_byte"] > 0


def test_adversarial_search_budget_and_monotone(rob_run):
    _, _, res, lines = rob_run
    adv = res["adversarial"]
    assert adv["measured"] and adv["items"] == 2 and adv["budget"] == 2 and adv["queries_per_search"] == 4
    assert adv["greedy"]["queries"] == adv["random"]["queries"] == [4, 4]
    for e in adv["examples"]:
        for name, variant in (("greedy", "adv-greedy"), ("random", "adv-random")):
            s = e[name]
            logged = [g for g in lines if g["variant"] == variant and g["prompt_id"] == e["prompt_id"]]
            assert len(logged) == s["queries"] == 4  # exactly the budget it reports
            assert len(s["curve"]) == 2 and s["curve"][1] <= s["curve"][0] <= e["clean_score"]
            assert s["score"] == s["curve"][-1] <= s["curve"][0]  # never worse than its first step
            assert s["score"] == pytest.approx(min([e["clean_score"]] + [g["score"] for g in logged]))
            if s["score"] < e["clean_score"]:  # the worst example, verbatim
                hit = [g for g in logged if g["score"] == s["score"] and g["prompt"] == s["prompt"]]
                assert hit and hit[0]["text"] == s["output"] and s["prompt"] != e["clean_prompt"]
        assert len(e["greedy"]["edits"]) <= 2 and all(len(g["edits"]) == 2 for g in lines
                                                      if g["variant"] == "adv-random")
        assert e["clean_output"] == _outs(lines, "clean")[e["prompt_id"]]["text"]


def test_ood_reports_perplexity_ratio(rob_run):
    _, _, res, _ = rob_run
    ood = res["ood"]
    assert ood["measured"] and ood["source"] == "builtin:stdlib-code" and ood["ood"]["items"] == 3
    assert ood["in_domain"] == res["clean"]
    bi, bo = ood["in_domain"]["perplexity"]["bits_per_byte"], ood["ood"]["perplexity"]["bits_per_byte"]
    assert ood["drop"]["perplexity_ratio"] == pytest.approx(2 ** (bo - bi))
    assert ood["drop"]["bits_per_byte_delta"] == pytest.approx(bo - bi)
    assert ood["ood"]["reference"]["measured"] and "reference_chrf_delta" in ood["drop"]
    assert ood["ood"]["self_bleu"]["measured"] is False  # K = 1


def test_resume_serves_everything_from_cache(rob_run, nano_model_dir, prompt_file):
    out, _, first, _ = rob_run
    r = run_in_process(*_args(nano_model_dir, prompt_file, out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["counts"]["from_cache"] == res["counts"]["generations"] == first["counts"]["generations"]
    assert res["kinds"] == first["kinds"] and res["adversarial"] == first["adversarial"]


@pytest.mark.parametrize("extra, expect", [
    (["--kinds", "tpyo"], "did you mean 'typo'"),
    (["--rate", "1.5"], "--rate must be a number in [0, 1]"),
    (["--rate", "-0.1"], "--rate"),
    (["--budget", "3", "--queries", "2"], "--queries must be >= --budget"),
    ([], "empty"),
])
def test_bad_input_one_line(extra, expect, tmp_path, prompt_file, capsys):
    prompts = prompt_file
    if not extra:
        prompts = tmp_path / "empty.jsonl"
        prompts.write_text("", encoding="utf-8")
    one_line_error(capsys, ["eval", "robustness", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts),
                            "--out", str(tmp_path / "o"), *extra], expect)
    assert not (tmp_path / "o").exists()


def test_endpoint_says_perplexity_not_measured(nano_model_dir, tmp_path, capsys):
    """Over HTTP there are no log-probabilities: the perplexity shift and the OOD perplexity ratio
    are reported as not measured, everything else is."""
    import torch

    from openai_server import OpenAIServer
    from steadylm.evaluate.backends import DecodingSettings, open_backend
    from steadylm.evaluate.prompts import PromptItem
    from steadylm.evaluate.robustness import RobustnessConfig, RobustnessEval
    from steadylm.report.tables import print_robustness_summary

    items = [PromptItem("a", prompt="The module is", references=("a file",)), PromptItem("b", prompt="A loop runs")]
    ood = [PromptItem("c", prompt="def f(x):\n    return x", references=("pass",))]
    cfg = RobustnessConfig(kinds=("typo", "lower"), samples=2, decoding=DecodingSettings(temperature=0.8, max_new_tokens=4),
                           budget=1, queries=2, adv_items=1, ood="inline", bootstrap=100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with OpenAIServer(nano_model_dir, model_name="nano") as s:
            backend = open_backend(s.spec(), concurrency=2)
            ev = RobustnessEval(backend, items, cfg, tmp_path / "o", ood_items=ood, progress=False)
            try:
                res = ev.run()
            finally:
                ev.close()
    finally:
        torch.set_num_threads(threads)
    assert res["signature"]["backend"]["backend"] == "openai" and res["signature"]["perplexity"] is None
    for d in res["kinds"].values():
        assert d["perplexity_shift"]["measured"] is False and "not measured" in d["perplexity_shift"]["reason"]
    assert res["clean"]["perplexity"]["measured"] is False and res["ood"]["drop"]["perplexity_ratio"] is None
    assert res["clean"]["self_bleu"]["measured"] and "self_bleu_delta" in res["ood"]["drop"]
    assert res["adversarial"]["greedy"]["queries"] == res["adversarial"]["random"]["queries"] == [2]
    print_robustness_summary(res, tmp_path / "o")
    assert "not measured" in capsys.readouterr().out
