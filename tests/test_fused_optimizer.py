"""tms.training.optim.build_optimizer: torch's fused Adam/AdamW where the config chose no implementation, with the
same update as the per-tensor loop (float rounding apart); the config's own choice and other optimisers untouched."""
from functools import partial

import torch

from tms.training.optim import build_optimizer


def params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]


def test_fused_where_nothing_was_chosen_and_the_same_updates_as_the_loop():
    factory = partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.98), weight_decay=0.1)
    fused_params, loop_params = params(), params()
    fused = build_optimizer(factory, fused_params)
    loop = factory(loop_params, foreach=False)
    assert fused.defaults["fused"] is True and not loop.defaults.get("fused")
    for step in range(5):
        for ps in (fused_params, loop_params):
            for i, p in enumerate(ps):
                p.grad = torch.full_like(p, 0.3 * (i + 1)) + torch.sin(p.detach() * (step + 1))
        fused.step(), loop.step()
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_configs_choice_and_other_optimisers_are_kept():
    assert not build_optimizer(partial(torch.optim.AdamW, lr=1e-3, foreach=False), params()).defaults.get("fused")
    assert build_optimizer(partial(torch.optim.AdamW, lr=1e-3, fused=False), params()).defaults["fused"] is False
    sgd = build_optimizer(partial(torch.optim.SGD, lr=1e-3), params())
    assert isinstance(sgd, torch.optim.SGD) and not sgd.defaults.get("fused")
    ints = [torch.nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)]
    assert not build_optimizer(partial(torch.optim.Adam, lr=1e-3), ints).defaults.get("fused")  # not floating
