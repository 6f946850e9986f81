import json

import pytest

from conftest import CHINESE
from steadylm.data.packing import BlockDataset
from steadylm.data.sources import load_documents, split_documents
from steadylm.errors import DataError


def test_builtin_pydoc_is_large_and_deterministic():
    a = load_documents("builtin:pydoc")
    b = load_documents("builtin:pydoc")
    assert a.documents == b.documents
    assert len(a) > 50
    assert sum(len(d) for d in a.documents) > 400_000


def test_split_is_deterministic_and_disjoint():
    c = load_documents("builtin:pydoc")
    train, val = split_documents(c, 0.1)
    assert (train, val) == split_documents(c, 0.1)
    assert len(train) + len(val) == len(c)
    assert not set(train) & set(val)
    assert 1 <= len(val) <= len(c) // 5


def test_split_does_not_depend_on_file_order(tmp_path):
    docs = [f"document number {i} " * 5 for i in range(30)]
    from steadylm.data.sources import Corpus

    a = split_documents(Corpus("a", docs), 0.2)
    b = split_documents(Corpus("b", list(reversed(docs))), 0.2)
    assert set(a[1]) == set(b[1])


def test_txt_folder_jsonl_and_chinese(tmp_path):
    (tmp_path / "one.txt").write_text("hello world\n", encoding="utf-8")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(CHINESE, encoding="utf-8")
    (folder / "b.txt").write_text("second", encoding="utf-8")
    (folder / "blank.txt").write_text("  \n", encoding="utf-8")
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"text": CHINESE}, ensure_ascii=False) + "\n\n" + json.dumps({"text": "x", "id": 3}) + "\n", encoding="utf-8")
    assert load_documents(str(tmp_path / "one.txt")).documents == ["hello world\n"]
    assert load_documents(str(folder)).documents == [CHINESE, "second"]
    assert load_documents(str(jl)).documents == [CHINESE, "x"]


def test_utf8_bom_is_dropped(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffhello".encode("utf-8"))
    assert load_documents(str(p)).documents == ["hello"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.txt", b"", "empty"),
        ("blank.txt", b"  \n\n", "empty"),
        ("nul.txt", b"abc\x00def", "NUL byte at offset 3"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), "not UTF-8 text (invalid byte 0xe9 on line 1)"),
        ("random.txt", bytes(range(128, 256)) * 4, "not UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not valid JSON"),
        ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "notext.jsonl:2: no 'text' field"),
        ("list.jsonl", b'[1, 2]\n', "list.jsonl:1: expected a JSON object"),
        ("num.jsonl", b'{"text": 5}\n', "num.jsonl:1: 'text' must be a string"),
        ("blank.jsonl", b'{"text": ""}\n', "empty"),
    ],
)
def test_bad_input_is_named(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_documents(str(p))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no .txt files"):
        load_documents(str(tmp_path))
    with pytest.raises(DataError, match="unknown built-in"):
        load_documents("builtin:nope")


def test_tokenizer_round_trips_chinese(tokenizer):
    ids = tokenizer(CHINESE, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == CHINESE
    assert tokenizer.unk_token_id is None
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"


def test_tokenizer_is_saved_and_reloaded(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "def f(x):\n    return x  # 注释"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.bos_token_id == tokenizer.bos_token_id


def test_blocks_are_deterministic_and_cover_the_stream():
    toks = [list(range(1, 50)), list(range(50, 90))]
    a = BlockDataset(toks, context=8, seed=3, separator=0)
    b = BlockDataset(toks, context=8, seed=3, separator=0)
    c = BlockDataset(toks, context=8, seed=4, separator=0)
    assert a.num_tokens == 91 and len(a) == 11
    xa, ya = a.batch(0, len(a))
    xb, yb = b.batch(0, len(b))
    assert xa.equal(xb) and ya.equal(yb)
    assert not xa.equal(c.batch(0, len(c))[0])
    assert xa[:, 1:].equal(ya[:, :-1])  # labels are inputs shifted by one
    # one epoch visits every block once
    starts = sorted(int(row[0]) for row in xa)
    assert starts == sorted(int(a.tokens[i * 8]) for i in range(len(a)))
    # the second epoch is a different permutation of the same blocks
    x2, _ = a.batch(len(a), len(a))
    assert sorted(map(tuple, x2.tolist())) == sorted(map(tuple, xa.tolist()))
    assert a.position(len(a) + 2) == (1, 2)


def test_too_little_text_for_one_block():
    with pytest.raises(DataError, match="fewer than one block"):
        BlockDataset([[1, 2, 3]], context=8, seed=0, separator=0, name="tiny.txt")


def test_degrade_documents_is_seeded_and_counted():
    from collections import Counter

    from steadylm.data.sources import degrade_documents

    docs = [f"document number {i} with some words" for i in range(20)]
    assert degrade_documents(docs) == docs
    a = degrade_documents(docs, corrupt=0.25, duplicate=0.1, seed=3)
    assert a == degrade_documents(docs, corrupt=0.25, duplicate=0.1, seed=3)
    assert a != degrade_documents(docs, corrupt=0.25, duplicate=0.1, seed=4)
    assert len(a) == 22
    changed = [i for i in range(20) if a[i] != docs[i]]
    assert len(changed) == 5 and all(Counter(a[i]) == Counter(docs[i]) for i in changed)  # same characters, shuffled


def test_corrupt_fraction_is_validated():
    from steadylm.config import DataConfig
    from steadylm.errors import ConfigError

    with pytest.raises(ConfigError, match="--corrupt-fraction must be in"):
        DataConfig(corrupt_fraction=1.5)
