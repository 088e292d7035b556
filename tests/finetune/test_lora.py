"""LoRA on a hand-made block (two linear layers): the adapted output's closed form, which layers are adapted, the
settings refused with the message a user acts on."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from gnr650.finetune import StrategyError
from gnr650.finetune.lora import add_lora, has_lora
from gnr650.models import BuiltModel


def _tiny() -> BuiltModel:
    """One block (fc1, fc2: 4 -> 4) and a head; LoRA's targets are the block's fc1 and fc2."""
    block = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 4), act=nn.GELU(), fc2=nn.Linear(4, 4)))
    net = nn.Sequential(OrderedDict(blocks=nn.Sequential(block), head=nn.Linear(4, 3)))
    return BuiltModel("tiny", net, ["blocks.0"], ["head"])


def test_adapted_layer_is_base_plus_scaled_low_rank_update():
    """W x + b + (alpha / r) B A x (Hu et al. 2022, eq. 3) with r = 2, alpha = 6, A and B set by hand."""
    built = _tiny()
    base = built.net.blocks[0].fc1
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    assert not has_lora(built.net)
    add_lora(built, r=2, alpha=6, dropout=0.0, targets=["fc1"])
    layer = built.net.blocks[0].fc1
    a, b = torch.randn(2, 4), torch.randn(4, 2)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
        x = torch.randn(5, 4)
        torch.testing.assert_close(layer(x), x @ weight.T + bias + 3.0 * x @ a.T @ b.T)
    assert has_lora(built.net)


def test_every_named_target_is_adapted_at_the_given_rank():
    built = _tiny()
    names = add_lora(built, r=1, alpha=1, dropout=0.0, targets=["fc1", "fc2"])
    assert names == [f"blocks.0.{t}.{p}" for t in ("fc1", "fc2") for p in ("lora_A", "lora_B", "lora_dropout")]
    adapters = {n: p.numel() for n, p in built.net.named_parameters() if "lora_" in n}
    assert sum(adapters.values()) == 2 * 1 * (4 + 4)  # two layers, rank 1: A is 1 x 4, B is 4 x 1


def test_dropout_acts_on_the_adapters_input_in_training():
    torch.manual_seed(0)
    built = _tiny()
    add_lora(built, r=2, alpha=2, dropout=0.5, targets=["fc1"])
    layer = built.net.blocks[0].fc1
    with torch.no_grad():
        layer.lora_B["default"].weight.fill_(1.0)  # B starts at zero: make the adapter count
        x = torch.randn(8, 4)
        layer.train()
        assert not torch.equal(layer(x), layer(x))
        layer.eval()
        assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"r": True}, r"finetune.lora.r must be a positive integer, the adapters' rank \(got True\)"),
        ({"r": 2.5}, r"lora.r must be a positive integer"),
        ({"dropout": 1}, r"finetune.lora.dropout must be in \[0, 1\) \(got 1\)"),
        ({"dropout": -0.1}, r"finetune.lora.dropout must be in \[0, 1\)"),
        ({"targets": []}, r"finetune.lora.targets: empty names no layer of tiny's blocks; valid targets: fc1, fc2\."),
        ({"targets": ["fc1", "qkv", "proj"]}, r"targets: qkv, proj is not a linear layer of tiny's blocks"),
    ],
)
def test_bad_settings_are_refused_naming_them(settings, message):
    built = _tiny()
    with pytest.raises(StrategyError, match=message):
        add_lora(built, **{"r": 2, "alpha": 2, "dropout": 0.0, "targets": ["fc1"], **settings})
    assert not has_lora(built.net)
