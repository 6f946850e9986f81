"""steadylm.evaluate.perturb: every kind acts at a high rate and not at rate 0, seeded and
order-independent, composable, applied to the right part of a PromptItem; and `steadylm perturb`."""

from __future__ import annotations

import math
import re

import pytest
from conftest import CHINESE, one_line_error

from steadylm.errors import ConfigError
from steadylm.evaluate.perturb import (
    PERTURBATIONS, QWERTY_NEIGHBOURS, SYNONYM_THRESHOLD, ZH_VARIANTS, compose, perturb, perturb_item, rng_for,
    synonym_neighbours, word_cosine,
)
from steadylm.evaluate.prompts import PromptItem

EN = ("The quick brown fox doesn't jump over the lazy dog, which is necessary. "
      "Do not separate the function from its argument; I am sure it is a good model.")

NAMES = ["typo", "swap", "insert", "delete", "ocr", "lower", "upper", "whitespace", "punctuation", "contraction",
         "filler", "misspelling", "word-order", "synonym", "distractor", "zh-punct", "zh-char"]

# kind -> a text it has something to act on (rate 1 must change it)
SUITABLE = {k: EN for k in NAMES} | {"zh-punct": CHINESE, "zh-char": CHINESE}

# kind -> a text it has nothing to act on (any rate leaves it alone)
NOTHING = [
    ("typo", "123 456 — 789"), ("typo", CHINESE), ("swap", "a b c 1 2"), ("insert", "... !!! —"),
    ("delete", "... !!! —"), ("ocr", "yak tux fax"), ("lower", "already lower case"), ("upper", "ALREADY UPPER"),
    ("whitespace", "no_spaces_here"), ("punctuation", "-- ... !!"), ("contraction", "hello world, nothing here"),
    ("filler", "single"), ("misspelling", "xyzzy plugh"), ("word-order", "single."), ("word-order", "one. two. three."),
    ("synonym", "the of and it"), ("distractor", "   "), ("zh-punct", "Hello, world. (English only)"),
    ("zh-char", "English text only."),
]


def test_registry_has_exactly_the_kinds_each_documented():
    assert list(PERTURBATIONS) == NAMES
    for name, p in PERTURBATIONS.items():
        assert p.name == name
        assert p.description and "\n" not in p.description
        assert 0.0 < p.default_rate <= 1.0
        assert p.unit in {"letter", "character", "word", "gap", "match", "text"}


@pytest.mark.parametrize("kind", NAMES)
def test_acts_at_rate_one_and_not_at_rate_zero(kind):
    text = SUITABLE[kind]
    p = PERTURBATIONS[kind]
    assert p.apply(text, 1.0, rng_for(0, kind, 0)) != text
    assert p.apply(text, 0.0, rng_for(0, kind, 0)) == text
    assert p.apply("", 1.0, rng_for(0, kind, 0)) == ""


@pytest.mark.parametrize("kind,text", NOTHING)
def test_leaves_alone_what_it_has_nothing_to_act_on(kind, text):
    for seed in range(3):
        assert PERTURBATIONS[kind].apply(text, 1.0, rng_for(seed, kind, 0)) == text


@pytest.mark.parametrize("kind", NAMES)
def test_deterministic_for_a_seed_and_different_across_seeds(kind):
    text = SUITABLE[kind] * 2
    rate = 0.5
    a = perturb(text, kind, rate, seed=7, index=3)
    assert a == perturb(text, kind, rate, seed=7, index=3)
    assert len({perturb(text, kind, rate, seed=s, index=3) for s in range(6)}) > 1
    assert len({perturb(text, kind, rate, seed=7, index=i) for i in range(6)}) > 1


def test_result_does_not_depend_on_processing_order():
    texts = [EN[i:] for i in range(0, 60, 6)]
    f = compose("typo,swap,filler", rate=0.3, seed=1)
    forward = [f(t, i) for i, t in enumerate(texts)]
    backward = {i: f(texts[i], i) for i in reversed(range(len(texts)))}
    assert forward == [backward[i] for i in range(len(texts))]


def test_typo_uses_qwerty_neighbours_only():
    assert set(QWERTY_NEIGHBOURS["s"]) == set("adwezx")
    assert set(QWERTY_NEIGHBOURS["q"]) == set("wa")
    assert set(QWERTY_NEIGHBOURS["M"]) == set("NJK")
    for seed in range(5):
        out = PERTURBATIONS["typo"].apply(EN, 1.0, rng_for(seed, "typo", 0))
        assert len(out) == len(EN)
        for a, b in zip(EN, out):
            if a.isascii() and a.isalpha():
                assert b in QWERTY_NEIGHBOURS[a], (a, b)
            else:
                assert a == b


