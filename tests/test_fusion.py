import pytest
import torch

from swaa import SWAAConfig, apply_swaa
from swaa.fusion import FUSIONS, fuse, fusion_unavailable
from conftest import tiny_model


def test_unknown_fusion_is_a_clear_error():
    with pytest.raises(ValueError, match="fuse='fast': expected one of none, liger, compile"):
        fuse(tiny_model(), "fast")


def test_liger_without_its_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "liger_kernel" else object())
    assert fusion_unavailable("liger") == ("needs the liger-kernel package, which is not installed "
                                           "(pip install liger-kernel)")
    assert [fusion_unavailable(how) for how in FUSIONS if how != "liger"] == [None, None]
    with pytest.raises(ValueError, match="fuse='liger' needs the liger-kernel package, which is not installed"):
        fuse(tiny_model(), "liger")


def test_compiled_layers_give_the_same_logits_under_swaa():
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    want = apply_swaa(tiny_model(layers=2), SWAAConfig(window=8, sink=2), backend="reference")(ids).logits
    model = apply_swaa(fuse(tiny_model(layers=2), "compile"), SWAAConfig(window=8, sink=2), backend="reference")
    assert all(hasattr(layer, "_compiled_call_impl") and layer._compiled_call_impl is not None
               for layer in model.model.layers)
    torch.testing.assert_close(model(ids).logits, want, rtol=1e-4, atol=1e-4)
