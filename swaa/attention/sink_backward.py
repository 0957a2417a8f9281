"""The sink keys' share of the gradients of SWA rows in one Triton pass: each query row i >= W attends the sink keys
j < S left of its window (j <= i - W); given the merged output and log-sum-exp, the pass adds that share to dq, dk, dv
(the fa4 backend's backward; its forward has the sinks inside FA4's call, swaa.attention.fa4_blocks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch parameters chosen by `python -m swaa.bench sinks` on an H100 (BENCHMARKS.md). BLOCK: query rows per step of
# a program's loop; ROWS: query rows per program, over which its dk, dv partial sums stay in registers (at head dim
# 128, 8 warps spill a tenth of what 4 do).
BACKWARD_LAUNCH = {"BLOCK": 64, "ROWS": 2048, "num_warps": 8, "num_stages": 1}


@triton.jit
def _sink_backward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, row_start, row_end,
                          window, sink, scale, sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, so_b, so_l, so_h,
                          sd_b, sd_l, sd_h, sl_b, sl_h, sl_l, sg_b, sg_l, sg_h, sa_b, sa_l, sa_h,
                          HEADS: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
                          BLOCK: tl.constexpr, ROWS: tl.constexpr):
    b, h = tl.program_id(1) // HEADS, tl.program_id(1) % HEADS
    kv = h // GROUP
    cols, dims = tl.arange(0, BLOCK_S), tl.arange(0, D)
    has = (cols < sink)[:, None]
    k = tl.load(k_ptr + b * sk_b + kv * sk_h + cols[:, None] * sk_l + dims[None, :], mask=has, other=0.0)
    v = tl.load(v_ptr + b * sv_b + kv * sv_h + cols[:, None] * sv_l + dims[None, :], mask=has, other=0.0)
    dk = tl.zeros((BLOCK_S, D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_S, D), dtype=tl.float32)
    first = row_start + tl.program_id(0) * ROWS
    for step in range(0, ROWS, BLOCK):
        rows = first + step + tl.arange(0, BLOCK)
        live = rows < row_end
        r, c = rows[:, None], dims[None, :]
        q = tl.load(q_ptr + b * sq_b + h * sq_h + r * sq_l + c, mask=live[:, None], other=0.0)
        do = tl.load(do_ptr + b * sd_b + h * sd_h + r * sd_l + c, mask=live[:, None], other=0.0)
        o = tl.load(o_ptr + b * so_b + h * so_h + r * so_l + c, mask=live[:, None], other=0.0)
        lse = tl.load(lse_ptr + b * sl_b + h * sl_h + rows * sl_l, mask=live, other=0.0)
        seen = (cols[None, :] < sink) & (cols[None, :] <= rows[:, None] - window) & live[:, None]
        p = tl.where(seen, tl.exp(tl.dot(q, tl.trans(k)) * scale - lse[:, None]), 0.0)  # within the whole row
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq_ptrs = dq_ptr + b * sg_b + h * sg_h + r * sg_l + c
        dq = tl.load(dq_ptrs, mask=live[:, None], other=0.0).to(tl.float32) + tl.dot(ds.to(k.dtype), k) * scale
        tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=live[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q)
        dv += tl.dot(tl.trans(p).to(do.dtype), do)
    acc = b * sa_b + kv * sa_h + cols[:, None] * sa_l + dims[None, :]
    tl.atomic_add(dk_ptr + acc, dk * scale, mask=has)
    tl.atomic_add(dv_ptr + acc, dv, mask=has)


def sink_backward_(q, k, v, out, d_out, lse, dq, dk, dv, rows: tuple[int, int], window: int, sink: int,
                   scale: float, launch: dict | None = None) -> None:
    """Add the sink keys' share of the gradients of rows [a, b) to dq (B, L, Hq, D) and dk, dv (B, Lk, Hkv, D), in
    place, given the merged `out` and `lse` (B, Hq, L) and d_out (B, L, Hq, D); q (B, L, Hq, D), k/v (B, Lk, Hkv, D),
    each with unit stride in D, D a power of two >= 16; `launch` instead of BACKWARD_LAUNCH."""
    a, b = rows
    batch, _, heads, d = q.shape
    sink = min(sink, k.shape[1])
    if b <= a:
        return
    _check_head_dim(d, q, k, v, out, d_out, dq)
    acc = torch.zeros(batch, sink, k.shape[2], d, device=q.device, dtype=torch.float32)
    acc_v = torch.zeros_like(acc)
    launch = launch or BACKWARD_LAUNCH
    grid = (triton.cdiv(b - a, launch["ROWS"]), batch * heads)
    _sink_backward_kernel[grid](q, k, v, out, d_out, lse, dq, acc, acc_v, a, b, window, sink, scale,
                                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                                *d_out.stride()[:3], *lse.stride(), *dq.stride()[:3], *acc.stride()[:3],
                                HEADS=heads, GROUP=heads // k.shape[2], D=d,
                                BLOCK_S=max(16, triton.next_power_of_2(sink)), **launch)
    dk[:, :sink] += acc.to(dk.dtype)
    dv[:, :sink] += acc_v.to(dv.dtype)


def takes_head_dim(d: int) -> bool:
    """Whether the kernels' tiles take head dimension d: a power of two >= 16."""
    return d >= 16 and not d & (d - 1)


def _check_head_dim(d: int, *tensors: torch.Tensor) -> None:
    """Refuse what the kernels' tiles cannot take: a head dim `takes_head_dim` refuses, or strided rows."""
    if not takes_head_dim(d) or any(t.stride(-1) != 1 for t in tensors):
        raise ValueError(f"sink kernels: head dim must be a power of two >= 16 with unit stride, got {d}")
