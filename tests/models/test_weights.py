"""Weights that fit are loaded: every tensor arrives, the head stays fresh, ViT position embeddings are resampled."""

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from gnr650.models import build_resnet18, build_vit


def _assert_loaded(net: torch.nn.Module, source: dict[str, torch.Tensor], head: str) -> None:
    own = net.state_dict()
    for key, value in source.items():
        if not key.startswith(head + "."):
            assert torch.equal(own[key], value), key
    assert not torch.equal(own[f"{head}.weight"], source[f"{head}.weight"])  # freshly initialised, not loaded


@pytest.mark.parametrize("fmt", ["safetensors", "lightning"])
def test_resnet_weights_round_trip(fmt, tmp_path):
    torch.manual_seed(0)
    source = build_resnet18(10).net
    source.bn1.running_mean.uniform_()  # buffers travel too
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights.{'ckpt' if fmt == 'lightning' else fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:  # a run's checkpoint: the LightningModule's state dict, keys under "net."
        torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    torch.manual_seed(1)
    built = build_resnet18(10, weights=str(path))
    _assert_loaded(built.net, state, "fc")
    assert built.weights == str(path) and built.mean is not None  # pretrained normalisation


def test_224px_vit_weights_load_at_another_size_with_resampled_position_embeddings(tmp_path):
    torch.manual_seed(0)
    state = {
        k: v.clone()
        for k, v in build_vit(10, "vit_tiny_patch16_224", img_size=224, pretrained=False).net.state_dict().items()
    }
    save_file(state, str(tmp_path / "vit.safetensors"))
    torch.manual_seed(1)
    net = build_vit(10, "vit_tiny_patch16_224", img_size=32, weights=str(tmp_path / "vit.safetensors")).net
    pos_embed = state.pop("pos_embed")
    _assert_loaded(net, state, "head")
    assert net.pos_embed.shape == (1, 1 + 2 * 2, 192)  # class token + a 2x2 grid of 16-px patches
    torch.testing.assert_close(
        net.pos_embed.detach(), resample_abs_pos_embed(pos_embed, new_size=[2, 2], num_prefix_tokens=1)
    )
    assert torch.equal(net.pos_embed[0, 0], pos_embed[0, 0])  # the class token's embedding is kept as is
