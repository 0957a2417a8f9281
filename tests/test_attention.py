"""Every backend against a float64 attention built from swaa.masks, on random shapes, paddings and configs."""

import importlib.util
import random
import sys
from types import SimpleNamespace

import pytest
import torch

from swaa.attention import BACKENDS, fa4, fa4_blocks
from swaa.attention.fa4 import fa4_unavailable
from swaa.attention.inputs import LayerInputs
from swaa.masks import dense_mask

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
CUDNN = pytest.param("cudnn", marks=pytest.mark.skipif(importlib.util.find_spec("cudnn") is None,
                                                       reason="needs nvidia-cudnn-frontend"))
FA4 = pytest.param("fa4", marks=pytest.mark.skipif(fa4_unavailable() is not None, reason="needs flash-attn-4, sm90+"))


def attention64(q, k, v, mask, scale):
    """Float64 softmax attention with GQA; rows that see nothing give 0. q (B,Hq,Lq,D) -> (B,Lq,Hq,D)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return (probs @ v).transpose(1, 2)


def random_case(rng: random.Random, device, dtype, lq=None, lk=None, d=None):
    """Random batch: left padding, per-row prompt lengths, q_len <= k_len (decode steps), GQA."""
    b, hkv, g, d = rng.randint(1, 3), rng.choice([1, 2]), rng.choice([1, 2, 3]), d or rng.choice([16, 32])
    lk = lk or rng.choice([1, 5, 37, 64, 130, 200])
    lq = lq or rng.choice([lk, lk, 1, min(lk, 3), min(lk, 17)])
    pads = [rng.randint(0, max(0, lk - lq)) if rng.random() < 0.7 else 0 for _ in range(b)]
    valid = torch.ones(b, lk, dtype=torch.bool)
    for row, pad in enumerate(pads):
        valid[row, :pad] = False
    k_pos = torch.where(valid, valid.cumsum(-1) - 1, -1)
    q_pos = k_pos[:, lk - lq:]
    n_real = valid.sum(1)
    prompt_len = torch.tensor([rng.randint(0, int(n)) for n in n_real])
    window = rng.choice([1, 2, 7, 16, 100, 1000])
    sink = rng.choice([0, 0, 1, 3, 16, 300])
    kind = rng.choice(["full", "swa", "swa_fa_decode"])
    gen = torch.Generator().manual_seed(rng.randint(0, 2**31))
    q = torch.randn(b, hkv * g, lq, d, generator=gen)
    k, v = torch.randn(b, hkv, lk, d, generator=gen), torch.randn(b, hkv, lk, d, generator=gen)
    x = LayerInputs(q_pos.to(device), k_pos.to(device), prompt_len.to(device), window, sink, kind, ("all",), {})
    return [t.to(device, dtype) for t in (q, k, v)], x


def call_backend(name, q, k, v, x):
    module = torch.nn.Module()
    module.swaa_layer = SimpleNamespace(runtime=SimpleNamespace(layer_inputs=lambda i, q_, k_: x), layer_idx=0)
    return BACKENDS[name](module, q, k, v, None, scaling=q.shape[-1] ** -0.5)[0]


def check(name, device, dtype, seed, **shape):
    rng = random.Random(seed)
    (q, k, v), x = random_case(rng, device, dtype, **shape)
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
    scale = q.shape[-1] ** -0.5
    want = attention64(q, k, v, mask, scale)
    got = call_backend(name, q, k, v, x).double()
    rows = (x.q_pos >= 0)[..., None, None]  # padding query rows are unspecified
    err = ((got - want).abs() * rows).max().item()
    if dtype == torch.float32:
        assert err < 1e-4, (name, seed, err)
    else:  # at most twice the error of the same computation done by SDPA in low precision, plus a floor
        low = attention64(q.double(), k.double(), v.double(), mask, scale).to(dtype)
        base = ((low.double() - want).abs() * rows).max().item()
        assert err <= 2 * base + 2e-2, (name, seed, err, base)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("name", ["reference", "chunked", "flex"])
def test_backend_matches_float64_cpu(name, seed, monkeypatch):
    monkeypatch.setattr("swaa.attention.chunked.BLOCK", 16)  # several query blocks per random case
    check(name, "cpu", torch.float32, seed)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["reference", "flex", FA4, "flash", CUDNN])
def test_backend_matches_float64_cuda(name, dtype, seed):
    check(name, "cuda", dtype, seed)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["flex", FA4, "flash", CUDNN])
def test_long_sequences_cuda(name, seed):
    check(name, "cuda", torch.bfloat16, seed, lq=2000, lk=2000)


def check_half_gradients(name, seed, lq, lk, d=None):
    """bf16 gradients of q, k, v within 2% (relative norm) of float64 autograd, on a random padded case."""
    rng = random.Random(200 + seed)
    (q, k, v), x = random_case(rng, "cuda", torch.bfloat16, lq=lq or rng.choice([None, 300]), lk=lk, d=d)
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
    rows = (x.q_pos >= 0)[..., None, None].double()
    weight = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=torch.float64, device="cuda",
                         generator=torch.Generator("cuda").manual_seed(seed))
    grads = []
    for half in (True, False):
        leaves = [t.detach().clone().requires_grad_() if half else t.detach().double().requires_grad_()
                  for t in (q, k, v)]
        out = call_backend(name, *leaves, x) if half else attention64(*leaves, mask, q.shape[-1] ** -0.5)
        (out.double() * rows * weight).sum().backward()
        grads.append([t.grad.double() for t in leaves])
    for g_got, g_want in zip(*grads):
        assert (g_got - g_want).norm() <= 2e-2 * g_want.norm() + 1e-6, (name, seed, x.kind, x.window, x.sink)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("name", ["flex", FA4, "flash", CUDNN])
def test_half_precision_gradients_cuda(name, seed):
    """Random paddings and configs, 300 keys, 300 queries or a random short query block."""
    check_half_gradients(name, seed, None, 300)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("name", ["flex", FA4, "flash", CUDNN])
def test_half_precision_gradients_model_head_dims_cuda(name, d):
    """The head dimensions of real models (64: SmolLM2-135M, 128: Qwen3, Llama); the cases above use 16 and 32."""
    for seed in range(4):
        check_half_gradients(name, seed, None, 300, d)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("lq", [1, 3, 17, 63, 64, 65, 128])
@pytest.mark.parametrize("name", ["flex", FA4])
def test_half_precision_gradients_short_queries_cuda(name, lq):
    """Query blocks shorter than the keys (decode-like and tile-edge lengths), with gradients."""
    for seed in range(3):
        check_half_gradients(name, seed, lq, 300)


@pytest.mark.parametrize("name", ["reference", "chunked", "flex"])
def test_gradients_match_float64(name):
    """Gradients of q, k, v against float64 autograd (flex on CPU routes backward to reference)."""
    device = "cuda" if CUDA else "cpu"
    for seed in range(6):
        rng = random.Random(100 + seed)
        (q, k, v), x = random_case(rng, device, torch.float32)
        mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
        rows = (x.q_pos >= 0)[..., None, None].double()
        grads = []
        for low_precision in (True, False):
            leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
            if low_precision:
                out = call_backend(name, *[t.float() for t in leaves], x)
            else:
                out = attention64(*leaves, mask, q.shape[-1] ** -0.5)
            (out.double() * rows).square().sum().backward()
            grads.append([t.grad for t in leaves])
        for g_got, g_want in zip(*grads):
            assert torch.allclose(g_got, g_want, atol=1e-4), (seed, (g_got - g_want).abs().max())


@pytest.mark.parametrize("name", ["flash", "cudnn", "fa4"])
def test_cuda_backends_refuse_cpu(name):
    rng = random.Random(0)
    (q, k, v), x = random_case(rng, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match=f"backend '{name}' needs a CUDA device"):
        call_backend(name, q, k, v, x)


def test_flash_ignores_a_flash_attn_without_the_varlen_kernel(tmp_path, monkeypatch):
    from swaa.attention import flash
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)  # what flash-attn-4 alone installs: a namespace package
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("flash_attn")]:
        monkeypatch.delitem(sys.modules, name)
    flash._dao_flash.cache_clear()
    try:
        assert flash._dao_flash() is None  # PyTorch's bundled kernel then, not an ImportError at the first call
    finally:
        flash._dao_flash.cache_clear()


def test_cudnn_without_its_package_is_a_clear_error(monkeypatch):
    import builtins

    from swaa.attention.cudnn import cudnn_ops
    real_import = builtins.__import__

    def no_cudnn(name, *args, **kwargs):
        if name.startswith("cudnn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_cudnn)
    cudnn_ops.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="pip install nvidia-cudnn-frontend"):
            cudnn_ops()
    finally:
        cudnn_ops.cache_clear()


def varlen_dense(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_left, causal=True):
    """Pure-PyTorch stand-in for the flash varlen kernel (bottom-right aligned causal/window), for CPU tests."""
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[i]:cu_q[i + 1]], k[cu_k[i]:cu_k[i + 1]], v[cu_k[i]:cu_k[i + 1]]
        nq, nk, g = qs.shape[0], ks.shape[0], q.shape[1] // k.shape[1]
        qi = torch.arange(nq)[:, None] + nk - nq
        kj = torch.arange(nk)[None]
        ok = (kj <= qi) if causal else torch.ones(nq, nk, dtype=torch.bool)
        if window_left is not None:
            ok = ok & (qi - kj <= window_left)
        scores = torch.einsum("qhd,khd->hqk", qs, ks.repeat_interleave(g, 1)) * scale
        scores = scores.masked_fill(~ok, float("-inf"))
        lses.append(scores.logsumexp(-1))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vs.repeat_interleave(g, 1)))
    return torch.cat(outs), torch.cat(lses, 1)


def varlen_dense_backward(d_out, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, window_left, causal=True):
    """Stand-in for the FA varlen backward: gradients from the given final out and LSE, like the kernel."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    g = q.shape[1] // k.shape[1]
    for i in range(len(cu_q) - 1):
        (a, b), (c, e) = (int(cu_q[i]), int(cu_q[i + 1])), (int(cu_k[i]), int(cu_k[i + 1]))
        qs, ks, vs = q[a:b], k[c:e].repeat_interleave(g, 1), v[c:e].repeat_interleave(g, 1)
        qi = torch.arange(b - a)[:, None] + (e - c) - (b - a)
        kj = torch.arange(e - c)[None]
        ok = (kj <= qi) if causal else torch.ones(b - a, e - c, dtype=torch.bool)
        if window_left is not None:
            ok = ok & (qi - kj <= window_left)
        scores = (torch.einsum("qhd,khd->hqk", qs, ks) * scale).masked_fill(~ok, float("-inf"))
        p = torch.exp(scores - lse[:, a:b, None])
        d_s = p * (torch.einsum("qhd,khd->hqk", d_out[a:b], vs) - (d_out[a:b] * out[a:b]).sum(-1).T[..., None])
        dq[a:b] = torch.einsum("hqk,khd->qhd", d_s, ks) * scale
        dk[c:e] += (torch.einsum("hqk,qhd->khd", d_s, qs) * scale).unflatten(1, (-1, g)).sum(2)
        dv[c:e] += torch.einsum("hqk,qhd->khd", p, d_out[a:b]).unflatten(1, (-1, g)).sum(2)
    return dq, dk, dv


