"""swaa.bench.sinks' CPU side: its float64 reference of the sink keys' share, and its table."""

import torch

from swaa.bench.sinks import fewest_bytes, markdown, sink_reference


def test_sink_reference_is_the_sink_keys_share_of_autograd():
    """Attention over the band plus separate copies of q and the sink keys (one softmax): the copies' gradients are
    the sink share the reference gives, its outputs the merged attention."""
    n, hq, hkv, d, window, sink, scale = 40, 4, 2, 8, 8, 3, 0.4
    gen = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(1, n, h, d, generator=gen, dtype=torch.float64) for h in (hq, hkv, hkv, hq))
    ref = sink_reference(q, k, v, d_out, window, sink, scale)
    q1, q2, k1, v1 = (t.clone().requires_grad_() for t in (q, q, k, v))
    k2, v2 = (t[:, :sink].clone().requires_grad_() for t in (k, v))
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    band, sinks = (j <= i) & (j > i - window), (j < sink) & (j <= i - window)
    rep = lambda t: t.repeat_interleave(hq // hkv, 2)  # noqa: E731
    s1 = (torch.einsum("blhd,bkhd->bhlk", q1, rep(k1)) * scale).masked_fill(~band, float("-inf"))
    s2 = (torch.einsum("blhd,bkhd->bhlk", q2, rep(k2)) * scale).masked_fill(~sinks[:, :sink], float("-inf"))
    p = torch.cat([s1, s2], -1).softmax(-1)
    out = torch.einsum("bhlk,bkhd->blhd", p[..., :n], rep(v1)) + torch.einsum("bhlk,bkhd->blhd", p[..., n:], rep(v2))
    out.backward(d_out)
    assert torch.allclose(ref["merged"][0], out)
    assert torch.allclose(ref["merged"][1], torch.cat([s1, s2], -1).logsumexp(-1))
    for got, want in zip(ref["grads"], (q2.grad, k2.grad, v2.grad)):
        assert got.shape == want.shape and torch.allclose(got, want)
    assert ref["grads"][0].abs().max() > 0 and ref["grads"][0][:, :window].abs().max() == 0  # rows < W see no sink


def test_fewest_bytes_counts_each_tile_once():
    assert fewest_bytes(10, 2, 4, 2) == 10 * 2 * (5 * 4 * 2 + 4)


def test_table_is_fastest_first_with_the_current_launch_marked_and_failures_listed():
    row = lambda ms, block: {"BLOCK": block, "ROWS": 2048, "num_warps": 8, "num_stages": 1,  # noqa: E731
                             "status": "ok", "rel_error": 1e-3, "ms": ms, "ms_min": ms, "gbps": 1.0, "of_copy": 0.5}
    rows = [row(2.0, 32), row(1.0, 64), {"BLOCK": 128, "ROWS": 512, "num_warps": 16, "num_stages": 3,
                                         "status": "FAILED: OutOfResources: shared memory"}]
    text = markdown(rows, {"BLOCK": 32, "ROWS": 2048, "num_warps": 8, "num_stages": 1})
    lines = text.splitlines()
    assert lines[2].startswith("|  | 64 | 2048 |") and lines[3].startswith("| current | 32 | 2048 |")
    assert "OutOfResources" in lines[4] and "'ROWS': 512" in lines[4]
