"""Tests of the StackExchange answer-ranking reader and its HTML-to-text conversion.

The fixtures are hand-written records in the ``HuggingFaceH4/stack-exchange-preferences``
schema (one question, several answers with ``pm_score`` and HTML ``text``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mars_jax.data.formats import (
    FORMATS,
    detect_format,
    read_pairs,
    read_stackexchange,
)
from mars_jax.data.html_text import html_to_text
from mars_jax.errors import MarsError
from mars_jax.runner.config import ConfigError, load_config


def _answer(score: Any, text: Any, answer_id: int = 1) -> dict[str, Any]:
    return {"answer_id": answer_id, "author": "someone", "pm_score": score, "text": text}


def _question(answers: list[Any], *, qid: Any = 7, url: str | None = None, **extra: Any) -> dict:
    record = {
        "qid": qid,
        "title": "How do I boil an egg?",
        "question": "<p>I keep <em>cracking</em> them.</p>",
        "answers": answers,
        "date": "2020/01/01",
        "metadata": [url or f"https://cooking.example.com/questions/{qid}"],
    }
    record.update(extra)
    return record


def _write(path: Path, records: list[Any]) -> Path:
    """One JSON value per line (a str is written as is)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# Pairs.


def test_pairs_of_answers_with_different_scores(tmp_path: Path) -> None:
    answers = [
        _answer(2, "<p>Gently.</p>", 1),
        _answer(5, "<p>Start in cold water.</p>", 2),
        _answer(2, "<p>Use a pin.</p>", 3),
        _answer(-1, "<p>Microwave it.</p>", 4),
    ]
    result = read_stackexchange(_write(tmp_path / "se.jsonl", [_question(answers)]))
    table = result.table
    # (0,1): 1 wins; (0,2): tie; (0,3): 0 wins; (1,2): 1 wins; (1,3): 1 wins; (2,3): 2 wins.
    assert table.chosen == (
        "Start in cold water.",
        "Gently.",
        "Start in cold water.",
        "Start in cold water.",
        "Use a pin.",
    )
    assert table.rejected == (
        "Gently.",
        "Microwave it.",
        "Use a pin.",
        "Microwave it.",
        "Microwave it.",
    )
    np.testing.assert_array_equal(table.margin, [3, 3, 3, 6, 3])
    assert table.prompt == ("How do I boil an egg?\n\nI keep cracking them.",) * 5
    assert set(table.group.tolist()) == {0}
    np.testing.assert_array_equal(table.line, [1] * 5)
    assert (result.ties, result.invalid, result.first_errors) == (1, 0, ())


def test_fewer_than_two_distinct_scores_give_no_pairs(tmp_path: Path) -> None:
    records = [
        _question([_answer(3, "a"), _answer(3, "b"), _answer(3, "c")], qid=1),
        _question([_answer(3, "lonely")], qid=2),
        _question([], qid=3),
        _question([_answer(1, "x"), _answer(0, "y")], qid=4),
    ]
    result = read_stackexchange(_write(tmp_path / "se.jsonl", records))
    assert (result.table.chosen, result.table.rejected) == (("x",), ("y",))
    np.testing.assert_array_equal(result.table.line, [4])
    assert (result.ties, result.invalid) == (3, 0)


def test_groups_follow_the_question(tmp_path: Path) -> None:
    pair = [_answer(1, "good"), _answer(0, "bad")]
    records = [
        _question(pair, qid=1, url="https://a.example.com/questions/1"),
        _question(pair, qid=1, url="https://b.example.com/questions/1"),  # same qid, other site
        _question(pair, qid=9, url="https://a.example.com/questions/1", title="Retitled"),
        _question(pair, qid=1, metadata=None, site="a"),
        _question(pair, qid=1, metadata=None, site="b"),
        _question(pair, qid=None, metadata=None, title="Same words"),
        _question(pair, qid=None, metadata=None, title="Same words"),
    ]
    table = read_stackexchange(_write(tmp_path / "se.jsonl", records)).table
    assert table.group.tolist() == [0, 1, 0, 2, 3, 4, 4]
    assert table.group_key[:5] == (
        "question:https://a.example.com/questions/1",
        "question:https://b.example.com/questions/1",
        "question:https://a.example.com/questions/1",
        "question:a:1",
        "question:b:1",
    )


def test_title_is_plain_text_and_optional(tmp_path: Path) -> None:
    pair = [_answer(1, "good"), _answer(0, "bad")]
    records = [
        _question(pair, title="Limit a  Queue<T> & more"),
        {"question": "<p>Only a body</p>", "answers": pair},
    ]
    table = read_stackexchange(_write(tmp_path / "se.jsonl", records)).table
    assert table.prompt == (
        "Limit a Queue<T> & more\n\nI keep cracking them.",
        "Only a body",
    )


# HTML to text.


def test_html_paragraphs_breaks_and_entities() -> None:
    html = "<p>First   line,\nsame line<br>next &amp; last &lt;3 &quot;q&quot;</p>\n\n<p>Two</p>"
    assert html_to_text(html) == 'First line, same line\nnext & last <3 "q"\n\nTwo'


def test_html_code_blocks_are_fenced_verbatim() -> None:
    html = (
        "<p>Try <code>x &lt; 1</code>:</p>\n"
        "<pre><code>def f(x):\n    if x &lt; 1:\n        return  x\n</code></pre>\n"
        "<p>Done.</p>"
    )
    assert html_to_text(html) == (
        "Try `x < 1`:\n\n```\ndef f(x):\n    if x < 1:\n        return  x\n```\n\nDone."
    )


