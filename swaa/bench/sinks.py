"""Launch parameters of the sink keys' backward pass (swaa.attention.sink_backward, the fa4 backend's): every
candidate checked against float64 on a short sequence, then timed alone at --length (Qwen3-4B heads, bf16) with its
share of a device-to-device copy's bandwidth; sink_backward.py launches the fastest."""

from __future__ import annotations

import argparse
import logging

import torch

from swaa.bench.common import int_at_least, relative_error, run_metadata, write_results
from swaa.files import check_output_path
from swaa.timing import min_median, warm_then_time

log = logging.getLogger(__name__)

WARMUPS = 3
TOLERANCE = 2e-2  # bf16 inputs against float64
CHECK_TOKENS, CHECK_WINDOW = 1024, 256
BACKWARD_SPACE = [{"BLOCK": b, "ROWS": r, "num_warps": w, "num_stages": s}
                  for b, w in ((32, 8), (32, 16), (64, 4), (64, 8), (64, 16), (128, 16))
                  for s in (1, 2, 3) for r in (512, 1024, 2048)]


def sink_reference(q, k, v, d_out, window: int, sink: int, scale: float) -> dict[str, tuple]:
    """Float64 attention of q (1, n, Hq, D) over k/v (1, n, Hkv, D) with the window and sink keys: 'merged' its
    (out, lse), and 'grads' the sink keys' share of (dq, dk, dv) given d_out."""
    q, k, v, d_out = (t.double() for t in (q, k, v, d_out))
    n, group = q.shape[1], q.shape[2] // k.shape[2]
    kk, vv = (t.repeat_interleave(group, 2) for t in (k, v))
    scores = torch.einsum("blhd,bkhd->bhlk", q, kk) * scale
    i, j = torch.arange(n, device=q.device)[:, None], torch.arange(n, device=q.device)[None]
    band, sinks = (j <= i) & (j > i - window), (j < sink) & (j <= i - window)

    lse = torch.logsumexp(scores.masked_fill(~(band | sinks), float("-inf")), -1)
    out = torch.einsum("bhlk,bkhd->blhd", torch.exp(scores - lse[..., None]) * (band | sinks), vv)
    p = torch.exp(scores - lse[..., None]) * sinks  # the sink keys' probabilities within the whole row
    delta = (d_out * out).sum(-1).transpose(1, 2)
    ds = p * (torch.einsum("blhd,bkhd->bhlk", d_out, vv) - delta[..., None])
    per_group = lambda t: t.unflatten(2, (k.shape[2], group)).sum(3)[:, :sink]  # noqa: E731
    grads = (torch.einsum("bhlk,bkhd->blhd", ds, kk) * scale, per_group(torch.einsum("bhlk,blhd->bkhd", ds, q)) * scale,
             per_group(torch.einsum("bhlk,blhd->bkhd", p, d_out)))
    return {"merged": (out, lse), "grads": grads}


