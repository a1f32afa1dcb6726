"""Park's performance model (sparse_lightning.perf): layer costs, useful range, profiles, bench rows."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparse_lightning import ConfigError, ResNet20
from sparse_lightning.perf import (
    HardwareProfile,
    get_profile,
    layer_costs,
    model_speedup,
    speedup,
    t_dense,
    t_sparse,
    useful_range,
)
from sparse_lightning.perf.bench import bench_model, spearman
from sparse_lightning.perf.model import conv_cost, linear_cost


def alexnet_conv5(batch: int = 1):
    """AlexNet conv5 as in Caffe: 384 -> 256, 3x3, pad 1, groups 2, on 13x13."""
    net = nn.Sequential(nn.Conv2d(384, 256, 3, padding=1, groups=2))
    return layer_costs(net, torch.randn(2, 384, 13, 13), batch=batch)["0.weight"]


def test_alexnet_conv5_flops_bytes_intensity():
    c = alexnet_conv5()
    assert c.flops == pytest.approx(149.5e6, rel=1e-3)  # 2 * 256 * 192 * 9 * 169
    assert c.act_bytes == pytest.approx(0.52e6, rel=0.01)  # padded 15x15 input + 13x13 output, fp32
    assert c.weight_bytes == pytest.approx(1.77e6, rel=0.01)
    assert c.intensity == pytest.approx(149.5e6 / (0.5187e6 + 1.7695e6), rel=1e-3)
    assert c.kind == "conv2d" and c.kernel == (3, 3)


def test_batch_scales_work_and_activations_not_weights():
    c1, c8 = alexnet_conv5(1), alexnet_conv5(8)
    assert c8.flops == pytest.approx(8 * c1.flops) and c8.act_bytes == pytest.approx(8 * c1.act_bytes)
    assert c8.weight_bytes == c1.weight_bytes


def test_linear_and_conv1d_costs():
    lin = linear_cost("fc.weight", (10, 20), (4, 20), batch=4)
    assert (lin.flops, lin.act_bytes, lin.weight_bytes) == (2 * 4 * 10 * 20, 4 * 4 * 30, 4 * 200)
    net = nn.Sequential(nn.Conv1d(4, 8, 5, stride=2, padding=2), nn.Flatten(), nn.Linear(8 * 20, 3))
    costs = layer_costs(net, torch.randn(3, 4, 40))
    conv = costs["0.weight"]
    assert conv.flops == 2 * 8 * 4 * 5 * 20 and conv.act_bytes == 4 * (4 * 44 + 8 * 20)
    assert costs["2.weight"].flops == 2 * 160 * 3 and costs["2.weight"].batch == 1
    assert conv_cost("0.weight", (8, 4, 5), 1, (1, 4, 40), (1, 8, 20), (2,)) == conv


def test_worked_check_on_park_platforms():
    c = alexnet_conv5()
    bdw = get_profile("bdw")
    assert useful_range(c, bdw).x_up == pytest.approx(0.024, abs=0.001)
    assert useful_range(c, bdw).x_low == pytest.approx(1 / 3)
    assert speedup(c, bdw, 0.09) == pytest.approx(3.7, abs=0.05)
    assert useful_range(c, get_profile("atom")).x_up == pytest.approx(0.013, abs=0.001)


def test_times_follow_the_roofline():
    c, p = alexnet_conv5(), get_profile("bdw")
    assert t_dense(c, p) == pytest.approx(c.flops / p.flops)
    rng = useful_range(c, p)
    # at x_low the sparse kernel ties with dense; below x_up it is bandwidth-bound (flat-ish)
    assert speedup(c, p, rng.x_low) == pytest.approx(1.0)
    assert speedup(c, p, 0.5) < 1.0 < speedup(c, p, 0.2)
    memory = (c.act_bytes + p.beta * 0.01 * c.weight_bytes) / p.bandwidth
    assert t_sparse(c, p, 0.01) == pytest.approx(memory)
    assert t_sparse(c, p.replace(latency_s=1e-6), 0.01) == pytest.approx(memory + 1e-6)


@pytest.mark.parametrize("factor", [0.5, 2.0, 4.0])
def test_useful_range_moves_the_right_way(factor):
    """More bandwidth (or fewer FLOP/s) widens the range: x_up falls and x_low rises (or stays)."""
    c = alexnet_conv5()
    bdw = get_profile("bdw")
    starved = bdw.replace(bandwidth=15e9)  # x_low set by bandwidth, below 1/alpha
    assert 0 < useful_range(c, starved).x_low < 1 / starved.alpha
    for base, moves in ((bdw, "x_up"), (starved, "x_low")):
        r0 = useful_range(c, base)
        wider = [useful_range(c, base.replace(bandwidth=base.bandwidth * factor)),
                 useful_range(c, base.replace(flops=base.flops / factor))]
        for r in wider:
            if factor > 1:
                assert r.x_up <= r0.x_up and r.x_low >= r0.x_low
                assert getattr(r, moves) != getattr(r0, moves)
            else:
                assert r.x_up >= r0.x_up and r.x_low <= r0.x_low
                assert getattr(r, moves) != getattr(r0, moves)


def test_always_bandwidth_bound_layer_has_no_range():
    fc = linear_cost("fc6.weight", (4096, 9216), (1, 9216), batch=1)  # batch-1 FC: weight traffic dominates
    rng = useful_range(fc, get_profile("bdw"))
    assert rng.bandwidth_bound and not rng.useful


def test_resnet20_stem_and_downsampling_convs_have_no_range_on_h100():
    net = ResNet20((3, 32, 32), 10)
    before = net.bn1.running_mean.clone()
    costs = layer_costs(net, torch.randn(2, 3, 32, 32), batch=32)
    assert torch.equal(net.bn1.running_mean, before) and net.training  # eval pass, mode restored
    h100 = get_profile("h100")
    ranges = {n: useful_range(c, h100) for n, c in costs.items()}
    assert not ranges["conv1.weight"].useful and not ranges["layer2.0.conv1.weight"].useful
    assert ranges["layer3.1.conv1.weight"].useful
    dense = {n: 1.0 for n in costs}
    assert model_speedup(costs, h100, dense) == pytest.approx(1.0)
    inside = {n: r.x_up for n, r in ranges.items() if r.useful}
    assert model_speedup(costs, h100, inside) > 1.0


def test_profile_json_round_trip(tmp_path):
    p = get_profile("h100")
    assert 1.6e14 < p.flops < 1.8e14 and p.bandwidth == 3.0e12  # device-baselines.md batch-32 TF32 median
    path = p.save(tmp_path / "p.json", measurements={"note": "x"})
    assert HardwareProfile.load(path) == p
    assert get_profile(str(path)) == p
    data = json.loads(path.read_text())
    data["bandwith"] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown keys \\['bandwith'\\]"):
        HardwareProfile.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="profile: unknown 'tpu'"):
        get_profile("tpu")
    with pytest.raises(ConfigError, match="alpha must be a number > 0"):
        p.replace(alpha=0)


def test_cpu_calibration_measures_positive_rates(tmp_path):
    from sparse_lightning.perf.calibrate import calibrate

    result = calibrate("cpu", tmp_path / "cpu.json", quick=True)
    p = result.profile
    assert p.flops > 1e8 and p.bandwidth > 1e8 and p.alpha > 0
    assert result.measurements["conv"][0]["density"] == pytest.approx(0.45, abs=1e-3)
    assert HardwareProfile.load(tmp_path / "cpu.json") == p


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-3)


def test_model_bench_predicts_without_measuring_on_another_device():
    result = bench_model("baselines", get_profile("h100"), [1, 32], [0.5, 0.9], measure=True)
    if torch.cuda.is_available():
        pytest.skip("a GPU measures instead")
    assert result["measured_on"] is None and "needs a GPU" in result["measurement"]
    assert len(result["rows"]) == 8 * 2 * 2 and result["summary"] == {"n": 0}
    conv5 = next(r for r in result["rows"] if r["layer"] == "alexnet_conv5" and r["batch"] == 32)
    assert conv5["flops"] == pytest.approx(9.57e9, rel=0.01)  # device-baselines.md GFLOP column


def test_sparse_bench_model_cli_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from sparse_lightning.cli import bench

    rc = bench.main(["--model", "resnet20", "--profile", "h100", "--no-measure", "--batches", "1",
                     "--sparsities", "0.5", "0.9", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "layer3.1.conv1" in out and "useful sparsity" in out
    data = json.loads((tmp_path / "model_bench_resnet20.json").read_text())
    assert len(data["rows"]) == 20 * 2
    assert (tmp_path / "model_bench_resnet20.png").read_bytes()[:4] == b"\x89PNG"
    assert bench.main(["--model", "vgg", "--profile", "h100", "--out", str(tmp_path)]) == 2
