"""Self-distillation: records match generate_answers, resume skips finished prompts, crash leftovers dropped."""

import json
import re

import pytest

from conftest import tiny_model
from swaa.data.chat import normalize_record
from swaa.data.distill import distill, main, read_prompts
from swaa.generation import generate_answers

PROMPTS = ["hi", "What is the pass key?", "a b c d e f g", "x", "Tell me a story about a cat."]


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return tiny_model(vocab_size=len(smollm2_tokenizer))


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    records = [{"prompt": p} for p in PROMPTS[:4]]
    records.append({"conversations": [{"from": "human", "value": "earlier"}, {"from": "gpt", "value": "ok"},
                                      {"from": "human", "value": PROMPTS[4]}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_out(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_read_prompts(prompt_file, tmp_path):
    assert read_prompts(prompt_file) == PROMPTS
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 0 has fields \['question'\]"):
        read_prompts(bad)


def test_distill_writes_sft_records(model, smollm2_tokenizer, prompt_file, tmp_path):
    out = tmp_path / "out" / "answers.jsonl"
    assert distill(model, smollm2_tokenizer, read_prompts(prompt_file), out, batch_size=2, max_new_tokens=4) == 5
    records = read_out(out)
    assert [r["index"] for r in records] == list(range(5))
    assert [r["response"] for r in records] == generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=4)
    assert [normalize_record(r, str(out))[0]["content"] for r in records] == PROMPTS
    assert distill(model, smollm2_tokenizer, PROMPTS, out, batch_size=2, max_new_tokens=4) == 0
    assert len(read_out(out)) == 5


def test_resume_after_crash_keeps_done_lines_and_drops_a_torn_one(model, smollm2_tokenizer, tmp_path):
    out = tmp_path / "answers.jsonl"
    done = [{"index": i, "prompt": PROMPTS[i], "response": "kept"} for i in (0, 3)]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"index": 1, "prompt": "What is')
    assert distill(model, smollm2_tokenizer, PROMPTS, out, batch_size=2, max_new_tokens=4) == 3
    records = read_out(out)
    assert records[:2] == done
    assert sorted(r["index"] for r in records) == list(range(5))
    assert all(r["response"] != "kept" for r in records[2:])


def test_resume_refuses_an_output_of_other_prompts(model, smollm2_tokenizer, tmp_path):
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"index": 0, "prompt": "something else", "response": "r"}) + "\n")
    with pytest.raises(ValueError, match="line 1: index 0 does not match the prompt file"):
        distill(model, smollm2_tokenizer, PROMPTS, out)


@pytest.mark.parametrize("extra, message", [
    (["--swaa-preset", "no_such_preset"], "unknown SWAA preset 'no_such_preset'"),
    (["--batch-size", "-1"], r"--batch-size=-1: expected an int >= 1"),  # wrote nothing and said "wrote 5 records"
    (["--max-new-tokens", "0"], r"--max-new-tokens=0: expected an int >= 1"),
    (["--device", "cuda:x"], r"--device='cuda:x': expected a torch device"),
    (["--model", "/no/such/model"], "--model /no/such/model: expected a Hugging Face folder with config.json"),
    (["--model", "tiny:llama:0:10"], r"--model='tiny:llama:0:10': need layers >= 1 and vocab >= 2"),
])
def test_cli_rejects_bad_input_in_one_line_before_writing(prompt_file, tmp_path, capsys, extra, message):
    out = tmp_path / "o.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["--model", "default", "--prompts", str(prompt_file), "--out", str(out), *extra])
    assert exc.value.code == 2 and re.search(message, capsys.readouterr().err) and not out.exists()


def test_cli_names_a_damaged_output_line(prompt_file, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text('{"index": 0, "prompt": "hi", "response": "r"}\nnot json\n{"index": 2}\n')
    with pytest.raises(SystemExit):
        main(["--model", "default", "--prompts", str(prompt_file), "--out", str(out)])
    assert "o.jsonl line 2: not a record of this tool" in capsys.readouterr().err
