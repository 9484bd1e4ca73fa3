"""`GroupedSGD`: SGD with momentum over a grouped network whose groups each have their own learning rate and
weight decay, so a hyperparameter grid trains in one pass."""

from __future__ import annotations

import torch


class GroupedSGD(torch.optim.Optimizer):
    """SGD with momentum over a grouped network whose K groups each have their own learning rate and weight decay.

    Every parameter is its K groups' tensors concatenated along dim 0 (`featcache.models.decoders.stack_states`),
    so group k's slice of a parameter ``p`` of ``K * c`` rows is rows ``k*c .. (k+1)*c``. The update is
    `torch.optim.SGD`'s (no dampening, not Nesterov), with per-row factors in place of its scalars:
    ``g = grad + wd_k * p``; ``b = g`` at the first step, then ``b = momentum * b + g``; ``p -= lr_k * b``.
    A group therefore follows exactly the path a separate `torch.optim.SGD(lr_k, momentum, wd_k)` run takes,
    up to floating-point rounding. The state (``momentum_buffer`` per parameter) is the same as SGD's.
    """

    def __init__(self, params, lrs: list[float], weight_decays: list[float], *, momentum: float) -> None:
        if len(lrs) != len(weight_decays):
            raise ValueError(f"{len(lrs)} learning rates for {len(weight_decays)} weight decays")
        super().__init__(params, {"lrs": list(lrs), "weight_decays": list(weight_decays), "momentum": momentum})
        self._factors: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}

    def _row_factors(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(-lr, wd) of each element of ``p``: tensors of ``p``'s shape and memory layout, as the fast path of
        the multi-tensor ops needs (they would fall back to one kernel per tensor to broadcast)."""
        if p not in self._factors:
            k_groups = len(group["lrs"])
            if p.ndim == 0 or p.shape[0] % k_groups:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not {k_groups} groups along dim 0")
            shape = (-1,) + (1,) * (p.ndim - 1)

            def rows(values: list[float]) -> torch.Tensor:
                per_group = torch.tensor(values, dtype=p.dtype, device=p.device)
                return torch.empty_like(p).copy_(per_group.repeat_interleave(p.shape[0] // k_groups).view(shape))

            self._factors[p] = (rows([-lr for lr in group["lrs"]]), rows(group["weight_decays"]))
        return self._factors[p]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("GroupedSGD takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            factors = [self._row_factors(p, group) for p in params]
            # Multi-tensor ops: a handful of kernels per step, not four per parameter.
            grads = torch._foreach_addcmul([p.grad for p in params], [wd for _, wd in factors], params)
            if group["momentum"] != 0:
                states = [self.state[p] for p in params]
                started = [k for k, state in enumerate(states) if "momentum_buffer" in state]
                for k, state in enumerate(states):  # a parameter's first step: the buffer is its gradient
                    state.setdefault("momentum_buffer", grads[k])
                if started:
                    buffers = [states[k]["momentum_buffer"] for k in started]
                    torch._foreach_mul_(buffers, group["momentum"])
                    torch._foreach_add_(buffers, [grads[k] for k in started])
                grads = [state["momentum_buffer"] for state in states]
            torch._foreach_addcmul_(params, grads, [neg_lr for neg_lr, _ in factors])
