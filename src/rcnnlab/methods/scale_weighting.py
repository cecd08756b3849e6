"""Dynamic per-FPN-level loss weights: AVW and RLO of Luo et al.

Y. Luo, X. Cao, J. Zhang, P. Cheng, T. Wang, Q. Feng, "Dynamic Multi-Scale Loss Optimization
for Object Detection", arXiv:2108.04014; Multimedia Tools and Applications 82, 2349-2367 (2023),
doi:10.1007/s11042-022-13164-9.

Sources. The stored copies that could be reached hold the title, abstract, keywords and the
start of the introduction only, not Section 3 with the equations:
https://ar5iv.org/html/2108.04014, https://tomesphere.com/paper/2108.04014,
https://arxivlens.com/PaperView/Details/dynamic-multi-scale-loss-optimization-for-object-detection-2841-1845038
and the Springer abstract (doi above). The abstract confirms the design: the loss is split by
scale level; AVW weights levels "according to the statistical variance"; RLO "decide[s] the
weighting scheme probabilistically"; nothing is learned by back-propagation. No public
implementation was found. So equations 2-9 below are the summary of the method this project
was specified from, written out in full here with its equation numbers (1-5, 7, 9; the action
set and the initial probabilities are unnumbered), not a transcription of Section 3. Where that
summary leaves room, the reading chosen is stated.

Notation: levels i = 1..n, intervals t = 1, 2, ... of α iterations, I_t the iterations of
interval t, L_{i,k} the level-i loss at iteration k.

    (1) L = Σ_i w_i L_i
    (2) 𝓛_{i,t} = (1/α) Σ_{k∈I_t} L_{i,k}
    (3) Var_{i,t} = (1/α) Σ_{k∈I_t} (L_{i,k} − 𝓛_{i,t})²
    (4) r_{i,t} = (Var_{i,t−1} − Var_{i,t}) / (Var_{i,t−1} + ε),   Var_{i,0} = 1, r_{i,0} = 0
    (5) w_j = 1 + λ_k 𝓛_{j,t} / Σ_i 𝓛_{i,t} for j the level of k-th largest r_{·,t}
        (λ_1 = 1.5, λ_2 = 1); every other level w = 1
        RLO actions: a0 = AVW (eq. 5); a1 = eq. 5 on the two levels of smallest 𝓛 (smallest
        first); a2 = eq. 5 on the two of largest 𝓛 (largest first); a3 = all weights 1;
        p(a) = 1/4 at the start
    (7) R_t = sign(Σ_i 𝓛_{i,t−1} − Σ_i 𝓛_{i,t})
    (9) p'(a_t) = clip(p(a_t) + γ R_t, p_min, p_max); p'(b) = p(b) (1 − p'(a_t)) / Σ_{c≠a_t} p(c)
        for b ≠ a_t; a_{t+1} is drawn from p'

Readings chosen:
- Var (eq. 3) is the variance of the level's α per-iteration losses within the interval, not of
  𝓛 across intervals: Var is indexed by the interval, starts at 1 and is compared with the
  previous interval's in eq. 4, so it is a per-interval statistic. It is the population variance
  (1/α); 1/(α − 1) would scale every level alike and leave the ranking of eq. 4 unchanged up to ε.
- 𝓛 (eq. 2) is the interval mean; a sum differs by the factor α, which cancels in the ratio of
  eq. 5 and the sign of eq. 7, so only the logged value depends on it.
- Eq. 4 matters only through the ranking it induces. 1 − Var_t/Var_{t−1} and Var_{t−1}/Var_t rank
  levels the same way, so AVW does not depend on which of these forms the paper uses.
- The weights are 1 during the first interval. At its end, r uses Var_{i,0} = 1, so AVW already
  reweights the second interval. r_{i,0} = 0 is never used for a decision.
- RLO takes no action in the first interval (action None). Nothing is rewarded at its end, for
  there is no 𝓛_{i,0}. The first action is drawn there from the initial 1/4s.
- Eq. 9 clips only the rewarded action. The others are rescaled in proportion and not clipped,
  so they can fall below p_min while that action sits at p_max. A tie (R = 0) leaves p unchanged.
- Ties in a ranking go to the lower level index; if every 𝓛 is 0, each share in eq. 5 is 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

NUM_ACTIONS = 4
ACTION_NAMES = ("avw", "smallest_loss", "largest_loss", "uniform")


def interval_loss(losses: Sequence[float]) -> float:
    """Eq. 2: one level's interval loss 𝓛_{i,t} = (1/α) Σ_{k∈I_t} L_{i,k}.

    `losses` are that level's per-iteration losses over the α iterations of the interval.
    """
    if not losses:
        raise ValueError("an interval needs the loss of at least one iteration")
    return math.fsum(losses) / len(losses)


def variance(losses: Sequence[float]) -> float:
    """Eq. 3: Var_{i,t} = (1/α) Σ_{k∈I_t} (L_{i,k} − 𝓛_{i,t})² over the interval's iterations."""
    mean = interval_loss(losses)
    return math.fsum((x - mean) ** 2 for x in losses) / len(losses)


