"""Suite specs and eval data checks: bad input is reported as `file:line` before any model loads."""

import json

import pytest

from tunefleet.data.readers import DataError
from tunefleet.eval.suites import SuiteError, parse_suite, parse_suites


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_task_spec_levels_and_names():
    suites = parse_suites(["arith:1-3", "reverse"], limit=5, seed=0)
    assert [s.name for s in suites] == ["arith_l1", "arith_l2", "arith_l3", "reverse_l2"]
    assert all(len(s.examples) == 5 and s.kind == "generative" for s in suites)
    assert [s.info["level"] for s in suites[:3]] == [1, 2, 3] and suites[3].task == "reverse"
    assert parse_suite("arith:4")[0].name == "arith_l4"


def test_task_suites_are_deterministic_in_the_seed():
    a, b, c = (parse_suite("arith:2", limit=20, seed=s)[0] for s in (0, 0, 1))
    assert a.examples == b.examples and a.digest == b.digest
    assert a.examples != c.examples and a.digest != c.digest


@pytest.mark.parametrize("spec, match", [("arith:9", "levels must be"), ("arith:x", "levels must be"),
                                         ("chess", "unknown suite 'chess'"), ("mc", "give a file")])
def test_bad_specs(spec, match):
    with pytest.raises(SuiteError, match=match):
        parse_suite(spec)


def test_mc_rows_and_limit(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "choices": ["3", "4"], "answer": 1}] * 3)
    (suite,) = parse_suites([f"mc:{path}"], limit=2)
    assert suite.name == "mc_q" and suite.kind == "mc" and len(suite.examples) == 2
    assert suite.examples[0].choices == ("3", "4") and suite.examples[0].reference == "1"
    assert suite.info["file_rows"] == 3 and len(suite.digest) == 64


@pytest.mark.parametrize("row, reason", [
    ({"question": "q", "answer": 0}, "missing column 'choices'"),
    ({"choices": ["a", "b"], "answer": 0}, "missing column 'question'"),
    ({"question": "q", "choices": ["a", "b"]}, "missing column 'answer'"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer index 2 out of range for 2 choices"),
    ({"question": "q", "choices": ["a", "b"], "answer": -1}, "answer index -1 out of range"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "must be a choice index"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "at least 2 non-empty strings"),
])
def test_mc_bad_row_names_file_and_line(tmp_path, row, reason):
    good = {"question": "q", "choices": ["a", "b"], "answer": 0}
    path = _jsonl(tmp_path / "mc.jsonl", [good, good, row])
    with pytest.raises(DataError) as err:
        parse_suites([f"mc:{path}"])
    assert str(err.value).startswith(f"{path}:3: ") and reason in str(err.value)


@pytest.mark.parametrize("kind", ["mc", "ppl", "gsm8k"])
def test_empty_file_is_reported(tmp_path, kind):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=rf"^{path}:1: empty eval file"):
        parse_suites([f"{kind}:{path}"])


def test_gsm8k_rows(tmp_path):
    path = _jsonl(tmp_path / "test.jsonl", [{"question": "How many?", "answer": "2 + 3 = 5\n#### 5"},
                                            {"question": "More?", "answer": "so\n#### 1,200 apples"}])
    (suite,) = parse_suites([f"gsm8k:{path}"])
    assert suite.name == "gsm8k_test" and suite.task is None
    assert [e.reference for e in suite.examples] == ["5", "1,200"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "5"}])
    with pytest.raises(DataError, match=rf"{bad}:1: column 'answer' has no final '#### N' line"):
        parse_suites([f"gsm8k:{bad}"])
    missing = _jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "#### 1"}, {"answer": "#### 2"}])
    with pytest.raises(DataError, match=rf"{missing}:2: missing column 'question'"):
        parse_suites([f"gsm8k:{missing}"])


def test_ppl_text_and_chat_rows(tmp_path):
    path = _jsonl(tmp_path / "held.jsonl", [{"text": "plain text"},
                                            {"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]},
                                            {"question": "2+2?", "answer": "2+2=4\n#### 4"}])
    (suite,) = parse_suites([f"ppl:{path}"])
    assert [e.prompt for e in suite.examples] == ["plain text", "hi\nhello", "2+2?\n2+2=4\n#### 4"]
    half = _jsonl(tmp_path / "h.jsonl", [{"question": "q only"}])
    with pytest.raises(DataError, match=rf"{half}:1: missing column 'answer'"):
        parse_suites([f"ppl:{half}"])
    bad = _jsonl(tmp_path / "b.jsonl", [{"text": "ok"}, {"body": "no"}])
    with pytest.raises(DataError, match=rf"{bad}:2: missing column 'text'"):
        parse_suites([f"ppl:{bad}"])
    broken = _jsonl(tmp_path / "j.jsonl", [{"text": "ok"}, "{not json"])
    with pytest.raises(DataError, match=rf"{broken}:2: invalid JSON"):
        parse_suites([f"ppl:{broken}"])


def test_duplicate_names_are_made_unique(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    assert [s.name for s in parse_suites([f"ppl:{path}", f"ppl:{path}"])] == ["ppl_x", "ppl_x_2"]


def test_the_gsm8k_test_file_is_a_valid_suite():
    """The acceptance data (../shared/data/gsm8k, skipped when absent): every row passes the
    checks and its gold answer is a number."""
    from tf_testutil import shared_path

    from tunefleet.rewards.mathnorm import parse_number

    path = shared_path("data", "gsm8k", "test.jsonl")
    (suite,) = parse_suites([f"gsm8k:{path}"], limit=200)
    assert suite.name == "gsm8k_test" and len(suite.examples) == 200 and suite.info["file_rows"] == 1319
    assert all(parse_number(e.reference) is not None for e in suite.examples)
