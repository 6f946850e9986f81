"""Perplexity: windows identical to lm-eval-harness's, numbers equal to a window-by-window oracle."""

import json
import math
import re

import pytest
import torch

from conftest import CHINESE, one_line_error
from steadylm.evaluate.perplexity import compute_perplexity, rolling_windows


# --- lm-eval-harness 0.4.x, transcribed verbatim (lm_eval/utils.py) as the oracle ---------------
def lmeval_get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def lmeval_make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def lmeval_model_input(context, continuation, max_length):
    # HFLM._loglikelihood_tokens: inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
    return (context + continuation)[-(max_length + 1) :][:-1]
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 15, 16, 17, 23, 40])
@pytest.mark.parametrize("window,stride", [(8, 8), (8, 3), (8, 1), (1, 1), (5, 5)])
def test_windows_match_lmeval(n, window, stride):
    tokens = list(range(100, 100 + n))
    ours = list(rolling_windows(tokens, 0, window, stride))
    ref = [lmeval_make_disjoint_window(p) for p in lmeval_get_rolling_token_windows(tokens, 0, window, window - stride + 1)]
    assert len(ours) == len(ref)
    for (inp, tgt), (ctx, cont) in zip(ours, ref):
        assert tgt == cont
        assert inp == lmeval_model_input(ctx, cont, window)
        assert len(inp) <= window
        # the last len(tgt) positions predict tgt: the input is the targets shifted right by one
        assert inp[len(inp) - len(tgt) + 1 :] == tgt[:-1]
    # every token is scored exactly once, in order
    assert [t for _, tgt in ours for t in tgt] == tokens


def test_last_partial_window_gets_full_context():
    tokens = list(range(1, 21))  # 20 tokens, window 8: predictions 8 + 8 + 4
    wins = list(rolling_windows(tokens, 0, 8))
    assert [len(t) for _, t in wins] == [8, 8, 4]
    assert wins[1][0] == tokens[7:15]  # one token of carry-over, then 7 more targets' inputs
    assert wins[2][0] == tokens[11:19]  # a partial window conditioned on 8 earlier tokens


def _oracle_loglikelihood(model, tokenizer, docs, window, stride):
    """Window by window, batch size 1, no padding, lm-eval's construction."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total, n_tokens = 0.0, 0
    with torch.inference_mode():
        for doc in docs:
            toks = tokenizer(doc, add_special_tokens=False)["input_ids"]
            n_tokens += len(toks)
            for pair in lmeval_get_rolling_token_windows(toks, prefix, window, window - stride + 1):
                ctx, cont = lmeval_make_disjoint_window(pair)
                inp = lmeval_model_input(ctx, cont, window)
                logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].double(), -1)
                pos = range(len(inp) - len(cont), len(inp))
                total += sum(float(logp[p, t]) for p, t in zip(pos, cont))
    return total, n_tokens


@pytest.fixture(scope="module")
def nano(nano_model_dir):
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.models import load_model

    return load_model(nano_model_dir), load_tokenizer(str(nano_model_dir))


@pytest.mark.parametrize("window,stride,batch", [(64, 64, 5), (32, 32, 1), (32, 8, 4)])
def test_perplexity_equals_oracle(nano, pydoc_docs, window, stride, batch):
    model, tok = nano
    docs = [d[:1500] for d in pydoc_docs[30:36]] + [CHINESE, "short"]
    res = compute_perplexity(model, tok, docs, window=window, stride=stride, batch_size=batch, progress=False)
    ll, n = _oracle_loglikelihood(model, tok, docs, window, stride)
    assert res.tokens == n
    assert res.loglikelihood == pytest.approx(ll, rel=1e-5)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    assert (res.words, res.bytes, res.documents) == (words, nbytes, len(docs))
    assert res.token_perplexity == pytest.approx(math.exp(-ll / n), rel=1e-5)
    assert res.word_perplexity == pytest.approx(math.exp(-ll / words), rel=1e-5)
    assert res.byte_perplexity == pytest.approx(math.exp(-ll / nbytes), rel=1e-5)
    assert res.bits_per_byte == pytest.approx(-ll / nbytes / math.log(2), rel=1e-5)


def test_batch_size_does_not_change_the_number(nano, pydoc_docs):
    model, tok = nano
    docs = [d[:3000] for d in pydoc_docs[:8]]
    a = compute_perplexity(model, tok, docs, window=64, batch_size=1, progress=False)
    b = compute_perplexity(model, tok, docs, window=64, batch_size=7, progress=False)
    assert a.windows == b.windows and a.tokens == b.tokens
    assert a.loglikelihood == pytest.approx(b.loglikelihood, rel=1e-6)


def test_untrained_model_is_near_uniform(nano, pydoc_docs):
    # A randomly initialised model's token perplexity is close to the vocabulary size.
    model, tok = nano
    res = compute_perplexity(model, tok, pydoc_docs[:3], window=64, progress=False)
    assert 0.5 * len(tok) < res.token_perplexity < 2.0 * len(tok)


def test_cli_json(nano_model_dir, tmp_path, capsys):
    from steadylm.cli import main

    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["Hello world, this is text.", CHINESE]) + "\n", encoding="utf-8")
    assert main(["eval", "perplexity", "--model", str(nano_model_dir), "--data", str(data), "--json", "--stride", "16"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "tokens", "documents", "window", "stride", "signature"):
        assert k in d
    assert d["window"] == 64 and d["stride"] == 16 and d["documents"] == 2
    sig = d["signature"]
    assert sig.startswith("steadylm:") and "|model:" in sig and "|tok:" in sig and "|special:no|window:64|stride:16|dtype:float32" in sig


def test_cli_errors(nano_model_dir, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("some text here", encoding="utf-8")
    cases = [
        (["--window", "65"], "larger than the model's context"),
        (["--window", "0"], "--window must be positive"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--window", "16", "--stride", "17"], "--stride 17 is larger than --window 16"),
    ]
    for extra, msg in cases:
        one_line_error(capsys, ["eval", "perplexity", "--model", str(nano_model_dir), "--data", str(data), *extra], msg)
    one_line_error(capsys, ["eval", "perplexity", "--model", str(tmp_path), "--data", str(data)], "not a Hugging Face model folder")


def test_diverged_model_reports_infinite_perplexity():
    from steadylm.evaluate.perplexity import _exp

    assert _exp(1.0) == pytest.approx(2.718281828) and _exp(1e6) == float("inf")