def variance_decrease_rate(prev_var: float, var: float, eps: float = 1e-5) -> float:
    """Eq. 4: r_{i,t} = (Var_{i,t−1} − Var_{i,t}) / (Var_{i,t−1} + ε).

    Positive when the level's loss steadied since the previous interval; ε keeps it finite
    when the previous variance was 0.
    """
    return (prev_var - var) / (prev_var + eps)


def _ranked(values: Sequence[float], *, descending: bool) -> list[int]:
    # Break ties by level index so that equal statistics give the same weights on every run
    sign = -1.0 if descending else 1.0
    return sorted(range(len(values)), key=lambda i: (sign * values[i], i))


def _boost(interval_losses: Sequence[float], chosen: Sequence[int],
           lambdas: Sequence[float]) -> list[float]:
    """Eq. 5 for the levels `chosen`, in λ order: w_j = 1 + λ_k 𝓛_j / Σ_i 𝓛_i, the rest 1."""
    total = math.fsum(interval_losses)
    weights = [1.0] * len(interval_losses)
    for lam, j in zip(lambdas, chosen, strict=True):
        # When every level's loss is 0 there is nothing to emphasise
        share = interval_losses[j] / total if total > 0 else 0.0
        weights[j] = 1.0 + lam * share
    return weights


def _check_levels(interval_losses: Sequence[float], decrease_rates: Sequence[float],
                  lambdas: Sequence[float]) -> None:
    if len(interval_losses) != len(decrease_rates):
        raise ValueError(f"{len(interval_losses)} interval losses but {len(decrease_rates)} "
                         "decrease rates: give one of each per level")
    if not 1 <= len(lambdas) <= len(interval_losses):
        raise ValueError(f"{len(lambdas)} lambdas for {len(interval_losses)} levels: give "
                         "between 1 and as many lambdas as levels")


def avw_weights(interval_losses: Sequence[float], decrease_rates: Sequence[float],
                lambdas: Sequence[float] = (1.5, 1.0)) -> list[float]:
    """Eq. 5 (AVW): w_j = 1 + λ_k 𝓛_{j,t} / Σ_i 𝓛_{i,t} for the level j of k-th largest r_{j,t}.

    With the default λ = (1.5, 1) the two levels whose variance fell fastest are boosted, the
    faster one by 1.5 times its share of the summed interval loss; every other level keeps 1.
    """
    _check_levels(interval_losses, decrease_rates, lambdas)
    order = _ranked(decrease_rates, descending=True)
    return _boost(interval_losses, order[: len(lambdas)], lambdas)


def rlo_action_weights(action: int, interval_losses: Sequence[float],
                       decrease_rates: Sequence[float],
                       lambdas: Sequence[float] = (1.5, 1.0)) -> list[float]:
    """The weights RLO action `action` sets, each boosted pair weighted by eq. 5.

    a0: AVW (the levels of largest r); a1: the levels of smallest 𝓛_{i,t}, the smallest getting
    λ_1; a2: the levels of largest 𝓛_{i,t}, the largest getting λ_1; a3: every weight 1.
    """
    _check_levels(interval_losses, decrease_rates, lambdas)
    k = len(lambdas)
    if action == 0:
        return avw_weights(interval_losses, decrease_rates, lambdas)
    if action == 1:
        return _boost(interval_losses, _ranked(interval_losses, descending=False)[:k], lambdas)
    if action == 2:
        return _boost(interval_losses, _ranked(interval_losses, descending=True)[:k], lambdas)
    if action == 3:
        return [1.0] * len(interval_losses)
    raise ValueError(f"unknown RLO action {action!r}: use 0-{NUM_ACTIONS - 1} ({ACTION_NAMES})")


def rlo_reward(prev_total_loss: float, total_loss: float) -> int:
    """Eq. 7: R_t = sign(Σ_i 𝓛_{i,t−1} − Σ_i 𝓛_{i,t}).

    +1 when the summed interval loss fell, −1 when it rose, 0 on a tie.
    """
    diff = prev_total_loss - total_loss
    return int(diff > 0) - int(diff < 0)


