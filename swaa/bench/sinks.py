"""Launch parameters of the sink pass (swaa.attention.sink_merge, the fa4 backend's sinks): every candidate of its
forward and backward kernels, checked against float64 on a short sequence, then timed alone at --length (Qwen3-4B
heads, bf16) with its share of a device-to-device copy's bandwidth; sink_merge.py launches the fastest."""

from __future__ import annotations

import argparse
import itertools
import logging

import torch

from swaa.bench.common import int_at_least, relative_error, run_metadata, write_results
from swaa.files import check_output_path
from swaa.timing import min_median, warm_then_time

log = logging.getLogger(__name__)

WARMUPS = 3
TOLERANCE = 2e-2  # bf16 inputs against float64
CHECK_TOKENS, CHECK_WINDOW = 1024, 256
FORWARD_SPACE = [{"BLOCK": b, "num_warps": w, "num_stages": s}
                 for b, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2, 3))]
BACKWARD_SPACE = [{"BLOCK": b, "ROWS": r, "num_warps": w, "num_stages": s}
                  for b, w in ((32, 8), (32, 16), (64, 4), (64, 8), (64, 16), (128, 16))
                  for s in (1, 2, 3) for r in (512, 1024, 2048)]


def sink_reference(q, k, v, d_out, window: int, sink: int, scale: float) -> dict[str, tuple]:
    """Float64 attention of q (1, n, Hq, D) over k/v (1, n, Hkv, D): 'window' (out, lse) within the window alone,
    'merged' (out, lse) with the sink keys too, and 'grads' the sink keys' share of (dq, dk, dv) given d_out."""
    q, k, v, d_out = (t.double() for t in (q, k, v, d_out))
    n, group = q.shape[1], q.shape[2] // k.shape[2]
    kk, vv = (t.repeat_interleave(group, 2) for t in (k, v))
    scores = torch.einsum("blhd,bkhd->bhlk", q, kk) * scale
    i, j = torch.arange(n, device=q.device)[:, None], torch.arange(n, device=q.device)[None]
    band, sinks = (j <= i) & (j > i - window), (j < sink) & (j <= i - window)

    def attend(mask):
        lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), -1)
        p = torch.exp(scores - lse[..., None]) * mask
        return torch.einsum("bhlk,bkhd->blhd", p, vv), lse

    out, lse = attend(band | sinks)
    p = torch.exp(scores - lse[..., None]) * sinks  # the sink keys' probabilities within the whole row
    delta = (d_out * out).sum(-1).transpose(1, 2)
    ds = p * (torch.einsum("blhd,bkhd->bhlk", d_out, vv) - delta[..., None])
    per_group = lambda t: t.unflatten(2, (k.shape[2], group)).sum(3)[:, :sink]  # noqa: E731
    grads = (torch.einsum("bhlk,bkhd->blhd", ds, kk) * scale, per_group(torch.einsum("bhlk,blhd->bkhd", ds, q)) * scale,
             per_group(torch.einsum("bhlk,blhd->bkhd", p, d_out)))
    return {"window": attend(band), "merged": (out, lse), "grads": grads}


