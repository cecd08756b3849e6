"""AVW and RLO loss weighting (Luo et al., arXiv:2108.04014) against hand-computed values."""

from __future__ import annotations

import io

import pytest
import torch

from rcnnlab.methods.scale_weighting import (
    ScaleLossWeighting,
    avw_weights,
    interval_loss,
    rlo_action_weights,
    rlo_reward,
    rlo_update_probabilities,
    sample_action,
    variance,
    variance_decrease_rate,
)

EPS = 1e-5


def first_draws(seed: int, n: int) -> list[float]:
    """The first `n` uniforms a torch.Generator seeded with `seed` yields (float64)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((), generator=g, dtype=torch.float64).item() for _ in range(n)]


def test_interval_statistics():
    # eq. 2: (1 + 3 + 2) / 3 = 2; eq. 3: ((1-2)² + (3-2)² + (2-2)²) / 3 = 2/3
    assert interval_loss([1.0, 3.0, 2.0]) == pytest.approx(2.0)
    assert variance([1.0, 3.0, 2.0]) == pytest.approx(2 / 3)
    assert variance([3.0, 3.0, 3.0]) == 0.0
    # eq. 4: (Var_{t-1} - Var_t) / (Var_{t-1} + ε)
    assert variance_decrease_rate(2.0, 0.5) == pytest.approx(1.5 / (2.0 + EPS))
    assert variance_decrease_rate(2.0, 2.0) == 0.0
    # ε keeps it finite after a zero-variance interval: -(2/3) / 1e-5
    assert variance_decrease_rate(0.0, 2 / 3) == pytest.approx(-(2 / 3) / EPS)


def test_avw_two_intervals_by_hand():
    w = ScaleLossWeighting(num_levels=3, method="avw", interval=3)
    # Interval 1: level 0 sees 1, 3, 2; level 1 sees 3, 3, 3; level 2 sees 7, 4, 4
    for row in ([1.0, 3.0, 7.0], [3.0, 3.0, 4.0]):
        assert w.update(row) is None
        assert w.weights() == [1.0, 1.0, 1.0]  # nothing is reweighted in the first interval
    rec = w.update([2.0, 3.0, 4.0])
    # 𝓛 = [6/3, 9/3, 15/3] = [2, 3, 5]; Var = [(1+1+0)/3, 0, (4+1+1)/3] = [2/3, 0, 2]
    assert rec.iteration == 3
    assert rec.interval_loss == pytest.approx([2.0, 3.0, 5.0])
    assert rec.variance == pytest.approx([2 / 3, 0.0, 2.0])
    # r = (Var_0 - Var_1) / (Var_0 + ε) with Var_0 = 1: [1/3, 1, -1] / (1 + ε)
    assert rec.decrease_rate == pytest.approx([(1 / 3) / (1 + EPS), 1 / (1 + EPS),
                                               -1 / (1 + EPS)])
    # Largest r: level 1 (λ=1.5), then level 0 (λ=1); Σ𝓛 = 10
    # w1 = 1 + 1.5 * 3/10 = 1.45, w0 = 1 + 1 * 2/10 = 1.2, w2 = 1
    assert w.weights() == pytest.approx([1.2, 1.45, 1.0])
    assert rec.weights == pytest.approx([1.2, 1.45, 1.0])
    assert (rec.action, rec.probabilities, rec.reward) == (None, None, None)

    # Interval 2: level 0 sees 2, 2, 2; level 1 sees 1, 3, 2; level 2 sees 6, 3, 3
    for row in ([2.0, 1.0, 6.0], [2.0, 3.0, 3.0]):
        assert w.update(row) is None
        assert w.weights() == pytest.approx([1.2, 1.45, 1.0])  # fixed within the interval
    rec = w.update([2.0, 2.0, 3.0])
    # 𝓛 = [2, 2, 4]; Var = [0, 2/3, (4+1+1)/3 = 2]
    assert rec.iteration == 6
    assert rec.interval_loss == pytest.approx([2.0, 2.0, 4.0])
    assert rec.variance == pytest.approx([0.0, 2 / 3, 2.0])
    # r0 = (2/3 - 0)/(2/3 + ε) ≈ 1, r1 = (0 - 2/3)/(0 + ε) = -66666.7, r2 = (2 - 2)/(2 + ε) = 0
    assert rec.decrease_rate == pytest.approx([(2 / 3) / (2 / 3 + EPS), -(2 / 3) / EPS, 0.0])
    # Largest r: level 0 (λ=1.5), then level 2 (λ=1); Σ𝓛 = 8
    # w0 = 1 + 1.5 * 2/8 = 1.375, w2 = 1 + 1 * 4/8 = 1.5, w1 = 1
    assert w.weights() == pytest.approx([1.375, 1.0, 1.5])
    assert [r.iteration for r in w.history] == [3, 6]


def test_weighted_total_is_eq1_with_the_current_weights():
    w = ScaleLossWeighting(num_levels=3, method="avw", interval=3)
    for row in ([1.0, 3.0, 7.0], [3.0, 3.0, 4.0], [2.0, 3.0, 4.0]):
        w.update(row)  # weights become [1.2, 1.45, 1.0] (see the test above)
    losses = [torch.tensor(v, requires_grad=True) for v in (0.5, 2.0, 1.0)]
    total = w.weighted_total(losses)
    # 1.2*0.5 + 1.45*2 + 1*1 = 0.6 + 2.9 + 1.0 = 4.5
    assert total.item() == pytest.approx(4.5)
    total.backward()
    assert [loss.grad.item() for loss in losses] == pytest.approx([1.2, 1.45, 1.0])


def test_avw_ties_and_zero_losses():
    # Equal r: the lower level index ranks first
    assert avw_weights([1.0, 1.0, 2.0], [0.5, 0.5, 0.5]) == pytest.approx(
        [1 + 1.5 * 1 / 4, 1 + 1 * 1 / 4, 1.0])
    # Σ𝓛 = 0: nothing to emphasise, every share is 0
    assert avw_weights([0.0, 0.0, 0.0], [0.1, 0.3, 0.2]) == [1.0, 1.0, 1.0]


def test_each_rlo_action_weights():
    losses = [4.0, 1.0, 3.0, 2.0]  # Σ𝓛 = 10
    rates = [0.5, 0.1, -0.2, 0.3]
    # a0 = AVW: largest r is level 0 -> 1 + 1.5*4/10 = 1.6; next level 3 -> 1 + 1*2/10 = 1.2
    assert rlo_action_weights(0, losses, rates) == pytest.approx([1.6, 1.0, 1.0, 1.2])
    # a1: smallest loss level 1 -> 1 + 1.5*1/10 = 1.15; next level 3 -> 1 + 1*2/10 = 1.2
    assert rlo_action_weights(1, losses, rates) == pytest.approx([1.0, 1.15, 1.0, 1.2])
    # a2: largest loss level 0 -> 1 + 1.5*4/10 = 1.6; next level 2 -> 1 + 1*3/10 = 1.3
    assert rlo_action_weights(2, losses, rates) == pytest.approx([1.6, 1.0, 1.3, 1.0])
    # a3: all ones
    assert rlo_action_weights(3, losses, rates) == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown RLO action"):
        rlo_action_weights(4, losses, rates)


def test_rlo_reward_sign():
    assert rlo_reward(10.0, 8.0) == 1  # summed interval loss fell
    assert rlo_reward(8.0, 10.0) == -1  # rose
    assert rlo_reward(5.0, 5.0) == 0  # tie


def test_rlo_probability_update():
    quarter = [0.25] * 4
    # Increase: p2 = 0.25 + 0.01 = 0.26; others * (1 - 0.26)/0.75 = 0.25 * 0.74/0.75
    p = rlo_update_probabilities(quarter, 2, +1)
    assert p == pytest.approx([0.25 * 0.74 / 0.75] * 2 + [0.26] + [0.25 * 0.74 / 0.75])
    assert sum(p) == pytest.approx(1.0)
    # Decrease: p0 = 0.24; others 0.25 * 0.76/0.75
    p = rlo_update_probabilities(quarter, 0, -1)
    assert p == pytest.approx([0.24] + [0.25 * 0.76 / 0.75] * 3)
    assert sum(p) == pytest.approx(1.0)
    # Tie: unchanged
    assert rlo_update_probabilities(quarter, 1, 0) == pytest.approx(quarter)
    # Clipped at 0.9: 0.895 + 0.01 = 0.905 -> 0.9; others 0.035 * 0.1/0.105
    p = rlo_update_probabilities([0.895, 0.035, 0.035, 0.035], 0, +1)
    assert p == pytest.approx([0.9] + [0.035 * 0.1 / 0.105] * 3)
    assert sum(p) == pytest.approx(1.0)
    # Clipped at 0.1: 0.105 - 0.01 = 0.095 -> 0.1; others * 0.9/0.895
    p = rlo_update_probabilities([0.105, 0.3, 0.3, 0.295], 0, -1)
    assert p == pytest.approx([0.1, 0.3 * 0.9 / 0.895, 0.3 * 0.9 / 0.895, 0.295 * 0.9 / 0.895])
    assert sum(p) == pytest.approx(1.0)


def test_sample_action_is_inverse_cdf():
    probs = [0.1, 0.2, 0.3, 0.4]  # bins [0, .1), [.1, .3), [.3, .6), [.6, 1)
    us = (0.0, 0.05, 0.1, 0.29, 0.31, 0.59, 0.61, 0.999)
    assert [sample_action(probs, u) for u in us] == [0, 0, 1, 1, 2, 2, 3, 3]
    # Probabilities summing a hair under 1 still map every u < 1 to an action
    assert sample_action([0.25, 0.25, 0.25, 0.2499999], 0.9999999) == 3


def test_rlo_run_by_hand():
    seed = 123
    u1, u2, u3 = first_draws(seed, 3)
    w = ScaleLossWeighting(num_levels=3, method="rlo", interval=2, seed=seed)
    # Interval 1: level 0 sees 1, 3; level 1 sees 3, 3; level 2 sees 4, 8
    assert w.update([1.0, 3.0, 4.0]) is None
    assert w.weights() == [1.0, 1.0, 1.0]
    rec = w.update([3.0, 3.0, 8.0])
    # 𝓛 = [2, 3, 6], Σ = 11; Var = [1, 0, 4]; r = [(1-1), (1-0), (1-4)] / (1 + ε)
    assert rec.interval_loss == pytest.approx([2.0, 3.0, 6.0])
    assert rec.variance == pytest.approx([1.0, 0.0, 4.0])
    # No action ran in interval 1, so no reward; the first action is drawn from the 1/4s
    assert rec.reward is None
    assert rec.probabilities == pytest.approx([0.25] * 4)
    a1 = sample_action([0.25] * 4, u1)
    assert rec.action == a1
    by_action = [
        [1 + 2 / 11, 1 + 1.5 * 3 / 11, 1.0],  # a0: largest r level 1 (λ=1.5), then level 0
        [1 + 1.5 * 2 / 11, 1 + 3 / 11, 1.0],  # a1: smallest 𝓛 level 0, then level 1
        [1.0, 1 + 3 / 11, 1 + 1.5 * 6 / 11],  # a2: largest 𝓛 level 2, then level 1
        [1.0, 1.0, 1.0],  # a3
    ]
    assert w.weights() == pytest.approx(by_action[a1])

    # Interval 2: 𝓛 = [1, 2, 3], Σ = 6 < 11 -> reward +1, p(a1) = 0.26
    w.update([1.0, 2.0, 3.0])
    rec = w.update([1.0, 2.0, 3.0])
    assert rec.reward == 1
    p2 = [0.26 if a == a1 else 0.25 * 0.74 / 0.75 for a in range(4)]
    assert rec.probabilities == pytest.approx(p2)
    a2 = sample_action(p2, u2)
    assert rec.action == a2
    # Var = [0, 0, 0] after [1, 0, 4]: r = [1/(1+ε), 0/(0+ε), 4/(4+ε)]
    assert rec.decrease_rate == pytest.approx([1 / (1 + EPS), 0.0, 4 / (4 + EPS)])
    assert w.weights() == pytest.approx(
        rlo_action_weights(a2, [1.0, 2.0, 3.0], [1 / (1 + EPS), 0.0, 4 / (4 + EPS)]))

    # Interval 3: 𝓛 = [2, 3, 4], Σ = 9 > 6 -> reward -1, p(a2) moves down by 0.01
    w.update([2.0, 3.0, 4.0])
    rec = w.update([2.0, 3.0, 4.0])
    assert rec.reward == -1
    assert rec.probabilities == pytest.approx(rlo_update_probabilities(p2, a2, -1))
    assert rec.probabilities[a2] == pytest.approx(p2[a2] - 0.01)
    assert rec.action == sample_action(rec.probabilities, u3)
    assert [r.iteration for r in w.history] == [2, 4, 6]


@pytest.mark.parametrize("method", ["avw", "rlo"])
def test_state_dict_round_trip_continues_exactly(method):
    g = torch.Generator().manual_seed(0)
    stream = (torch.rand(40, 4, generator=g, dtype=torch.float64) * 2).tolist()
    original = ScaleLossWeighting(num_levels=4, method=method, interval=3, seed=7)
    for row in stream[:10]:  # three intervals and one iteration into the fourth
        original.update(row)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # as a checkpoint is read back
    # A different seed proves the generator state, not the seed, drives later draws
    resumed = ScaleLossWeighting(num_levels=4, method=method, interval=3, seed=999)
    resumed.load_state_dict(state)
    assert resumed.weights() == original.weights()
    assert resumed.history == original.history
    for row in stream[10:]:
        assert resumed.update(row) == original.update(row)
        assert resumed.weights() == original.weights()
    assert len(original.history) == 13
    assert resumed.history == original.history
    if method == "rlo":
        assert all(r.action is not None for r in original.history)


def test_load_state_dict_rejects_other_settings():
    state = ScaleLossWeighting(num_levels=4, method="rlo", interval=3).state_dict()
    with pytest.raises(ValueError, match="saved interval 3"):
        ScaleLossWeighting(num_levels=4, method="rlo", interval=5).load_state_dict(state)
    with pytest.raises(ValueError, match="saved method 'rlo'"):
        ScaleLossWeighting(num_levels=4, method="avw", interval=3).load_state_dict(state)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="unknown method"):
        ScaleLossWeighting(num_levels=4, method="sgd")
    with pytest.raises(ValueError, match="2 lambdas for 1 levels"):
        ScaleLossWeighting(num_levels=1, method="avw")
    w = ScaleLossWeighting(num_levels=3, method="avw", interval=2)
    with pytest.raises(ValueError, match="2 level losses for 3 levels"):
        w.update([1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        w.update([1.0, float("nan"), 2.0])
