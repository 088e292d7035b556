"""The shared optimizer: parameter groups by head/backbone and decay, warm-up then cosine per step."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gnr650.training.optim import OptimizerSettingError, warmup_cosine_optimizer
from tests.helpers import optimizer_settings

HP = optimizer_settings(lr_head=1e-2, min_lr_ratio=0.1)


def _net() -> nn.Module:
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    net.add_module("frozen", nn.Linear(4, 4))
    net.add_module("head", nn.Linear(4, 2))
    net.frozen.requires_grad_(False)
    return net


def test_groups_split_head_and_backbone_and_exempt_biases_and_norms_from_decay():
    net = _net()
    optimizer, _ = warmup_cosine_optimizer(net, ["head"], HP, total_steps=100, epochs=10, device=torch.device("cpu"))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["head"] == {id(net.head.weight)} and ids["head_no_decay"] == {id(net.head.bias)}
    assert ids["backbone"] == {id(net.body[0].weight)}
    assert ids["backbone_no_decay"] == {id(net.body[0].bias), id(net.body[1].weight), id(net.body[1].bias)}
    assert all(id(p) not in set().union(*ids.values()) for p in net.frozen.parameters())
    assert groups["head"]["initial_lr"] == HP.lr_head and groups["backbone"]["initial_lr"] == HP.lr_backbone
    assert groups["head"]["weight_decay"] == HP.weight_decay and groups["head_no_decay"]["weight_decay"] == 0.0


def test_schedule_warms_up_for_one_epoch_then_decays_by_cosine_to_the_floor():
    optimizer, schedule = warmup_cosine_optimizer(
        _net(), ["head"], HP, total_steps=100, epochs=10, device=torch.device("cpu")
    )
    factors = []
    for _ in range(100):
        factors.append(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["initial_lr"])
        optimizer.step()
        schedule.step()
    warmup = 10  # one of ten epochs of 100 steps
    assert factors[:warmup] == pytest.approx([(s + 1) / (warmup + 1) for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    mid = warmup + (100 - warmup) // 2
    assert factors[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    assert factors[-1] > 0.1


@pytest.mark.parametrize(
    "warmup_epochs,epochs,total_steps,min_lr_ratio",
    [(1.0, 10, 100, 0.1), (0.0, 10, 100, 0.0), (0.0, 1, 1, 0.0), (1.0, 1, 2, 0.5), (1.0, 2, 3, 0.1), (2.0, 3, 7, 0.0)],
)
def test_schedule_is_the_closed_form_at_every_step_for_every_group(warmup_epochs, epochs, total_steps, min_lr_ratio):
    """Linear warm-up (step + 1) / (warmup + 1), then cosine from 1 to min_lr_ratio, then the floor: per group,
    relative to its own learning rate (head 1e-2, backbone 1e-4), also with no warm-up and very few steps."""
    hp = SimpleNamespace(**{**vars(HP), "warmup_epochs": warmup_epochs, "min_lr_ratio": min_lr_ratio})
    optimizer, schedule = warmup_cosine_optimizer(
        _net(), ["head"], hp, total_steps=total_steps, epochs=epochs, device=torch.device("cpu")
    )
    warmup = round(warmup_epochs * total_steps / epochs)
    for step in range(total_steps + 3):  # three steps past the end: stays at the floor
        if step < warmup:
            expected = (step + 1) / (warmup + 1)
        else:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            expected = min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(group["initial_lr"] * expected, rel=1e-12, abs=1e-30), (step, group)
        optimizer.step()
        schedule.step()


def test_backbone_schedule_starts_at_its_epoch_and_the_heads_spans_the_run():
    """LP-FT: the backbone at lr 0 for 3 of 10 epochs, then the schedule a 7-epoch run would have (warm-up of one
    epoch, cosine over the rest); the head's is the 10-epoch run's."""
    hp = SimpleNamespace(**{**vars(HP), "min_lr_ratio": 0.0})
    optimizer, schedule = warmup_cosine_optimizer(
        _net(), ["head"], hp, total_steps=100, epochs=10, device=torch.device("cpu"), backbone_start_epoch=3
    )

    def closed_form(step: int, total: int) -> float:
        progress = (step - 10) / (total - 10)
        return (step + 1) / 11 if step < 10 else (1 + math.cos(math.pi * progress)) / 2

    for step in range(100):
        for group in optimizer.param_groups:
            if group["name"].startswith("head"):
                expected = closed_form(step, 100)
            else:
                expected = 0.0 if step < 30 else closed_form(step - 30, 70)
            assert group["lr"] == pytest.approx(group["initial_lr"] * expected, rel=1e-12, abs=0), (step, group)
        optimizer.step()
        schedule.step()


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_parameters_without_gradients_are_not_stepped(algorithm):
    """LP-FT's probe leaves the backbone in the optimizer with no gradient: no weight decay, no momentum for it."""
    net = _net().requires_grad_(True)
    hp = SimpleNamespace(**{**vars(HP), "algorithm": algorithm, "warmup_epochs": 0.0, "weight_decay": 0.5})
    optimizer, _ = warmup_cosine_optimizer(net, ["head"], hp, 10, 1, torch.device("cpu"))
    net.body.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(3, 4)).sum().backward()
        optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items() if k.startswith("body."))
    assert not torch.equal(net.head.weight, before["head.weight"])
    assert all(not optimizer.state.get(p) for p in net.body.parameters())