def _inputs(n: int, hq: int, hkv: int, d: int, dtype, device, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v, d_out (1, n, H, D) drawn at random."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, n, h, d, generator=g, device=device, dtype=dtype) for h in (hq, hkv, hkv, hq)]


def check_error(kernel: str, launch: dict, sink: int, hq: int, hkv: int, d: int, dtype, device,
                n: int = CHECK_TOKENS, window: int = CHECK_WINDOW) -> float:
    """Largest relative error against `sink_reference` of one kernel ('forward': merged out and lse; 'backward': the
    sink share of dq, dk, dv) under `launch`, on n random tokens."""
    from swaa.attention.sink_merge import sink_backward_, sink_merge_
    q, k, v, d_out = _inputs(n, hq, hkv, d, dtype, device, seed=1)
    scale = d ** -0.5
    ref = sink_reference(q, k, v, d_out, window, sink, scale)
    if kernel == "forward":
        out, lse = ref["window"][0].to(dtype).contiguous(), ref["window"][1].float()
        sink_merge_(q, k, v, out, lse, (window, n), window, sink, scale, launch)
        return max(relative_error(out, ref["merged"][0]), relative_error(lse, ref["merged"][1]))
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


def fewest_bytes(kernel: str, rows: int, hq: int, d: int, itemsize: int) -> int:
    """Bytes each kernel must move for `rows` query rows: forward reads q and the window output and writes it back,
    with the float32 lse; backward reads q, out, d_out and dq, writes dq, and reads lse (sink keys: negligible)."""
    tiles = 3 if kernel == "forward" else 5
    return rows * hq * (tiles * d * itemsize + (8 if kernel == "forward" else 4))


def bench(length: int, window: int, sink: int, repeats: int, hq=32, hkv=8, d=128, dtype=torch.bfloat16,
          device=torch.device("cuda"), copy_bytes: int = 2 ** 30) -> list[dict]:
    """One row per (kernel, launch candidate): float64 check error, then (when it passes) min / median ms, GB/s and
    the fraction of a device copy's bandwidth."""
    from swaa.attention.sink_merge import sink_backward_, sink_merge_
    bandwidth = copy_gbps(device, repeats, copy_bytes)
    q, k, v, d_out = _inputs(length, hq, hkv, d, dtype, device)
    out = torch.randn_like(q)
    lse = (torch.randn(1, hq, length, device=device) + float(window)).log()  # about log(window), as a window call's
    dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
    scale, rows = d ** -0.5, (window, length)
    calls = {"forward": lambda p: sink_merge_(q, k, v, out, lse, rows, window, sink, scale, p),
             "backward": lambda p: sink_backward_(q, k, v, out, d_out, lse, dq, dk, dv, rows, window, sink, scale, p)}
    results = []
    for kernel, space in (("forward", FORWARD_SPACE), ("backward", BACKWARD_SPACE)):
        moved = fewest_bytes(kernel, length - window, hq, d, q.element_size())
        for launch in space:
            row = {"kernel": kernel, **launch}
            try:
                row["rel_error"] = check_error(kernel, launch, sink, hq, hkv, d, dtype, device)
                if not row["rel_error"] < TOLERANCE:
                    raise ValueError(f"relative error {row['rel_error']:.2e} against float64")
                times = min_median("ms", warm_then_time(lambda: calls[kernel](launch), device, repeats, WARMUPS))
            except Exception as e:  # out of shared memory or a failed check: reported, the other candidates still run
                log.warning("%s %s: not timed (%s)", kernel, launch, e)
                results.append({**row, "status": f"FAILED: {type(e).__name__}: {str(e)[:200]}"})
                continue
            gbps = moved / times["ms"] / 1e6
            results.append({**row, "status": "ok", **times, "gbps": gbps, "of_copy": gbps / bandwidth,
                            "copy_gbps": bandwidth})
            log.info("%s", results[-1])
    return results


def markdown(rows: list[dict], current: dict[str, dict]) -> str:
    """Per kernel, the timed candidates fastest first (the launch sink_merge.py uses marked), then the failures."""
    lines = ["| kernel | BLOCK | ROWS | warps | stages | rel. error vs fp64 | ms min / median | GB/s | of copy |",
             "|---" * 9 + "|"]
    for kernel in ("forward", "backward"):
        ok = sorted((r for r in rows if r["kernel"] == kernel and r["status"] == "ok"), key=lambda r: r["ms"])
        for r in ok:
            mark = " (current)" if all(r[key] == value for key, value in current[kernel].items()) else ""
            lines.append(f"| {kernel}{mark} | {r['BLOCK']} | {r.get('ROWS', '-')} | {r['num_warps']} | "
                         f"{r['num_stages']} | {r['rel_error']:.1e} | {r['ms_min']:.3f} / {r['ms']:.3f} | "
                         f"{r['gbps']:.0f} | {r['of_copy']:.2f} |")
    failed = [f"{r['kernel']} {({k: v for k, v in r.items() if k not in ('kernel', 'status')})}: {r['status']}"
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
    from swaa.attention.sink_merge import BACKWARD_LAUNCH, FORWARD_LAUNCH
    rows = bench(args.length, args.window, args.sink, args.repeats)
    meta = run_metadata(torch.device("cuda"), args.command, length=args.length, window=args.window, sink=args.sink,
                        heads="32q/8kv", head_dim=128, dtype="bf16", repeats=args.repeats, warmups=WARMUPS,
                        current={"forward": FORWARD_LAUNCH, "backward": BACKWARD_LAUNCH})
    print(markdown(rows, meta["current"]))
    write_results(args.out, meta, rows)