def split_calls_vs_float64(seed: int, varlen, varlen_bwd):
    """`flash_attention` with the given kernels, and float64 autograd, on one random case: [out, dq, dk, dv] of each
    (out and gradients of a random weighting of the real rows), and the case's LayerInputs."""
    from swaa.attention.flash import flash_attention
    rng = random.Random(seed)
    (q, k, v), x = random_case(rng, "cpu", torch.float64)
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
    rows = (x.q_pos >= 0)[..., None, None].double()
    weight = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed))
    results = []
    for split in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash_attention(*leaves, x, 0.25, varlen=varlen, varlen_bwd=varlen_bwd) if split \
            else attention64(*leaves, mask, 0.25)
        (out * rows * weight).sum().backward()
        results.append([out * rows] + [t.grad for t in leaves])
    return results, x


@pytest.mark.parametrize("seed", range(60))
def test_flash_backward_matches_float64(seed):
    """Gradients of the split calls (window, causal, sink bulk and edge rows) from the merged out/LSE are exact."""
    (got, want), x = split_calls_vs_float64(seed, varlen_dense, varlen_dense_backward)
    for g_got, g_want in zip(got, want):
        assert (g_got - g_want).abs().max() < 1e-9, (seed, x.kind, x.window, x.sink)


def cudnn_dense_stand_in(q, k, v, scale, is_causal, causal_bottom_right, window_left, window_right=-1,
                         return_lse=True):
    """Pure-PyTorch stand-in for torch.ops.cudnn.sdpa_fwd on (B, H, S, D), as its docs define the band: bottom-right
    aligned causal, left bound = visible keys counting the query's own."""
    assert is_causal == causal_bottom_right and window_right == -1 and return_lse
    g, (sq, sk) = q.shape[1] // k.shape[1], (q.shape[2], k.shape[2])
    qi, kj = torch.arange(sq)[:, None] + sk - sq, torch.arange(sk)[None]
    ok = (kj <= qi) if is_causal else torch.ones(sq, sk, dtype=torch.bool)
    if window_left >= 0:
        ok = ok & (qi - kj < window_left)
    scores = (q @ k.repeat_interleave(g, 1).transpose(-1, -2) * scale).masked_fill(~ok, float("-inf"))
    return torch.softmax(scores, -1) @ v.repeat_interleave(g, 1), scores.logsumexp(-1)[..., None]


