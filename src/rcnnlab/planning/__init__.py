"""Planning: a dataset's fingerprint and the machine -> the config values to train with.

Reads `rcnnlab.data` (the fingerprint), the model's anchors and the device; writes a config
tree. Only `rcnnlab.api` and the CLI use it: nothing below imports it.
"""

from rcnnlab.planning.hardware import Hardware
from rcnnlab.planning.plan import Plan, make_plan, plan_data
from rcnnlab.planning.rules import Choice

__all__ = ["Choice", "Hardware", "Plan", "make_plan", "plan_data"]
