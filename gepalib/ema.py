"""The exponential moving average of the weights that the submission quantizes (see docs/training.md)."""
from __future__ import annotations

import torch


class EMA:
    """fp32 shadow of every state-dict tensor: ema <- d*ema + (1-d)*theta after each step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        sd = model.state_dict()
        self.names = [k for k, v in sd.items() if v.is_floating_point()]
        self.shadow = {k: v.detach().float().clone() for k, v in sd.items()}
        self._live = [sd[k] for k in self.names]  # views of the live tensors
        self._dtypes = {k: v.dtype for k, v in sd.items()}

    @torch.no_grad()
    def update(self) -> None:
        ema = [self.shadow[k] for k in self.names]
        live = [t if t.dtype == torch.float32 else t.float() for t in self._live]
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, live, alpha=1.0 - self.decay)

    def export(self) -> dict[str, torch.Tensor]:
        """EMA weights cast to each tensor's dtype (E_tok back to bf16), on CPU."""
        return {k: v.to(self._dtypes[k]).cpu() for k, v in self.shadow.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if set(sd) != set(self.shadow):
            raise ValueError("EMA state does not match the model's state-dict keys")
        for k, v in sd.items():
            self.shadow[k].copy_(v)