@pytest.mark.parametrize("seed", range(40))
def test_cudnn_calls_match_float64_with_stand_ins(seed, monkeypatch):
    """The cudnn backend's layouts and band arguments, with the cuDNN op and the flash kernels (ragged batches,
    backward) replaced by exact stand-ins: output and gradients against float64."""
    import swaa.attention.cudnn as cudnn_backend
    monkeypatch.setattr(cudnn_backend, "cudnn_ops", lambda: SimpleNamespace(sdpa_fwd=cudnn_dense_stand_in))
    monkeypatch.setattr(cudnn_backend, "flash_varlen", varlen_dense)
    (got, want), x = split_calls_vs_float64(300 + seed, cudnn_backend.cudnn_varlen, varlen_dense_backward)
    for g_got, g_want in zip(got, want):
        assert (g_got - g_want).abs().max() < 1e-9, (seed, x.kind, x.window, x.sink)


def fa4_stand_in(monkeypatch) -> None:
    """A `flash_attn.cute` whose dense and varlen forwards and `_flash_attn_bwd` are exact stand-ins with FA4's
    argument conventions (window_size (left, right), None = unbounded; causal sets right = 0; LSE (Hq, Tq))."""
    def window(causal, left, right):
        assert causal or right is None, right  # causal sets right = 0; without it a right bound would make a band
        return left

    def forward(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                window_size, return_lse):
        assert return_lse
        return varlen_dense(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                            window(causal, *window_size), causal)

    def backward(q, k, v, out, dout, lse, softmax_scale, causal, *, window_size_left=None, window_size_right=None,
                 cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
        left = window(causal, window_size_left, window_size_right)
        if cu_seqlens_q is not None:
            return varlen_dense_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                         max_seqlen_k, softmax_scale, left, causal)
        (b, lq), lk = q.shape[:2], k.shape[1]  # dense: (B, L, H, D), lse (B, Hq, Lq)
        cu = lambda n: torch.arange(0, (b + 1) * n, n, dtype=torch.int32)  # noqa: E731
        grads = varlen_dense_backward(*(t.flatten(0, 1) for t in (dout, q, k, v, out)),
                                      lse.transpose(0, 1).flatten(1), cu(lq), cu(lk), lq, lk, softmax_scale, left,
                                      causal)
        return tuple(g.unflatten(0, (b, -1)) for g in grads)
    def dense(q, k, v, *, softmax_scale, causal, window_size=(None, None), return_lse):
        """(B, L, H, D) inputs -> out (B, Lq, Hq, D), lse (B, Hq, Lq): the varlen stand-in on the flattened batch."""
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
        cu = lambda n: torch.arange(0, (b + 1) * n, n, dtype=torch.int32)  # noqa: E731
        out, lse = forward(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens_q=cu(lq), cu_seqlens_k=cu(lk),
                           max_seqlen_q=lq, max_seqlen_k=lk, softmax_scale=softmax_scale, causal=causal,
                           window_size=window_size, return_lse=return_lse)
        return out.unflatten(0, (b, lq)), lse.unflatten(1, (b, lq)).transpose(0, 1).contiguous()
    def block_sparse(q, k, v, *, softmax_scale, mask_mod, block_sparse_tensors, return_lse):
        """FA4's block-sparse forward: pair (i, j) counts where its tile is listed full, or listed partial and
        `mask_mod` (here a PyTorch predicate) allows it; lists broadcast over batch and heads."""
        (partial_count, partial_index, full_count, full_index), tile = block_sparse_tensors
        n, tile = q.shape[1], tile[0]
        tiles = torch.zeros(2, partial_count.shape[-1], partial_index.shape[-1], dtype=torch.bool)
        for kind, (count, index) in enumerate([(partial_count, partial_index), (full_count, full_index)]):
            for row in range(count.shape[-1]):
                tiles[kind, row, index[0, 0, row, :count[0, 0, row]].long()] = True
        i, j = torch.arange(n)[:, None], torch.arange(n)[None]
        partial, full = (t.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[:n, :n] for t in tiles)
        allowed = full | (partial & mask_mod(i, j))
        g = q.shape[2] // k.shape[2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(g, 2)) * softmax_scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v.repeat_interleave(g, 2))
        return out, scores.logsumexp(-1), None
    cute = SimpleNamespace(flash_attn_varlen_func=forward, flash_attn_func=dense,
                           interface=SimpleNamespace(_flash_attn_bwd=backward, _flash_attn_fwd=block_sparse),
                           block_sparsity=SimpleNamespace(BlockSparseTensorsTorch=lambda *t, block_size: (t,
                                                                                                          block_size)))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", cute.interface)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.block_sparsity", cute.block_sparsity)
    monkeypatch.setattr(fa4_blocks, "sink_window_mask", lambda w, s: lambda i, j: (j <= i) & ((i - j < w) | (j < s)))
    monkeypatch.setattr(fa4, "sparse_tiles_fit", lambda device: True)  # the CPU stands in for an sm90 GPU


