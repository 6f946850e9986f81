"""How a generated row becomes text: cut at EOS; a row cut off by --max-new-tokens inside a
multi-byte character keeps no U+FFFD for the missing bytes (Chinese is a first-class input)."""

from __future__ import annotations

import pytest

from conftest import CHINESE


@pytest.fixture(scope="module")
def local(nano_model_dir):
    from steadylm.evaluate.backends.local import LocalBackend

    return LocalBackend(str(nano_model_dir))


def _cut_inside_a_character(tok) -> tuple[list[int], str]:
    """Token ids of a Chinese text up to a token that ends inside a character, and the text of
    the whole characters before it."""
    ids = tok(CHINESE, add_special_tokens=False)["input_ids"]
    for k in range(1, len(ids)):
        text = tok.decode(ids[:k])
        if text.endswith("\ufffd") and k > 1 and not tok.decode(ids[:k - 1]).endswith("\ufffd"):
            return ids[:k], tok.decode(ids[:k - 1])
    pytest.fail("the tokenizer splits no character of the Chinese text over tokens")


def test_a_row_cut_inside_a_character_keeps_only_whole_characters(local):
    toks, whole = _cut_inside_a_character(local.tokenizer)
    assert "\ufffd" not in whole and CHINESE.startswith(whole)
    text, n, reason = local.finish(toks, max_new=len(toks))
    assert (text, n, reason) == (whole, len(toks), "length")


def test_eos_still_ends_a_row(local):
    ids = local.tokenizer(CHINESE[:6], add_special_tokens=False)["input_ids"]
    text, n, reason = local.finish(ids + [local.eos_id] + ids, max_new=2 * len(ids) + 1)
    assert (text, n, reason) == (CHINESE[:6], len(ids), "stop")
