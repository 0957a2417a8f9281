"""swaa.attention.fa4_blocks: the window + sink mask's tiles, classified and listed for FA4's block sparsity, against
the mask itself element by element."""

import pytest
import torch

from swaa.attention.fa4_blocks import TILE, tile_classes, tile_lists


def visible(length: int, window: int, sink: int) -> torch.Tensor:
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    return (j <= i) & ((i - j < window) | (j < sink))


def tiles(mask: torch.Tensor) -> list[list[torch.Tensor]]:
    m = -(-mask.shape[0] // TILE)
    return [[mask[a * TILE:(a + 1) * TILE, b * TILE:(b + 1) * TILE] for b in range(m)] for a in range(m)]


@pytest.mark.parametrize("length", [1, 127, 128, 129, 700])
@pytest.mark.parametrize("window", [1, 64, 128, 200, 1000])
@pytest.mark.parametrize("sink", [0, 1, 64, 128, 130])
def test_tile_classes_match_the_mask(length, window, sink):
    partial, full = tile_classes(length, window, sink)
    for a, row in enumerate(tiles(visible(length, window, sink))):
        for b, tile in enumerate(row):
            assert bool(full[a, b]) == bool(tile.all()), (a, b)
            assert bool(partial[a, b]) == bool(tile.any() and not tile.all()), (a, b)


def test_tile_lists_hold_each_class_in_order():
    length, window, sink = 1000, 300, 64
    classes = tile_classes(length, window, sink)
    lists = tile_lists(length, window, sink)
    for (count, index), tiles_of in zip([lists[:2], lists[2:]], classes):
        assert count.dtype == index.dtype == torch.int32
        for row in range(tiles_of.shape[0]):
            listed = index[row, :count[row]]
            assert listed.tolist() == torch.nonzero(tiles_of[row]).flatten().tolist()
    assert int(lists[0].sum() + lists[2].sum()) == int((classes[0] | classes[1]).sum())