@pytest.mark.parametrize("seed", range(40))
def test_fa4_calls_match_float64_with_stand_ins(seed, monkeypatch):
    """The fa4 backend's FA4 arguments (window, causal, LSE layout, the backward given the merged out/LSE), with the
    FA4 kernels replaced by exact stand-ins: output and gradients against float64."""
    from swaa.attention.fa4 import fa4_varlen, fa4_varlen_backward
    fa4_stand_in(monkeypatch)
    (got, want), x = split_calls_vs_float64(500 + seed, fa4_varlen, fa4_varlen_backward)
    for g_got, g_want in zip(got, want):
        assert (g_got - g_want).abs().max() < 1e-9, (seed, x.kind, x.window, x.sink)


@pytest.mark.parametrize("fits", [True, False])
def test_fa4_dense_sinks_take_the_block_sparse_call_only_where_its_tiles_fit(fits, monkeypatch):
    """Unpadded rows past the window with sinks: one block-sparse FA4 call where its tiles fit (sm90), else the split
    varlen calls (sm100); the output matches float64 either way."""
    fa4_stand_in(monkeypatch)
    monkeypatch.setattr(fa4, "sparse_tiles_fit", lambda device: fits)
    calls = []
    interface = sys.modules["flash_attn.cute.interface"]
    monkeypatch.setattr(interface, "_flash_attn_fwd", lambda *a, _f=interface._flash_attn_fwd, **k: (
        calls.append("block_sparse"), _f(*a, **k))[1])
    n, window, sink = 300, 40, 5
    pos = torch.arange(n)[None]
    x = LayerInputs(pos, pos, torch.tensor([n]), window, sink, "swa", ("all",), {})
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, 16, generator=gen, dtype=torch.float64) for h in (4, 2, 2))
    from swaa.attention.flash import flash_attention
    got = flash_attention(q, k, v, x, 0.3, **fa4.fa4_kernels(16))
    want = attention64(q, k, v, dense_mask(x.q_pos, x.k_pos, x.prompt_len, window, sink, "swa"), 0.3)
    assert (got - want).abs().max() < 1e-9
    assert calls == (["block_sparse"] if fits else [])


