"""RULER-style synthetic long-context tasks (passkey, needle-in-a-haystack, KV retrieval, variable tracking, common
words) and similar-key retrieval (distractor needles share a word with the asked key), generated offline and
deterministically from (task, length, seed, split, index) for evaluation and training.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from swaa.tasks.haystack import SPLITS, SentenceStream, insert_needles, random_key, word_pool

log = logging.getLogger(__name__)

SINGLE_NEEDLE_DEPTHS = tuple(i / 10 for i in range(11))  # single needles cycle through these over sample indices
VALUE_KINDS = ("numbers", "words", "uuids")
_FIT_STEPS = 12
# Similar-key needles go early (over 1024 tokens before the question at 4k-8k tokens) or late (within the last 512
# tokens at 4k-8k): a sliding window sees the late ones only.
EARLY_DEPTHS = (0.02, 0.55)
LATE_DEPTHS = (0.95, 1.0)


@dataclass(frozen=True)
class Sample:
    """One evaluation or training example; `prompt` is the user message without any chat template."""

    id: str
    task: str
    prompt: str
    answers: list[str]
    scorer: str
    length: int | None = None
    depth: float | None = None
    choices: list[str] | None = None


@dataclass(frozen=True)
class _Draft:
    """A sample before its length is fitted: `render(n)` is the prompt with n filler units."""

    render: Callable[[int], str]
    answers: list[str]
    scorer: str
    depth: float | None = None


Generator = Callable[[random.Random, SentenceStream, int], _Draft]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return random_key(rng)
    return _uuid(rng)


def _distinct(make: Callable[[], str], k: int, taken: set[str]) -> list[str]:
    """k new values from `make`, distinct from each other and from `taken` (which is updated)."""
    values: list[str] = []
    while len(values) < k:
        value = make()
        if value not in taken:
            taken.add(value)
            values.append(value)
    return values


def _depths(rng: random.Random, index: int, k: int) -> list[float]:
    """One needle: evenly spread over sample indices; several: seeded uniform depths, sorted."""
    if k == 1:
        return [SINGLE_NEEDLE_DEPTHS[index % len(SINGLE_NEEDLE_DEPTHS)]]
    return sorted(round(rng.random(), 3) for _ in range(k))


def _haystack_render(intro: str, question: str, needles: list[tuple[float, str]], hay: SentenceStream):
    return lambda n: f"{intro}\n\n{insert_needles(hay.take(n), needles)}\n\n{question}"


def _passkey(rng: random.Random, hay: SentenceStream, index: int) -> _Draft:
    key = str(rng.randint(10_000, 99_999))
    depth = _depths(rng, index, 1)[0]
    intro = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
             "I will quiz you about the important information there.")
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "What is the pass key? Answer with only the pass key."
    return _Draft(_haystack_render(intro, question, [(depth, needle)], hay), [key], "contains", depth)


def _niah(rng: random.Random, hay: SentenceStream, index: int, *, keys: int, values: int, queries: int,
          kind: str) -> _Draft:
    """RULER NIAH: `keys` keys with `values` values each hidden as needles; ask for the values of `queries` keys."""
    taken: set[str] = set()
    names = _distinct(lambda: random_key(rng), keys, taken)
    needles = [(name, value) for name in names for value in _distinct(lambda: _value(rng, kind), values, taken)]
    rng.shuffle(needles)
    placed = list(zip(_depths(rng, index, len(needles)), needles))
    asked = names[:queries]
    answers = [value for name in asked for _, (key, value) in placed if key == name]
    depth = min(d for d, (key, _) in placed if key in asked)
    intro = (f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
             f"I will quiz you about the {kind} afterwards.")
    asked_text = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + f" and {asked[-1]}"
    question = (f"What are all the special magic {kind} for {asked_text} mentioned in the provided text? "
                f"Answer with only the {kind}, separated by commas.")
    texts = [(d, f"One of the special magic {kind} for {key} is: {value}.") for d, (key, value) in placed]
    scorer = "contains" if len(answers) == 1 else "all_of"
    return _Draft(_haystack_render(intro, question, texts, hay), answers, scorer, depth)


def _kv_retrieval(rng: random.Random, hay: SentenceStream, index: int) -> _Draft:
    """JSON of uuid keys -> uuid values; ask one key. An odd unit count adds one pair with a short numeric value,
    halving the length step (a uuid pair is ~76 SmolLM2 tokens) so that short prompts still fit."""
    query = (_uuid(rng), _uuid(rng))
    depth = _depths(rng, index, 1)[0]
    short_pair = (_uuid(rng), str(rng.randint(1_000_000, 9_999_999)))
    stream = random.Random(rng.getrandbits(64))
    pairs: list[tuple[str, str]] = []

    def render(n: int) -> str:
        while len(pairs) < n // 2:
            pairs.append((_uuid(stream), _uuid(stream)))
        shown = pairs[:n // 2] + [short_pair] * (n % 2)
        shown.insert(round(depth * len(shown)), query)
        return ("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                f"JSON data:\n{json.dumps(dict(shown), indent=4)}\n\n"
                f'What is the value associated with the key "{query[0]}"? Answer with only the value.')

    return _Draft(render, [query[1]], "contains", depth)


def _variable_tracking(rng: random.Random, hay: SentenceStream, index: int, *, chains: int = 2,
                       hops: int = 4) -> _Draft:
    """RULER variable tracking: chains `VAR B = VAR A` rooted at distinct numbers; ask the variables of chain 0."""
    taken: set[str] = set()
    roots = _distinct(lambda: str(rng.randint(10_000, 99_999)), chains, taken)
    names = [_distinct(lambda: "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5)), hops + 1, taken)
             for _ in range(chains)]
    statements = [[f"VAR {chain[0]} = {root}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(chain)]
                  for root, chain in zip(roots, names)]
    order = [c for c in range(chains) for _ in range(hops + 1)]
    rng.shuffle(order)  # interleave the chains, each kept in its own order
    positions = iter(_depths(rng, index, len(order)))
    queues = [iter(s) for s in statements]
    placed = [(next(positions), c, next(queues[c])) for c in order]
    depth = next(d for d, c, _ in placed if c == 0)
    intro = "Memorize and track the chain(s) of variable assignment hidden in the following text."
    question = (f"Find all variables that are assigned the value {roots[0]} in the text above. "
                "Answer with only the variable names, separated by commas.")
    render = _haystack_render(intro, question, [(d, text) for d, _, text in placed], hay)
    return _Draft(render, names[0], "all_of", depth)


def _common_words(rng: random.Random, hay: SentenceStream, index: int, *, top: int = 10) -> _Draft:
    """RULER CWE: a numbered word list where `top` words repeat most often; n units = list items beyond 3 * top.
    Frequencies scale with the list so the word pool suffices: common words fill about a quarter of the list."""
    pool = word_pool()
    rng.shuffle(pool)
    common, rare = pool[:top], pool[top:]
    seed = rng.getrandbits(64)

    def render(n: int) -> str:
        items = 3 * top + n
        freq_common = max(3, items // (4 * top))
        rest = items - top * freq_common
        freq_rare = max(1, math.ceil(rest / len(rare)))
        freq_common = max(freq_common, freq_rare + 2)
        words = common * freq_common + rare[:rest // freq_rare] * freq_rare
        random.Random(f"{seed}|{n}").shuffle(words)
        listing = " ".join(f"{i}. {word}" for i, word in enumerate(words, 1))
        return ("Below is a numbered list of words. In these words, some appear more often than others. "
                f"Memorize the ones that appear most often.\n{listing}\n"
                f"Question: What are the {top} most common words in the above list? "
                "Answer with only the words, separated by commas.")

    return _Draft(render, common, "all_of", None)


@dataclass(frozen=True)
class SimilarKeyWording:
    """Texts and key words of a similar-key task; keys are '{first} {second}' word pairs, values `digits` long."""

    intro: str
    needle: str  # with {key} and {value}
    question: str  # with {key}
    first: tuple[str, ...]
    second: tuple[str, ...]
    digits: int


# Key words are disjoint from the filler's words (haystack.py), so only the needles name them, and between the tasks.
SIMILAR_KEY_WORDINGS = {
    "niah_similar": SimilarKeyWording(
        intro=("Some special magic numbers are hidden within the following text, each for an animal of some colour. "
               "Make sure to memorize them. I will quiz you about one of them afterwards."),
        needle="The special magic number for the {key} is: {value}.",
        question=("What is the special magic number for the {key} mentioned in the provided text? "
                  "Answer with only the number."),
        first=tuple("""amber azure beige cerulean charcoal coral crimson cyan ebony emerald indigo ivory jade khaki
            lavender lilac magenta maroon mauve ochre olive peach plum russet saffron scarlet sepia taupe teal umber
            violet""".split()),
        second=tuple("""badger beaver bison camel cobra crane donkey ferret gecko goose heron hyena ibis jackal koala
            lemur llama lynx marmot mole moose newt ocelot otter owl panda parrot puffin raven salmon stork swan tapir
            toad viper walrus weasel yak zebra""".split()),
        digits=7),
    "niah_similar_story": SimilarKeyWording(
        intro=("Below is a long story about a small town. Several of its places are given door codes along the way; "
               "read closely, because you will be asked for one code at the end."),
        needle="A note pinned to the gate of the {key} said that its door code was {value}.",
        question="In the story, what was the door code of the {key}? Reply with the code and nothing else.",
        first=tuple("""birch brass bronze cedar chalk clay copper cotton flint granite hemp iron leather linen maple oak
            pewter pine quartz slate steel tin walnut willow wool zinc""".split()),
        second=tuple("""abbey bakery barn brewery chapel dairy ferry forge foundry granary inn kiln lighthouse lodge
            manor mill pier quarry smithy tannery tavern vineyard warehouse wharf workshop""".split()),
        digits=6),
}


def _similar_keys(rng: random.Random, wording: SimilarKeyWording, distractors: int) -> list[str]:
    """The asked key, then `distractors` distinct keys that share exactly one word with it: the first distractor its
    first word, the second its second word, the rest either."""
    first, second = rng.choice(wording.first), rng.choice(wording.second)
    shares_first = [i % 2 == 0 if i < 2 else rng.random() < 0.5 for i in range(distractors)]
    other_seconds = iter(rng.sample([w for w in wording.second if w != second], sum(shares_first)))
    other_firsts = iter(rng.sample([w for w in wording.first if w != first], distractors - sum(shares_first)))
    pairs = [(first, next(other_seconds)) if share else (next(other_firsts), second) for share in shares_first]
    return [f"{a} {b}" for a, b in [(first, second), *pairs]]


def _similar_key_niah(rng: random.Random, hay: SentenceStream, index: int, *, wording: SimilarKeyWording,
                      distractors: int = 3) -> _Draft:
    """One asked key among distractor needles that share one word with it. Even indices put the true needle early
    (outside a sliding window) and a distractor late (inside it); odd indices the other way round; the remaining
    distractors go anywhere."""
    keys = _similar_keys(rng, wording, distractors)
    values = _distinct(lambda: str(rng.randint(10 ** (wording.digits - 1), 10 ** wording.digits - 1)), len(keys),
                       set())
    true_span, counter_span = (EARLY_DEPTHS, LATE_DEPTHS) if index % 2 == 0 else (LATE_DEPTHS, EARLY_DEPTHS)
    spans = [true_span, counter_span] + [(EARLY_DEPTHS[0], LATE_DEPTHS[1])] * (distractors - 1)
    depths = [round(rng.uniform(*span), 3) for span in spans]
    needles = [(d, wording.needle.format(key=key, value=value)) for d, key, value in zip(depths, keys, values)]
    question = wording.question.format(key=keys[0])
    return _Draft(_haystack_render(wording.intro, question, needles, hay), [values[0]], "exact", depths[0])


def _registry() -> dict[str, Generator]:
    tasks: dict[str, Generator] = {"passkey": _passkey}
    shapes = {"niah_single": (1, 1, 1), "niah_multikey": (4, 1, 1), "niah_multivalue": (1, 4, 1),
              "niah_multiquery": (4, 1, 4)}
    for name, (keys, values, queries) in shapes.items():
        for kind in VALUE_KINDS:
            full = name if kind == "numbers" else f"{name}:{kind}"
            tasks[full] = functools.partial(_niah, keys=keys, values=values, queries=queries, kind=kind)
    tasks.update(kv_retrieval=_kv_retrieval, variable_tracking=_variable_tracking, common_words=_common_words)
    for name, wording in SIMILAR_KEY_WORDINGS.items():
        tasks[name] = functools.partial(_similar_key_niah, wording=wording)
    return tasks


TASKS: dict[str, Generator] = _registry()


def _fit(render: Callable[[int], str], tokenizer: PreTrainedTokenizerBase, length: int, task: str) -> str:
    """The rendered prompt whose token count lies in [0.9 * length, length], found by a few secant steps."""
    low = math.ceil(0.9 * length)
    counts: dict[int, int] = {}

    def measure(n: int) -> str:
        text = render(n)
        counts[n] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return text

    n, text = 0, measure(0)
    if counts[0] > length:
        raise ValueError(f"{task}: length {length} is too short, the task's fixed text alone is {counts[0]} tokens")
    slope = None
    for _ in range(_FIT_STEPS):
        c = counts[n]
        if low <= c <= length:
            return text
        if slope is None:  # no growth seen yet: probe with doubling steps
            step = max(8, n)
        else:
            target = length - max(0.03 * length, min(slope / 2, 0.05 * length))
            step = round((target - c) / slope) or (1 if c < low else -1)
        step = max(step, -n)
        new_text = measure(n + step)
        delta = counts[n + step] - c
        if delta * step > 0:
            slope = delta / step
        n, text = n + step, new_text
    closest = min(counts, key=lambda k: abs(counts[k] - (low + length) / 2))
    raise RuntimeError(f"{task}: could not fit a prompt into [{low}, {length}] tokens (closest: {counts[closest]} "
                       f"tokens with {closest} filler units); the filler units are too coarse for this length")


def check_tasks(tasks: list[str], where: str = "tasks") -> None:
    """Every name in `tasks` is a synthetic task (TASKS); else a ValueError naming `where` and the unknown ones."""
    bad = [str(task) for task in tasks if not isinstance(task, str) or task not in TASKS]
    if bad:
        raise ValueError(f"{where} {', '.join(bad)}: unknown task{'s' * (len(bad) > 1)}; choose from "
                         f"{', '.join(TASKS)}")


def make_samples(task: str, n: int, length: int, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                 split: str = "eval", haystack: str | Path | None = None) -> list[Sample]:
    """n samples of `task` whose prompts are [0.9 * length, length] tokens long, counted with `tokenizer` on the
    prompt alone (no special tokens; the chat template's overhead is not counted).

    Deterministic in (task, length, seed, split, index); each split draws from its own seed stream, and the train
    split uses a different haystack from val/eval unless `haystack` (a text file) is given for all of them.
    """
    check_tasks([task], "task")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if n < 0 or length < 1:
        raise ValueError(f"need n >= 0 and length >= 1, got n={n}, length={length}")
    samples = []
    for index in range(n):
        seed_key = f"{task}|{length}|{seed}|{split}|{index}"
        draft = TASKS[task](random.Random(seed_key), SentenceStream(split, seed_key, haystack), index)
        prompt = _fit(draft.render, tokenizer, length, task)
        samples.append(Sample(id=f"{task}-{length}-{split}-s{seed}-{index}", task=task, prompt=prompt,
                              answers=draft.answers, scorer=draft.scorer, length=length, depth=draft.depth))
    log.debug("made %d %s samples of %d tokens (%s split, seed %d)", n, task, length, split, seed)
    return samples


def train_answer(sample: Sample) -> str:
    """The assistant text to train on: the reference answers joined by commas."""
    return ", ".join(sample.answers)
