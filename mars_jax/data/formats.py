"""Readers of text preference data into one :class:`~mars_jax.data.table.PairTable`.

Every file reader opens gzip data transparently (recognised by its magic bytes ``1f 8b``,
whatever the file is called) and reads UTF-8 JSON Lines: one JSON object per line, blank lines
skipped, a byte-order mark at the start ignored. A malformed record raises :class:`MarsError`
``"<path>:<line>: <field>: <problem>"`` (the field is ``record`` when the line is not UTF-8, not
JSON or not an object); with ``skip_invalid=True`` the record is skipped instead, counted in
:attr:`ReadResult.invalid`, and the first five messages are kept in
:attr:`ReadResult.first_errors`. A missing file, a directory, an empty file, unreadable gzip
data, or a file in which no record is valid raise :class:`MarsError` naming the path whatever
``skip_invalid`` says.

Formats (the names :func:`read_pairs` takes):

- ``trl`` (:func:`read_trl_jsonl`): ``{"prompt"?, "chosen", "rejected", "margin"?}``. ``chosen``
  and ``rejected`` are both strings (the responses) or both chat message lists
  (``[{"role": ..., "content": ...}, ...]``). For message lists the response is the content of
  the final message, which must be from ``assistant``, and the messages before it must be the
  same in both lists (the shared prefix): they are the conversation so far. ``prompt``, if given
  and not null, is a string or a message list. The prompt text is the ``prompt`` followed by
  the shared prefix, message lists rendered one message per paragraph as ``"<Role>: <content>"``
  (``user`` -> ``User``, ``assistant`` -> ``Assistant``, ``system`` -> ``System``, any other
  role capitalised), parts joined by ``"\\n\\n"``: ``"User: Hi\\n\\nAssistant: Hello\\n\\nUser:
  Help me"``. ``margin`` (optional, null = absent) must be a finite number.
- ``hh_rlhf`` (:func:`read_hh_rlhf`): Anthropic HH-RLHF ``{"chosen", "rejected"}``, whole
  dialogues. The prompt is their longest common prefix up to and including the last
  ``"\\n\\nAssistant:"`` in it (kept verbatim); the responses are the rest of each dialogue,
  stripped of surrounding whitespace.
- ``summarize`` (:func:`read_summarize_comparisons`): OpenAI summarize-from-feedback
  comparisons ``{"info": {"id", "post" | "article", "title"?, "subreddit"? | "site"?},
  "summaries": [{"text"}, {"text"}], "choice": 0 | 1}``. The prompt is one line per present
  field: ``"SUBREDDIT: r/<subreddit>"`` or ``"SITE: <site>"``, ``"TITLE: <title>"``, then
  ``"POST: <post>"`` or ``"ARTICLE: <article>"``. ``summaries[choice].text`` is chosen and the
  other rejected, both stripped of surrounding whitespace.
- ``ranked`` (:func:`read_ranked_jsonl`): ``{"prompt", "responses": [str, ...]}`` with either
  ``"scores": [number, ...]`` (higher is better) or ``"ranks": [int, ...]`` (1 is best), one per
  response (at least 2). Every pair of responses becomes a row with the better one chosen, in
  the order (0, 1), (0, 2), ..., (1, 2), ...; the margin is the score difference, NaN for ranks.
  A pair with equal scores (or ranks) is skipped and counted in :attr:`ReadResult.ties`.
- ``stackexchange`` (:func:`read_stackexchange`): StackExchange answer ranking in the
  ``HuggingFaceH4/stack-exchange-preferences`` schema, ``{"qid"?, "title"?, "question",
  "answers": [{"pm_score", "text"}, ...], "site"?, "metadata"?}``, one question per record with
  HTML bodies, turned into text by :func:`~mars_jax.data.html_text.html_to_text` (the title is
  plain text). The prompt is the title (if present), a blank line, and the question. Every pair
  of answers with different ``pm_score`` becomes a row with the higher score chosen, in the
  order of the ``ranked`` format; the margin is the ``pm_score`` difference. Pairs of answers
  with equal scores are counted in :attr:`ReadResult.ties`; a question with fewer than 2
  distinct scores gives no rows (not an error). An answer whose text is empty once the HTML is
  removed is an error.

Margins are NaN where the format gives none. Rows are grouped by their prompt text (by the post
id, ``info.id``, for ``summarize``; for ``stackexchange`` by the question: its address
``metadata[0]`` when that is a non-empty string, else ``site`` and ``qid`` when ``qid`` is given,
else the prompt text); a record with an empty prompt is a group of its own (see
:mod:`mars_jax.data.table`).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mars_jax.data.html_text import html_to_text
from mars_jax.data.table import PairTable
from mars_jax.errors import MarsError

__all__ = [
    "FORMATS",
    "ReadResult",
    "detect_format",
    "read_hf_dataset",
    "read_hh_rlhf",
    "read_pairs",
    "read_ranked_jsonl",
    "read_stackexchange",
    "read_summarize_comparisons",
    "read_trl_jsonl",
]

FORMATS = ("trl", "hh_rlhf", "summarize", "ranked", "stackexchange")
"""The format names :func:`read_pairs` takes, besides ``"auto"``."""

_PathLike = str | os.PathLike[str]

_MAX_ERRORS = 5
_GZIP_MAGIC = b"\x1f\x8b"
_HH_ASSISTANT = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"
_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


class ReadResult(NamedTuple):
    """The pairs read, and what was skipped.

    Attributes:
      table: the pairs.
      invalid: records skipped as malformed (only with ``skip_invalid=True``).
      first_errors: the messages of the first (up to five) skipped records.
      ties: pairs of equally ranked responses skipped by the ``ranked`` format.
    """

    table: PairTable
    invalid: int
    first_errors: tuple[str, ...]
    ties: int = 0


class _Pair(NamedTuple):
    """One row parsed from a record."""

    prompt: str
    chosen: str
    rejected: str
    margin: float
    group_key: str


class _RecordError(Exception):
    """A malformed record: which field, and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


