"""sparse-bench: one clear line and a non-zero exit without a GPU; plots render from result rows."""

from __future__ import annotations

import pytest
import torch

from sparse_lightning.cli import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_exits_nonzero_with_one_line_without_gpu(capsys):
    assert bench.main(["--quick", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparse-bench: no CUDA GPU")


def test_rejects_sparsity_out_of_range():
    with pytest.raises(SystemExit):
        bench.parse_args(["--sparsities", "1.0"])


def test_plots_render(tmp_path):
    """The plotting code on rows shaped like benchmark output (synthetic values: this checks the
    rendering only, no performance claim)."""
    pytest.importorskip("matplotlib")
    from sparse_lightning.kernels.bench_plot import plot_conv_speedups, plot_depthwise

    conv = [dict(layer=name, batch=b, sparsity=s, speedup_vs_cudnn_fp32=1 + s, speedup_vs_cudnn_tf32=s,
                 speedup_vs_cusparse=2.0) for name in ("a", "b") for b in (1, 32) for s in (0.5, 0.9)]
    dw = [dict(layer="dw", batch=b, us_cudnn_nchw=3.0, us_cudnn_cl=2.0, us_ours_nchw=1.5, us_ours_cl=1.2,
               us_ours_pruned50=1.0, us_bw_limit=1.0) for b in (1, 32)]
    for path in (plot_conv_speedups(conv, tmp_path / "c.png", "test"),
                 plot_depthwise(dw, tmp_path / "d.png", "test")):
        assert path.read_bytes()[:4] == b"\x89PNG"
