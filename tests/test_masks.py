import torch

from swaa.masks import dense_mask, flash_window, flex_mask_mod, visible


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
    q_pos = torch.tensor([[-1, 0, 1, 2], [0, 1, 2, 3]])
    k_pos = q_pos.clone()
    p = torch.tensor([2, 1])
    dense = dense_mask(q_pos, k_pos, p, 2, 1, "swa_fa_decode")
    assert dense.shape == (2, 1, 4, 4)
    assert not dense[0, 0, :, 0].any()  # padding key
    mod = flex_mask_mod(q_pos, k_pos, p, 2, 1, "swa_fa_decode")
    for b in range(2):
        for q in range(4):
            for k in range(4):
                assert bool(mod(torch.tensor(b), 0, torch.tensor(q), torch.tensor(k))) == bool(dense[b, 0, q, k])