def test_html_keeps_latex_as_is() -> None:
    html = r"<p>Let $\alpha_i &lt; \beta$ and</p><p>$$\sum_{i=1}^n x_i^2$$</p>"
    assert html_to_text(html) == "Let $\\alpha_i < \\beta$ and\n\n$$\\sum_{i=1}^n x_i^2$$"


def test_html_lists_quotes_images_links_and_hidden_parts() -> None:
    html = (
        "<ul><li>one<ul><li>inner</li></ul></li><li><p>two</p></li></ul>"
        "<ol><li>first</li><li>second</li></ol>"
        "<blockquote><p>quoted</p><p>again</p></blockquote>"
        '<p><a href="https://x.example">a link</a> <img src="i.png" alt="a  cat"/> <img src="j"/>'
        "<script>alert(1)</script><!-- note --></p><hr/><h2>Heading</h2>"
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>"
    )
    assert html_to_text(html) == (
        "- one\n  - inner\n- two\n\n"
        "1. first\n2. second\n\n"
        "> quoted\n>\n> again\n\n"
        "a link [image: a cat] [image]\n\n---\n\nHeading\n\n"
        "a | b\n1 | 2"
    )


def test_html_unclosed_tags_and_empty_input() -> None:
    assert html_to_text("<p>open <b>bold") == "open bold"
    assert html_to_text("<pre>  indented") == "```\n  indented\n```"
    assert html_to_text("") == html_to_text("<p> \n </p>") == ""


# Detection and selection by name.


def test_auto_detection_and_format_name(tmp_path: Path) -> None:
    records = [_question([_answer(2, "<p>yes</p>"), _answer(0, "<p>no</p>")])]
    plain = _write(tmp_path / "se.jsonl", records)
    packed = tmp_path / "se.data"  # gzip recognised by its magic bytes, not the name
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert "stackexchange" in FORMATS
    for path in (plain, packed):
        assert detect_format(path) == "stackexchange"
        auto = read_pairs(path).table
        named = read_pairs([path], format="stackexchange").table
        assert auto.chosen == named.chosen == ("yes",)
        assert auto.rejected == named.rejected == ("no",)


def test_config_accepts_the_format_name() -> None:
    config = load_config(None, ["data.format=stackexchange"])
    assert config.data.format == "stackexchange"
    with pytest.raises(ConfigError, match=r"data\.format"):
        load_config(None, ["data.format=stack_exchange"])


# Malformed records.

GOOD = _question([_answer(1, "good"), _answer(0, "bad")])

MALFORMED: dict[str, tuple[Any, str, str]] = {
    "no question": ({"answers": GOOD["answers"]}, "question", "missing"),
    "no answers": ({"question": "<p>q</p>"}, "answers", "missing"),
    "question type": (
        {"question": 3, "answers": GOOD["answers"]},
        "question",
        "expected a string, got number",
    ),
    "answers type": (
        {"question": "q", "answers": {"0": "a"}},
        "answers",
        "expected a list of answers, got object",
    ),
    "answer type": (
        {"question": "q", "answers": [_answer(1, "a"), "b"]},
        "answers[1]",
        "expected an object, got string",
    ),
    "no pm_score": (
        {"question": "q", "answers": [{"text": "a"}]},
        "answers[0].pm_score",
        "missing",
    ),
    "string pm_score": (
        {"question": "q", "answers": [_answer("3", "a")]},
        "answers[0].pm_score",
        "expected a number, got string",
    ),
    "boolean pm_score": (
        {"question": "q", "answers": [_answer(True, "a")]},
        "answers[0].pm_score",
        "expected a number, got boolean",
    ),
    "no text": (
        {"question": "q", "answers": [_answer(1, "a"), {"pm_score": 0}]},
        "answers[1].text",
        "missing",
    ),
    "text type": (
        {"question": "q", "answers": [_answer(1, "a"), _answer(0, ["b"])]},
        "answers[1].text",
        "expected a string, got array",
    ),
    "empty text": (
        {"question": "q", "answers": [_answer(1, "a"), _answer(0, "<p> </p>\n")]},
        "answers[1].text",
        "empty (no text once the HTML is removed)",
    ),
    "title type": (
        {"question": "q", "title": 5, "answers": GOOD["answers"]},
        "title",
        "expected a string, got number",
    ),
    "qid type": (
        {"question": "q", "qid": [1], "answers": GOOD["answers"]},
        "qid",
        "expected a number or a string, got array",
    ),
    "not json": ("{question", "record", "invalid JSON"),
}


@pytest.mark.parametrize(("record", "field", "problem"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_record_names_file_line_and_field(
    tmp_path: Path, record: Any, field: str, problem: str
) -> None:
    path = _write(tmp_path / "se.jsonl", [GOOD, record])
    with pytest.raises(MarsError) as raised:
        read_pairs(path, format="stackexchange")
    message = str(raised.value)
    assert message.startswith(f"{path}:2: {field}: {problem}")
    assert "\n" not in message


def test_skip_invalid_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    bad = {"question": "q", "answers": [_answer("high", "a"), _answer(0, "b")]}
    path = _write(tmp_path / "se.jsonl", [GOOD, bad, GOOD])
    result = read_stackexchange(path, skip_invalid=True)
    assert result.invalid == 1
    assert result.first_errors == (f"{path}:2: answers[0].pm_score: expected a number, got string",)
    assert result.table.chosen == ("good", "good")
    np.testing.assert_array_equal(result.table.line, [1, 3])
    with pytest.raises(MarsError, match="no valid records"):
        read_stackexchange(_write(tmp_path / "bad.jsonl", [bad]), skip_invalid=True)