@pytest.mark.parametrize("seed", range(60))
def test_flash_planning_matches_float64(seed):
    """The flash backend's split into window/causal/sink calls and its LSE merge, with an exact stand-in kernel."""
    from swaa.attention.flash import flash_attention
    rng = random.Random(seed)
    (q, k, v), x = random_case(rng, "cpu", torch.float64)
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
    want = attention64(q, k, v, mask, 0.25)
    got = flash_attention(q, k, v, x, 0.25, varlen=varlen_dense)
    rows = (x.q_pos >= 0)[..., None, None]
    assert ((got - want).abs() * rows).max() < 1e-10, (seed, x.kind, x.window, x.sink)


@pytest.mark.parametrize("pads", [(0,), (0, 3)])
def test_flash_decode_on_a_sink_window_cache(pads):
    """A decode step over sink + window keys: batch 1 sees every key (one unmasked call); a padded batch does not."""
    from swaa.attention.flash import flash_attention
    from swaa.attention.plain import plain_sdpa_kwargs
    window, sink, n = 8, 2, 40  # n cache slots, row r left-padded by pads[r]; kept: any row's sinks, the last W
    slots = torch.cat([torch.arange(sink + max(pads)), torch.arange(n - window, n)])
    k_pos = torch.stack([torch.where(slots >= p, slots - p, -1) for p in pads])
    q_pos = k_pos[:, -1:]
    x = LayerInputs(q_pos, k_pos, q_pos[:, 0], window, sink, "swa", ("sink_window",), {})
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(len(pads), h, length, 16, generator=gen, dtype=torch.float64)
               for h, length in ((4, 1), (2, k_pos.shape[1]), (2, k_pos.shape[1])))
    want = attention64(q, k, v, dense_mask(q_pos, k_pos, x.prompt_len, window, sink, "swa"), 0.25)
    assert (plain_sdpa_kwargs(x) == {"is_causal": False}) == (len(pads) == 1)
    assert (flash_attention(q, k, v, x, 0.25, varlen=varlen_dense) - want).abs().max() < 1e-10


