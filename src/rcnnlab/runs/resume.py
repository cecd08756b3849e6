"""What a resumed run may change: `--resume` continues the saved state (weights, optimizer,
scheduler, random streams), so a key that state was built from cannot change without the run's
record saying something false (`--resume train.lr=0.05` would write lr 0.05 into config.yaml
while the optimizer in last.pt goes on at the old rate).

Keys resume applies exactly are listed in `APPLIED`: how long to train, how often to validate
and log, where and with how many threads and workers, and the inference options of validation.
Any other change is refused, naming the keys.
"""

from __future__ import annotations

import logging
from typing import Any

from rcnnlab.config import Config
from rcnnlab.errors import RunError

log = logging.getLogger(__name__)

# keys (or sections, ending in ".") a resumed run takes from the new config
APPLIED = ("train.epochs", "train.eval_every", "train.log_every", "train.record",
           "train.device", "train.threads", "data.workers", "eval.")
# what the config records rather than sets
IGNORED = ("plan",)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def changed_keys(saved: Config, given: Config) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs: key -> (saved, given)."""
    a, b = _flat(saved.model_dump(mode="json")), _flat(given.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(IGNORED)}


def check_resume_config(saved: Config, given: Config, where: str) -> None:
    """Refuse keys a resume cannot apply (a RunError naming them and the fix); log those it
    applies."""
    changes = changed_keys(saved, given)
    refused = {k: v for k, v in changes.items()
               if not any(k == a or (a.endswith(".") and k.startswith(a)) for a in APPLIED)}
    if refused:
        applied = ", ".join(k.rstrip(".") + (".*" if k.endswith(".") else "") for k in APPLIED)
        listed = "; ".join(f"{k} {old!r} in the run, {new!r} given"
                           for k, (old, new) in list(refused.items())[:6])
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        raise RunError(
            f"{where}: --resume continues the saved optimizer, schedule and weights, which "
            f"these changes would not reach: {listed}{more}. Fix: resume without them (resume "
            f"applies {applied}), or start a new run from these weights with "
            "train.finetune_from=<run>/checkpoints/last.pt")
    for key, (old, new) in changes.items():
        log.info("resume applies %s: %r -> %r", key, old, new)