def rlo_update_probabilities(probs: Sequence[float], action: int, reward: int,
                             gamma: float = 0.01, p_min: float = 0.1,
                             p_max: float = 0.9) -> list[float]:
    """Eq. 9: p'(a) = clip(p(a) + γ R, p_min, p_max) for the last action a.

    Every other action's probability is multiplied by (1 − p'(a)) / Σ_{b≠a} p(b), so the
    probabilities still sum to 1.
    """
    new = min(max(probs[action] + gamma * reward, p_min), p_max)
    rest = math.fsum(p for b, p in enumerate(probs) if b != action)
    if rest <= 0:
        raise ValueError(f"probabilities {list(probs)}: the actions other than {action} have "
                         "probability 0, so they cannot be rescaled")
    scale = (1.0 - new) / rest
    return [new if b == action else p * scale for b, p in enumerate(probs)]


def sample_action(probs: Sequence[float], u: float) -> int:
    """The action whose cumulative-probability bin holds `u` ∈ [0, 1) (inverse-CDF sampling)."""
    cumulative = 0.0
    for action, p in enumerate(probs):
        cumulative += p
        if u < cumulative:
            return action
    # Rounding can leave the cumulative sum a hair under 1
    return len(probs) - 1


@dataclass(frozen=True)
class IntervalRecord:
    """The statistics and decision at the end of one interval, for logs and plots.

    iteration: iterations seen when the interval closed. interval_loss, variance,
    decrease_rate: 𝓛_{i,t}, Var_{i,t}, r_{i,t} per level (eqs. 2-4). weights: the weights set
    for the next interval. action: the RLO action drawn for the next interval (None for AVW).
    probabilities: the distribution it was drawn from, after eq. 9 (None for AVW). reward:
    eq. 7 for the action of the interval that closed (None for AVW and the first interval).
    """

    iteration: int
    interval_loss: list[float]
    variance: list[float]
    decrease_rate: list[float]
    weights: list[float]
    action: int | None
    probabilities: list[float] | None
    reward: int | None

    def as_row(self) -> dict[str, float | int | None]:
        """Flat form for a CSV row: per-level columns suffixed by the level index."""
        row: dict[str, float | int | None] = {"iteration": self.iteration}
        for name, values in (("loss", self.interval_loss), ("var", self.variance),
                             ("r", self.decrease_rate), ("w", self.weights)):
            row.update({f"{name}_level{i}": v for i, v in enumerate(values)})
        row["action"] = self.action
        row.update({f"p_action{a}": p for a, p in enumerate(self.probabilities or [])})
        row["reward"] = self.reward
        return row

    @classmethod
    def from_row(cls, row: dict[str, float | None]) -> IntervalRecord:
        """Back from `as_row`'s form (a row of scale_weights.csv, numbers parsed)."""
        def levels(name: str) -> list[float]:
            return [v for k, v in row.items() if k.startswith(f"{name}_level")]

        probabilities = [v for k, v in row.items() if k.startswith("p_action")]
        action, reward = row.get("action"), row.get("reward")
        return cls(int(row["iteration"]), levels("loss"), levels("var"), levels("r"),
                   levels("w"), None if action is None else int(action),
                   probabilities if any(p is not None for p in probabilities) else None,
                   None if reward is None else int(reward))


