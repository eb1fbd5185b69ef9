"""Incremental detokenizing: UTF-8 safe deltas and stop strings held back until resolved."""

from __future__ import annotations

import pytest

from core.engine.detokenizer import IncrementalDetokenizer
from core.tokenizer import Tokenizer

TEXT = "héllo 日本語 🙂 world, naïve café — ok"


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return Tokenizer(tiny_models["llama"])


def run(tokenizer, text, **kwargs):
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [0], **kwargs)
    deltas, stop = [], None
    for token_id in ids:
        step = detok.push(token_id)
        deltas.append(step.text_delta)
        if step.stop_string:
            stop = step.stop_string
            break
    else:
        deltas.append(detok.flush())
    return deltas, stop


def test_multibyte_characters_never_split(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert any(tokenizer.decode([i]).endswith("\ufffd") for i in ids)  # the case is exercised
    deltas, _ = run(tokenizer, TEXT)
    assert "".join(deltas) == TEXT
    assert not any("\ufffd" in delta for delta in deltas)


def test_stop_string_across_tokens_is_cut_and_never_leaked(tokenizer):
    deltas, stop = run(tokenizer, TEXT, stop_strings=("日本",))
    assert stop == "日本" and "".join(deltas) == "héllo "


def test_include_stop_string_keeps_it(tokenizer):
    deltas, stop = run(tokenizer, TEXT, stop_strings=("world",), include_stop_str_in_output=True)
    assert "".join(deltas) == "héllo 日本語 🙂 world"


def test_held_back_text_is_released_at_the_end(tokenizer):
    deltas, stop = run(tokenizer, "abc wor", stop_strings=("world",))
    assert stop is None and "".join(deltas) == "abc wor"


def test_the_earliest_stop_string_wins_whatever_the_list_order(tokenizer):
    for stops in (("world", "日本"), ("日本", "world")):
        deltas, stop = run(tokenizer, TEXT, stop_strings=stops)
        assert stop == "日本" and "".join(deltas) == "héllo "
