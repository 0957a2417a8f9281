import pytest
import torch
from torch._dynamo.testing import CompileCounter

from swaa.masks import block_visibility, dense_mask, flash_window, flex_mask_mod, visible


def brute(i, j, p, w, s, kind):
    if j > i:
        return False
    if kind == "full" or w is None or (kind == "swa_fa_decode" and i >= p):
        return True
    return i - j < w or j < s


def test_visible_matches_definition():
    for kind in ("full", "swa", "swa_fa_decode"):
        for w, s, p in [(1, 0, 5), (3, 0, 4), (3, 2, 6), (2, 5, 3), (50, 0, 0), (None, 0, 2)]:
            i, j = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
            got = visible(i, j, torch.tensor(p), w, s, kind)
            want = torch.tensor([[brute(a, b, p, w, s, kind) for b in range(10)] for a in range(10)])
            assert torch.equal(got, want), (kind, w, s, p)


def test_window_counts_query_itself():
    m = visible(torch.tensor(5), torch.arange(6), torch.tensor(99), 1, 0, "swa")
    assert m.tolist() == [False] * 5 + [True]
    assert flash_window(1) == (0, 0) and flash_window(2048) == (2047, 0)


def test_padding_keys_invisible_and_dense_equals_flex_mod():
    q_pos = torch.tensor([[-1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])
    k_pos = q_pos.clone()
    p = torch.tensor([2, 1])
    dense = dense_mask(q_pos, k_pos, p, 2, 1, "swa_fa_decode")
    assert dense.shape == (2, 1, 6, 6)
    assert not dense[0, 0, :, 0].any()  # padding key
    b, q, k = (t[:, None] for t in torch.meshgrid(torch.arange(2), torch.arange(6), torch.arange(6), indexing="ij"))
    for window, sink, kind in [(2, 1, "swa_fa_decode"), (2, 1, "swa"), (3, 0, "swa"), (2, 0, "full"), (None, 0, "swa"),
                               (1, 4, "swa_fa_decode")]:
        got = flex_mask_mod(q_pos, k_pos, p, window, sink, kind)(b, 0, q, k)
        assert torch.equal(got, dense_mask(q_pos, k_pos, p, window, sink, kind)), (window, sink, kind)


def _tiles(mask: torch.Tensor, block: int, reduce) -> torch.Tensor:
    """reduce ('any'/'all') of a dense (B, 1, Lq, Lk) mask over block x block tiles; positions past the end count as
    invisible."""
    b, _, lq, lk = mask.shape
    padded = torch.nn.functional.pad(mask[:, 0], (0, -lk % block, 0, -lq % block), value=False)
    tiles = padded.view(b, padded.shape[1] // block, block, padded.shape[2] // block, block)
    return getattr(tiles, reduce)(dim=(2, 4)) if reduce == "any" else tiles.all(dim=4).all(dim=2)


@pytest.mark.parametrize("kind,window,sink", [("swa", 5, 0), ("swa", 7, 3), ("swa_fa_decode", 6, 2),
                                              ("full", None, 0), ("swa", 40, 9)])
def test_block_visibility_bounds_the_dense_tiles(kind, window, sink):
    """`some` covers every tile with a visible pair and `full` only tiles that are all visible, under left padding,
    cached keys before the queries, and lengths that are not multiples of the tile."""
    g = torch.Generator().manual_seed(window or 0)
    for lq, lk, block in [(37, 37, 4), (5, 41, 8), (64, 64, 8), (1, 30, 4)]:
        pads = torch.randint(0, min(lq, 6), (3,), generator=g)
        k_pos = torch.stack([torch.cat([torch.full((int(p),), -1), torch.arange(lk - int(p))]) for p in pads])
        q_pos = k_pos[:, lk - lq:]
        prompt = torch.randint(1, lk, (3,), generator=g)
        some, full = block_visibility(q_pos, k_pos, prompt, window, sink, kind, block)
        dense = dense_mask(q_pos, k_pos, prompt, window, sink, kind)
        assert some.shape == full.shape == (3, -(-lq // block), -(-lk // block))
        assert not (_tiles(dense, block, "any") & ~some).any()
        assert not (full & ~_tiles(dense, block, "all")).any()


def test_block_visibility_is_tight_for_an_unpadded_prompt():
    """Without padding the window band's tiles are classified exactly, so flex skips no work it could skip."""
    pos = torch.arange(96)[None]
    some, full = block_visibility(pos, pos, torch.tensor([96]), 24, 8, "swa", 8)
    dense = dense_mask(pos, pos, torch.tensor([96]), 24, 8, "swa")
    assert torch.equal(some, _tiles(dense, 8, "any")) and torch.equal(full, _tiles(dense, 8, "all"))


def test_flex_mask_mod_does_not_recompile_for_new_configs():
    """The rule is captured as tensors: torch.compile traces one frame for every window, sink and layer kind."""
    counter = CompileCounter()
    pos, prompt = torch.arange(16)[None], torch.tensor([9])
    call = torch.compile(lambda mod, q, k: mod(0, 0, q, k), backend=counter)
    configs = [(4, 1, "swa"), (8, 2, "swa"), (3, 0, "swa_fa_decode"), (None, 0, "full"), (5, 2, "full")]
    got = [call(flex_mask_mod(pos, pos, prompt, w, s, kind), pos[0, :, None], pos[0, None, :])
           for w, s, kind in configs]
    assert counter.frame_count == 1
    assert all(torch.equal(m, dense_mask(pos, pos, prompt, w, s, kind)[0, 0]) for m, (w, s, kind) in zip(got, configs))


def test_compiled_flex_needs_no_new_compilation_per_config():
    """A grid of SWAA configs through compiled flex_attention with swaa's BlockMask: after the first config has seen
    each batch size and length, the others (new windows, sinks, layer kinds) add no compilation, so a long evaluation
    stays far from dynamo's recompile limit and its dense eager fallback."""
    from torch.nn.attention.flex_attention import flex_attention

    from swaa.attention.flex import build_block_mask
    from swaa.attention.inputs import LayerInputs

    counter = CompileCounter()
    attend = torch.compile(flex_attention, backend=counter)
    frames = []
    for window, sink, kind in [(16, 2, "swa"), (32, 4, "swa"), (16, 2, "swa_fa_decode"), (None, 0, "full")]:
        for b, n in [(1, 130), (3, 200), (1, 257), (2, 130)]:
            pos = torch.arange(n).expand(b, n)
            x = LayerInputs(pos, pos, torch.full((b,), n // 2), window, sink, kind, ("all",), {})
            q, k = torch.randn(b, 4, n, 16), torch.randn(b, 2, n, 16)
            attend(q, k, k, block_mask=build_block_mask(x), scale=0.25, enable_gqa=True)
        frames.append(counter.frame_count)
    assert frames[0] <= 4 and frames[-1] == frames[0], frames
