"""How the sources of a merge become one memory's text and lists."""

import pytest

from orchestration.consolidation.errors import DataError
from orchestration.consolidation.text import merge_content, sentences, union


def test_merge_content_keeps_unique_sentences_once():
    merged = merge_content(["Use a retry. Keep it short!", "use a retry.  Then log it?", "Keep it short"])
    assert merged == "Use a retry. Keep it short! Then log it?"
    assert (
        merge_content(["Émigré café: naïve façade. 日本語の文。", "日本語の文。"])
        == "Émigré café: naïve façade. 日本語の文。"
    )


def test_sentences_split_on_end_punctuation_and_newlines():
    assert sentences("First one. Second one!\nThird\n\n  fourth?  ") == [
        "First one.",
        "Second one!",
        "Third",
        "fourth?",
    ]
    assert sentences("   ") == []


def test_union_keeps_first_occurrence_order_and_skips_none():
    assert union([["b", "a"], None, ["a", "c"], []]) == ["b", "a", "c"]


def test_union_never_takes_a_string_for_a_list():
    with pytest.raises(DataError, match="expected a list of strings"):
        union([["a"], "deploy"])
    with pytest.raises(DataError, match="expected a list of strings"):
        union([["a", {"b": 1}]])