def _inputs(n: int, hq: int, hkv: int, d: int, dtype, device, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v, d_out (1, n, H, D) drawn at random."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, n, h, d, generator=g, device=device, dtype=dtype) for h in (hq, hkv, hkv, hq)]


def check_error(launch: dict, sink: int, hq: int, hkv: int, d: int, dtype, device, n: int = CHECK_TOKENS,
                window: int = CHECK_WINDOW) -> float:
    """Largest relative error against `sink_reference` of the pass's sink share of dq, dk, dv under `launch`, on n
    random tokens."""
    from swaa.attention.sink_backward import sink_backward_
    q, k, v, d_out = _inputs(n, hq, hkv, d, dtype, device, seed=1)
    scale = d ** -0.5
    ref = sink_reference(q, k, v, d_out, window, sink, scale)
    out, lse = ref["merged"][0].to(dtype).contiguous(), ref["merged"][1].float()
    grads = [torch.zeros_like(t) for t in (q, k, v)]
    sink_backward_(q, k, v, out, d_out, lse, *grads, (window, n), window, sink, scale, launch)
    return max(relative_error(got, want) for got, want in zip((grads[0], *(g[:, :sink] for g in grads[1:])),
                                                              ref["grads"]))


def copy_gbps(device, repeats: int, nbytes: int = 2 ** 30) -> float:
    """Bandwidth of a device-to-device copy of `nbytes`, bytes read plus written, GB/s (median)."""
    src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    ms = min_median("ms", warm_then_time(lambda: dst.copy_(src), device, repeats, WARMUPS))["ms"]
    return 2 * nbytes / ms / 1e6


def fewest_bytes(rows: int, hq: int, d: int, itemsize: int) -> int:
    """Bytes the pass must move for `rows` query rows: it reads q, out, d_out and dq, writes dq, and reads the float32
    lse (the sink keys: negligible)."""
    return rows * hq * (5 * d * itemsize + 4)


def bench(length: int, window: int, sink: int, repeats: int, hq=32, hkv=8, d=128, dtype=torch.bfloat16,
          device=torch.device("cuda"), copy_bytes: int = 2 ** 30) -> list[dict]:
    """One row per launch candidate: float64 check error, then (when it passes) min / median ms, GB/s and the
    fraction of a device copy's bandwidth."""
    from swaa.attention.sink_backward import sink_backward_
    bandwidth = copy_gbps(device, repeats, copy_bytes)
    q, k, v, d_out = _inputs(length, hq, hkv, d, dtype, device)
    out = torch.randn_like(q)
    lse = (torch.randn(1, hq, length, device=device) + float(window)).log()  # about log(window), as a window call's
    dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
    scale, rows = d ** -0.5, (window, length)
    call = lambda p: sink_backward_(q, k, v, out, d_out, lse, dq, dk, dv, rows, window, sink, scale, p)  # noqa: E731
    moved = fewest_bytes(length - window, hq, d, q.element_size())
    results = []
    for launch in BACKWARD_SPACE:
        row = dict(launch)
        try:
            row["rel_error"] = check_error(launch, sink, hq, hkv, d, dtype, device)
            if not row["rel_error"] < TOLERANCE:
                raise ValueError(f"relative error {row['rel_error']:.2e} against float64")
            times = min_median("ms", warm_then_time(lambda: call(launch), device, repeats, WARMUPS))
        except Exception as e:  # out of shared memory or a failed check: reported, the other candidates still run
            log.warning("%s: not timed (%s)", launch, e)
            results.append({**row, "status": f"FAILED: {type(e).__name__}: {str(e)[:200]}"})
            continue
        gbps = moved / times["ms"] / 1e6
        results.append({**row, "status": "ok", **times, "gbps": gbps, "of_copy": gbps / bandwidth,
                        "copy_gbps": bandwidth})
        log.info("%s", results[-1])
    return results


def markdown(rows: list[dict], current: dict) -> str:
    """The timed candidates fastest first (the launch sink_backward.py uses marked), then the failures."""
    lines = ["| launch | BLOCK | ROWS | warps | stages | rel. error vs fp64 | ms min / median | GB/s | of copy |",
             "|---" * 9 + "|"]
    for r in sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["ms"]):
        mark = "current" if all(r[key] == value for key, value in current.items()) else ""
        lines.append(f"| {mark} | {r['BLOCK']} | {r['ROWS']} | {r['num_warps']} | {r['num_stages']} | "
                     f"{r['rel_error']:.1e} | {r['ms_min']:.3f} / {r['ms']:.3f} | {r['gbps']:.0f} | "
                     f"{r['of_copy']:.2f} |")
    failed = [f"{({k: v for k, v in r.items() if k != 'status'})}: {r['status']}"
              for r in rows if r["status"] != "ok"]
    return "\n".join(lines + failed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int_at_least(1), default=32768)
    parser.add_argument("--window", type=int_at_least(1), default=2048)
    parser.add_argument("--sink", type=int_at_least(1), default=64)
    parser.add_argument("--repeats", type=int_at_least(1), default=20,
                        help=f"timed calls per candidate, after {WARMUPS} warm-ups")
    parser.add_argument("--out", default=None, help="write rows and metadata as JSON here")


def check_args(args: argparse.Namespace) -> None:
    """The job needs a CUDA GPU and Triton, a sequence longer than the window, and a file path for --out."""
    check_output_path(args.out, "--out")
    if args.length <= args.window:
        raise ValueError(f"--length={args.length}: expected more tokens than --window={args.window}")
    if not torch.cuda.is_available():
        raise ValueError("the sinks job needs a CUDA GPU; torch.cuda.is_available() is False here")


def main(args: argparse.Namespace) -> None:
    from swaa.attention.sink_backward import BACKWARD_LAUNCH
    rows = bench(args.length, args.window, args.sink, args.repeats)
    meta = run_metadata(torch.device("cuda"), args.command, length=args.length, window=args.window, sink=args.sink,
                        heads="32q/8kv", head_dim=128, dtype="bf16", repeats=args.repeats, warmups=WARMUPS,
                        current=BACKWARD_LAUNCH)
    print(markdown(rows, meta["current"]))
    write_results(args.out, meta, rows)