_Parser = Callable[[dict[str, Any], str], tuple[list[_Pair], int]]
"""Record and its origin (``"<source>:<line>"``) -> (rows, ties skipped)."""


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _required(record: dict[str, Any], key: str, field: str) -> Any:
    """``record[key]``, or a record error naming ``field`` if it is missing."""
    if key not in record:
        raise _RecordError(field, "missing")
    return record[key]


def _string(value: Any, field: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise _RecordError(field, f"expected a string, got {_json_type(value)}")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    """``value`` if it is a JSON object."""
    if not isinstance(value, dict):
        raise _RecordError(field, f"expected an object, got {_json_type(value)}")
    return value


def _number(value: Any, field: str) -> float:
    """``value`` as a float, if it is a finite number within float32 range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RecordError(field, f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and abs(number) <= _FLOAT32_MAX):
        raise _RecordError(field, f"expected a finite number within float32 range, got {number}")
    return number


def _optional_string(record: dict[str, Any], key: str, field: str) -> str:
    """``record[key]`` if present and not null, else ``""``."""
    value = record.get(key)
    return "" if value is None else _string(value, field)


def _group_key(prompt: str, origin: str) -> str:
    """Group by the prompt text, or by the record when it has no prompt."""
    return "" if prompt else f"record:{origin}"


def _messages(value: list[Any], field: str) -> list[tuple[str, str]]:
    """A chat message list as ``(role, content)`` pairs."""
    if not value:
        raise _RecordError(field, "expected a non-empty message list")
    messages = []
    for i, item in enumerate(value):
        message = _object(item, f"{field}[{i}]")
        role = _string(_required(message, "role", f"{field}[{i}].role"), f"{field}[{i}].role")
        content = _required(message, "content", f"{field}[{i}].content")
        messages.append((role, _string(content, f"{field}[{i}].content")))
    return messages


def _render(messages: Sequence[tuple[str, str]]) -> str:
    """Messages as ``"<Role>: <content>"`` paragraphs (see the module docstring)."""
    return "\n\n".join(
        f"{_ROLE_LABELS.get(role, role.capitalize())}: {content}" for role, content in messages
    )


def _text_or_messages(record: dict[str, Any], key: str) -> str | list[tuple[str, str]]:
    """A required field that is a string or a chat message list."""
    value = _required(record, key, key)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, key)
    raise _RecordError(key, f"expected a string or a message list, got {_json_type(value)}")


def _final_reply(messages: list[tuple[str, str]], field: str) -> tuple[str, str]:
    """(rendered messages before the last, content of the last), which must be the assistant's."""
    role, content = messages[-1]
    if role != "assistant":
        raise _RecordError(
            f"{field}[{len(messages) - 1}].role",
            f"expected the final message to be from 'assistant', got {role!r}",
        )
    return _render(messages[:-1]), content


def _parse_trl(record: dict[str, Any], origin: str) -> tuple[list[_Pair], int]:
    """One TRL-style record (see the module docstring)."""
    chosen = _text_or_messages(record, "chosen")
    rejected = _text_or_messages(record, "rejected")
    prompt = record.get("prompt")
    if prompt is None:
        parts = []
    elif isinstance(prompt, str):
        parts = [prompt]
    elif isinstance(prompt, list):
        parts = [_render(_messages(prompt, "prompt"))]
    else:
        raise _RecordError(
            "prompt", f"expected a string or a message list, got {_json_type(prompt)}"
        )
    if isinstance(chosen, str) and isinstance(rejected, str):
        chosen_text, rejected_text = chosen, rejected
    elif isinstance(chosen, list) and isinstance(rejected, list):
        context, chosen_text = _final_reply(chosen, "chosen")
        rejected_context, rejected_text = _final_reply(rejected, "rejected")
        if rejected_context != context:
            raise _RecordError(
                "rejected", "the messages before the final one differ from those of chosen"
            )
        parts.append(context)
    else:
        raise _RecordError("rejected", "expected the same form as chosen (string or message list)")
    prompt_text = "\n\n".join(part for part in parts if part)
    margin = record.get("margin")
    pair = _Pair(
        prompt_text,
        chosen_text,
        rejected_text,
        math.nan if margin is None else _number(margin, "margin"),
        _group_key(prompt_text, origin),
    )
    return [pair], 0


def _common_prefix_length(a: str, b: str) -> int:
    """The length of the longest common prefix of two strings (binary search on slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _parse_hh(record: dict[str, Any], origin: str) -> tuple[list[_Pair], int]:
    """One HH-RLHF record (see the module docstring)."""
    del origin  # HH prompts are never empty: they end with "\n\nAssistant:".
    chosen = _string(_required(record, "chosen", "chosen"), "chosen")
    rejected = _string(_required(record, "rejected", "rejected"), "rejected")
    shared = chosen[: _common_prefix_length(chosen, rejected)]
    end = shared.rfind(_HH_ASSISTANT)
    if end < 0:
        for field, text in (("chosen", chosen), ("rejected", rejected)):
            if _HH_ASSISTANT not in text:
                raise _RecordError(field, f"no {_HH_ASSISTANT!r} turn")
        raise _RecordError("rejected", f"shares no {_HH_ASSISTANT!r} turn with chosen")
    prompt = shared[: end + len(_HH_ASSISTANT)]
    pair = _Pair(
        prompt,
        chosen[len(prompt) :].strip(),
        rejected[len(prompt) :].strip(),
        math.nan,
        "",
    )
    return [pair], 0


def _parse_summarize(record: dict[str, Any], origin: str) -> tuple[list[_Pair], int]:
    """One summarize-from-feedback comparison (see the module docstring)."""
    del origin  # grouped by the post id
    info = _object(_required(record, "info", "info"), "info")
    post_id = _string(_required(info, "id", "info.id"), "info.id")
    if "post" not in info and "article" not in info:
        raise _RecordError("info.post", "missing (and no info.article)")
    body_key = "post" if "post" in info else "article"
    body = _string(info[body_key], f"info.{body_key}")
    lines = []
    if subreddit := _optional_string(info, "subreddit", "info.subreddit"):
        lines.append(f"SUBREDDIT: r/{subreddit}")
    if site := _optional_string(info, "site", "info.site"):
        lines.append(f"SITE: {site}")
    if title := _optional_string(info, "title", "info.title"):
        lines.append(f"TITLE: {title}")
    lines.append(f"{body_key.upper()}: {body}")
    summaries = _required(record, "summaries", "summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = f"{len(summaries)}" if isinstance(summaries, list) else _json_type(summaries)
        raise _RecordError("summaries", f"expected a list of exactly 2 summaries, got {got}")
    texts = [
        _string(
            _required(_object(summary, f"summaries[{i}]"), "text", f"summaries[{i}].text"),
            f"summaries[{i}].text",
        ).strip()
        for i, summary in enumerate(summaries)
    ]
    choice = _required(record, "choice", "choice")
    if type(choice) is not int or choice not in (0, 1):
        got = choice if type(choice) is int else _json_type(choice)
        raise _RecordError("choice", f"expected 0 or 1, got {got}")
    pair = _Pair("\n".join(lines), texts[choice], texts[1 - choice], math.nan, f"post:{post_id}")
    return [pair], 0


def _parse_ranked(record: dict[str, Any], origin: str) -> tuple[list[_Pair], int]:
    """One ranked multi-response record (see the module docstring)."""
    prompt = _string(_required(record, "prompt", "prompt"), "prompt")
    responses = _required(record, "responses", "responses")
    if not isinstance(responses, list) or len(responses) < 2:
        got = f"{len(responses)}" if isinstance(responses, list) else _json_type(responses)
        raise _RecordError("responses", f"expected a list of at least 2 responses, got {got}")
    texts = [_string(text, f"responses[{i}]") for i, text in enumerate(responses)]
    if ("scores" in record) == ("ranks" in record):
        raise _RecordError("scores", "expected exactly one of 'scores' and 'ranks'")
    key = "scores" if "scores" in record else "ranks"
    values = record[key]
    if not isinstance(values, list) or len(values) != len(texts):
        got = f"{len(values)} values" if isinstance(values, list) else _json_type(values)
        raise _RecordError(
            key, f"expected a list of {len(texts)} values, one per response, got {got}"
        )
    if key == "scores":
        scores = [_number(value, f"scores[{i}]") for i, value in enumerate(values)]
        quality = scores
    else:
        scores = [math.nan] * len(texts)
        for i, rank in enumerate(values):
            if type(rank) is not int or rank < 1:
                got = rank if type(rank) is int else _json_type(rank)
                raise _RecordError(f"ranks[{i}]", f"expected an integer >= 1, got {got}")
        quality = [-rank for rank in values]
    group_key = _group_key(prompt, origin)
    pairs, ties = [], 0
    for i, j in itertools.combinations(range(len(texts)), 2):
        if quality[i] == quality[j]:
            ties += 1
            continue
        better, worse = (i, j) if quality[i] > quality[j] else (j, i)
        margin = scores[better] - scores[worse]
        pairs.append(_Pair(prompt, texts[better], texts[worse], margin, group_key))
    return pairs, ties


def _stackexchange_group(record: dict[str, Any], prompt: str, origin: str) -> str:
    """The group key of a question (see the module docstring)."""
    metadata = record.get("metadata")
    if isinstance(metadata, list) and metadata and isinstance(metadata[0], str) and metadata[0]:
        return f"question:{metadata[0]}"
    qid = record.get("qid")
    if qid is None:
        return _group_key(prompt, origin)
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        raise _RecordError("qid", f"expected a number or a string, got {_json_type(qid)}")
    site = _optional_string(record, "site", "site")
    return f"question:{site}:{qid}"


def _parse_stackexchange(record: dict[str, Any], origin: str) -> tuple[list[_Pair], int]:
    """One StackExchange question with its answers (see the module docstring)."""
    question = _string(_required(record, "question", "question"), "question")
    title = " ".join(_optional_string(record, "title", "title").split())  # plain text, not HTML
    prompt = "\n\n".join(part for part in (title, html_to_text(question)) if part)
    answers = _required(record, "answers", "answers")
    if not isinstance(answers, list):
        raise _RecordError("answers", f"expected a list of answers, got {_json_type(answers)}")
    texts, scores = [], []
    for i, item in enumerate(answers):
        answer = _object(item, f"answers[{i}]")
        score = _number(
            _required(answer, "pm_score", f"answers[{i}].pm_score"), f"answers[{i}].pm_score"
        )
        html = _string(_required(answer, "text", f"answers[{i}].text"), f"answers[{i}].text")
        text = html_to_text(html)
        if not text:
            raise _RecordError(f"answers[{i}].text", "empty (no text once the HTML is removed)")
        texts.append(text)
        scores.append(score)
    group_key = _stackexchange_group(record, prompt, origin)
    pairs, ties = [], 0
    for i, j in itertools.combinations(range(len(texts)), 2):
        if scores[i] == scores[j]:
            ties += 1
            continue
        better, worse = (i, j) if scores[i] > scores[j] else (j, i)
        pairs.append(
            _Pair(prompt, texts[better], texts[worse], scores[better] - scores[worse], group_key)
        )
    return pairs, ties


_PARSERS: dict[str, _Parser] = {
    "trl": _parse_trl,
    "hh_rlhf": _parse_hh,
    "summarize": _parse_summarize,
    "ranked": _parse_ranked,
    "stackexchange": _parse_stackexchange,
}


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The non-blank raw lines of a data file and their 1-based numbers (gzip by magic bytes)."""
    if not path.exists():
        raise MarsError(f"{path}: no such file")
    if path.is_dir():
        raise MarsError(f"{path}: is a directory, not a data file")
    number = 0
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) if compressed else nullcontext(raw) as stream:
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield number, line
    except (OSError, EOFError, zlib.error) as error:
        raise MarsError(f"{path}: cannot read past line {number}: {error}") from None


