"""The policy-gradient objective's random stream: the actions it samples come from a generator
of their own, which this hook saves in last.pt so that a resumed run draws the same actions.
Its figures (`pg_baseline_ap`, `pg_mean_reward`, `pg_mean_advantage`) come back in the model's
loss dict and are averaged with the losses."""

from __future__ import annotations

import torch

from rcnnlab.engine.loop import HookBase


class PolicyGradientState(HookBase):
    """Saves and restores the generator the RoI head samples its actions from."""

    name = "policy_gradient"
    per_rank = True  # each rank samples its own actions

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        """The generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore it."""
        self.generator.set_state(state["generator"])
