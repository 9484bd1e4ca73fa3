"""featcache.train.optim: GroupedSGD steps each group as torch's SGD with its own learning rate and weight decay."""

import torch

from featcache.models.decoders import build_decoder, stack_states
from featcache.train.optim import GroupedSGD


def test_grouped_sgd_is_torch_sgd_per_group():
    """Per-group learning rate and weight decay, momentum included, over several steps: K torch.optim.SGD runs."""
    torch.manual_seed(0)
    lrs, wds = [1e-2, 5e-2, 2e-3], [1e-4, 1e-2, 0.0]
    singles = [build_decoder("sd", 16, patch_size=8) for _ in lrs]
    grouped = build_decoder("sd", 16, len(lrs), patch_size=8)
    grouped.load_state_dict(stack_states([d.state_dict() for d in singles]))
    optimisers = [
        torch.optim.SGD(d.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        for d, lr, wd in zip(singles, lrs, wds, strict=True)
    ]
    optimiser = GroupedSGD(grouped.parameters(), lrs, wds, momentum=0.9)
    for _ in range(4):
        grads = [[torch.randn_like(p) for p in d.parameters()] for d in singles]
        for d, g, o in zip(singles, grads, optimisers, strict=True):
            for p, x in zip(d.parameters(), g, strict=True):
                p.grad = x
            o.step()
        for i, p in enumerate(grouped.parameters()):
            p.grad = torch.cat([g[i] for g in grads])
        optimiser.step()
    expected = stack_states([d.state_dict() for d in singles])
    for name, value in grouped.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=name)