def test_synonym_substitutes_only_neighbours_above_the_threshold():
    near = dict(synonym_neighbours("dog"))
    assert "canine" in near and near["canine"] >= SYNONYM_THRESHOLD
    assert near["canine"] == pytest.approx(word_cosine("dog", "canine"), abs=1e-6)
    assert "dogs" not in near  # the same stem is not a synonym
    assert all(w.isalpha() and not w.startswith("##") for w in near)
    assert synonym_neighbours("the") == []  # stopword
    text = "The dog chased a small car across the large house and the happy children laughed loudly."
    changed = 0
    for seed in range(4):
        out = PERTURBATIONS["synonym"].apply(text, 1.0, rng_for(seed, "synonym", 0))
        before, after = re.findall(r"[A-Za-z]+", text), re.findall(r"[A-Za-z]+", out)
        assert len(before) == len(after)
        for a, b in zip(before, after):
            if a != b:
                changed += 1
                assert word_cosine(a, b) >= SYNONYM_THRESHOLD, (a, b)
                assert a[0].isupper() == b[0].isupper()
    assert changed > 0


@pytest.mark.parametrize("text,expected", [
    ("I do not know.", "I don't know."),
    ("It's fine.", "It is fine."),
    ("Yes, it is.", "Yes, it is."),  # never contract before punctuation
    ("I am here", "I'm here"),
    ("You can't go", "You cannot go"),
    ("we’re fine", "we are fine"),
    ("Do not go", "Don't go"),
])
def test_contraction_table(text, expected):
    assert PERTURBATIONS["contraction"].apply(text, 1.0, rng_for(0, "contraction", 0)) == expected


@pytest.mark.parametrize("kind,text,expected", [
    ("misspelling", "The function, WHICH returns a string", "Teh fucntion, WICH returns a stirng"),
    ("lower", "Hello World", "hello world"),
    ("upper", "Hello World", "HELLO WORLD"),
    ("zh-punct", "你好，世界。", "你好,世界."),
    ("zh-punct", "你好,世界.", "你好，世界。"),
    ("zh-punct", "3.14, ok.", "3.14, ok."),
])
def test_known_outputs(kind, text, expected):
    assert PERTURBATIONS[kind].apply(text, 1.0, rng_for(0, kind, 0)) == expected


def test_shapes_of_character_and_word_edits():
    words = EN.split()
    ws = PERTURBATIONS["whitespace"].apply(EN, 1.0, rng_for(0, "whitespace", 0))
    assert ws.split() == words and all(len(g) in (2, 3) for g in re.findall(r" +", ws))
    wo = PERTURBATIONS["word-order"].apply(EN, 1.0, rng_for(0, "word-order", 0))
    assert sorted(re.findall(r"\w+", wo)) == sorted(re.findall(r"\w+", EN)) and wo != EN
    sw = PERTURBATIONS["swap"].apply(EN, 1.0, rng_for(0, "swap", 0))
    assert sorted(sw) == sorted(EN)
    ins = PERTURBATIONS["insert"].apply(EN, 0.2, rng_for(0, "insert", 0))
    dl = PERTURBATIONS["delete"].apply(EN, 0.2, rng_for(0, "delete", 0))
    assert len(ins) > len(EN) > len(dl)
    fl = PERTURBATIONS["filler"].apply("one two three", 1.0, rng_for(0, "filler", 0))
    assert fl.startswith("one ") and fl.endswith(" three") and len(fl.split()) > 3
    d = PERTURBATIONS["distractor"].apply("Is it raining?", 1.0, rng_for(0, "distractor", 0))
    assert d.startswith("Is it raining? ") and len(d) > len("Is it raining? ")


def test_zh_char_uses_swaps_deletions_and_the_variant_table():
    assert len(ZH_VARIANTS) >= 200 and all(ZH_VARIANTS[ZH_VARIANTS[c]] == c for c in ZH_VARIANTS)
    assert {PERTURBATIONS["zh-char"].apply("说", 1.0, rng_for(s, "zh-char", 0)) for s in range(20)} == {"", "說"}
    out = PERTURBATIONS["zh-char"].apply(CHINESE, 0.3, rng_for(0, "zh-char", 0))
    allowed = set(CHINESE) | {ZH_VARIANTS[c] for c in CHINESE if c in ZH_VARIANTS}
    assert out != CHINESE and set(out) <= allowed


def test_compose_applies_in_order_with_each_kinds_generator():
    f = compose("lower, typo", rate={"typo": 0.3}, seed=5)
    assert f.kinds == ("lower", "typo") and f.rates == (1.0, 0.3)
    step = PERTURBATIONS["lower"].apply(EN, 1.0, rng_for(5, "lower", 2))
    assert f(EN, 2) == PERTURBATIONS["typo"].apply(step, 0.3, rng_for(5, "typo", 2))
    assert compose(["typo", "swap"], 0.2).rates == (0.2, 0.2)
    twice = compose("typo,typo", 0.2)(EN, 0)
    assert twice != compose("typo", 0.2)(EN, 0)
    assert compose("typo").settings() == {"kinds": ["typo"], "rates": [0.1], "seed": 0}


