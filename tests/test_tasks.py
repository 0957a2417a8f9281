"""Synthetic long-context tasks: determinism, answers in the prompt, needle depth, prompt length, split disjointness."""

import collections
import re

import pytest

from swaa.tasks.generators import SIMILAR_KEY_WORDINGS, TASKS, make_samples, train_answer
from swaa.tasks.haystack import NOISE, SentenceStream, insert_needles, word_pool
from swaa.tasks.scorers import SCORERS


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_registry_has_all_tasks_and_variants():
    for base in ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"):
        assert {base, f"{base}:words", f"{base}:uuids"} <= set(TASKS)
    assert {"passkey", "kv_retrieval", "variable_tracking", "common_words", "niah_similar",
            "niah_similar_story"} <= set(TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_answers_present_length_fits(task, smollm2_tokenizer):
    first = make_samples(task, 3, 1024, smollm2_tokenizer, seed=1)
    assert first == make_samples(task, 3, 1024, smollm2_tokenizer, seed=1)
    assert [s.prompt for s in first] != [s.prompt for s in make_samples(task, 3, 1024, smollm2_tokenizer, seed=2)]
    assert len({s.prompt for s in first}) == 3
    for sample in first:
        assert sample.id == f"{task}-1024-eval-s1-{first.index(sample)}"
        assert sample.scorer in SCORERS and sample.answers and sample.length == 1024
        assert all(answer in sample.prompt for answer in sample.answers)
        assert 0.9 * 1024 <= n_tokens(smollm2_tokenizer, sample.prompt) <= 1024
        assert SCORERS[sample.scorer](train_answer(sample), sample.answers, None) == 1.0


@pytest.mark.parametrize("length", [512, 3000, 8192, 32768])
@pytest.mark.parametrize("task", ["passkey", "niah_multivalue:uuids", "kv_retrieval", "common_words"])
def test_prompt_length_in_range(task, length, smollm2_tokenizer):
    for sample in make_samples(task, 2, length, smollm2_tokenizer, split="train"):
        assert 0.9 * length <= n_tokens(smollm2_tokenizer, sample.prompt) <= length


def test_fitting_a_length_takes_few_tokenizations(smollm2_tokenizer):
    """The fitting loop's cost is its tokenizer calls: about 3 per 8k sample (secant steps), not one per filler unit."""
    calls = []

    def counting_tokenizer(*args, **kwargs):
        calls.append(1)
        return smollm2_tokenizer(*args, **kwargs)
    make_samples("niah_multikey", 5, 8192, counting_tokenizer)
    assert len(calls) <= 4 * 5


def test_too_short_length_is_an_error(smollm2_tokenizer):
    with pytest.raises(ValueError, match="length 40 is too short"):
        make_samples("kv_retrieval", 1, 40, smollm2_tokenizer)


def _context(prompt: str) -> str:
    intro, context, question = prompt.split("\n\n")
    return context


@pytest.mark.parametrize("task", ["passkey", "niah_single:words", "niah_multikey", "variable_tracking",
                                  "niah_similar"])
def test_first_needle_at_stated_depth(task, smollm2_tokenizer):
    samples = make_samples(task, 11, 4096, smollm2_tokenizer)
    for sample in samples:
        context = _context(sample.prompt)
        if task == "variable_tracking":
            needle = f"VAR {sample.answers[0]} ="
        else:
            needle = sample.answers[0]
        position = context.index(needle) / len(context)
        assert abs(position - sample.depth) < 0.03, (sample.id, position, sample.depth)
    if task in ("passkey", "niah_single:words"):  # single needles spread evenly over 0..1
        assert [s.depth for s in samples] == [i / 10 for i in range(11)]


def test_kv_query_at_stated_depth(smollm2_tokenizer):
    for sample in make_samples("kv_retrieval", 11, 8192, smollm2_tokenizer):
        json_text = sample.prompt.split("JSON data:\n")[1].split("\n\n")[0]
        query_line = next(line for line in json_text.splitlines() if sample.answers[0] in line)
        assert abs(json_text.index(query_line) / len(json_text) - sample.depth) < 0.03


def test_multi_needle_tasks(smollm2_tokenizer):
    multivalue = make_samples("niah_multivalue", 1, 2048, smollm2_tokenizer)[0]
    assert len(set(multivalue.answers)) == 4 and multivalue.scorer == "all_of"
    assert all(re.fullmatch(r"\d{7}", a) for a in multivalue.answers)
    key = re.search(r"special magic numbers for (\S+) mentioned", multivalue.prompt).group(1)
    assert multivalue.prompt.count(f"for {key} is:") == 4
    multikey = make_samples("niah_multikey:uuids", 1, 2048, smollm2_tokenizer)[0]
    assert multikey.prompt.count("One of the special magic uuids for") == 4 and len(multikey.answers) == 1
    multiquery = make_samples("niah_multiquery:words", 1, 2048, smollm2_tokenizer)[0]
    assert len(multiquery.answers) == 4 and all("-" in a for a in multiquery.answers)


def _needles(task: str, prompt: str) -> dict[str, tuple[str, int]]:
    """key -> (value, start of the needle in the prompt) for a similar-key task's needles."""
    pattern = re.escape(SIMILAR_KEY_WORDINGS[task].needle).replace(r"\{key\}", r"(\w+ \w+)")
    pattern = pattern.replace(r"\{value\}", r"(\d+)")
    return {m.group(1): (m.group(2), m.start()) for m in re.finditer(pattern, prompt)}


@pytest.mark.parametrize("length", [4096, 7680])
@pytest.mark.parametrize("task", list(SIMILAR_KEY_WORDINGS))
def test_similar_key_distractors_and_their_side_of_the_window(task, length, smollm2_tokenizer):
    """The answer is the asked key's value; each distractor shares one word with that key and has another value; even
    samples put the true needle over 1024 tokens before the end and a distractor within the last 512, odd ones the
    other way round."""
    wording = SIMILAR_KEY_WORDINGS[task]
    samples = make_samples(task, 4, length, smollm2_tokenizer, seed=5)
    assert samples == make_samples(task, 4, length, smollm2_tokenizer, seed=5)
    for index, sample in enumerate(samples):
        asked = re.search(re.escape(wording.question).replace(r"\{key\}", r"(\w+ \w+)"), sample.prompt).group(1)
        needles = _needles(task, sample.prompt)
        assert len(needles) == 4 and len({value for value, _ in needles.values()}) == 4
        assert sample.answers == [needles[asked][0]] and len(sample.answers[0]) == wording.digits
        assert SCORERS[sample.scorer](f"{sample.answers[0]}.", sample.answers, None) == 1.0
        for key, (value, _) in needles.items():
            if key != asked:
                assert len(set(key.split()) & set(asked.split())) == 1, (key, asked)
                assert SCORERS[sample.scorer](value, sample.answers, None) == 0.0

        def tokens_after(position: int) -> int:
            return n_tokens(smollm2_tokenizer, sample.prompt[position:])
        needle_length = n_tokens(smollm2_tokenizer, wording.needle.format(key=asked, value=sample.answers[0]))
        true_start = needles[asked][1]
        distractor_starts = [start for key, (_, start) in needles.items() if key != asked]
        if index % 2 == 0:
            assert tokens_after(true_start) - needle_length > 1024
            assert min(tokens_after(start) for start in distractor_starts) < 512
        else:
            assert tokens_after(true_start) < 512
            assert max(tokens_after(start) for start in distractor_starts) - needle_length > 1024
        assert 0.9 * length <= n_tokens(smollm2_tokenizer, sample.prompt) <= length


def test_held_out_similar_key_task_has_its_own_wording(smollm2_tokenizer):
    """No fixed phrase (3+ words) of one task's intro, needle or question occurs in the other's prompts, and the key
    words are the task's own: disjoint from the other task's and from the filler's."""
    train, held_out = SIMILAR_KEY_WORDINGS["niah_similar"], SIMILAR_KEY_WORDINGS["niah_similar_story"]
    for task, wording, other in [("niah_similar", train, held_out), ("niah_similar_story", held_out, train)]:
        prompt = make_samples(task, 1, 1024, smollm2_tokenizer)[0].prompt
        phrases = [phrase.strip() for text in (other.intro, other.needle, other.question)
                   for phrase in re.split(r"\{key\}|\{value\}|(?<=[.?;])\s", text) if len(phrase.split()) >= 3]
        assert len(phrases) >= 5 and not [phrase for phrase in phrases if phrase in prompt]
        assert not set(wording.first + wording.second) & set(other.first + other.second)
        assert not set(wording.first + wording.second) & set(word_pool())


def test_variable_tracking_chain_resolves(smollm2_tokenizer):
    sample = make_samples("variable_tracking", 1, 2048, smollm2_tokenizer, seed=3)[0]
    value = re.search(r"assigned the value (\d+)", sample.prompt).group(1)
    assignments = dict(re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", sample.prompt))

    def resolve(name: str) -> str:
        return resolve(assignments[name]) if assignments[name] in assignments else assignments[name]

    assert sorted(name for name in assignments if resolve(name) == value) == sorted(sample.answers)
    assert len(assignments) == 10  # two chains of five variables


@pytest.mark.parametrize("length", [512, 8192])
def test_common_words_are_the_most_frequent(length, smollm2_tokenizer):
    sample = make_samples("common_words", 1, length, smollm2_tokenizer)[0]
    listing = sample.prompt.split("\n")[1]
    counts = collections.Counter(re.findall(r"\d+\. (\w+)", listing))
    assert len(sample.answers) == 10
    assert min(counts[w] for w in sample.answers) > max(c for w, c in counts.items() if w not in sample.answers)


@pytest.mark.parametrize("task", ["passkey", "niah_single"])
def test_splits_are_disjoint(task, smollm2_tokenizer):
    prompts = {split: {s.prompt for s in make_samples(task, 200, 512, smollm2_tokenizer, split=split)}
               for split in ("train", "val", "eval")}
    assert not prompts["train"] & prompts["val"] and not prompts["train"] & prompts["eval"]
    assert not prompts["val"] & prompts["eval"]


def test_haystacks_differ_between_train_and_eval(smollm2_tokenizer):
    train = _context(make_samples("niah_single", 1, 1024, smollm2_tokenizer, split="train")[0].prompt)
    evaluation = _context(make_samples("niah_single", 1, 1024, smollm2_tokenizer, split="eval")[0].prompt)
    assert NOISE[0] in train and not any(sentence in evaluation for sentence in NOISE)
    assert not re.search(r"\d", re.sub(r"\d{7}", "", evaluation))  # no digits in the filler to confuse answers


def test_user_haystack_file(tmp_path, smollm2_tokenizer):
    text = "Alpha beta gamma delta. " * 3 + "A single very long sentence " + "word " * 100 + "ends here! Short one?"
    path = tmp_path / "story.txt"
    path.write_text(text)
    sample = make_samples("passkey", 1, 1024, smollm2_tokenizer, haystack=path)[0]
    assert "Alpha beta gamma delta." in sample.prompt and "grass" not in sample.prompt
    assert 0.9 * 1024 <= n_tokens(smollm2_tokenizer, sample.prompt) <= 1024
    assert make_samples("passkey", 1, 1024, smollm2_tokenizer, haystack=path) == [sample]


def test_bad_haystack_files(tmp_path, smollm2_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n ")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        make_samples("passkey", 1, 512, smollm2_tokenizer, haystack=empty)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        make_samples("passkey", 1, 512, smollm2_tokenizer, haystack=tmp_path / "nope.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="binary.txt: cannot read"):
        make_samples("passkey", 1, 512, smollm2_tokenizer, haystack=binary)


def test_bad_arguments(smollm2_tokenizer):
    with pytest.raises(ValueError, match="^task niah_single:colors: unknown task; choose from .*niah_multikey:uuids"):
        make_samples("niah_single:colors", 1, 512, smollm2_tokenizer)
    with pytest.raises(ValueError, match="split 'test'"):
        make_samples("passkey", 1, 512, smollm2_tokenizer, split="test")
    with pytest.raises(ValueError, match="split 'dev'"):
        SentenceStream("dev", "x")


def test_insert_needles_places_by_depth():
    sentences = [f"Sentence {i}." for i in range(10, 30)]  # equal lengths
    text = insert_needles(sentences, [(0.5, "MID"), (0.0, "START"), (1.0, "END")])
    words = text.split(" ")
    assert words[0] == "START" and words[-1] == "END" and words[len(words) // 2] == "MID"
    assert insert_needles([], [(0.3, "ONLY")]) == "ONLY"


def test_train_answer_joins_answers(smollm2_tokenizer):
    sample = make_samples("niah_multivalue", 1, 1024, smollm2_tokenizer)[0]
    assert train_answer(sample) == ", ".join(sample.answers)
