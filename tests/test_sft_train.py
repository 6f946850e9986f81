"""`steadylm train` on fine-tuning data (issue 11): chat and prompt/completion records from JSONL and
parquet through the one training step, with the loss on assistant tokens only, a bit-exact resume,
the packing report in the summary, and bad input refused before a run folder exists."""

import hashlib
import json
import math
import shutil

import pytest

from conftest import _main, one_line_error
from steadylm.config import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from steadylm.train.loop import TrainingRun
from steadylm.train.monitor import read_metrics

# ChatML-like, with the nano tokenizer's one special token closing every turn (no new tokens, so
# the nano model's vocabulary still covers the tokenizer)
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|endoftext|>' + '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@pytest.fixture(scope="module")
def chat_model(nano_model_dir, tmp_path_factory):
    """The session's nano model, its tokenizer given a chat template."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("chat") / "nano-chat"
    shutil.copytree(nano_model_dir, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(out))
    return out


def chats(n: int, after=None) -> list[dict]:
    """``n`` short one-question chats (several fit in a row of 64); ``after`` adds a user turn after the answer."""
    out = []
    for i in range(n):
        m = [{"role": "user", "content": f"{i}+{i}?"}, {"role": "assistant", "content": f"{2 * i}"}]
        if after is not None:
            m.append({"role": "user", "content": after(i)})
        out.append({"messages": m})
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sft_config(out, data, model, *, steps=4, lr=1e-2, batch=4, **data_kw) -> TrainConfig:
    ckpt = data_kw.pop("checkpoint", CheckpointConfig(every=100))
    dropout = data_kw.pop("dropout", 0.0)
    return TrainConfig(out=str(out), steps=steps, threads=1, data=DataConfig(source=str(data), context=64, **data_kw),
                       model=ModelConfig(path=str(model), dropout=dropout), optim=OptimConfig(batch_size=batch, lr=lr),
                       checkpoint=ckpt)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_chat_fine_tune_learns_and_reports_its_packing(chat_model, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", chats(40))
    summary = TrainingRun(sft_config(tmp_path / "run", data, chat_model, steps=12, val_fraction=0.2)).run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0, losses
    report = summary["packing"]
    assert report["packing"] == "positions"  # a Llama keeps position-packed examples apart
    assert report["examples"] > 20 and report["truncated"] == 0 and report["dropped"] == 0
    assert 0.0 <= report["padding_share"] < 0.5
    # real tokens only: each row holds report["tokens"] / report["rows"] of its 64 slots on average
    assert summary["tokens_seen"] < 12 * 4 * 64
    assert math.isfinite(summary["val_loss"]) and summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
    assert "heldout:assistant" in summary["val_signature"] and "packing:positions" in summary["val_signature"]


@pytest.mark.parametrize("loss_on, unchanged", [("assistant", True), ("all", False)])
def test_user_tokens_carry_no_loss_under_assistant(chat_model, tmp_path, loss_on, unchanged):
    """A user turn after the answer cannot change the logits before it (causal attention), so
    turning its text to garbage changes the first step's loss only when its tokens are targets.
    One example per row (padding), so the rows and their order do not depend on its length."""
    first = {}
    for name, after in (("plain", lambda i: "Thanks!"), ("garbage", lambda i: "zq xv" * (1 + i % 3))):
        data = write_jsonl(tmp_path / f"{name}.jsonl", chats(8, after=after))
        cfg = sft_config(tmp_path / f"{name}-{loss_on}", data, chat_model, steps=1, batch=8, loss_on=loss_on,
                         packing="padding", val_fraction=0.01)
        summary = TrainingRun(cfg).run()
        first[name] = read_metrics(tmp_path / f"{name}-{loss_on}")[0]["loss"]
        assert summary["packing"]["truncated"] == 0 and summary["val_loss"] is None  # no example held out
    if unchanged:
        assert first["garbage"] == pytest.approx(first["plain"], rel=1e-6, abs=1e-6)
    else:
        assert abs(first["garbage"] - first["plain"]) > 1e-2, first


def test_z_loss_and_log_z_count_loss_tokens_only(chat_model, tmp_path):
    """The first step's logged z-loss and log Z (mean, max) are those of the loss-carrying targets
    of its batch, computed by hand with the untrained model: padding and prompt slots left out."""
    import torch

    from steadylm.data.sft import IGNORE, load_sft
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.models import load_model

    data = write_jsonl(tmp_path / "chat.jsonl", chats(16))
    cfg = sft_config(tmp_path / "run", data, chat_model, steps=1, packing="padding")
    cfg.z_loss, cfg.monitor_every = 1e-3, 1
    TrainingRun(cfg).run()
    (logged,) = read_metrics(tmp_path / "run")

    train, _ = load_sft(str(data), load_tokenizer(str(chat_model)), context=64, seed=cfg.seed, packing="padding")
    batch = train.rows(0, 4)
    labels = batch.pop("labels")
    with torch.no_grad():
        log_z = load_model(str(chat_model))(**batch, use_cache=False).logits.float().logsumexp(-1)  # (B, T)
    on = log_z[labels != IGNORE]
    assert 0 < on.numel() < labels.numel() / 2  # most slots are prompt or padding: the mask matters
    assert logged["z_loss"] == pytest.approx(float(on.pow(2).mean()), rel=1e-5)
    assert logged["log_z_mean"] == pytest.approx(float(on.mean()), rel=1e-5)
    assert logged["log_z_max"] == pytest.approx(float(on.max()), rel=1e-5)


def test_prompt_completion_parquet_trains(chat_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Double {i}: ", "completion": f"{2 * i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pc.parquet")
    summary = TrainingRun(sft_config(tmp_path / "run", tmp_path / "pc.parquet", chat_model, steps=2, val_fraction=0.2)).run()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["val_loss"])
    assert summary["packing"]["examples"] > 15 and summary["tokens_per_s"] > 0


class Crash(Exception):
    pass


def test_resume_mid_run_is_bit_exact(chat_model, tmp_path, monkeypatch):
    """Stopped after its step-3 checkpoint and resumed, a run ends with the weights and losses of
    one that never stopped (packed rows, dropout on: data order and RNG both restored)."""
    data = write_jsonl(tmp_path / "chat.jsonl", chats(24))

    def cfg(name):
        return sft_config(tmp_path / name, data, chat_model, steps=6, dropout=0.1, checkpoint=CheckpointConfig(every=3))

    TrainingRun(cfg("ref")).run()
    step = TrainingRun._train_step

    def crash_at_4(self, n, logger):
        if n == 4:
            raise Crash
        return step(self, n, logger)

    monkeypatch.setattr(TrainingRun, "_train_step", crash_at_4)
    with pytest.raises(Crash):
        TrainingRun(cfg("victim")).run()
    monkeypatch.setattr(TrainingRun, "_train_step", step)
    summary = TrainingRun.resume(tmp_path / "victim").run()
    assert summary["resumed_from"] == 3
    assert sha(tmp_path / "victim" / "model" / "model.safetensors") == sha(tmp_path / "ref" / "model" / "model.safetensors")
    got, want = read_metrics(tmp_path / "victim"), read_metrics(tmp_path / "ref")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in got] == [(r["step"], r["loss"], r["grad_norm"]) for r in want]


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "done"
    assert _main(["train", "--preset", "nano", "--data", "builtin:pydoc", "--vocab-size", "300", "--context", "32",
                  "--batch-size", "2", "--steps", "2", "--threads", "1", "--no-plots", "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    capsys.readouterr()
    assert _main(["train", "--resume", str(out), "--no-plots", "--json"]) == 0
    stdout, err = capsys.readouterr()
    assert (out / "summary.json").read_bytes() == before
    assert json.loads(stdout) == json.loads(before)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "finished all 2 steps" in lines[0], err


def test_bad_fine_tuning_input_is_one_line_and_leaves_no_folder(chat_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", chats(4))
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--data", str(data), "--preset", "nano", "--out", str(out)], "give --model")
    bad = write_jsonl(tmp_path / "bad.jsonl", chats(2) + [{"messages": [{"role": "wizard", "content": "hi"}]}])
    one_line_error(capsys, ["train", "--data", str(bad), "--model", str(chat_model), "--context", "64", "--out", str(out)],
                   "bad.jsonl:3: messages[0] has unknown role 'wizard'")
    one_line_error(capsys, ["train", "--data", str(data), "--model", str(chat_model), "--context", "64",
                            "--corrupt-fraction", "0.1", "--out", str(out)], "--corrupt-fraction degrade text documents")
    assert not out.exists()


def test_the_head_at_loss_positions_only_trains_as_the_full_head(chat_model, tmp_path, monkeypatch):
    """Chat rows carry loss on a part of their positions, and the run's LM head projects those alone
    (`LossPositions`); the losses, gradient norms and weights are the full head's, to rounding."""
    import torch
    from safetensors.torch import load_file

    from steadylm.models.headrows import LossPositions

    data = write_jsonl(tmp_path / "chat.jsonl", chats(24))
    narrowed = []
    took = LossPositions.took

    def spy(self):
        narrowed.append(took(self))
        return narrowed[-1]

    def run(name):
        cfg = sft_config(tmp_path / name, data, chat_model, steps=5)
        cfg.z_loss, cfg.monitor_every = 1e-3, 1
        TrainingRun(cfg).run()

    monkeypatch.setattr(LossPositions, "took", spy)
    run("narrow")
    assert len(narrowed) >= 5 and all(narrowed), narrowed  # every micro-batch (and validation batch) narrowed
    monkeypatch.setattr(LossPositions, "select", lambda self, labels, ignore: None)  # the full head
    run("full")
    got, want = read_metrics(tmp_path / "narrow"), read_metrics(tmp_path / "full")
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["z_loss"] == pytest.approx(b["z_loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["log_z_max"] == pytest.approx(b["log_z_max"], rel=1e-5)
    a, b = (load_file(str(tmp_path / n / "model" / "model.safetensors")) for n in ("narrow", "full"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