@pytest.mark.parametrize("kinds,hint", [("tpyo", "did you mean 'typo'"), ("zh_punct", "did you mean 'zh-punct'"),
                                        ("typo,wordorder", "did you mean 'word-order'"), ("", "no perturbation")])
def test_unknown_kind_suggests(kinds, hint):
    with pytest.raises(ConfigError, match=hint) as e:
        compose(kinds)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, True, "0.5", {"typo": 2.0}])
def test_rate_outside_unit_interval_is_a_config_error(rate):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        compose("typo", rate)
    if not isinstance(rate, dict):
        with pytest.raises(ConfigError):
            PERTURBATIONS["typo"].apply(EN, rate)


def test_translation_item_perturbs_source_and_its_place_in_the_prompt_never_references():
    src = "The dog barks loudly at the mailman."
    item = PromptItem(id="t1", prompt=f"Translate to German: {src}", references=("Der Hund bellt laut.",), source=src)
    new = perturb_item(item, "typo", rate=0.5, seed=1)
    assert new is not item and new.source != src
    assert new.prompt == f"Translate to German: {new.source}"
    assert new.references == item.references and new.id == item.id
    assert new.meta["perturbation"]["kinds"] == ["typo"] and new.meta["perturbation"]["source_in_prompt"]
    assert item.source == src and "perturbation" not in item.meta  # the original is untouched
    # a prompt defaulted to the source is the source
    bare = PromptItem(id="t2", prompt=src, source=src)
    assert perturb_item(bare, "typo", rate=0.5).prompt == perturb_item(bare, "typo", rate=0.5).source
    # a prompt that does not quote the source verbatim is left as it is
    other = PromptItem(id="t3", prompt="Translate the sentence.", source=src)
    moved = perturb_item(other, "typo", rate=0.5)
    assert moved.prompt == other.prompt and moved.source != src and not moved.meta["perturbation"]["source_in_prompt"]


def test_chat_item_perturbs_only_the_last_user_turn_and_plain_item_its_prompt():
    msgs = (("system", "You are a helpful assistant."), ("user", "What is the capital of France?"),
            ("assistant", "Paris is the capital."), ("user", "And which river runs through it?"))
    chat = PromptItem(id="c1", messages=msgs, references=("The Seine.",))
    new = perturb_item(chat, "typo,swap", rate=0.5, seed=2)
    assert new.messages[:3] == msgs[:3] and new.messages[3][0] == "user"
    assert new.messages[3][1] != msgs[3][1] and new.references == chat.references
    plain = PromptItem(id="p1", prompt="Name three prime numbers.", answer="2, 3, 5")
    p = perturb_item(plain, "upper")
    assert p.prompt == "NAME THREE PRIME NUMBERS." and p.answer == "2, 3, 5"
    # the item's id is its text index: the same item perturbs the same way wherever it sits
    assert perturb_item(plain, "typo", rate=0.5) == perturb_item(plain, "typo", rate=0.5)
    assert perturb_item(plain, "typo", rate=0.5, index=1) != perturb_item(plain, "typo", rate=0.5, index=2)


def test_cli_list_file_and_stdin(tmp_path, capsys):
    from steadylm.cli import main

    assert main(["perturb", "--list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == NAMES and "0.1" in out.splitlines()[0]

    f = tmp_path / "prompts.txt"
    f.write_text("Hello world, this is a test.\n\n你好，世界。\n", encoding="utf-8")
    assert main(["perturb", "--kind", "upper,zh-punct", "--rate", "1", "--seed", "3", str(f)]) == 0
    assert capsys.readouterr().out.split("\n") == ["HELLO WORLD, THIS IS A TEST.", "", "你好,世界.", ""]
    assert main(["perturb", "--kind", "typo", "--seed", "3", str(f)]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[1] == "" and len(lines) == 4
    assert lines[0] == perturb("Hello world, this is a test.", "typo", seed=3, index=0)

    # stdin as a real process: bytes in, decoded as UTF-8 whatever the locale says
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "steadylm", "perturb", "--kind", "lower", "-"],
                       input="ÄPFEL und Birnen\nZWEI\n".encode(), capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout.decode("utf-8") == "äpfel und birnen\nzwei\n"


@pytest.mark.parametrize("args,needle", [
    (["--kind", "tpyo", "FILE"], "did you mean 'typo'"),
    (["--kind", "typo", "MISSING"], "no such file"),
    (["--kind", "typo", "BAD"], "not UTF-8"),
    (["--kind", "typo", "--rate", "1.5", "FILE"], "--rate must be"),
    (["FILE"], "needs --kind"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, needle):
    good, bad = tmp_path / "ok.txt", tmp_path / "bad.txt"
    good.write_text("hello\n", encoding="utf-8")
    bad.write_bytes(b"caf\xe9\n")
    paths = {"FILE": str(good), "BAD": str(bad), "MISSING": str(tmp_path / "nope.txt")}
    one_line_error(capsys, ["perturb", *[paths.get(a, a) for a in args]], needle, quiet=True)
