"""The logic of ``benchmarks/trainer_smollm2.py`` that its numbers rest on: the chat data it
builds, and tokens/s over the window from the end of step 1 to the end of the last step."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("trainer_smollm2", ROOT / "benchmarks" / "trainer_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chunks_keep_every_paragraph_in_order_within_the_limit(bench):
    paras = [f"para {i} " + "x" * (40 + 37 * i % 90) for i in range(12)] + ["y" * 300]  # the last is over the limit alone
    text = "\n\n".join(paras[:5]) + "\n \n\n" + "\n\n".join(paras[5:])  # a blank line holding a space still splits
    pieces = bench.chunk_text(text, 200)
    assert all(pieces)
    assert [p for piece in pieces for p in piece.split("\n\n")] == paras  # nothing lost, split or reordered
    assert all(len(p) <= 200 for p in pieces if "\n\n" in p)  # a piece of several paragraphs stays in the limit
    assert pieces[-1] == "y" * 300
    # greedy: no two neighbours would have fitted into one piece
    assert all(len(a) + 2 + len(b) > 200 for a, b in zip(pieces, pieces[1:]))


def test_the_chat_records_are_fine_tuning_data(bench, tmp_path):
    from steadylm.data.sft import is_fine_tuning_source, iter_records

    path = tmp_path / "chat.jsonl"
    n = bench.write_chat_jsonl(path, 700, limit=30)
    assert n == 30 == len(path.read_text().splitlines())
    assert is_fine_tuning_source(str(path))
    recs = list(iter_records(str(path)))
    assert len(recs) == 30 and all(kind == "chat" for _, kind, _ in recs)
    for _, _, messages in recs:
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert re.fullmatch(r"Explain part \d+ of the Python documentation topic '.+'\.", messages[0]["content"])
        assert 0 < len(messages[1]["content"])
    assert len(bench.chat_records(700)) > 30  # the limit took the first 30 of more


def test_tokens_per_second_leaves_out_step_one(bench):
    ends = [10.0, 12.0, 15.0, 16.0]  # step 1 ended at 10 s (load and warm-up before it are outside)
    tokens = [1000, 50, 60, 40]  # step 1's tokens are not counted: it ran before the window
    w = bench.window_rate(ends, tokens)
    assert w["steps"] == 3 and w["tokens"] == 150 and w["seconds"] == 6.0
    assert w["tokens_per_s"] == 25.0
    assert w["median_step_s"] == 2.0
    with pytest.raises(ValueError):
        bench.window_rate([1.0, 2.0], [5])  # one step's tokens missing
    with pytest.raises(ValueError):
        bench.window_rate([1.0], [5])  # no step after the first


def test_bad_modes_are_one_line_and_exit_2(bench, capsys):
    assert bench.main(["--modes", "full-fp64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainer_smollm2: error: --modes") and "full-fp64" in err[0]


def test_the_logits_are_freed_before_the_backward_pass(tmp_path, monkeypatch, nano_model_dir):
    """Found by this benchmark: ``steadylm train`` held the (B, T, V) logits through backward and
    the optimizer step, a peak above the Trainer's by their size. Cross-entropy keeps what its
    backward needs; the logits themselves must be gone when the Stabilizer steps."""
    import weakref

    from steadylm.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from steadylm.train.loop import TrainingRun
    from steadylm.train.stabilizer import Stabilizer

    refs, alive = [], []
    setup, step = TrainingRun.setup, Stabilizer.step

    def hooked_setup(self):
        setup(self)
        self.forward_model.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out.logits)))

    def checked_step(self, *a, **kw):
        alive.append(refs[-1]() is not None)
        return step(self, *a, **kw)

    monkeypatch.setattr(TrainingRun, "setup", hooked_setup)
    monkeypatch.setattr(Stabilizer, "step", checked_step)
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, data=DataConfig(context=32), model=ModelConfig(path=str(nano_model_dir)),
                      optim=OptimConfig(batch_size=2, grad_accum=2, lr=1e-3))
    TrainingRun(cfg).run()
    assert alive == [False] * 4  # 2 steps x 2 micro-batches, each stepped without its logits alive
