import pytest

from tunefleet.data.tasks import DEFAULT_LEVEL, TASKS, Problem, get_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generate_is_deterministic(name):
    task = get_task(name)
    a = task.generate("train", 50, seed=3, level=2)
    assert a == task.generate("train", 50, seed=3, level=2)
    assert a != task.generate("train", 50, seed=4, level=2)
    assert all(isinstance(p, Problem) for p in a)
    assert [p.id for p in a[:2]] == [f"{name}-train-2-0", f"{name}-train-2-1"]


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("level", [1, 2, 3])
def test_train_and_eval_are_disjoint(name, level):
    task = get_task(name)
    train = {p.prompt for p in task.generate("train", 300, seed=0, level=level)}
    evals = {p.prompt for p in task.generate("eval", 100, seed=0, level=level)}
    other_seed = {p.prompt for p in task.generate("eval", 100, seed=1, level=level)}
    assert not train & evals and not train & other_seed


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_answers_verify(name):
    task = get_task(name)
    for level in task.levels:
        for p in task.generate("eval", 20, seed=0, level=level):
            assert task.verify(p.answer, p.answer), p


def test_arith_prompt_and_answer():
    for p in get_task("arith").generate("train", 30, seed=0, level=1):
        assert p.prompt.endswith("Answer with the number only.")
        assert 2 <= int(p.answer) <= 18


@pytest.mark.parametrize(
    "completion",
    ["68", "The answer is 68.", "45 + 23 = 68", "**68**", "\\boxed{68}", "= 68", " 68\n"],
)
def test_arith_verify_tolerant(completion):
    assert get_task("arith").verify(completion, "68")


@pytest.mark.parametrize(
    "completion", ["680", "6 8", "The answer is 67.", "", "sixty-eight", "68.5"]
)
def test_arith_verify_rejects(completion):
    assert not get_task("arith").verify(completion, "68")


def test_arith_extract_prefers_boxed_and_hashes():
    arith = get_task("arith")
    assert arith.extract("\\boxed{42} so 10 steps later, 7") == "42"
    assert arith.extract("12 + 30 = 42\n#### 42\nCheck: 1") == "42"
    assert arith.extract("It is 1,234 apples") == "1234"
    assert arith.extract("10 - 25 = -15") == "-15"
    assert arith.extract("no numbers") is None


def test_arith_levels_change_difficulty():
    arith = get_task("arith")

    def biggest(level):
        return max(abs(int(p.answer)) for p in arith.generate("train", 100, seed=0, level=level))

    assert biggest(1) <= 18 < biggest(2) <= 198 < biggest(5)
    assert any("-" in p.prompt for p in arith.generate("train", 50, seed=0, level=3))
    assert all(p.prompt.count(" + ") + p.prompt.count(" - ") == 2
               for p in arith.generate("train", 50, seed=0, level=4))


def test_reverse_prompt_answer_and_levels():
    reverse = get_task("reverse")
    for level in (1, 2, 5):
        for p in reverse.generate("train", 10, seed=0, level=level):
            assert len(p.answer.split(", ")) == level + 1
            assert p.prompt.endswith("Answer with the words separated by commas.")
            shown = p.prompt.split(": ", 1)[1].split(".")[0]
            assert shown.split(", ") == p.answer.split(", ")[::-1]


@pytest.mark.parametrize(
    "completion",
    ["stone, river, apple", "Reversed: Stone,River ,apple.", "stone,river,apple",
     "The reversed list is stone, river, and apple.", "**stone, river, apple**",
     "Sure!\nstone, river, apple"],
)
def test_reverse_verify_tolerant(completion):
    assert get_task("reverse").verify(completion, "stone, river, apple")


@pytest.mark.parametrize("completion", ["apple, river, stone", "stone, river", "", "stone river"])
def test_reverse_verify_rejects(completion):
    assert not get_task("reverse").verify(completion, "stone, river, apple")


def test_get_task_unknown_lists_names():
    with pytest.raises(KeyError, match="known tasks: arith, reverse"):
        get_task("chess")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        get_task("arith").generate("test", 1, seed=0, level=1)
    with pytest.raises(ValueError, match="level"):
        get_task("arith").generate("train", 1, seed=0, level=9)


def test_default_levels_are_valid():
    for name, level in DEFAULT_LEVEL.items():
        assert level in get_task(name).levels
