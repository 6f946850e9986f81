"""Metrics as objects with typed results (`evaluate.result`), the one run path the generating
evaluations share (`evaluate.run`), and the one number format of every table (`report.format`)."""

from __future__ import annotations

import math

import pytest

from conftest import CHINESE


def test_result_and_not_measured_are_frozen_and_serialize():
    from dataclasses import FrozenInstanceError

    from steadylm.evaluate.result import NotMeasured, Result, as_json, summarize_items
    from steadylm.stats import summarize

    per = {"a": 1.0, "b": None, "c": 3.0, "d": float("nan"), "e": 2.0}
    r = summarize_items(per, n_resamples=200, signature={"method": "m"})
    want = summarize([1.0, 3.0, float("nan"), 2.0], n_resamples=200)
    assert r.to_json() == want == {"mean": 2.0, "ci_low": want["ci_low"], "ci_high": want["ci_high"], "n": 3}
    assert r.value == 2.0 and r.ci == (want["ci_low"], want["ci_high"]) and r.n == 3
    assert list(r.per_item) == list(per) and r.per_item["c"] == 3.0 and r.per_item["b"] is None  # item order kept
    assert r.signature == {"method": "m"} and r.measured is True
    nm = NotMeasured("needs --samples >= 2")
    assert nm.measured is False and nm.to_json() == {"measured": False, "reason": "needs --samples >= 2"}
    with pytest.raises(FrozenInstanceError):
        r.value = 0.0  # type: ignore[misc]
    corpus = Result({"bleu": 12.5}, None, {"a": 1.0})
    assert corpus.to_json() == {"bleu": 12.5}
    assert as_json({"x": r, "y": nm, "z": 4}) == {"x": want, "y": nm.to_json(), "z": 4}


def test_metric_objects_return_results_keyed_by_item():
    from steadylm.evaluate.consistency import AnswerAgreement, answer_stats
    from steadylm.evaluate.degeneration import Degeneration, UNITS_NOTE, degeneration_stats, in_loop, units
    from steadylm.evaluate.reference import CorpusReference, reference_metrics, sentence_scores

    outs = {"p": ["a b a b a b", "the cat sat"], "q": ["x y z x y z x", "x y z x y z x", "stop"]}
    d = Degeneration().score(outs)
    assert d.ci is None and d.signature == {"units": UNITS_NOTE}
    assert d.to_json() == degeneration_stats([t for ts in outs.values() for t in ts])
    assert dict(d.per_item) == {"p": 0.5, "q": pytest.approx(2 / 3)}
    assert d.per_item["q"] == sum(in_loop(units(t)) for t in outs["q"]) / 3

    hyps = {"a": "The dog barks.", "b": CHINESE[:10]}
    refs = {"a": ("The dog barks loudly.", "A dog barks."), "b": (CHINESE[:12],)}
    r = CorpusReference().score(hyps, refs)
    want = reference_metrics(list(hyps.values()), [list(v) for v in refs.values()])
    assert r.value == want and r.signature == {"tokenize": want["tokenize"], "chinese": want["chinese"]}
    assert r.per_item["b"] == sentence_scores(hyps["b"], list(refs["b"]), tokenize=want["tokenize"])

    agree = AnswerAgreement(n_resamples=200)
    records = {"x": agree.item(["Paris.", "Paris", "Lyon"], "Paris"), "y": agree.item(["4", "4"], "4")}
    assert records["x"] == answer_stats(["Paris.", "Paris", "Lyon"], "Paris")
    res = agree.score(records)
    assert set(res) == {"agreement", "majority_share", "accuracy"}
    assert res["accuracy"].value == pytest.approx((2 / 3 + 1.0) / 2)
    assert dict(res["agreement"].per_item) == {"x": pytest.approx(2 / 6), "y": 1.0}


