"""Self-distillation (the paper's recipe): the full-attention model answers a prompt file, giving SFT records.

python -m swaa.data.distill --model default --prompts prompts.jsonl --out answers.jsonl [--swaa-preset NAME]
Output lines are {"index", "prompt", "response"}; a rerun skips indices already written (resumable, crash-safe).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from swaa import apply_swaa
from swaa.config import resolve_swaa
from swaa.data.chat import normalize_record, record_fields
from swaa.data.sft import load_records
from swaa.generation import generate_answers
from swaa.files import check_output_path, truncate_torn_tail
from swaa.models import check_device, load_model, load_tokenizer

log = logging.getLogger(__name__)


def read_prompts(path: str | Path) -> list[str]:
    """User prompts of a jsonl/json/parquet/arrow file: `prompt`, or the last user turn of `conversations`."""
    prompts = []
    for i, record in enumerate(load_records(path)):
        if record.get("prompt") is not None:
            prompts.append(record["prompt"])
            continue
        if record.get("conversations") is None and record.get("messages") is None:
            raise ValueError(f"{path}: record {i} has fields {record_fields(record)}; expected 'prompt' or "
                             "'conversations'")
        users = [m["content"] for m in normalize_record(record, str(path)) if m["role"] == "user"]
        if not users:
            raise ValueError(f"{path}: record {i} has no user turn")
        prompts.append(users[-1])
    return prompts


def read_done(out: Path, prompts: list[str]) -> set[int]:
    """Indices already in `out`; drops a truncated last line left by a crash; checks prompts match the input."""
    if not out.exists():
        return set()
    complete = truncate_torn_tail(out)
    done = set()
    for n, line in enumerate(complete.decode().splitlines(), 1):
        try:
            record = json.loads(line)
            i = record["index"]
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{out} line {n}: not a record of this tool ({type(e).__name__}: {e}); use a new --out "
                             "file") from e
        if not 0 <= i < len(prompts) or prompts[i] != record["prompt"]:
            raise ValueError(f"{out} line {n}: index {i} does not match the prompt file; use a new --out file")
        done.add(i)
    return done


def distill(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], out: str | Path,
            batch_size: int = 8, max_new_tokens: int = 512) -> int:
    """Append {"index", "prompt", "response"} for every prompt not yet in `out`; returns how many were written."""
    out = Path(out)
    done = read_done(out, prompts)
    todo = [i for i in range(len(prompts)) if i not in done]
    log.info("%d prompts, %d already answered in %s, %d to go", len(prompts), len(done), out, len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="distill") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            answers = generate_answers(model, tokenizer, [prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
            for i, answer in zip(batch, answers):
                f.write(json.dumps({"index": i, "prompt": prompts[i], "response": answer}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(batch))
    return len(todo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face folder, .gguf file, or 'default' (SmolLM2)")
    parser.add_argument("--prompts", required=True, help="jsonl/json/parquet/arrow with `prompt` or `conversations`")
    parser.add_argument("--out", required=True, help="output jsonl of SFT records (appended to; resumable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--swaa-preset", default=None,
                        help="generate under this bundled SWAA preset (swaa/presets.yaml)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            parser.error(f"{flag}={value}: expected an int >= 1")
    try:
        swaa = None if args.swaa_preset is None else resolve_swaa(args.swaa_preset, where="--swaa-preset")
        check_device(args.device, "--device")
        check_output_path(args.out, "--out")
        path = None if args.model == "default" else args.model
        prompts = read_prompts(args.prompts)
        model, tokenizer = load_model(path, device=args.device, where="--model"), load_tokenizer(path, "--model")
        if swaa is not None:
            apply_swaa(model, swaa)
        written = distill(model, tokenizer, prompts, args.out, args.batch_size, args.max_new_tokens)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print(f"swaa.data.distill: interrupted; the answers so far are in {args.out}; run the same command again to "
              "resume", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    print(f"wrote {written} records to {args.out}")


if __name__ == "__main__":
    main()