@pytest.mark.parametrize("pad", [0, 2])
def test_flash_full_layer_without_padding_is_one_causal_call(pad):
    from swaa.attention.flash import flash_attention
    from swaa.attention.plain import plain_sdpa_kwargs
    valid = torch.arange(20)[None] >= pad
    k_pos = torch.where(valid, valid.cumsum(-1) - 1, -1)
    x = LayerInputs(k_pos, k_pos, torch.tensor([5]), 8, 0, "full", ("all",), {})  # W unused by full layers
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 20, 16, generator=gen, dtype=torch.float64) for h in (4, 2, 2))
    want = attention64(q, k, v, dense_mask(k_pos, k_pos, x.prompt_len, None, 0, "full"), 0.25)
    assert (plain_sdpa_kwargs(x) == {"is_causal": True}) == (pad == 0)
    got = flash_attention(q, k, v, x, 0.25, varlen=varlen_dense)
    assert ((got - want).abs() * valid[..., None, None]).max() < 1e-10


@pytest.mark.parametrize("fa4_runs", [True, False])
def test_auto_sends_half_precision_swa_calls_to_fa4_where_it_runs(monkeypatch, fa4_runs):
    """SWA prefill and training in bf16 at FA4's trusted head dimensions go to 'fa4' when flash-attn-4 runs, else
    flex; other head dimensions, float32, full-layer and decode calls never do."""
    import swaa.attention.auto as auto
    seen = []
    monkeypatch.setattr(auto, "fa4_unavailable", lambda index: None if fa4_runs else "no flash-attn-4")
    for name in ("fa4_attention_fn", "flex_attention_fn", "flash_attention_fn"):
        monkeypatch.setattr(auto, name, lambda *a, _name=name, **k: (seen.append(_name.split("_")[0]), None))
    monkeypatch.setattr(auto, "plain_attention", lambda *a: None)
    cases = {("swa", 300, torch.bfloat16, True, 64): "fa4" if fa4_runs else "flex",
             ("swa_fa_decode", 300, torch.bfloat16, False, 128): "fa4" if fa4_runs else "flex",
             ("swa", 300, torch.bfloat16, True, 16): "flex", ("swa", 300, torch.float32, False, 64): "flex",
             ("swa", 1, torch.bfloat16, False, 64): "flash", ("full", 300, torch.bfloat16, False, 64): "flash"}
    for (kind, lq, dtype, grad, d), want in cases.items():
        pos = torch.arange(lq)[None]
        x = LayerInputs(pos, pos, torch.tensor([lq]), 16, 4, kind, ("all",), {})
        q = torch.zeros(1, 2, lq, d, dtype=dtype, requires_grad=grad)
        call_backend("auto", q, q, q, x)
        assert seen[-1] == want, (kind, lq, dtype, grad, d)


def test_auto_sends_plain_calls_to_one_sdpa_call(monkeypatch):
    """A full layer without padding never reaches the masked backends, with or without gradients."""
    import swaa.attention.auto as auto
    monkeypatch.setattr(auto, "flex_attention_fn", None)  # calling either would raise TypeError
    monkeypatch.setattr(auto, "flash_attention_fn", None)
    pos = torch.arange(30)[None]
    x = LayerInputs(pos, pos, torch.tensor([30]), 8, 2, "full", ("all",), {})
    q, k, v = (torch.randn(1, h, 30, 16, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
    want = attention64(q, k, v, dense_mask(pos, pos, x.prompt_len, 8, 2, "full"), 0.25)
    assert (call_backend("auto", q, k, v, x) - want).abs().max() < 1e-10
