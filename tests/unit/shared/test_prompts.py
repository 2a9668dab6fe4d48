"""The `text:weight:stop|...` prompt syntax."""

from __future__ import annotations

import math

import pytest

from shared.prompts import PromptSpec, PromptSyntaxError, parse_prompts


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red fox", [PromptSpec("a red fox", 1.0, -math.inf)]),
        ("a red fox:2", [PromptSpec("a red fox", 2.0, -math.inf)]),
        ("a red fox:0.5:-0.1", [PromptSpec("a red fox", 0.5, -0.1)]),
        ("fox:1|dog:-0.5", [PromptSpec("fox", 1.0), PromptSpec("dog", -0.5)]),
        ("poster: a red fox", [PromptSpec("poster: a red fox", 1.0)]),
        (" fox : 1.5e0 ", [PromptSpec("fox", 1.5)]),
    ],
)
def test_parse(prompt: str, expected: list[PromptSpec]) -> None:
    assert parse_prompts(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ("fox||dog", "piece 2 is empty"),
        ("fox:0", "weight 0"),
        (":1", "no text"),
        ("fox:-1", "negative weight"),
        ("fox:1.2.3", "malformed weight"),
    ],
)
def test_refused(prompt: str, message: str) -> None:
    with pytest.raises(PromptSyntaxError, match=message):
        parse_prompts(prompt)


@pytest.mark.parametrize(
    "prompt",
    [":", "::0.5", ":1:2:3", "cat|:nan", "cat|:-inf", "cat|:inf:1", "cat| : ", "cat|::", "cat|\u200b:2"],
)
def test_a_piece_without_text_is_refused_by_name(prompt: str) -> None:
    piece = prompt.split("|")[-1].strip()
    with pytest.raises(PromptSyntaxError, match="no text") as caught:
        parse_prompts(prompt)
    assert repr(piece) in str(caught.value)


@pytest.mark.parametrize(
    ("prompt", "text"), [(": a red fox", ": a red fox"), ("1984", "1984"), ("-:2", "-"), ("🦊:2", "🦊")]
)
def test_short_or_odd_texts_are_still_texts(prompt: str, text: str) -> None:
    assert [spec.text for spec in parse_prompts(prompt)] == [text]