def test_nothing_trainable_is_refused():
    net = _net().requires_grad_(False)
    with pytest.raises(RuntimeError, match="finetune=frozen"):
        warmup_cosine_optimizer(net, ["head"], HP, total_steps=10, epochs=1, device=torch.device("cpu"))


def test_lr_scales_and_weight_decays_set_each_parameters_rate_and_decay():
    """Layer-wise scales multiply the part's rate, per-name decays replace the default on weights (biases stay at
    0); every group keeps a distinct name (LR monitors key on it), and the configured betas are used."""
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)))
    net.add_module("head", nn.Linear(4, 2))
    scales = {"body.0.weight": 0.5, "body.0.bias": 0.25, "head.weight": 2.0}
    decays = {"body.1.weight": 0.2, "head.bias": 0.3}
    hp = SimpleNamespace(**{**vars(HP), "betas": (0.8, 0.99)})
    optimizer, _ = warmup_cosine_optimizer(
        net, ["head"], hp, 10, 1, torch.device("cpu"), lr_scales=scales, weight_decays=decays
    )
    expected = {  # (lr, weight decay), by hand
        "body.0.weight": (1e-4 * 0.5, 0.05),
        "body.0.bias": (1e-4 * 0.25, 0.0),
        "body.1.weight": (1e-4, 0.2),
        "body.1.bias": (1e-4, 0.0),
        "body.2.weight": (1e-4, 0.05),
        "body.2.bias": (1e-4, 0.0),
        "head.weight": (1e-2 * 2.0, 0.05),
        "head.bias": (1e-2, 0.0),
    }
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        group = group_of[id(p)]
        assert (group["initial_lr"], group["weight_decay"]) == pytest.approx(expected[name], rel=1e-12), name
    names = [g["name"] for g in optimizer.param_groups]
    assert len(set(names)) == len(names) == 7, names
    assert all(g["betas"] == (0.8, 0.99) for g in optimizer.param_groups)


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
@pytest.mark.parametrize("device,fused", [("cpu", True), ("cuda", True), ("mps", False)])
def test_the_optimizer_is_fused_on_cpu_and_cuda_only(algorithm, device, fused):
    """One fused kernel per step where torch has one for the run's device (the step time the benchmark reports)."""
    hp = SimpleNamespace(**{**vars(HP), "algorithm": algorithm})
    optimizer, _ = warmup_cosine_optimizer(_net(), ["head"], hp, 10, 1, torch.device(device))
    assert all(bool(g["fused"]) is fused for g in optimizer.param_groups)


@pytest.mark.parametrize("epochs", [None, 0])
def test_no_epoch_count_warms_up_as_one_epoch(epochs):
    """Without an epoch count (step-bounded runs) the whole run is one epoch: the schedule of epochs=1."""
    rates = []
    for n in (epochs, 1):
        optimizer, schedule = warmup_cosine_optimizer(_net(), ["head"], HP, 8, n, torch.device("cpu"))
        factors = []
        for _ in range(4):
            factors.append(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["initial_lr"])
            optimizer.step()
            schedule.step()
        rates.append(factors)
    assert rates[0] == rates[1]
    assert rates[0][:4] == pytest.approx([(s + 1) / 9 for s in range(4)])  # warm-up of all 8 steps


def test_sgd_keeps_the_groups_and_takes_the_momentum():
    net = _net()
    sgd = SimpleNamespace(**{**vars(HP), "algorithm": "sgd", "momentum": 0.8})
    optimizer, _ = warmup_cosine_optimizer(net, ["head"], sgd, total_steps=100, epochs=10, device=torch.device("cpu"))
    adamw, _ = warmup_cosine_optimizer(_net(), ["head"], HP, total_steps=100, epochs=10, device=torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(adamw, torch.optim.AdamW)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"]) for g in adamw.param_groups
    ]
    assert {g["momentum"] for g in optimizer.param_groups} == {0.8}


def test_unknown_algorithm_is_refused_with_the_choices():
    whole = (
        "optimizer.algorithm='adam' is not one of adamw, sgd (sgd: with optimizer.momentum, as VPT trains its prompts)."
    )
    with pytest.raises(OptimizerSettingError, match=f"^{re.escape(whole)}$"):
        warmup_cosine_optimizer(
            _net(), ["head"], SimpleNamespace(**{**vars(HP), "algorithm": "adam"}), 10, 1, torch.device("cpu")
        )
