"""The `text:weight:stop|...` prompt syntax."""

from __future__ import annotations

import math

import pytest

from shared.prompts import (
    PromptSpec,
    PromptSyntaxError,
    default_change_every,
    parse_prompts,
    parse_schedule,
    stage_at,
    stage_texts,
)


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


# --- schedules: stages joined by `^` ------------------------------------------------------------------


def test_a_schedule_is_one_prompt_per_stage() -> None:
    schedule = parse_schedule("a seed in the soil ^ a green sprout:2 | rain:-0.5 ^ a flowering tree")
    assert schedule == [
        [PromptSpec("a seed in the soil")],
        [PromptSpec("a green sprout", 2.0), PromptSpec("rain", -0.5)],
        [PromptSpec("a flowering tree")],
    ]
    assert parse_schedule("a red fox:2") == [parse_prompts("a red fox:2")]
    assert stage_texts("a ^ b:2|c ") == ["a", "b:2|c"]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a ^ ^ b", "stage 2 is empty"),
        ("a ^", "stage 2 is empty"),
        ("a ^ b:0", "stage 2: weight 0"),
        ("a ^ b||c", "stage 2: prompt piece 2 is empty"),
        (" ^ ", "stage 1 is empty"),
    ],
)
def test_a_bad_stage_is_named(prompt: str, message: str) -> None:
    with pytest.raises(PromptSyntaxError, match=message):
        parse_schedule(prompt)


def test_three_stages_over_ten_iterations_by_hand() -> None:
    # Split evenly: 10 // 3 = 3 iterations per stage, the last stage takes the remainder (4).
    assert default_change_every(10, 3) == 3
    assert [stage_at(step, 3, 3) for step in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    # change_every 4: stages of 4, 4 and the last 2.
    assert [stage_at(step, 4, 3) for step in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    # One stage is the whole painting; the split never gives 0.
    assert [stage_at(step, 10, 1) for step in (0, 9)] == [0, 0]
    assert default_change_every(2, 3) == 1
