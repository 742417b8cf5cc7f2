import pytest

from tunefleet.data.formats import (
    SftExample,
    detect_shape,
    gsm8k_final_answer,
    sft_row_problem,
    to_sft_example,
)
from tunefleet.data.readers import DataError, read_rows

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


def test_detect_shapes():
    assert detect_shape({"messages": []}) == "messages"
    assert detect_shape({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect_shape({"prompt": "p", "chosen": "c", "rejected": "r"}) == "preference"
    assert detect_shape({"question": "q", "answer": "a"}) == "question_answer"


def test_detect_unknown_shape_raises_with_keys():
    with pytest.raises(DataError, match=r"unknown row shape with keys \['foo'\]"):
        detect_shape({"foo": 1})


def test_messages_row():
    system = {"role": "system", "content": "Be brief."}
    row = {"messages": [system, USER, ASSISTANT, USER, {"role": "assistant", "content": "Bye"}]}
    ex = to_sft_example(row)
    assert ex == SftExample(prompt=(system, USER, ASSISTANT, USER), response="Bye")


def test_prompt_completion_string_and_messages():
    ex = to_sft_example({"prompt": "2+2?", "completion": "4"})
    assert ex == SftExample(prompt=({"role": "user", "content": "2+2?"},), response="4")
    ex = to_sft_example({"prompt": [USER], "completion": [ASSISTANT]})
    assert ex == SftExample(prompt=(USER,), response="Hello!")


def test_preference_uses_chosen():
    ex = to_sft_example({"prompt": "Hi", "chosen": "Good", "rejected": "Bad"})
    assert ex == SftExample(prompt=(USER,), response="Good")
    rejected = [{"role": "assistant", "content": "x"}]
    row = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": rejected}
    assert to_sft_example(row).response == "Hello!"


def test_question_answer_keeps_full_gsm8k_answer():
    answer = "She has 3 + 4 = 7 apples.\n#### 7"
    ex = to_sft_example({"question": "How many?", "answer": answer})
    assert ex == SftExample(prompt=({"role": "user", "content": "How many?"},), response=answer)


def test_extra_message_keys_dropped():
    row = {"messages": [{"role": "user", "content": "Hi", "name": "x"}, ASSISTANT]}
    assert to_sft_example(row).prompt == (USER,)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"foo": 1}, "unknown row shape"),
        ({"messages": "hi"}, "must be a list of messages"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": [USER]}, "must end with an assistant turn"),
        ({"messages": [USER, {"role": "assistant", "content": " "}]}, "empty final assistant"),
        ({"messages": [{"role": "robot", "content": "x"}, ASSISTANT]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user"}, ASSISTANT]}, "no string 'content'"),
        ({"prompt": "p", "completion": ""}, "'completion' is empty"),
        ({"prompt": 3, "completion": "c"}, "'prompt' must be a string, got int"),
        ({"chosen": "c", "rejected": "r"}, "missing 'prompt'"),
        ({"question": "q", "answer": None}, "'answer' must be a string"),
    ],
)
def test_bad_rows_give_reasons(row, reason):
    problem = sft_row_problem(row)
    assert problem is not None and reason in problem
    with pytest.raises(DataError, match=reason.replace("(", r"\(")):
        to_sft_example(row)


def test_good_rows_have_no_problem():
    assert sft_row_problem({"messages": [USER, ASSISTANT]}) is None
    assert sft_row_problem({"question": "q", "answer": 42}) is None


def test_sft_row_problem_as_read_rows_validator(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"sft\.jsonl:2: unknown row shape"):
        read_rows(path, validate=sft_row_problem)


@pytest.mark.parametrize(
    ("answer", "final"),
    [
        ("blah\n#### 72", "72"),
        ("x #### 1,234 ", "1234"),
        ("#### -5", "-5"),
        ("no marker", None),
        ("####  ", None),
    ],
)
def test_gsm8k_final_answer(answer, final):
    assert gsm8k_final_answer(answer) == final
