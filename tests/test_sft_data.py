"""Fine-tuning data (issue 11): chat / prompt-completion / text records from JSONL, parquet and
save_to_disk folders; assistant-only masks; packing with correct boundaries; bad input named."""

import json

import numpy as np
import pytest

from steadylm.data.sft import (IGNORE, SFTDataset, best_fit_decreasing, heldout_loss, is_fine_tuning_source, iter_records,
                               load_sft, supports_position_packing, tokenize_examples)
from steadylm.errors import DataError

# SmolLM2-135M-Instruct's chat template, as its tokenizer_config.json holds it
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
TWO_TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]


@pytest.fixture(scope="module")
def chat_tok(pydoc_docs):
    """A byte-level BPE with ChatML specials, EOS ``<|im_end|>`` and SmolLM2's template."""
    from steadylm.data.tokenizer import train_bpe

    tok = train_bpe(pydoc_docs[:20], 400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = SMOL_TEMPLATE
    return tok


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def pieces(tok, parts):
    """Token ids and loss flags of text pieces, each (text, carries loss), encoded one by one."""
    ids, loss = [], []
    for text, on in parts:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        loss += [on] * len(t)
    return ids, loss


def only_example(tok, path, *, context=256, **kw):
    train, _ = tokenize_examples(str(path), tok, context=context, **kw)
    assert len(train) == 1
    return train.ids.tolist(), train.loss.astype(bool).tolist()


def targets(ids, loss):
    """What a row must hold for one example: inputs ids[:-1], targets ids[1:] or -100."""
    return ids[:-1], [t if on else IGNORE for t, on in zip(ids[1:], loss[1:])]


# ------------------------------------------------------------------ masks
def test_assistant_only_mask_two_turns_hand_checked(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": TWO_TURNS}])
    want_ids, want_loss = pieces(chat_tok, [
        (SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("It is 4.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("6<|im_end|>", True),
        ("\n", False),
    ])
    ids, loss = only_example(chat_tok, path)
    # the pieces tokenize as the whole does, and as the template's own tokenization does
    assert ids == want_ids == chat_tok.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    assert loss == want_loss
    ds, val = load_sft(str(path), chat_tok, context=256, seed=0, packing="padding", val_fraction=0.0)
    assert val is None
    row = ds.rows(0, 1)
    x, y = targets(ids, loss)
    assert row["input_ids"][0, :len(x)].tolist() == x
    assert row["labels"][0].tolist() == y + [IGNORE] * (256 - len(y))
    got = row["labels"][0][row["labels"][0] != IGNORE].tolist()
    assert chat_tok.decode(got) == "It is 4.<|im_end|>6<|im_end|>"
    assert ds.report.loss_tokens == len(got)


def test_loss_on_all_covers_every_token(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": TWO_TURNS[:1]}])  # no assistant turn: fine under "all"
    ids, loss = only_example(chat_tok, path, loss_on="all")
    assert ids == chat_tok.apply_chat_template(TWO_TURNS[:1], tokenize=True, return_dict=False)
    assert all(loss)


def test_prompt_completion_loss_on_completion_and_eos(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Question: what is 2+2? Answer:", "completion": " four"}])
    want_ids, want_loss = pieces(chat_tok, [("Question: what is 2+2? Answer:", False), (" four", True), ("<|im_end|>", True)])
    assert only_example(chat_tok, path) == (want_ids, want_loss)
    ids, loss = only_example(chat_tok, path, loss_on="all")
    assert ids == want_ids and all(loss)


def test_text_records_learn_everything_and_end_with_eos(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain words", "other": 1}])
    ids, loss = only_example(chat_tok, path)
    assert ids == chat_tok("plain words", add_special_tokens=False)["input_ids"] + [chat_tok.eos_token_id]
    assert all(loss)


def test_truncation_and_dropped_examples_are_counted(chat_tok, tmp_path):
    # the first conversation's assistant tokens lie beyond context + 1 tokens: nothing to learn, left out
    long_user = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": long_user}, {"messages": TWO_TURNS}])
    train, _ = tokenize_examples(str(path), chat_tok, context=90)  # TWO_TURNS: 115 tokens, first answer within 90
    assert (len(train), train.truncated, train.dropped) == (1, 2, 1)
    assert np.diff(train.offsets).tolist() == [91]
    assert train.loss_tokens == int(train.loss[1:].sum()) > 0


# ------------------------------------------------------------------ sources
def test_parquet_file_folder_and_save_to_disk_read_like_jsonl(chat_tok, tmp_path):
    import datasets

    records = [{"messages": TWO_TURNS}, {"messages": TWO_TURNS[:2]}]
    jsonl = write_jsonl(tmp_path / "c.jsonl", records)
    table = datasets.Dataset.from_list(records)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved_dict"))
    want = tokenize_examples(str(jsonl), chat_tok, context=256)[0]
    for source in ("pq/part-0.parquet", "pq", "saved", "saved_dict"):
        got = tokenize_examples(str(tmp_path / source), chat_tok, context=256)[0]
        assert got.ids.tolist() == want.ids.tolist() and got.loss.tolist() == want.loss.tolist(), source
        assert got.offsets.tolist() == want.offsets.tolist()
    assert len(want) == 2


def test_fields_are_chosen_by_flag(chat_tok, tmp_path):
    import datasets

    datasets.Dataset.from_list([{"conversation": TWO_TURNS, "body": "some text"}]).to_parquet(str(tmp_path / "x.parquet"))
    kinds = [(k, v) for _, k, v in iter_records(str(tmp_path / "x.parquet"), messages_field="conversation")]
    assert kinds == [("chat", TWO_TURNS)]
    kinds = [(k, v) for _, k, v in iter_records(str(tmp_path / "x.parquet"), text_field="body")]
    assert kinds == [("text", "some text")]


def test_records_stream_from_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"doc {i}"} for i in range(3)])
    records = iter_records(str(path))
    assert next(records) == (f"{path}:1", "text", "doc 0")  # a generator: the rest is not read yet
    assert [v for _, _, v in records] == ["doc 1", "doc 2"]


def test_validation_split_is_by_content(chat_tok, tmp_path):
    records = [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(40)]
    forward = tokenize_examples(str(write_jsonl(tmp_path / "f.jsonl", records)), chat_tok, context=32, val_fraction=0.25)
    backward = tokenize_examples(str(write_jsonl(tmp_path / "b.jsonl", records[::-1])), chat_tok, context=32, val_fraction=0.25)

    def examples(ex):
        return sorted(tuple(ex.ids[s:t].tolist()) for s, t in zip(ex.offsets[:-1], ex.offsets[1:]))

    train, val = (examples(e) for e in forward)
    assert 0 < len(val) < 20 and len(train) + len(val) == 40 and not set(train) & set(val)
    assert [examples(e) for e in backward] == [train, val]  # the same side whatever the order


def test_which_sources_are_fine_tuning_data(tmp_path):
    import datasets

    write_jsonl(tmp_path / "chat.jsonl", [{"messages": TWO_TURNS}])
    write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "a"}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n", encoding="utf-8")
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list([{"text": "a"}]).to_parquet(str(tmp_path / "pq" / "a.parquet"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("words", encoding="utf-8")
    got = {name: is_fine_tuning_source(str(tmp_path / name)) for name in
           ("chat.jsonl", "pc.jsonl", "text.jsonl", "broken.jsonl", "saved", "pq", "pq/a.parquet", "txt", "missing.jsonl")}
    assert got == {"chat.jsonl": True, "pc.jsonl": True, "text.jsonl": False, "broken.jsonl": False, "saved": True,
                   "pq": True, "pq/a.parquet": True, "txt": False, "missing.jsonl": False}
    assert is_fine_tuning_source(str(text), text_field="text") and not is_fine_tuning_source("builtin:pydoc")


def test_fingerprint_follows_the_content(chat_tok, tmp_path):
    a = tokenize_examples(str(write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two"}])), chat_tok, context=32)[0]
    b = tokenize_examples(str(write_jsonl(tmp_path / "b.jsonl", [{"text": "one"}, {"text": "two"}])), chat_tok, context=32)[0]
    c = tokenize_examples(str(write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": "twos"}])), chat_tok, context=32)[0]
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# ------------------------------------------------------------------ packing
def test_best_fit_decreasing_fills_rows():
    assert best_fit_decreasing(np.array([3, 5, 1, 4, 2, 3]), 6) == [[1, 2], [3, 4], [0, 5]]
    assert best_fit_decreasing(np.array([6, 6]), 6) == [[0], [1]]


def test_position_packing_restarts_at_every_example(chat_tok, tmp_path):
    texts = ["one two three", "four", "five six seven eight nine", "ten eleven"]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    train, _ = tokenize_examples(str(path), chat_tok, context=32)
    examples = [train.ids[s:t].tolist() for s, t in zip(train.offsets[:-1], train.offsets[1:])]
    lengths = [len(e) - 1 for e in examples]
    context = max(lengths) + 2
    ds = SFTDataset(train, context, seed=3, packing="positions", pad_id=-7)
    assert ds.report.tokens == sum(lengths)
    assert ds.report.padding_share == pytest.approx(1 - sum(lengths) / (len(ds) * context))
    batch = ds.rows(0, len(ds))
    seen = []
    for x, y, pos in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0] + [context]
        for a, b in zip(starts, starts[1:]):
            assert pos[a:b] == list(range(b - a))
            if x[a] == -7:  # the padding at a row's end: no loss
                assert set(x[a:b]) == {-7} and set(y[a:b]) == {IGNORE} and b == context
            else:
                seen.append((x[a:b], y[a:b]))
    want = [(e[:-1], e[1:]) for e in examples]
    assert sorted(seen) == sorted(want)  # every example once per epoch, whole, its targets its own


def test_padding_puts_one_example_per_row_and_order_is_seeded(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "word " * k} for k in range(1, 6)])
    train, _ = tokenize_examples(str(path), chat_tok, context=16)
    ds = SFTDataset(train, 16, seed=1, packing="padding")
    assert len(ds) == 5 and "position_ids" not in ds.rows(0, 2)
    lengths = np.diff(train.offsets) - 1
    assert ds.report.padding_share == pytest.approx(1 - lengths.sum() / (5 * 16))
    again = SFTDataset(train, 16, seed=1, packing="padding")
    assert ds.rows(3, 4)["input_ids"].tolist() == again.rows(3, 4)["input_ids"].tolist()
    epoch = ds.rows(0, 5)["input_ids"]
    real = sorted(int((row != 0).sum()) for row in epoch)  # pad 0 is not a token of "word"
    assert real == sorted(lengths.tolist())


def test_block_dataset_rows_match_batch():
    from steadylm.data.packing import BlockDataset

    ds = BlockDataset([list(range(1, 40))], context=8, seed=0, separator=0)
    x, y = ds.batch(2, 3)
    rows = ds.rows(2, 3)
    assert rows["input_ids"].tolist() == x.tolist() and rows["labels"].tolist() == y.tolist()


def test_position_packing_probe(nano_model_dir):
    import torch

    from steadylm.models import load_model

    model = load_model(str(nano_model_dir)).train()
    assert supports_position_packing(model) is True
    assert model.training  # the probe restores the mode

    class IgnoresPositions(torch.nn.Module):  # attends across examples: positions do not reach the mask
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids=None, **kw):
            return self.inner(input_ids=input_ids, **kw)

    assert supports_position_packing(IgnoresPositions(model)) is False


def test_heldout_loss_is_the_mean_over_loss_tokens(chat_tok, tmp_path):
    import torch
    import torch.nn.functional as F

    from steadylm.models import build_model

    model = build_model("nano", vocab_size=len(chat_tok), context=64, seed=0, eos_token_id=chat_tok.eos_token_id)
    records = [{"prompt": f"question {i}:", "completion": f" answer {i}"} for i in range(5)]
    train, _ = tokenize_examples(str(write_jsonl(tmp_path / "pc.jsonl", records)), chat_tok, context=32)
    ds = SFTDataset(train, 32, seed=0, packing="positions")
    loss, count = heldout_loss(model, ds, batch_size=2)
    want, n = 0.0, 0
    with torch.no_grad():  # each example alone, unpacked: what packing must reproduce
        for s, t in zip(train.offsets[:-1], train.offsets[1:]):
            ids = torch.tensor(train.ids[s:t].tolist())
            logits = model(input_ids=ids[None, :-1]).logits[0]
            keep = torch.tensor(train.loss[s + 1:t].astype(bool))
            want += float(F.cross_entropy(logits[keep], ids[1:][keep], reduction="sum"))
            n += int(keep.sum())
    assert count == n == ds.report.loss_tokens
    assert loss == pytest.approx(want / n, rel=1e-5)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("lines, fragment", [
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}],
     ":1: messages[1] has unknown role 'robot'; known roles: system, user, assistant, tool"),
    ([{"messages": TWO_TURNS}, {"messages": [{"role": "user", "content": "hi"}]}],
     ":2: no assistant message, so nothing to learn under --loss-on assistant"),
    ([{"messages": TWO_TURNS}, {"messages": [{"role": "user", "content": 3}]}], ":2: messages[0].content must be a string, got int"),
    ([{"messages": TWO_TURNS}, {"text": "x"}], ":2: no 'messages' field"),
    ([{"messages": "hello"}], ":1: 'messages' must be a non-empty list"),
    ([{"prompt": "a", "completion": None}], ":1: 'completion' must be a string, got NoneType"),
    ([{"body": "x"}], ":1: no 'messages', 'prompt' and 'completion', or 'text' field (fields: 'body')"),
    ([[1, 2]], ":1: expected a JSON object, got list"),
])
def test_bad_records_are_named(chat_tok, tmp_path, lines, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as e:
        tokenize_examples(str(path), chat_tok, context=64)
    assert f"{path}{fragment}" in str(e.value)


def test_malformed_jsonl_and_long_line_are_named(chat_tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        tokenize_examples(str(path), chat_tok, context=64)
    path.write_text('{"text": "fine"}\n' + json.dumps({"text": "x" * 5000}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: line longer than"):
        tokenize_examples(str(path), chat_tok, context=64, max_line_bytes=1000)


def test_missing_named_field_in_parquet_and_saved_folder(chat_tok, tmp_path):
    import datasets

    table = datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}])
    table.to_parquet(str(tmp_path / "t.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for source in ("t.parquet", "saved"):
        with pytest.raises(DataError) as e:
            tokenize_examples(str(tmp_path / source), chat_tok, context=64, messages_field="conversation")
        assert str(e.value) == f"{tmp_path / source}: no field 'conversation' (named by --messages-field); fields: 'text'"
    bad = [{"messages": TWO_TURNS}, {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}]
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "roles.parquet"))
    with pytest.raises(DataError) as e:
        tokenize_examples(str(tmp_path / "roles.parquet"), chat_tok, context=64)
    assert str(e.value).startswith(f"{tmp_path / 'roles.parquet'} row 2: messages[1] has unknown role 'bot'")


def test_unusable_sources(chat_tok, tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        tokenize_examples(str(tmp_path / "nope.jsonl"), chat_tok, context=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder has no .jsonl or .parquet files"):
        tokenize_examples(str(tmp_path / "empty"), chat_tok, context=64)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'broken.parquet'}: cannot read"):
        tokenize_examples(str(tmp_path / "broken.parquet"), chat_tok, context=64)
    # every example's assistant tokens lie beyond the context: nothing to train on
    long_user = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]
    path = write_jsonl(tmp_path / "far.jsonl", [{"messages": long_user}])
    with pytest.raises(DataError, match=r"no example with a loss token within --context 16 \+ 1 tokens \(1 left out\)"):
        load_sft(str(path), chat_tok, context=16, seed=0, val_fraction=0.0)
