"""swaa.bench.profile on CPU: the profile job's breakdown per phase, kernel categories, each kernel counted once."""

import json
from types import SimpleNamespace as Event

import pytest
from torch.autograd import DeviceType

from swaa.bench.__main__ import main
from swaa.bench.profile import CATEGORIES, IDLE, category, category_ms


def test_profile_job_breaks_time_into_categories(tmp_path):
    md, out = tmp_path / "profile.md", tmp_path / "profile.json"
    main(["profile", "--device", "cpu", "--shape", "tiny:qwen3:2:256", "--lengths", "64", "--decode-tokens", "2",
          "--window", "16", "--sink", "2", "--configs", "fa,swa_all,hf_sliding_flex", "--markdown", str(md),
          "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["status"]) for r in rows] == [("fa", "ok"), ("swa_all", "ok"),
                                                          ("hf_sliding_flex", "UNSUPPORTED")]
    for r in rows[:2]:
        assert r["passed"] and set(r["profile"]) == {"prefill", "decode", "static decode"}
        for prof in r["profile"].values():
            busy = sum(prof[c] for c, _ in CATEGORIES) + prof["other"]
            assert prof["attention"] > 0 and prof["matmul"] > 0
            # operators' self times are disjoint: counting any of them twice would exceed the wall time
            assert busy <= prof["wall_ms"] and prof[IDLE] == pytest.approx(prof["wall_ms"] - busy)
    table = md.read_text()
    assert table.startswith("| config | length | phase | wall | attention |")
    assert "| swa_all | 64 | decode |" in table and "| hf_sliding_flex | 64 | UNSUPPORTED |" in table


def test_category_names_kernels():
    assert category("void pytorch_flash::flash_fwd_kernel<...>") == "attention"
    assert category("triton_tem_fused_flex_attention_0") == "attention"
    assert category("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert category("void at::native::index_elementwise_kernel<...>") == "copy/index"
    assert category("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<...>>") \
        == "elementwise/norm/rotary"
    assert category("aten::mm") == "matmul" and category("something_new") == "other"


def test_category_ms_counts_each_kernel_once():
    """On CUDA an operator's self device time repeats its kernels' time: only the kernels count."""
    events = [Event(key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=5000, self_cpu_time_total=30),
              Event(key="nvjet_tst_128x256", device_type=DeviceType.CUDA, self_device_time_total=5000,
                    self_cpu_time_total=0),
              Event(key="cudaLaunchKernel", device_type=DeviceType.CPU, self_device_time_total=0,
                    self_cpu_time_total=20)]
    assert category_ms(events, cuda=True)["matmul"] == 5.0
    cpu = category_ms(events, cuda=False)
    assert cpu["matmul"] == pytest.approx(0.03) and sum(cpu.values()) == pytest.approx(0.03)
