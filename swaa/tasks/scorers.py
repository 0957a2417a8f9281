"""Answer scorers (exact, contains, all_of, any_of, choice) and an LLM judge that runs a local model greedily."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

JUDGE_PROMPT = (
    "You are grading a response to a question against the reference answer.\n\n"
    "Question: {question}\n\nReference answer(s): {references}\n\nResponse: {prediction}\n\n"
    "Is the response correct? Reply with exactly one word: correct or wrong."
)


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces except '-' inside a token (uuids, 'quiet-harbor'), whitespace collapsed."""
    text = re.sub(r"[^\w\s-]", " ", unicodedata.normalize("NFKC", text).lower())
    return " ".join(token.strip("-") for token in text.split() if token.strip("-"))


def _found(reference: str, prediction: str) -> bool:
    """Whether the normalized reference occurs in the normalized prediction as whole tokens."""
    reference = normalize(reference)
    return bool(reference) and f" {reference} " in f" {normalize(prediction)} "


def _exact(prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def _contains(prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    return float(any(_found(a, prediction) for a in answers))


def _all_of(prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    return sum(_found(a, prediction) for a in answers) / len(answers)


def choice_index(answer: str, choices: list[str]) -> int:
    """The 0-based choice an answer names: a letter (A = first) or the text of one choice."""
    letters = string.ascii_uppercase[:len(choices)]
    stripped = answer.strip().strip("()").strip()
    if len(stripped) == 1 and stripped.upper() in letters:
        return letters.index(stripped.upper())
    texts = [normalize(c) for c in choices]
    if normalize(answer) in texts:
        return texts.index(normalize(answer))
    raise ValueError(f"answer {answer!r} is neither a letter {letters[0]}-{letters[-1]} nor one of the choices "
                     f"{choices}")


def parse_choice(prediction: str, choices: list[str]) -> int | None:
    """The choice a prediction picks: 'Answer: B', 'The answer is (B)', a leading 'B', '(B)', 'B) text', 'B. text',
    or else the text of exactly one choice; None if it names none or several."""
    letters = string.ascii_uppercase[:len(choices)]
    text = prediction.strip().strip("*").strip()
    patterns = (rf"(?i:answer)(?:\s+is)?\s*[:\-]?\s*[*(\[]*([{letters}])(?!\w)",
                rf"^[(\[]?([{letters}])(?:[)\].:,]|$)")
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return letters.index(match.group(1).upper())
    found = [i for i, c in enumerate(choices) if _found(c, prediction)]
    return found[0] if len(found) == 1 else None


def _choice(prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    if not choices:
        raise ValueError("the choice scorer needs the sample's choices")
    picked = parse_choice(prediction, choices)
    return float(picked is not None and picked in {choice_index(a, choices) for a in answers})


def parse_verdict(text: str) -> bool | None:
    """A judge's verdict, read from its first word: 'correct' -> True, 'wrong'/'incorrect' -> False; None for any other
    first word, for a reply that also holds the opposite verdict, or an empty one. Case and punctuation are ignored."""
    words = re.findall(r"[a-z]+", text.lower())
    verdicts = {"correct": True, "wrong": False, "incorrect": False}
    verdict = verdicts.get(words[0]) if words else None
    if verdict is None or any(verdicts.get(word, verdict) != verdict for word in words):
        return None
    return verdict


class JudgeScorer:
    """LLM judge with a local Hugging Face model: one chat prompt per answer, greedy generation, strict parsing.
    Returns True/False per sample, or None where the verdict is unparseable (count those; never guess)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 8,
                 batch_size: int = 8):
        if tokenizer.pad_token_id is None:
            raise ValueError("the judge tokenizer needs a pad token for batched generation")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.generation_config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                                  pad_token_id=tokenizer.pad_token_id,
                                                  eos_token_id=tokenizer.eos_token_id)

    def prompt(self, question: str, prediction: str, answers: list[str]) -> str:
        """The judge's chat-formatted input text for one sample."""
        content = JUDGE_PROMPT.format(question=question, references=" | ".join(answers), prediction=prediction)
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    @torch.inference_mode()
    def replies(self, prompts: list[str]) -> list[str]:
        """Greedy replies to chat-formatted prompts, in batches with left padding."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.tokenizer(prompts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   padding_side="left", add_special_tokens=False).to(self.model.device)
            generated = self.model.generate(**batch, generation_config=self.generation_config)
            out += self.tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def __call__(self, questions: list[str], predictions: list[str], answers: list[list[str]]) -> list[bool | None]:
        if not len(questions) == len(predictions) == len(answers):
            raise ValueError(f"need as many questions ({len(questions)}), predictions ({len(predictions)}) "
                             f"and answer lists ({len(answers)})")
        prompts = [self.prompt(q, p, a) for q, p, a in zip(questions, predictions, answers)]
        return [parse_verdict(reply) for reply in self.replies(prompts)]


SCORERS: dict[str, Callable] = {
    "exact": _exact,
    "contains": _contains,
    "all_of": _all_of,
    "any_of": _contains,  # the same rule as contains, named for tasks with several acceptable answers
    "choice": _choice,
    "judge": JudgeScorer,
}


def score(name: str, prediction: str, answers: list[str], choices: list[str] | None = None) -> float:
    """Score one prediction in [0, 1] with the rule-based scorer `name` (see SCORERS)."""
    if name == "judge":
        raise ValueError("the judge scorer needs a model: build JudgeScorer(model, tokenizer) and call it on batches")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORERS)}")
    if not answers:
        raise ValueError("need at least one reference answer")
    return SCORERS[name](prediction, answers, choices)