def _load_json_line(raw: bytes, number: int) -> Any:
    """A raw line decoded as UTF-8 and parsed as JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _RecordError(
            "record", f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _RecordError("record", f"invalid JSON: {error.msg} (column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # a huge integer, or nesting too deep
        raise _RecordError("record", f"invalid JSON: {error}") from None


def _row(row: Any, number: int) -> Any:
    """A dataset row, already decoded."""
    del number
    return row


def _collect(
    source: str,
    items: Iterable[tuple[int, Any]],
    load: Callable[[Any, int], Any],
    parse: _Parser,
    *,
    skip_invalid: bool,
) -> ReadResult:
    """Parse numbered items (lines or rows) from one source into a :class:`ReadResult`."""
    pairs: list[_Pair] = []
    lines: list[int] = []
    errors: list[str] = []
    records = invalid = ties = 0
    for number, item in items:
        records += 1
        origin = f"{source}:{number}"
        try:
            record = load(item, number)
            if not isinstance(record, dict):
                raise _RecordError("record", f"expected a JSON object, got {_json_type(record)}")
            parsed, record_ties = parse(record, origin)
        except _RecordError as error:
            message = f"{origin}: {error}"
            if not skip_invalid:
                raise MarsError(message) from None
            invalid += 1
            if len(errors) < _MAX_ERRORS:
                errors.append(message)
            continue
        pairs.extend(parsed)
        lines.extend([number] * len(parsed))
        ties += record_ties
    if records == 0:
        raise MarsError(f"{source}: empty (no records)")
    if invalid == records:
        raise MarsError(f"{source}: no valid records ({invalid} invalid; the first: {errors[0]})")
    table = PairTable.from_columns(
        prompt=[pair.prompt for pair in pairs],
        chosen=[pair.chosen for pair in pairs],
        rejected=[pair.rejected for pair in pairs],
        group_key=[pair.group_key for pair in pairs],
        margin=[pair.margin for pair in pairs],
        line=lines,
        source=source,
    )
    return ReadResult(table, invalid, tuple(errors), ties)


def _read_file(path: _PathLike, fmt: str, *, skip_invalid: bool) -> ReadResult:
    """Read one file in a known format."""
    source = os.fspath(path)
    return _collect(
        source, _lines(Path(source)), _load_json_line, _PARSERS[fmt], skip_invalid=skip_invalid
    )


def read_trl_jsonl(path: _PathLike, *, skip_invalid: bool = False) -> ReadResult:
    """Read a TRL-style preference file (format ``trl``; see the module docstring)."""
    return _read_file(path, "trl", skip_invalid=skip_invalid)


def read_hh_rlhf(path: _PathLike, *, skip_invalid: bool = False) -> ReadResult:
    """Read an Anthropic HH-RLHF file (format ``hh_rlhf``; see the module docstring)."""
    return _read_file(path, "hh_rlhf", skip_invalid=skip_invalid)


def read_summarize_comparisons(path: _PathLike, *, skip_invalid: bool = False) -> ReadResult:
    """Read summarize-from-feedback comparisons (format ``summarize``; see the module docstring)."""
    return _read_file(path, "summarize", skip_invalid=skip_invalid)


def read_ranked_jsonl(path: _PathLike, *, skip_invalid: bool = False) -> ReadResult:
    """Read ranked multi-response records (format ``ranked``; see the module docstring)."""
    return _read_file(path, "ranked", skip_invalid=skip_invalid)


def read_stackexchange(path: _PathLike, *, skip_invalid: bool = False) -> ReadResult:
    """Read StackExchange questions with answers (format ``stackexchange``; see the module doc)."""
    return _read_file(path, "stackexchange", skip_invalid=skip_invalid)


def _format_of(record: dict[str, Any]) -> str:
    """The format a record's keys suggest."""
    if "question" in record and "answers" in record:
        return "stackexchange"
    if "summaries" in record and "info" in record:
        return "summarize"
    if "responses" in record:
        return "ranked"
    dialogues = (record.get("chosen"), record.get("rejected"))
    if "prompt" not in record and all(
        isinstance(text, str) and text.startswith(_HH_HUMAN) for text in dialogues
    ):
        return "hh_rlhf"
    return "trl"