class ScaleLossWeighting:
    """Per-FPN-level loss weights that AVW or RLO re-sets every `interval` iterations.

    Call `update` once per iteration with the detached per-level losses. Build the loss to
    back-propagate with `weighted_total`. The weights stay fixed within an interval.
    """

    def __init__(self, *, num_levels: int, method: Literal["avw", "rlo"], interval: int = 100,
                 lambdas: Sequence[float] = (1.5, 1.0), eps: float = 1e-5, gamma: float = 0.01,
                 p_min: float = 0.1, p_max: float = 0.9, seed: int = 0) -> None:
        if method not in ("avw", "rlo"):
            raise ValueError(f"unknown method {method!r}: use avw or rlo")
        if interval < 1:
            raise ValueError(f"interval {interval}: give at least 1 iteration")
        if not 1 <= len(lambdas) <= num_levels:
            raise ValueError(f"{len(lambdas)} lambdas for {num_levels} levels: give between 1 "
                             "and as many lambdas as levels")
        if eps <= 0 or gamma < 0:
            raise ValueError(f"eps {eps}, gamma {gamma}: eps must be > 0 and gamma >= 0")
        if not 0 <= p_min <= 1 / NUM_ACTIONS <= p_max <= 1:
            raise ValueError(f"p_min {p_min}, p_max {p_max}: need 0 <= p_min <= "
                             f"{1 / NUM_ACTIONS} <= p_max <= 1 (the initial probability)")
        self.num_levels = num_levels
        self.method = method
        self.interval = interval
        self.lambdas = tuple(float(lam) for lam in lambdas)
        self.eps = eps
        self.gamma = gamma
        self.p_min = p_min
        self.p_max = p_max
        self._generator = torch.Generator().manual_seed(seed)
        self._iteration = 0
        self._buffer: list[list[float]] = []
        self._weights = [1.0] * num_levels
        self._prev_variance = [1.0] * num_levels
        self._prev_interval_loss: list[float] | None = None
        self._probabilities = [1.0 / NUM_ACTIONS] * NUM_ACTIONS
        self._action: int | None = None
        self.history: list[IntervalRecord] = []

    def weights(self) -> list[float]:
        """The current weight of each level."""
        return list(self._weights)

    def update(self, level_losses: Sequence[float]) -> IntervalRecord | None:
        """Record one iteration's detached per-level losses; at an interval's end, re-set weights.

        Returns the interval's record when this iteration closed one, otherwise None.
        """
        values = [float(x) for x in level_losses]
        if len(values) != self.num_levels:
            raise ValueError(f"{len(values)} level losses for {self.num_levels} levels")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite level loss {values}: the weights would be undefined")
        self._buffer.append(values)
        self._iteration += 1
        if len(self._buffer) < self.interval:
            return None
        return self._close_interval()

    def _close_interval(self) -> IntervalRecord:
        per_level = [list(col) for col in zip(*self._buffer, strict=True)]
        losses = [interval_loss(col) for col in per_level]
        variances = [variance(col) for col in per_level]
        rates = [variance_decrease_rate(prev, var, self.eps)
                 for prev, var in zip(self._prev_variance, variances, strict=True)]
        action = probabilities = reward = None
        if self.method == "avw":
            self._weights = avw_weights(losses, rates, self.lambdas)
        else:
            # Both are None only until the first interval closes: no action to reward yet
            if self._action is not None and self._prev_interval_loss is not None:
                reward = rlo_reward(math.fsum(self._prev_interval_loss), math.fsum(losses))
                self._probabilities = rlo_update_probabilities(
                    self._probabilities, self._action, reward, self.gamma, self.p_min, self.p_max)
            u = torch.rand((), generator=self._generator, dtype=torch.float64).item()
            action = sample_action(self._probabilities, u)
            probabilities = list(self._probabilities)
            self._weights = rlo_action_weights(action, losses, rates, self.lambdas)
            self._action = action
        self._prev_variance = variances
        self._prev_interval_loss = losses
        self._buffer = []
        record = IntervalRecord(iteration=self._iteration, interval_loss=losses,
                                variance=variances, decrease_rate=rates,
                                weights=list(self._weights), action=action,
                                probabilities=probabilities, reward=reward)
        self.history.append(record)
        return record

    def weighted_total(self, level_losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """Eq. 1: Σ_i w_i L_i with the current weights: the loss to back-propagate."""
        if len(level_losses) != self.num_levels:
            raise ValueError(f"{len(level_losses)} level losses for {self.num_levels} levels")
        return sum(w * loss for w, loss in zip(self._weights, level_losses, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly, in weights_only-loadable types."""
        return {
            "num_levels": self.num_levels,
            "method": self.method,
            "interval": self.interval,
            "iteration": self._iteration,
            "buffer": copy.deepcopy(self._buffer),
            "weights": list(self._weights),
            "prev_variance": list(self._prev_variance),
            "prev_interval_loss": copy.copy(self._prev_interval_loss),
            "probabilities": list(self._probabilities),
            "action": self._action,
            "generator": self._generator.get_state(),
            "history": [asdict(record) for record in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; the run must have the same levels, method, interval."""
        for key in ("num_levels", "method", "interval"):
            if state[key] != getattr(self, key):
                raise ValueError(f"saved {key} {state[key]!r} differs from this run's "
                                 f"{getattr(self, key)!r}: resume with the same settings")
        state = copy.deepcopy(state)
        self._iteration = state["iteration"]
        self._buffer = state["buffer"]
        self._weights = state["weights"]
        self._prev_variance = state["prev_variance"]
        self._prev_interval_loss = state["prev_interval_loss"]
        self._probabilities = state["probabilities"]
        self._action = state["action"]
        self._generator.set_state(state["generator"])
        self.history = [IntervalRecord(**record) for record in state["history"]]
