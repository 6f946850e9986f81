"""``--prompt-format chat``: ``prompt`` items (and built-in prompts) reach an instruct model through
its chat template as one user turn, as ``messages`` items always do; ``text`` (the default) leaves
them as text to continue. The result names the choice, so the two runs never share a cache."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import one_line_error, run_in_process
from steadylm.errors import DataError
from steadylm.evaluate.prompts import load_prompts, prompts_label
from test_sft_data import SMOL_TEMPLATE


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "prompt": "What is 2+2?", "answer": "4"}) + "\n"
                 + json.dumps({"id": "b", "messages": [{"role": "user", "content": "你好"}]}) + "\n", encoding="utf-8")
    return p


def test_load_prompts_turns_prompt_items_into_one_user_turn(prompts_file):
    text = load_prompts(str(prompts_file))
    chat = load_prompts(str(prompts_file), prompt_format="chat")
    assert text[0].prompt == "What is 2+2?" and not text[0].is_chat
    assert chat[0].is_chat and chat[0].messages == (("user", "What is 2+2?"),) and chat[0].answer == "4"
    assert chat[1] == text[1]  # a chat item stays as it was
    assert all(it.is_chat for it in load_prompts("builtin", n_builtin=3, prompt_format="chat"))
    assert prompts_label("p.jsonl") == "p.jsonl" and "as chat" in prompts_label("p.jsonl", "chat")
    with pytest.raises(DataError, match="--prompt-format"):
        load_prompts(str(prompts_file), prompt_format="html")


def test_generation_applies_the_chat_template_only_when_asked(nano_model_dir, prompts_file, tmp_path, capsys):
    from steadylm.evaluate.backends import open_backend
    from steadylm.evaluate.generation import _request
    from steadylm.evaluate.backends import DecodingSettings

    model = tmp_path / "chat-model"
    shutil.copytree(nano_model_dir, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = SMOL_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    backend = open_backend(str(model))
    try:
        settings = DecodingSettings(temperature=0.0, max_new_tokens=2)
        as_text = backend.render(_request(load_prompts(str(prompts_file))[0], 0, 0, settings))
        as_chat = backend.render(_request(load_prompts(str(prompts_file), prompt_format="chat")[0], 0, 0, settings))
    finally:
        backend.close()
    assert as_text == "What is 2+2?"
    assert as_chat.startswith("<|im_start|>system") and "<|im_start|>user\nWhat is 2+2?<|im_end|>" in as_chat
    assert as_chat.rstrip().endswith("<|im_start|>assistant")
    out = tmp_path / "gen"
    r = run_in_process("eval", "generation", "--model", str(model), "--prompts", str(prompts_file), "--prompt-format",
                       "chat", "--truncate-left", "--samples", "2", "--max-new-tokens", "2", "--no-determinism",
                       "--no-environments",
                       "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    sig = json.loads((out / "results.json").read_text())["signature"]
    assert "as chat" in json.dumps(sig["prompts"])
    one_line_error(capsys, ["eval", "generation", "--model", str(model), "--prompt-format", "html",
                            "--out", str(tmp_path / "x")], "--prompt-format")


def test_robustness_adds_the_chinese_kinds_when_a_prompt_is_chinese(prompts_file, tmp_path):
    """Without --kinds, a Chinese prompt would pass through every Latin-script kind unchanged and count
    as robust: the Chinese kinds join the defaults when any prompt holds Han characters."""
    from steadylm.evaluate.perturb import compose
    from steadylm.evaluate.robustness import DEFAULT_KINDS, ZH_KINDS, default_kinds

    items = load_prompts(str(prompts_file))
    english = [it for it in items if it.id == "a"]
    assert default_kinds(english) == DEFAULT_KINDS
    assert default_kinds(items) == DEFAULT_KINDS + ZH_KINDS
    zh = "今天天气很好，我们一起去公园散步吧。你觉得怎么样？"
    assert all(compose(k, seed=0)(zh) == zh for k in ("typo", "ocr", "filler"))  # why: the defaults leave it
    assert any(compose(k, seed=s)(zh) != zh for k in ZH_KINDS for s in range(3))
