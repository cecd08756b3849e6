"""Mixed precision (`train.amp`): the forward pass under `torch.autocast`, and for fp16 the
backward pass through a gradient scaler (whose state last.pt keeps).

bf16 has float32's range, so its gradients need no scaling; fp16 does, and autocast on the CPU
has no fp16 kernels worth having, so fp16 is refused there. Autocast speeds up the
convolutions and matrix products (backbone, FPN, the heads' layers); the heads hand their
outputs on in float32, so anchors, proposals, box encoding and decoding, the samplers and the
losses are float32 (`rcnnlab.models.heads.float32_boxes`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor

from rcnnlab.models.precision import DTYPES, check_amp, resolve_amp


class MixedPrecision:
    """How a training step computes: `off` (float32), `bf16`, `fp16` (CUDA only) or `auto`
    (bf16 where the device computes it natively, else off; `mode` holds the choice). The loop
    owns it; the checkpoint hook saves its state with the loop's. With `off` a step is exactly
    the float32 step: autocast disabled, plain backward, clip, optimizer step."""

    def __init__(self, mode: str, device: torch.device):
        check_amp(mode, device, "train.amp")
        self.mode, self.device = resolve_amp(mode, device), device
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """The context the forward pass runs in."""
        return torch.autocast(self.device.type, dtype=DTYPES.get(self.mode, torch.bfloat16),
                              enabled=self.mode != "off")

    def backward(self, loss: Tensor) -> None:
        """Backward, through the scaler when there is one."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float | None) -> None:
        """Clip (on unscaled gradients) and step; the scaler skips steps with inf/NaN grads."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        """The scaler's state (fp16), else nothing."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore it."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
