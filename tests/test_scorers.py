"""Scorers on tricky predictions, the judge's verdict parser, and JudgeScorer plumbing with a tiny random model."""

import pytest
from conftest import tiny_model

from swaa.tasks.scorers import SCORERS, JudgeScorer, choice_index, normalize, parse_choice, parse_verdict, score

UUID = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"


@pytest.mark.parametrize("text, expected", [
    ("  Hello,   WORLD!\n", "hello world"),
    (f"The key is {UUID.upper()}.", f"the key is {UUID}"),
    ("quiet-harbor, -dash- --", "quiet-harbor dash"),
    ("“Paris”\t(France)", "paris france"),
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact():
    assert score("exact", " Paris. ", ["paris"]) == 1.0
    assert score("exact", "Paris, France", ["Paris"]) == 0.0
    assert score("exact", "Lyon", ["Paris", "lyon"]) == 1.0


def test_contains_tricky_cases():
    assert score("contains", "The special magic\nNUMBER is: 1234567!", ["1234567"]) == 1.0
    assert score("contains", "quiet\nharbor", ["Quiet harbor"]) == 1.0  # split across lines and case
    assert score("contains", f"value: {UUID}.", [UUID]) == 1.0
    assert score("contains", "12345678", ["1234567"]) == 0.0  # whole tokens only, no digit-prefix matches
    assert score("contains", "quiet-harbors", ["quiet-harbor"]) == 0.0
    assert score("contains", "nothing here", ["Paris", "nothing"]) == 1.0
    assert score("contains", "", ["x"]) == 0.0


def test_all_of_partial_credit_and_any_of():
    answers = ["1111111", "2222222", "3333333", "4444444"]
    assert score("all_of", "2222222, 4444444 and 9999999", answers) == 0.5
    assert score("all_of", "1111111\n2222222\n3333333\n4444444", answers) == 1.0
    assert score("all_of", "none", answers) == 0.0
    assert score("any_of", "maybe 3333333", answers) == 1.0
    assert score("any_of", "none", answers) == 0.0


CHOICES = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize("prediction, expected", [
    ("B", 1), ("(B)", 1), ("Answer: B", 1), ("B) London", 1), ("B. London", 1), ("**B**", 1),
    ("The answer is (C).", 2), ("answer is D", 3), ("I think it is London.", 1),
    ("Paris or London", None), ("E", None), ("no idea", None), ("", None),
])
def test_parse_choice(prediction, expected):
    assert parse_choice(prediction, CHOICES) == expected


def test_choice_scorer_with_letter_or_text_answers():
    assert score("choice", "(B) London", ["B"], CHOICES) == 1.0
    assert score("choice", "Answer: B", ["london"], CHOICES) == 1.0
    assert score("choice", "A", ["B"], CHOICES) == 0.0
    assert score("choice", "Answer: C", ["b", "Berlin"], CHOICES) == 1.0
    with pytest.raises(ValueError, match="needs the sample's choices"):
        score("choice", "B", ["B"])
    with pytest.raises(ValueError, match="neither a letter A-D nor one of the choices"):
        choice_index("Rome", CHOICES)


def test_bad_scorer_names_and_inputs():
    with pytest.raises(ValueError, match="unknown scorer 'fuzzy'.*exact.*judge"):
        score("fuzzy", "x", ["x"])
    with pytest.raises(ValueError, match="JudgeScorer"):
        score("judge", "x", ["x"])
    with pytest.raises(ValueError, match="at least one reference"):
        score("contains", "x", [])
    assert set(SCORERS) == {"exact", "contains", "all_of", "any_of", "choice", "judge"}


@pytest.mark.parametrize("text, expected", [
    ("correct", True), ("Correct.", True), ("**CORRECT**", True), (" correct\n", True),
    ("Correct, it matches the reference.", True),
    ("wrong", False), ("Wrong!", False), ("incorrect", False), ("Incorrect. It is wrong.", False),
    ("", None), ("   ", None), ("The response is correct", None), ("correctly", None), ("not correct", None),
    ("correct or wrong", None), ("Correct. No, wrong.", None), ("yes", None), ("right", None), ("in-correct", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


@pytest.fixture(scope="module")
def judge(smollm2_tokenizer):
    return JudgeScorer(tiny_model(vocab_size=49152, layers=2), smollm2_tokenizer, max_new_tokens=4, batch_size=2)


def test_judge_prompt_holds_question_references_and_response(judge):
    prompt = judge.prompt("What is the pass key?", "It is 12345.", ["12345", "twelve"])
    assert "What is the pass key?" in prompt and "12345 | twelve" in prompt and "It is 12345." in prompt
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("assistant")


def test_judge_scorer_plumbing_is_deterministic(judge):
    questions = ["What is the pass key?", "Name a colour.", "Which city?"]
    predictions = ["12345", "a much longer answer that makes the left padding matter", "Paris"]
    answers = [["12345"], ["red", "blue"], ["Paris"]]
    verdicts = judge(questions, predictions, answers)
    assert len(verdicts) == 3 and all(v in (True, False, None) for v in verdicts)
    assert judge(questions, predictions, answers) == verdicts
    replies = judge.replies([judge.prompt(q, p, a) for q, p, a in zip(questions, predictions, answers)])
    assert verdicts == [parse_verdict(r) for r in replies]
    # left padding: a sample's reply does not depend on the batch it shares
    assert judge.replies([judge.prompt(questions[0], predictions[0], answers[0])])[0] == replies[0]
    with pytest.raises(ValueError, match="as many questions"):
        judge(questions, predictions[:2], answers)
