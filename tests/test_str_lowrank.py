"""Structured low-rank STR: SVD initialization, the rank fix, the target-rank controller, factor export."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from helpers import TinyNet
from sparse_lightning import ConfigError
from sparse_lightning.callbacks.str import STR
from sparse_lightning.reparam import apply_str, export_lowrank_factors, fix_ranks, lowrank_counts, lowrank_rank


def _lowrank_gru(s_init: float = -20.0) -> tuple[nn.GRU, torch.Tensor]:
    torch.manual_seed(0)
    gru = nn.GRU(4, 8, batch_first=True)
    dense = gru.weight_hh_l0.detach().clone()  # (24, 8)
    apply_str(gru, ["weight_hh_l0"], s_init=s_init, lowrank=["weight_hh_l0"])
    return gru, dense


def test_factors_start_from_the_svd_so_the_threshold_acts_on_singular_values():
    gru, dense = _lowrank_gru()
    p = gru.parametrizations.weight_hh_l0
    torch.testing.assert_close(p.original1, torch.linalg.svdvals(dense))
    torch.testing.assert_close(p.original0.T @ p.original0, torch.eye(8), atol=1e-5, rtol=0)  # orthonormal U
    torch.testing.assert_close(p.original2.T @ p.original2, torch.eye(8), atol=1e-5, rtol=0)  # orthonormal V
    with torch.no_grad():  # a threshold between the 5th and 6th singular value leaves rank 5
        sv = p.original1
        p[0].s.fill_(float(torch.logit((sv[4] + sv[5]) / 2)))
    assert lowrank_rank(gru, "weight_hh_l0") == 5


def _fix_at(alpha: float, fraction: float) -> tuple[nn.GRU, torch.Tensor, torch.Tensor, dict[str, int]]:
    gru, _ = _lowrank_gru()
    p = gru.parametrizations.weight_hh_l0
    with torch.no_grad():
        p[0].s.fill_(float(torch.logit(torch.tensor(alpha))))
    before, sv = gru.weight_hh_l0.detach().clone(), p.original1.detach().clone()  # sv sorted, descending
    return gru, before, sv, fix_ranks(gru, fraction=fraction)


def test_fix_ranks_cuts_to_the_largest_fraction_keeping_the_rest_unchanged():
    gru, before, sv, ranks = _fix_at(alpha=0.05, fraction=0.5)  # below every singular value: all 8 alive
    p = gru.parametrizations.weight_hh_l0
    assert ranks == {"weight_hh_l0": 4} and p[0].keep.tolist() == [True] * 4 + [False] * 4
    assert not p[0].s.requires_grad and lowrank_counts(gru) == {"weight_hh_l0": (4, 8)}
    torch.testing.assert_close(p.original1[:4], sv[:4] - 0.05)  # the threshold is folded into sigma
    dropped = (p.original0[:, 4:] * (sv[4:] - 0.05)) @ p.original2[:, 4:].T  # (24, 8)
    torch.testing.assert_close(gru.weight_hh_l0, before - dropped)
    assert torch.linalg.matrix_rank(gru.weight_hh_l0.detach()) == 4


def test_fix_ranks_revives_directions_the_controller_pruned_too_far():
    gru, _, sv, ranks = _fix_at(alpha=0.99, fraction=0.75)
    assert int((sv > 0.99).sum()) == 4  # the controller left rank 4; 6 are asked for
    p = gru.parametrizations.weight_hh_l0
    assert ranks == {"weight_hh_l0": 6} and torch.linalg.matrix_rank(gru.weight_hh_l0.detach()) == 6
    torch.testing.assert_close(p.original1[:4], sv[:4] - 0.99)  # the alive directions do not move
    torch.testing.assert_close(p.original1[4:6], sv[4:6] - (sv[5] + sv[6]) / 2)  # revived, small
    assert torch.all(p.original1[6:] == 0)


def test_exported_factors_multiply_to_the_effective_weight():
    gru, _ = _lowrank_gru()
    with torch.no_grad():
        sv = gru.parametrizations.weight_hh_l0.original1
        gru.parametrizations.weight_hh_l0[0].s.fill_(float(torch.logit((sv[5] + sv[6]) / 2)))  # g(s) < 1
    factors = export_lowrank_factors(gru.state_dict())
    a, b = factors["weight_hh_l0"]
    assert a.shape == (24, 6) and b.shape == (8, 6)
    torch.testing.assert_close(a @ b.T, gru.weight_hh_l0.detach())


class RankTrace(Callback):
    def __init__(self) -> None:
        self.ranks: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ranks.append(sum(k for k, _ in lowrank_counts(pl_module).values()))


def test_target_rank_controller_lowers_the_rank_and_the_fix_makes_it_exact(make_trainer):
    """TinyNet's 48x16 recurrent matrix (scaled so its singular values lie below g's reach of 1/2 by decay
    of s alone), asked for 25% of its rank: the controller lowers the rank during the STR phase, the fix
    keeps exactly 4 directions, and the written-back weight has rank 4."""
    torch.manual_seed(0)
    model, trace = TinyNet("adamw", lr=0.003), RankTrace()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.3)
    callback = STR(s_init=-5.0, lowrank=["rnn.weight_hh_l0"], target_rank=0.25, finetune_steps=50)
    make_trainer(max_steps=300, callbacks=[callback, trace]).fit(model)
    before_fix, after_fix = trace.ranks[:250], trace.ranks[250:]
    assert before_fix[0] == 16 and min(before_fix) <= 12, before_fix
    assert set(after_fix) == {4} and callback.ranks == {"rnn.weight_hh_l0": 4}
    assert torch.linalg.matrix_rank(model.rnn.weight_hh_l0.detach()) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_rank": 0.0, "lowrank": ["*"]}, r"target_rank must be a fraction in \(0, 1\]"),
        ({"target_rank": 1.5, "lowrank": ["*"]}, r"target_rank must be a fraction in \(0, 1\]"),
        ({"target_rank": 0.5}, "target_rank needs low-rank tensors"),
    ],
)
def test_bad_target_rank_fails_in_the_constructor(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        STR(**kwargs)
