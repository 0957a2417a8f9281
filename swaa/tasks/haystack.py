"""Filler text for long-context tasks: RULER noise (train), generated varied sentences (val/eval), or a user file.

Training and evaluation haystacks differ on purpose, so a model tuned on the noise text is evaluated on unseen text.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
import re
from pathlib import Path

NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")

NOUNS = """
apple anchor arrow badge basket beacon bell blanket boat bottle bridge brush bucket cabin camera candle canyon
carpet castle cellar chair chimney circle cliff clock cloud coat compass cottage couch crown curtain desk diamond
doctor door dragon drum eagle engine falcon fence field flag flower forest fountain garden gate glove guitar hammer
harbor hat helmet hill horse island jacket kettle kitchen ladder lake lantern leaf letter library lion map market
meadow mirror monkey mountain needle nest ocean orchard painter palace pencil piano picture pillow pilot planet pocket
pond puzzle rabbit radio river robot rocket saddle sailor scarf school shadow shelf ship shovel singer soldier spoon
stable statue stone storm street student table teacher temple tent theater ticket tiger tower tractor train tunnel
turtle umbrella valley village violin wagon wall window winter wizard wolf
""".split()

ADJECTIVES = """
ancient brave bright broken calm careful cheerful clever cold curious dark distant dusty eager early elegant empty
famous fierce fragile friendly gentle giant golden graceful green hidden hollow honest humble icy jolly kind lazy
little lonely loud lucky magic marble mellow misty modest narrow noble odd old orange patient plain polite proud
purple quick quiet rapid rare rough round rusty silent silver simple sleepy slow small smooth soft solid sour spare
steady strange strong sudden sunny sweet swift tall tidy tiny vast velvet warm wary wild windy wise wooden young
""".split()

VERBS = """
admired borrowed built carried chased cleaned collected covered crossed discovered dropped found followed guarded
helped hid held lifted locked lost moved noticed opened painted passed pulled pushed repaired returned saved showed
sold stole touched traded visited washed watched wrapped
""".split()

ADVERBS = "again calmly gladly later loudly quickly quietly rarely slowly softly soon suddenly twice".split()
PREPOSITIONS = "above behind below beside beyond inside near under".split()
TEMPLATES = (
    "The {a1} {n1} {v1} the {n2}.",
    "The {n1} {v1} the {a1} {n2} {p} the {n3}.",
    "{A}, the {n1} {v1} one {a1} {n2}.",
    "Every {n1} near the {n2} {v1} the {n3} {d}.",
    "Nobody {v1} the {n1} until the {a1} {n2} {v2} it.",
    "The {n1} and the {n2} {v1} the {a1} {n3} together.",
    "It was the {a1} {n1} that {v1} the {n2}.",
    "{P} the {n1}, the {a1} {n2} {v1} nothing.",
    "Nobody knew why the {n1} {v1} the {a1} {n2}.",
    "The {n1} was {a1}, and the {n2} was {a2}.",
    "Each {a1} {n1} {v1} the {n2} {d}.",
    "That {n1} never {v1} the {a1} {n2} {p} the {n3}.",
)
SPLITS = ("train", "val", "eval")
_MAX_WORDS = 30  # longer sentences of a user file are cut, so prompt lengths can be fitted finely


def word_pool() -> list[str]:
    """Distinct single words (nouns, adjectives, verbs, adverbs), sorted."""
    return sorted(set(NOUNS + ADJECTIVES + VERBS + ADVERBS))


def random_key(rng: random.Random) -> str:
    """A hyphenated adjective-noun pair such as 'quiet-harbor' (RULER's word keys and values)."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _varied_sentence(rng: random.Random) -> str:
    n1, n2, n3 = rng.sample(NOUNS, 3)
    a1, a2 = rng.sample(ADJECTIVES, 2)
    v1, v2 = rng.sample(VERBS, 2)
    adverb, prep = rng.choice(ADVERBS), rng.choice(PREPOSITIONS)
    return rng.choice(TEMPLATES).format(n1=n1, n2=n2, n3=n3, a1=a1, a2=a2, v1=v1, v2=v2, d=adverb,
                                        A=adverb.capitalize(), p=prep, P=prep.capitalize())


@functools.lru_cache(maxsize=8)
def _file_sentences(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"haystack file {path}: cannot read it as UTF-8 text ({e})") from e
    sentences = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = sentence.split()
        sentences.extend(" ".join(words[i:i + _MAX_WORDS]) for i in range(0, len(words), _MAX_WORDS))
    if not sentences:
        raise ValueError(f"haystack file {path} is empty: it needs some text to cut into sentences")
    return tuple(sentences)


def load_sentences(path: str | Path) -> tuple[str, ...]:
    """Sentences of a UTF-8 text file (whitespace collapsed, long ones cut to 30 words); cached per file version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"haystack file {path} does not exist or is not a file")
    stat = path.stat()
    return _file_sentences(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


class SentenceStream:
    """An endless, deterministic sequence of filler sentences for one sample; `take(n)` returns the first n."""

    def __init__(self, split: str, seed_key: str, path: str | Path | None = None):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        rng = random.Random(f"{seed_key}|haystack")
        if path is not None:
            sentences = load_sentences(path)
            start = rng.randrange(len(sentences))
            self._source = itertools.cycle(sentences[start:] + sentences[:start])
        elif split == "train":
            self._source = itertools.cycle(NOISE)
        else:
            self._source = (_varied_sentence(rng) for _ in itertools.count())
        self._sentences: list[str] = []

    def take(self, n: int) -> list[str]:
        if n > len(self._sentences):
            self._sentences.extend(itertools.islice(self._source, n - len(self._sentences)))
        return self._sentences[:n]


def insert_needles(sentences: list[str], needles: list[tuple[float, str]]) -> str:
    """Join sentences with spaces, each (depth, needle) at the sentence boundary nearest to depth x haystack chars."""
    starts = [0, *itertools.accumulate(len(s) + 1 for s in sentences)]  # char offset where each sentence starts
    slots: list[list[str]] = [[] for _ in starts]
    for depth, needle in sorted(needles, key=lambda item: item[0]):
        target = depth * starts[-1]
        k = min(bisect.bisect_left(starts, target), len(starts) - 1)
        if k > 0 and target - starts[k - 1] < starts[k] - target:
            k -= 1
        slots[k].append(needle)
    pieces = [piece for i, slot in enumerate(slots) for piece in (*slot, *sentences[i:i + 1])]
    return " ".join(pieces)