def detect_format(path: _PathLike) -> str:
    """The format of a file, from the keys of its first line that is a JSON object.

    ``question`` and ``answers`` -> ``stackexchange``; ``info`` and ``summaries`` ->
    ``summarize``; ``responses`` -> ``ranked``; no ``prompt`` and ``chosen`` and ``rejected``
    both strings starting with ``"\\n\\nHuman:"`` -> ``hh_rlhf``; anything else (also a file
    with no JSON object line) -> ``trl``.
    """
    empty = True
    with closing(_lines(Path(path))) as lines:
        for number, raw in lines:
            empty = False
            try:
                record = _load_json_line(raw, number)
            except _RecordError:
                continue
            if isinstance(record, dict):
                return _format_of(record)
    if empty:
        raise MarsError(f"{os.fspath(path)}: empty (no records)")
    return "trl"


def read_pairs(
    paths: _PathLike | Sequence[_PathLike], *, format: str = "auto", skip_invalid: bool = False
) -> ReadResult:
    """Read one or several files into one table, in order.

    Args:
      paths: a file or a sequence of files.
      format: one of :data:`FORMATS`, or ``"auto"`` to use :func:`detect_format` on each file.
      skip_invalid: skip malformed records (counted) instead of raising.

    Returns:
      The concatenated pairs (the same prompt text, or post id, has one group id across files),
      with ``invalid`` and ``ties`` summed and the first five skipped-record messages.
    """
    if format != "auto" and format not in _PARSERS:
        raise MarsError(
            f"unknown data format {format!r}; expected one of: auto, {', '.join(FORMATS)}"
        )
    files = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not files:
        raise MarsError("no data files given")
    results = [
        _read_file(
            path, detect_format(path) if format == "auto" else format, skip_invalid=skip_invalid
        )
        for path in files
    ]
    return ReadResult(
        table=PairTable.concat([result.table for result in results]),
        invalid=sum(result.invalid for result in results),
        first_errors=tuple(
            itertools.islice(
                itertools.chain.from_iterable(result.first_errors for result in results),
                _MAX_ERRORS,
            )
        ),
        ties=sum(result.ties for result in results),
    )


def read_hf_dataset(
    name_or_path: str, *, split: str = "train", skip_invalid: bool = False
) -> ReadResult:
    """Read a Hugging Face dataset of TRL-style rows (format ``trl``) with ``datasets``.

    A local folder is opened with ``datasets.load_from_disk`` (taking ``split`` from a
    ``DatasetDict``), anything else with ``datasets.load_dataset(name_or_path, split=split)``.
    Messages name the source as ``"<name_or_path>[<split>]:<row>"``, rows counted from 1.
    """
    try:
        import datasets
    except ImportError:
        raise MarsError(
            f"{name_or_path}: reading a Hugging Face dataset needs the 'datasets' package; "
            "install the optional extra: pip install 'mars-jax[hf]'"
        ) from None
    source = f"{name_or_path}[{split}]"
    try:
        if Path(name_or_path).is_dir():
            dataset = datasets.load_from_disk(name_or_path)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name_or_path, split=split)
    except Exception as error:  # datasets raises many types; the message says what went wrong
        raise MarsError(
            f"{source}: cannot load the dataset: {' '.join(str(error).split())}"
        ) from None
    return _collect(
        source, enumerate(dataset, start=1), _row, _PARSERS["trl"], skip_invalid=skip_invalid
    )
