"""Schedule functions against values computed by hand from the papers' equations."""

from __future__ import annotations

import pytest

from sparse_lightning import ConfigError
from sparse_lightning.schedules import (
    cubic_sparsity,
    cubic_update_due,
    han_position,
    han_prune_steps,
    narang_slopes,
    narang_threshold,
    narang_update_due,
    resolve_step,
)

# Narang: q = 1, start 100, ramp 300, end 500, freq 10
#   theta = 2*1*10 / (2*200 + 3*200) = 0.02, phi = 0.03
NARANG = dict(q=1.0, start_itr=100, ramp_itr=300, end_itr=500, freq=10)


def test_narang_slopes():
    theta, phi = narang_slopes(**NARANG)
    assert theta == pytest.approx(0.02)
    assert phi == pytest.approx(0.03)


@pytest.mark.parametrize(
    "itr, expected",
    [
        (110, 0.02 * 11 / 10),  # first update: theta * (110 - 100 + 1) / 10 = 0.022
        (200, 0.202),  # 0.02 * 101 / 10
        (300, (0.02 * 201 + 0.03 * 1) / 10),  # ramp reached: 0.405
        (400, 0.705),  # (0.02 * 201 + 0.03 * 101) / 10
        (490, 0.975),  # (4.02 + 0.03 * 191) / 10: last update before end_itr
        (500, 1.005),  # the formula at end_itr is q up to the +1 offsets
    ],
)
def test_narang_threshold(itr, expected):
    assert narang_threshold(itr, **NARANG) == pytest.approx(expected)


def test_narang_threshold_rises_and_ends_near_q():
    values = [narang_threshold(i, **NARANG) for i in range(110, 500, 10)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("itr, due", [(100, False), (105, False), (110, True), (490, True), (500, False), (510, False)])
def test_narang_updates_strictly_inside_the_window(itr, due):
    assert narang_update_due(itr, 100, 500, 10) is due


# Zhu & Gupta: s_f = 0.9, s_i = 0, t0 = 100, n*dt = 400 (end 500), dt = 100
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (99, 0.0),
        (100, 0.0),  # s_i at t0
        (150, 0.0),  # held until the next update
        (200, 0.9 - 0.9 * 0.75**3),  # 0.5203125
        (300, 0.7875),  # 0.9 - 0.9 * 0.5**3
        (399, 0.7875),
        (400, 0.8859375),  # 0.9 - 0.9 * 0.25**3
        (500, 0.9),
        (10_000, 0.9),
    ],
)
def test_cubic_sparsity(step, expected):
    assert cubic_sparsity(step, final=0.9, begin_step=100, end_step=500, frequency=100) == pytest.approx(expected)


def test_cubic_with_initial_sparsity_and_other_power():
    assert cubic_sparsity(300, 0.9, 100, 500, 100, initial=0.5) == pytest.approx(0.9 - 0.4 * 0.125)  # 0.85
    assert cubic_sparsity(300, 0.8, 100, 500, 100, power=1) == pytest.approx(0.4)


def test_cubic_reaches_the_final_value_at_an_end_step_off_the_grid():
    due = [s for s in range(0, 400) if cubic_update_due(s, 0, 250, 100)]
    assert due == [0, 100, 200, 250]
    assert cubic_sparsity(240, 0.9, 0, 250, 100) == pytest.approx(0.9 - 0.9 * 0.2**3)  # last update at 200
    assert cubic_sparsity(250, 0.9, 0, 250, 100) == 0.9


def test_han_rounds():
    assert han_prune_steps(100, 50, 3) == [100, 150, 200]
    assert han_prune_steps(100, 50, 3, phases=2) == [100, 150, 200, 250, 300, 350]
    assert han_position(99, 100, 50, 3) == (-1, -1)
    assert han_position(100, 100, 50, 3) == (0, 0)
    assert han_position(149, 100, 50, 3) == (0, 0)
    assert han_position(150, 100, 50, 3) == (1, 0)
    assert han_position(260, 100, 50, 3) == (2, 0)
    assert han_position(10_000, 100, 50, 3) == (2, 0)  # training continues in the last round
    assert han_position(150, 100, 50, 3, phases=2) == (0, 1)
    assert han_position(200, 100, 50, 3, phases=2) == (1, 0)
    assert han_position(399, 100, 50, 3, phases=2) == (2, 1)


def test_fractional_steps_resolve_against_the_run_length():
    assert resolve_step(0.25, 1000, "start_step") == 250
    assert resolve_step(7, 1000, "start_step") == 7
    with pytest.raises(ConfigError, match="start_step as a float is a fraction"):
        resolve_step(1.5, 1000, "start_step")
    with pytest.raises(ConfigError, match="no finite length"):
        resolve_step(0.5, float("inf"), "end_step")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: narang_slopes(1.0, 500, 300, 100, 10), "start_step < end_step"),
        (lambda: narang_slopes(1.0, 100, 600, 500, 10), "start_step <= ramp_step <= end_step"),
        (lambda: narang_slopes(1.0, 100, 300, 500, 0), "every must be an integer >= 1"),
        (lambda: han_prune_steps(100, 0, 3), "retrain_steps must be an integer >= 1"),
        (lambda: han_prune_steps(100, 10, 0), "rounds must be an integer >= 1"),
    ],
)
def test_bad_schedule_arguments(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