def test_evaluations_share_one_run_path():
    """Both generating evaluations are an `EvalRun`: one generate/cache/summary path, not two copies."""
    from steadylm.evaluate.generation import GenerationEval
    from steadylm.evaluate.robustness import RobustnessEval
    from steadylm.evaluate.run import EvalRun

    assert issubclass(GenerationEval, EvalRun) and issubclass(RobustnessEval, EvalRun)
    for cls in (GenerationEval, RobustnessEval):
        for name in ("generate", "embedder", "summarize", "scorer", "close"):
            assert name not in vars(cls), f"{cls.__name__} redefines {name}"
        assert not hasattr(cls, "_run") and not hasattr(cls, "_summ")


def test_generation_and_robustness_dedupe_and_count_through_the_shared_cache(nano_model_dir, tmp_path):
    from steadylm.evaluate.backends import DecodingSettings, Request, open_backend
    from steadylm.evaluate.run import EvalRun

    backend = open_backend(str(nano_model_dir))
    st = DecodingSettings(temperature=0.0, max_new_tokens=3)
    reqs = [Request("a", 0, 0, st, prompt="The module"), Request("b", 0, 0, st, prompt="A loop")]
    run = EvalRun(backend, tmp_path / "o", bootstrap=100)
    try:
        gens = run.generate(reqs + reqs[:1], "test")  # a repeated request is generated once
        assert [g.request.prompt_id for g in gens] == ["a", "b", "a"] and gens[0] is gens[2]
        assert (run.generated, run.from_cache) == (2, 0)
        again = run.generate(reqs, "again")
        assert [g.text for g in again] == [g.text for g in gens[:2]] and (run.generated, run.from_cache) == (4, 2)
    finally:
        run.close()


def test_text_scorer_sums_documents_like_compute_perplexity(nano_model_dir, pydoc_docs):
    """The robustness perplexity path (one text at a time, cached) gives the corpus numbers
    `compute_perplexity` gives for the same texts as documents."""
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.evaluate.perplexity import TextScorer, compute_perplexity
    from steadylm.models.presets import load_model

    model, tok = load_model(str(nano_model_dir)), load_tokenizer(str(nano_model_dir))
    texts = [pydoc_docs[0][:200], CHINESE[:20], "   ", pydoc_docs[1][:150]]
    scorer = TextScorer(model, tok, window=64)
    c = scorer.corpus(texts)
    ref = compute_perplexity(model, tok, [t for t in texts if t.strip()], window=64, progress=False)
    assert c["documents"] == 3 and (c["tokens"], c["bytes"]) == (ref.tokens, ref.bytes)
    assert c["loglikelihood"] == pytest.approx(ref.loglikelihood, rel=1e-6)
    assert c["bits_per_byte"] == pytest.approx(ref.bits_per_byte, rel=1e-6)
    assert c["token_perplexity"] == pytest.approx(ref.token_perplexity, rel=1e-6)
    assert scorer.bits_per_byte("   ") is None
    ll, nb, _ = scorer.score(texts[1])
    assert scorer.bits_per_byte(texts[1]) == pytest.approx(-ll / nb / math.log(2))


def test_one_number_format_for_terminal_and_report():
    from steadylm.report import html
    from steadylm.report.format import fmt, fmt_ci, fmt_ci_n

    s = {"mean": 0.123456, "ci_low": 0.1, "ci_high": 0.15, "n": 4}
    assert fmt(None) == "-" and fmt(True) == "yes" and fmt(0.123456) == "0.1235" and fmt(float("inf")) == "inf"
    assert fmt_ci(s) == "0.1235  [0.1, 0.15]"  # the terminal tables
    assert fmt_ci_n(s) == "0.1235 [0.1, 0.15] (n=4)"  # the report
    assert fmt_ci({"mean": 2.0, "ci_low": None, "ci_high": None}) == "2" and fmt_ci({"mean": None}) == "-"
    assert not hasattr(html, "_fmt") and not hasattr(html, "_ci")
    assert html._cell(s)["text"] == "0.1235 [0.1, 0.15] (n=4)"
