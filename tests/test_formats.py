"""Tests of the preference-data readers and the pair table (fixtures in tests/fixtures/data)."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mars_jax.data.formats import (
    FORMATS,
    ReadResult,
    detect_format,
    read_hf_dataset,
    read_hh_rlhf,
    read_pairs,
    read_ranked_jsonl,
    read_summarize_comparisons,
    read_trl_jsonl,
)
from mars_jax.data.table import PairTable, clean_pairs, sample_pairs, split_by_group
from mars_jax.errors import MarsError

DATA = Path(__file__).resolve().parent / "fixtures" / "data"
READERS = {
    "trl": read_trl_jsonl,
    "hh_rlhf": read_hh_rlhf,
    "summarize": read_summarize_comparisons,
    "ranked": read_ranked_jsonl,
}
FIXTURE_FORMATS = {
    "trl.jsonl": "trl",
    "hh.jsonl": "hh_rlhf",
    "summarize.jsonl": "summarize",
    "ranked_scores.jsonl": "ranked",
    "ranked_ranks.jsonl": "ranked",
}
HH_SKY = "\n\nHuman: What color is the sky?\n\nAssistant:"


def _table(prompts: list[str], chosen: list[str], rejected: list[str]) -> PairTable:
    """A table from columns, with no margins and line numbers 1, 2, ..."""
    return PairTable.from_columns(
        prompt=prompts,
        chosen=chosen,
        rejected=rejected,
        group_key=[""] * len(prompts),
        margin=[math.nan] * len(prompts),
        line=range(1, len(prompts) + 1),
        source="table",
    )


def _assert_same_table(a: PairTable, b: PairTable) -> None:
    assert (a.prompt, a.chosen, a.rejected, a.group_key) == (
        b.prompt,
        b.chosen,
        b.rejected,
        b.group_key,
    )
    for name in ("group", "source", "margin", "line"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def _write(path: Path, lines: list[str | bytes]) -> Path:
    """Write lines (str as UTF-8, bytes as is), each ending with a newline."""
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return path


def test_trl_strings_messages_and_margins() -> None:
    result = read_trl_jsonl(DATA / "trl.jsonl")
    table = result.table
    assert (result.invalid, result.first_errors, result.ties) == (0, (), 0)
    assert table.prompt == (
        "Name a fruit.",
        "",
        "User: How many legs does a spider have?",
        "System: Be brief.\n\nUser: Capital of France?",
        "Name a fruit.",
        "",
        "User: Hi\n\nAssistant: Hello!\n\nUser: Tell me a joke.",
    )
    assert table.chosen[2:4] == ("Eight.", "Paris.")
    assert table.rejected[2:4] == ("Six.", "Lyon.")
    assert table.rejected[6] == "No."
    np.testing.assert_array_equal(table.margin[[0, 3]], np.float32([1.5, 0.25]))
    assert np.isnan(table.margin[[1, 2, 4, 5, 6]]).all()
    np.testing.assert_array_equal(table.line, np.arange(1, 8))
    assert table.sources == (str(DATA / "trl.jsonl"),)
    # The same prompt shares a group; each prompt-less record is a group of its own.
    np.testing.assert_array_equal(table.group, [0, 1, 2, 3, 0, 4, 5])
    assert table.group.dtype == np.int64
    assert table.source.dtype == np.int32
    assert table.margin.dtype == np.float32


def test_hh_prompt_is_shared_prefix_up_to_last_assistant_turn() -> None:
    table = read_hh_rlhf(DATA / "hh.jsonl").table
    assert len(table) == 6
    assert table.prompt[0] == table.prompt[1] == HH_SKY
    assert (table.chosen[0], table.rejected[0]) == ("Blue, on a clear day.", "Green.")
    assert table.prompt[2].endswith("\n\nHuman: Bread.\n\nAssistant:")
    assert table.prompt[2].count("\n\nAssistant:") == 2
    assert table.rejected[2] == "I cannot help with that."
    assert table.chosen[3] == table.rejected[3] == "Hi!"
    assert (table.chosen[4], table.rejected[4]) == ("", "I have none.")
    np.testing.assert_array_equal(table.group, [0, 0, 1, 2, 3, 0])
    assert np.isnan(table.margin).all()


def test_summarize_prompt_orientation_and_post_groups() -> None:
    table = read_summarize_comparisons(DATA / "summarize.jsonl").table
    assert len(table) == 5
    assert table.prompt[0] == (
        "SUBREDDIT: r/cooking\nTITLE: Burnt rice again\n"
        "POST: Every time I cook rice it sticks to the pot and burns. I use a cheap thin pan."
    )
    assert table.prompt[4].startswith("SITE: example-news\nTITLE: Town opens a library\nARTICLE: ")
    good, bad = "My rice keeps burning in a thin pan.", "I like rice."
    assert [(table.chosen[i], table.rejected[i]) for i in range(3)] == [
        (good, bad),
        (good, bad),
        (bad, good),
    ]
    assert table.chosen[3] == "Back tyre goes flat every few days despite patches."
    assert table.rejected[4] == ""
    np.testing.assert_array_equal(table.group, [0, 0, 0, 1, 2])
    assert table.group_key[0] == "post:post-rice"


def _score_of(path: Path) -> dict[tuple[str, str], float]:
    """(prompt, response) -> score (or minus the rank) from a ranked fixture."""
    quality = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        values = record.get("scores") or [-rank for rank in record["ranks"]]
        for text, value in zip(record["responses"], values, strict=True):
            quality[record["prompt"], text] = value
    return quality


def test_ranked_scores_expand_to_all_pairs_minus_ties() -> None:
    path = DATA / "ranked_scores.jsonl"
    result = read_ranked_jsonl(path)
    table, score = result.table, _score_of(path)
    # 4 responses (one tied pair) and 2 responses: 6 - 1 + 1 pairs.
    assert (len(table), result.ties) == (6, 1)
    np.testing.assert_array_equal(table.line, [1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(table.group, [0, 0, 0, 0, 0, 1])
    for i in range(len(table)):
        better = score[table.prompt[i], table.chosen[i]]
        worse = score[table.prompt[i], table.rejected[i]]
        assert better > worse
        assert table.margin[i] == np.float32(better - worse)
    # Pairs (0, 1), (0, 3), (1, 2), (1, 3), (2, 3); (0, 2) is tied.
    assert list(zip(table.chosen[:5], table.rejected[:5], strict=True)) == [
        ("Vast and blue.", "Wet."),
        ("Vast and blue.", "Blue."),
        ("A large body of salt water.", "Wet."),
        ("Blue.", "Wet."),
        ("A large body of salt water.", "Blue."),
    ]


def test_ranked_ranks_orientation_and_nan_margins() -> None:
    path = DATA / "ranked_ranks.jsonl"
    result = read_ranked_jsonl(path)
    table, quality = result.table, _score_of(path)
    assert (len(table), result.ties) == (6, 0)
    assert np.isnan(table.margin).all()
    for i in range(len(table)):
        assert (
            quality[table.prompt[i], table.chosen[i]] > quality[table.prompt[i], table.rejected[i]]
        )
    assert list(zip(table.chosen[3:], table.rejected[3:], strict=True)) == [
        ("See you soon!", "Bye."),
        ("Farewell, friend.", "Bye."),
        ("See you soon!", "Farewell, friend."),
    ]


@pytest.mark.parametrize(("name", "fmt"), sorted(FIXTURE_FORMATS.items()))
def test_auto_detection_picks_the_reader(name: str, fmt: str) -> None:
    path = DATA / name
    assert detect_format(path) == fmt
    _assert_same_table(read_pairs(path).table, READERS[fmt](path).table)
    _assert_same_table(read_pairs([path], format=fmt).table, READERS[fmt](path).table)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json"])
def test_gzip_detected_by_magic_bytes(tmp_path: Path, suffix: str) -> None:
    for name in FIXTURE_FORMATS:
        packed = tmp_path / (name.removesuffix(".jsonl") + suffix)
        packed.write_bytes(gzip.compress((DATA / name).read_bytes()))
        plain = read_pairs(DATA / name).table
        table = read_pairs(packed).table
        assert (table.prompt, table.chosen, table.rejected) == (
            plain.prompt,
            plain.chosen,
            plain.rejected,
        )
        np.testing.assert_array_equal(table.group, plain.group)
        np.testing.assert_array_equal(table.line, plain.line)


def test_blank_lines_crlf_and_byte_order_mark(tmp_path: Path) -> None:
    record = '{"prompt": "p", "chosen": "yes", "rejected": "no"}'
    path = _write(
        tmp_path / "pairs.jsonl", [b"\xef\xbb\xbf" + record.encode(), "", "  ", record + "\r"]
    )
    table = read_trl_jsonl(path).table
    assert table.chosen == ("yes", "yes")
    np.testing.assert_array_equal(table.line, [1, 4])


def test_read_pairs_concatenates_with_shared_groups(tmp_path: Path) -> None:
    extra = _write(
        tmp_path / "extra.jsonl",
        [
            '{"prompt": "Name a fruit.", "chosen": "A plum.", "rejected": "A spoon."}',
            '{"prompt": "Name a tree.", "chosen": "An oak.", "rejected": "A cup."}',
            '{"chosen": "Snow is cold.", "rejected": "Snow is hot."}',
        ],
    )
    result = read_pairs([DATA / "trl.jsonl", extra, DATA / "hh.jsonl"])
    table = result.table
    assert len(table) == 7 + 3 + 6
    assert table.sources == (str(DATA / "trl.jsonl"), str(extra), str(DATA / "hh.jsonl"))
    np.testing.assert_array_equal(table.source, [0] * 7 + [1] * 3 + [2] * 6)
    np.testing.assert_array_equal(table.line, [*range(1, 8), 1, 2, 3, *range(1, 7)])
    # "Name a fruit." is one group across files; a prompt-less record stays its own group.
    np.testing.assert_array_equal(table.group[:10], [0, 1, 2, 3, 0, 4, 5, 0, 6, 7])
    np.testing.assert_array_equal(table.group[10:], [8, 8, 9, 10, 11, 8])


def test_concat_and_select_keep_groups_consistent() -> None:
    trl = read_trl_jsonl(DATA / "trl.jsonl").table
    subset = trl.select([4, 1])
    assert subset.chosen == ("A pear.", "Tea is brewed from leaves.")
    np.testing.assert_array_equal(subset.group, [0, 1])
    np.testing.assert_array_equal(subset.line, [5, 2])
    mask = trl.select(np.array([True, False, False, False, True, False, False]))
    assert mask.chosen == ("An apple.", "A pear.")
    twice = PairTable.concat([trl, trl])
    assert twice.sources == trl.sources
    np.testing.assert_array_equal(twice.group, np.tile(trl.group, 2))
    np.testing.assert_array_equal(twice.source, np.zeros(14))
    with pytest.raises(ValueError, match="differ in length"):
        PairTable(
            prompt=("p",),
            chosen=("c",),
            rejected=(),
            group_key=("",),
            group=[0],
            source=[0],
            sources=("s",),
            margin=[0.0],
            line=[1],
        )


MALFORMED = {
    "invalid JSON": ("trl", '{"chosen": "a", "rejected": ', "record"),
    "not an object": ("trl", "[1, 2]", "record"),
    "non-UTF-8 bytes": ("trl", b'{"chosen": "caf\xe9", "rejected": "b"}', "record"),
    "missing field": ("trl", '{"chosen": "a"}', "rejected"),
    "number for chosen": ("trl", '{"chosen": 3, "rejected": "b"}', "chosen"),
    "NaN margin": ("trl", '{"chosen": "a", "rejected": "b", "margin": NaN}', "margin"),
    "infinite margin": ("trl", '{"chosen": "a", "rejected": "b", "margin": -Infinity}', "margin"),
    "overflowing margin": ("trl", '{"chosen": "a", "rejected": "b", "margin": 1e999}', "margin"),
    "boolean margin": ("trl", '{"chosen": "a", "rejected": "b", "margin": true}', "margin"),
    "final message not assistant": (
        "trl",
        json.dumps(
            {
                "chosen": [{"role": "user", "content": "q"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ),
        "chosen[0].role",
    ),
    "different conversations": (
        "trl",
        json.dumps(
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "r"},
                    {"role": "assistant", "content": "b"},
                ],
            }
        ),
        "rejected",
    ),
    "mixed forms": (
        "trl",
        '{"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}',
        "rejected",
    ),
    "message without content": (
        "trl",
        '{"chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]}',
        "chosen[0].content",
    ),
    "no assistant turn": (
        "hh_rlhf",
        json.dumps({"chosen": "\n\nHuman: a", "rejected": "b"}),
        "chosen",
    ),
    "HH dialogues with different prompts": (
        "hh_rlhf",
        json.dumps(
            {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}
        ),
        "rejected",
    ),
    "empty message list": ("trl", '{"chosen": [], "rejected": []}', "chosen"),
    "one response": ("ranked", '{"prompt": "p", "responses": ["a"], "scores": [1]}', "responses"),
    "choice 2": (
        "summarize",
        json.dumps(
            {
                "info": {"id": "x", "post": "p"},
                "summaries": [{"text": "a"}, {"text": "b"}],
                "choice": 2,
            }
        ),
        "choice",
    ),
    "three summaries": (
        "summarize",
        json.dumps(
            {"info": {"id": "x", "post": "p"}, "summaries": [{"text": "a"}] * 3, "choice": 0}
        ),
        "summaries",
    ),
    "no post": (
        "summarize",
        json.dumps({"info": {"id": "x"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}),
        "info.post",
    ),
    "scores of wrong length": (
        "ranked",
        '{"prompt": "p", "responses": ["a", "b"], "scores": [1]}',
        "scores",
    ),
    "rank 0": ("ranked", '{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 0]}', "ranks[1]"),
    "scores and ranks": (
        "ranked",
        '{"prompt": "p", "responses": ["a", "b"], "scores": [1, 2], "ranks": [1, 2]}',
        "scores",
    ),
}
VALID = {
    "trl": '{"prompt": "p", "chosen": "good", "rejected": "bad"}',
    "hh_rlhf": json.dumps(
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    ),
    "summarize": json.dumps(
        {
            "info": {"id": "x", "post": "p"},
            "summaries": [{"text": "good"}, {"text": "bad"}],
            "choice": 0,
        }
    ),
    "ranked": '{"prompt": "p", "responses": ["good", "bad"], "scores": [1, 0]}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_record_names_file_line_field_or_is_skipped(tmp_path: Path, case: str) -> None:
    fmt, bad, field = MALFORMED[case]
    path = _write(tmp_path / "data.jsonl", [VALID[fmt], "", bad, VALID[fmt]])
    with pytest.raises(MarsError) as raised:
        READERS[fmt](path)
    message = str(raised.value)
    assert message.startswith(f"{path}:3: {field}: "), message
    assert "\n" not in message
    result = READERS[fmt](path, skip_invalid=True)
    assert (len(result.table), result.invalid, result.first_errors) == (2, 1, (message,))
    np.testing.assert_array_equal(result.table.line, [1, 4])
    assert read_pairs(path, format=fmt, skip_invalid=True).invalid == 1


def test_first_errors_keep_five_messages_and_count_all(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.jsonl", [VALID["trl"], *(["{"] * 7)])
    result = read_trl_jsonl(path, skip_invalid=True)
    assert (len(result.table), result.invalid) == (1, 7)
    assert [message.split(": ")[0] for message in result.first_errors] == [
        f"{path}:{i}" for i in range(2, 7)
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (gzip.compress(b"", mtime=0), "empty"),
        (b"{\n[]\n", "no valid records"),
    ],
)
def test_file_without_records_is_an_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    for reader in (read_pairs, read_trl_jsonl):
        with pytest.raises(MarsError, match=expected) as raised:
            reader(path, skip_invalid=True)
        assert str(raised.value).startswith(f"{path}: ")


def test_missing_file_directory_and_corrupt_gzip(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(MarsError, match="no such file") as raised:
        read_pairs([DATA / "trl.jsonl", missing])
    assert str(raised.value).startswith(f"{missing}: ")
    with pytest.raises(MarsError, match="is a directory") as raised:
        read_hh_rlhf(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path}: ")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress((DATA / "hh.jsonl").read_bytes())[:-12])
    with pytest.raises(MarsError, match="cannot read") as raised:
        read_hh_rlhf(truncated)
    assert str(raised.value).startswith(f"{truncated}: ")


def test_unknown_format_and_no_files() -> None:
    with pytest.raises(MarsError, match="unknown data format 'csv'") as raised:
        read_pairs(DATA / "trl.jsonl", format="csv")
    assert all(name in str(raised.value) for name in ("auto", *FORMATS))
    with pytest.raises(MarsError, match="no data files"):
        read_pairs([])


def test_hf_dataset_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MarsError, match=r"pip install 'mars-jax\[hf\]'") as raised:
        read_hf_dataset("someone/prefs")
    assert str(raised.value).startswith("someone/prefs: ")


def test_clean_pairs_counts_each_kind() -> None:
    table = _table(
        ["p", "p", "p", "p", "p", "q", "p", "p"],
        ["a", "same", "", " \n", "a", "a", "b", "a"],
        ["b", "same", "x", "y", "b", "b", "a", "\t"],
    )
    cleaned, report = clean_pairs(table)
    assert report.to_json() == {"total": 8, "identical": 1, "empty": 3, "duplicate": 1, "kept": 3}
    assert (cleaned.prompt, cleaned.chosen, cleaned.rejected) == (
        ("p", "q", "p"),
        ("a", "a", "b"),
        ("b", "b", "a"),
    )
    np.testing.assert_array_equal(cleaned.line, [1, 6, 7])
    np.testing.assert_array_equal(cleaned.group, [0, 1, 0])


def test_clean_pairs_on_fixtures() -> None:
    assert clean_pairs(read_hh_rlhf(DATA / "hh.jsonl").table)[1].to_json() == {
        "total": 6,
        "identical": 1,
        "empty": 1,
        "duplicate": 1,
        "kept": 3,
    }
    cleaned, report = clean_pairs(read_summarize_comparisons(DATA / "summarize.jsonl").table)
    assert (report.identical, report.empty, report.duplicate, report.kept) == (0, 1, 1, 3)
    np.testing.assert_array_equal(cleaned.line, [1, 3, 4])


def _grouped_table(seed: int = 0, num_groups: int = 200) -> PairTable:
    """Pairs in groups of 1 to 6, in shuffled row order."""
    rng = np.random.default_rng(seed)
    prompts = [f"prompt {g}" for g in range(num_groups) for _ in range(rng.integers(1, 7))]
    prompts = [prompts[i] for i in rng.permutation(len(prompts))]
    return _table(prompts, [f"good {i}" for i in range(len(prompts))], ["bad"] * len(prompts))


def test_split_by_group_is_disjoint_deterministic_and_near_the_fraction() -> None:
    table = _grouped_table()
    train, heldout = split_by_group(table, heldout_fraction=0.25, seed=3)
    assert not set(train.group) & set(heldout.group)
    assert sorted([*train.line, *heldout.line]) == list(table.line)
    assert np.all(np.diff(train.line) > 0) and np.all(np.diff(heldout.line) > 0)
    assert abs(len(heldout) - 0.25 * len(table)) <= 3  # half the largest group
    again_train, again_heldout = split_by_group(table, heldout_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again_heldout.line, heldout.line)
    np.testing.assert_array_equal(again_train.line, train.line)
    other = split_by_group(table, heldout_fraction=0.25, seed=4)[1]
    assert set(other.group) != set(heldout.group)


def test_split_by_group_edges() -> None:
    table = _grouped_table(num_groups=20)
    train, heldout = split_by_group(table, heldout_fraction=0.0, seed=0)
    assert (len(train), len(heldout)) == (len(table), 0)
    train, heldout = split_by_group(table, heldout_fraction=1.0, seed=0)
    assert (len(train), len(heldout)) == (0, len(table))
    with pytest.raises(MarsError, match="heldout_fraction"):
        split_by_group(table, heldout_fraction=1.5, seed=0)


def test_split_by_group_keeps_summarize_posts_together() -> None:
    table = read_summarize_comparisons(DATA / "summarize.jsonl").table
    for seed in range(10):
        train, heldout = split_by_group(table, heldout_fraction=0.4, seed=seed)
        assert not set(train.group_key) & set(heldout.group_key)


def test_sample_pairs_is_a_seeded_ordered_subset() -> None:
    table = _grouped_table()
    sample = sample_pairs(table, max_pairs=50, seed=1)
    assert len(sample) == 50
    assert np.all(np.diff(sample.line) > 0)
    np.testing.assert_array_equal(sample_pairs(table, max_pairs=50, seed=1).line, sample.line)
    assert not np.array_equal(sample_pairs(table, max_pairs=50, seed=2).line, sample.line)
    assert sample_pairs(table, max_pairs=len(table) + 1, seed=1) is table
    assert len(sample_pairs(table, max_pairs=0, seed=1)) == 0
    with pytest.raises(MarsError, match="max_pairs"):
        sample_pairs(table, max_pairs=-1, seed=1)


def test_read_result_is_a_named_tuple() -> None:
    result = read_pairs(DATA / "ranked_scores.jsonl")
    assert isinstance(result, ReadResult)
    table, invalid, first_errors, ties = result
    assert (len(table), invalid, first_errors, ties) == (6, 0, (), 1)
    assert table.sources == (str(DATA / "ranked_scores.jsonl"),)
