"""A ``.gguf`` --model that is no causal LM: a text file with the suffix, or a real GGUF file (written
here with the ``gguf`` package's writer) of an encoder-decoder architecture. Every command that
takes a model answers with one ``steadylm: error:`` line naming the file, exit 2, and leaves no
output behind. No real model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import one_line_error

gguf = pytest.importorskip("gguf", reason="reading .gguf files needs the gguf package")


def _t5_gguf(path: Path) -> Path:
    """A tiny, well-formed GGUF file of architecture ``t5``: transformers reads its config (a
    T5Config, no causal LM) and, finding no tokenizer in it, logs a guess about its vocabulary."""
    import numpy as np

    w = gguf.GGUFWriter(str(path), "t5")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_key_length(4)
    w.add_value_length(4)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _commands(model: Path, out: Path) -> list[list[str]]:
    m = str(model)
    return [
        ["eval", "perplexity", "--model", m, "--data", "builtin:pydoc"],
        ["eval", "generation", "--model", m, "--out", str(out / "gen")],
        ["eval", "robustness", "--model", m, "--out", str(out / "rob")],
        ["eval", "generation", "--model", f"ensemble:{m},{m}", "--out", str(out / "ens")],
        ["train", "--model", m, "--data", "builtin:pydoc", "--out", str(out / "run"), "--steps", "1"],
        ["soup", m, m, "-o", str(out / "soup")],
    ]


@pytest.mark.parametrize("kind", ["text", "t5"])
def test_a_gguf_that_is_no_causal_lm_is_one_line_naming_it(kind, tmp_path, capsys):
    if kind == "text":
        model = tmp_path / "notes.gguf"
        model.write_text("these are notes, not a model\n", encoding="utf-8")
        fragment = "not a GGUF file transformers can read"
    else:
        model = _t5_gguf(tmp_path / "encoder.gguf")
        fragment = "is not a causal language model"
    out = tmp_path / "out"
    out.mkdir()
    for argv in _commands(model, out):
        line = one_line_error(capsys, argv, model.name)
        assert fragment in line, (argv, line)
        assert list(out.iterdir()) == [], (argv, list(out.iterdir()))  # nothing half-written

