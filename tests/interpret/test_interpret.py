"""Interpretability functions (no Lightning), each checked against an independent computation."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from contextlib import contextmanager

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from gnr650.interpret import attention as attn_lib
from gnr650.interpret import features, figures, index, kernels
from tests.helpers import no_hooks

RESNET18_CONVS = ["conv1"] + [
    f"layer{s}.{b}.{c}"
    for s in range(1, 5)
    for b in range(2)
    for c in (["conv1", "conv2"] + (["downsample.0"] if s > 1 and b == 0 else []))
]


def resnet18(stem: str = "imagenet") -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net


def vit(img_size=64) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=img_size)


# --- weight norms -----------------------------------------------------------------------------


def test_kernel_norms_match_recomputation_from_saved_state_dict(tmp_path):
    """Every 2-D kernel's norm in the long file, and the stats file equal to the aggregate of the long file."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 5), nn.Conv2d(16, 4, 1, bias=False))
    with torch.no_grad():  # break the init's symmetry between kernels and input channels
        for p in net.parameters():
            p.mul_(torch.rand_like(p) * 2)
    layers = kernels.conv_layers(net)
    norms, shapes = kernels.kernel_norms(layers), {n: tuple(m.weight.shape) for n, m in layers}
    for columns, rows, name in (
        (kernels.KERNEL_NORM_COLUMNS, kernels.kernel_norm_rows(norms, "end", 3), "kernel_norms.csv.gz"),
        (kernels.NORM_STATS_COLUMNS, kernels.norm_stats(norms, shapes, "end", 3), "kernel_norm_stats.csv"),
    ):
        kernels.PhaseTable(columns, {"end": rows}).write(tmp_path / name)
    torch.save(net.state_dict(), tmp_path / "net.pt")

    state = torch.load(tmp_path / "net.pt")
    expected = {k.removesuffix(".weight"): v for k, v in state.items() if k.endswith(".weight")}
    with gzip.open(tmp_path / "kernel_norms.csv.gz", "rt", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["layer", "out", "in", "phase", "epoch", "norm"]
        long = list(reader)
    assert len(long) == sum(w.shape[0] * w.shape[1] for w in expected.values()) == 24 + 128 + 64
    kernel_rows = [
        (layer, out, i) for layer, w in expected.items() for out in range(w.shape[0]) for i in range(w.shape[1])
    ]
    assert [(r[0], int(r[1]), int(r[2])) for r in long] == kernel_rows  # network order, then (out, in)
    assert {(r[3], r[4]) for r in long} == {("end", "3")}
    for r in long:
        assert float(r[5]) == pytest.approx(torch.linalg.norm(expected[r[0]][int(r[1]), int(r[2])]).item(), rel=1e-6)

    with open(tmp_path / "kernel_norm_stats.csv") as f:
        stats = list(csv.DictReader(f))
    assert [r["layer"] for r in stats] == list(expected)
    for r in stats:
        n = np.array([float(row[5]) for row in long if row[0] == r["layer"]])
        assert int(r["count"]) == n.size and r["shape"] == "x".join(map(str, expected[r["layer"]].shape))
        for stat, value in (("mean", n.mean()), ("std", n.std()), ("min", n.min()), ("max", n.max())):
            assert float(r[stat]) == pytest.approx(value, rel=1e-6), (r["layer"], stat)
        assert (r["phase"], r["epoch"]) == ("end", "3")


def test_kernel_norm_stats_list_every_conv_of_resnet18_in_network_order():
    layers = kernels.conv_layers(resnet18())
    norms = kernels.kernel_norms(layers)
    stats = list(
        csv.reader(kernels.norm_stats(norms, {n: tuple(m.weight.shape) for n, m in layers}, "start", 0).splitlines())
    )
    assert [row[3] for row in stats] == RESNET18_CONVS
    assert [int(row[5]) for row in stats] == [m.weight.shape[0] * m.weight.shape[1] for _, m in layers]


def test_a_phase_table_reads_back_what_it_wrote_and_replaces_a_repeated_phase(tmp_path):
    table = kernels.PhaseTable(("phase", "x"), {"start": "start,1.25\nstart,2\n", "epoch2": "epoch2,3\n"})
    table.write(tmp_path / "t.csv")
    read = kernels.PhaseTable.read(tmp_path / "t.csv", ("phase", "x"))
    assert read.blocks == table.blocks
    read.set("start", "start,9\n")
    read.write(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "phase,x\nepoch2,3\nstart,9\n"
    with pytest.raises(ValueError, match="columns"):
        kernels.PhaseTable.read(tmp_path / "t.csv", ("phase", "y"))


def test_vit_linear_norms_are_row_norms_of_every_block():
    net = vit()
    layers = kernels.vit_linear_layers(net)
    assert [n for n, _ in layers] == [f"blocks.{i}.{s}" for i in range(12) for s in kernels.VIT_LINEARS]
    norms = kernels.row_norms(layers)
    w = net.blocks[3].mlp.fc1.weight.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(norms["blocks.3.mlp.fc1"].numpy(), np.sqrt((w**2).sum(axis=1)), rtol=1e-5)


def test_kernel_grids_are_normalised_per_kernel():
    net = resnet18()
    assert kernels.default_kernel_layers(net) == [
        "conv1",
        "layer1.0.conv1",
        "layer2.0.conv1",
        "layer3.0.conv1",
        "layer4.0.conv1",
    ]
    rgb, is_rgb = kernels.kernel_grid(net.conv1.weight, num_kernels=16)
    assert is_rgb and rgb.shape == (3, 4 * 8 + 1, 4 * 8 + 1)  # 16 tiles of 7x7, 4 per row, padding 1
    tile = rgb[:, 1:8, 1:8]
    assert tile.min() == 0 and tile.max() == pytest.approx(1)
    grey, is_rgb = kernels.kernel_grid(net.layer2[0].conv1.weight, num_kernels=9)
    assert not is_rgb and grey.shape == (3 * 4 + 1, 3 * 4 + 1)
    w = net.layer2[0].conv1.weight.detach()[0].mean(0)
    torch.testing.assert_close(grey[1:4, 1:4], w / w.abs().max())
    chosen, _ = kernels.kernel_grid(net.layer2[0].conv1.weight, num_kernels=2, channel=5)
    w = net.layer2[0].conv1.weight.detach()[0, 5]
    torch.testing.assert_close(chosen[1:4, 1:4], w / w.abs().max())


def kernel_tiles(grid: torch.Tensor, n: int, size: int) -> list[np.ndarray]:
    """The first ``n`` tiles of a square ``make_grid`` grid (padding 1) in row order."""
    per_row = (grid.shape[-1] - 1) // (size + 1)
    step = size + 1
    return [
        grid[1 + step * (k // per_row) : 1 + step * (k // per_row) + size, 1 + step * (k % per_row) :][:, :size].numpy()
        for k in range(n)
    ]


@pytest.mark.parametrize("layer,channel", [("conv1", None), ("layer2.0.conv1", None), ("layer2.0.conv1", 5)])
def test_kernel_difference_is_end_minus_start_on_a_symmetric_scale(layer, channel):
    start = dict(resnet18().named_modules())[layer].weight.detach().clone()
    end = start + 0.01 * torch.rand_like(start)  # every weight grows: a min-max scale would not be symmetric
    end[3] += 0.5  # one kernel changed far more: the scale is ±its change
    diff = kernels.kernel_difference_grid(start, end, num_kernels=9, channel=channel)
    size = start.shape[-1]
    assert diff.shape == (3 * (size + 1) + 1,) * 2
    s, e = start.double().numpy(), end.double().numpy()
    for k, tile in enumerate(kernel_tiles(diff, 9, size)):
        change = e[k] - s[k]
        np.testing.assert_allclose(tile, change.mean(0) if channel is None else change[channel], rtol=1e-5, atol=1e-7)

    fig = figures.kernel_difference_figure(diff, "change")
    [image] = fig.axes[0].images
    np.testing.assert_array_equal(np.ma.filled(image.get_array(), np.nan), diff.numpy())
    low, high = image.get_clim()
    assert low == -high and high == pytest.approx(np.nanmax(np.abs(diff.numpy())))
    assert len(fig.axes) == 2 and "end − start" in fig.axes[1].get_ylabel()  # its own colour bar


# --- feature maps -----------------------------------------------------------------------------


def stages_by_hand(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stem and stage outputs, computed by calling the modules one after the other."""
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        outputs = {"stem": x}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(net, name)(x)
            outputs[name] = x
    return outputs


@pytest.mark.parametrize(
    "stem,size,spatial",
    [
        ("imagenet", 32, [8, 8, 4, 2, 1]),
        ("imagenet", 224, [56, 56, 28, 14, 7]),
        ("cifar", 32, [32, 32, 16, 8, 4]),
    ],
)
def test_feature_map_shapes_per_stage(stem, size, spatial):
    net = resnet18(stem).train()
    x = torch.randn(1, 3, size, size)
    maps = features.feature_maps(net, x, features.default_stages(net))
    assert list(maps) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    torch.testing.assert_close(maps, stages_by_hand(net.eval(), x))  # eval mode: BatchNorm's running statistics
    assert [v.shape[-1] for v in maps.values()] == spatial
    assert [v.shape[1] for v in maps.values()] == [64, 64, 128, 256, 512]
    assert no_hooks(net)


def test_extraction_restores_each_modules_training_flag():
    net = resnet18().train()
    net.layer1.eval()  # e.g. a frozen part kept in eval mode by the fine-tuning strategy
    features.feature_maps(net, torch.randn(1, 3, 32, 32), features.default_stages(net))
    assert net.training and not net.layer1.training and not net.layer1[0].bn1.training and net.layer2.training


def test_channel_grid_scales_every_channel_by_its_own_min_and_max():
    fmap = torch.randn(64, 8, 8)
    fmap[1] = 0  # a dead channel: no range to scale
    grid = features.channel_grid(fmap, num_channels=16)
    assert grid.shape == (4 * 9 + 1, 4 * 9 + 1)
    for k, tile in enumerate(kernel_tiles(grid, 16, 8)):
        f = fmap[k].double().numpy()
        expected = np.full_like(f, -1.0) if k == 1 else (f - f.min()) / (f.max() - f.min())
        np.testing.assert_allclose(tile, expected, rtol=1e-5, atol=1e-6)
    one_by_one = features.channel_grid(torch.arange(16.0).view(16, 1, 1), num_channels=4)
    assert (one_by_one[1::2, 1::2] == -1).all()  # 1x1 maps follow the same rule: constant, not scaled jointly


def test_only_maps_at_least_min_size_are_drawn_and_the_rest_are_named():
    net = resnet18()
    maps = features.feature_maps(net, torch.randn(1, 3, 32, 32), features.default_stages(net))
    shown, left_out = features.spatial_maps({label: m[0] for label, m in maps.items()}, min_size=4)
    assert list(shown) == ["stem", "layer1", "layer2"] and left_out == {"layer3": (2, 2), "layer4": (1, 1)}
    fig = figures.feature_map_figure(torch.zeros(3, 32, 32, dtype=torch.uint8), shown, left_out, (32, 32), 16, "t")
    panels = [ax.get_title().split(":")[0] for ax in fig.axes if ax.images]
    assert panels == ["input 32x32\n(model sees 32x32)", "stem", "layer1", "layer2"]
    assert fig.get_suptitle().endswith("too small to show a layout at this input size: layer3 2x2, layer4 1x1")
    colour_bar = fig.axes[-1]
    assert not colour_bar.images and "min-max per channel" in colour_bar.get_ylabel()


def test_pick_image_by_class_name_by_path_and_fallback(tmp_path, caplog):
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    labels = torch.tensor([0, 2, 1, 2, 1])
    names = ["cat", "dog", "horse"]
    img, caption = features.pick_image(images, labels, names, "horse")
    assert img[0, 0, 0] == 1 and caption == "horse #1"
    img, caption = features.pick_image(images, labels, names, "zebra")
    assert img[0, 0, 0] == 0 and caption == "cat #0" and "zebra" in caplog.text
    Image.fromarray(np.full((6, 7, 3), 9, np.uint8)).save(tmp_path / "x.png")
    img, caption = features.pick_image(images, labels, names, "horse", str(tmp_path / "x.png"))
    assert img.shape == (3, 6, 7) and img.dtype == torch.uint8 and caption == "x.png"


# --- attention --------------------------------------------------------------------------------


def test_attention_rows_sum_to_one_and_match_the_model():
    net = vit(64)
    attn, names = attn_lib.extract_attention(net, torch.randn(2, 3, 64, 64))
    assert names == [f"blocks.{i}.attn" for i in range(len(net.blocks))]
    assert attn.shape == (2, len(net.blocks), net.blocks[0].attn.num_heads, 1 + 16, 1 + 16)
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(attn.shape[:-1]))
    assert (attn >= 0).all()


def test_extraction_works_with_fused_attention_on_and_leaves_the_model_as_it_was():
    net = vit(64).train()
    for blk in net.blocks:
        blk.attn.fused_attn = True
    attn, _ = attn_lib.extract_attention(net, torch.randn(1, 3, 64, 64))
    assert attn.numel() > 0 and attn.abs().sum() > 0
    assert all(blk.attn.fused_attn for blk in net.blocks)
    assert net.training and all(m.training for m in net.modules())
    assert no_hooks(net)


def test_attention_equals_a_recomputation_from_the_layer_input():
    net = vit(64)
    inputs = []
    handle = net.blocks[2].attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    attn, _ = attn_lib.extract_attention(net, torch.randn(2, 3, 64, 64))
    handle.remove()
    a = net.blocks[2].attn
    b, t, _ = inputs[0].shape
    with torch.no_grad():
        q, k, _ = a.qkv(inputs[0]).reshape(b, t, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        expected = (q @ k.transpose(-2, -1) * a.head_dim**-0.5).softmax(dim=-1)
    torch.testing.assert_close(attn[:, 2], expected, rtol=1e-4, atol=1e-6)


def test_silent_empty_extraction_is_an_error(monkeypatch):
    @contextmanager
    def leave_fused_on(modules):
        yield

    monkeypatch.setattr(attn_lib, "unfused", leave_fused_on)
    net = vit(32)
    with pytest.raises(RuntimeError, match="no attention weights captured"):
        attn_lib.extract_attention(net, torch.randn(1, 3, 32, 32))
    assert no_hooks(net)


@pytest.mark.parametrize("img_size,grid", [(32, (2, 2)), (64, (4, 4)), ((48, 80), (3, 5))])
def test_grid_comes_from_the_model(img_size, grid):
    net = vit(img_size)
    h, w = img_size if isinstance(img_size, tuple) else (img_size, img_size)
    attn, _ = attn_lib.extract_attention(net, torch.randn(2, 3, h, w))
    assert attn_lib.patch_grid(net) == grid
    assert attn_lib.patch_maps(attn_lib.cls_attention(attn), net.num_prefix_tokens, grid).shape == (2, 12, 3, *grid)
    rollout = attn_lib.attention_rollout(attn, net.num_prefix_tokens, grid)
    assert rollout.shape == (2, *grid)
    torch.testing.assert_close(rollout.sum(dim=(1, 2)), torch.ones(2))


def numpy_rollout(attn: np.ndarray, prefix: int) -> np.ndarray:
    out = []
    for sample in attn:  # [L, H, T, T]
        r = np.eye(sample.shape[-1])
        for layer in sample:
            a = layer.mean(axis=0) + np.eye(layer.shape[-1])
            r = (a / a.sum(axis=-1, keepdims=True)) @ r
        row = r[0, prefix:]
        out.append(row / row.sum())
    return np.stack(out)


def test_rollout_matches_abnar_zuidema_reference():
    torch.manual_seed(0)
    attn = torch.rand(3, 4, 2, 2 + 6, 2 + 6).pow(3)
    attn = attn / attn.sum(dim=-1, keepdim=True)
    rollout = attn_lib.attention_rollout(attn, num_prefix_tokens=2, grid=(2, 3))
    np.testing.assert_allclose(rollout.reshape(3, 6).numpy(), numpy_rollout(attn.double().numpy(), 2), rtol=1e-5)


def test_images_per_class_is_seeded_and_covers_every_class():
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(1))
    idx = attn_lib.images_per_class(labels, 5, per_class=2, seed=3)
    assert labels[idx].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert torch.equal(idx, attn_lib.images_per_class(labels, 5, per_class=2, seed=3))
    assert not torch.equal(idx, attn_lib.images_per_class(labels, 5, per_class=2, seed=4))


def test_attention_npz_format(tmp_path):
    net = vit(32)
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    attn, names = attn_lib.extract_attention(net, images.float() / 255)
    rollout = attn_lib.attention_rollout(attn, 1, (2, 2))
    attn_lib.save_attention_npz(
        tmp_path / "a.npz",
        attn,
        rollout,
        (2, 2),
        1,
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 3, 2]),
        ["a", "b", "c", "d"],
        images,
        names,
    )
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z["cls_attention"].dtype == np.float32 and z["cls_attention"].shape == (3, 12, 3, 5)
        np.testing.assert_allclose(z["cls_attention"].sum(-1), 1, rtol=1e-5)
        assert z["rollout"].dtype == np.float32 and z["rollout"].shape == (3, 2, 2)
        assert z["grid"].tolist() == [2, 2] and int(z["num_prefix_tokens"]) == 1
        assert z["labels"].dtype == np.int64 and z["class_names"].tolist() == ["a", "b", "c", "d"]
        assert z["predictions"].dtype == np.int64 and z["predictions"].tolist() == [0, 3, 2]
        assert z["images"].dtype == np.uint8 and z["images"].shape == (3, 3, 32, 32)
        assert z["layer_names"].tolist() == names


# --- index ------------------------------------------------------------------------------------


def test_index_appends_replaces_rewritten_paths_and_leaves_no_temp_files(tmp_path):
    kind = index.ArtifactKind
    index.append_to_index(
        tmp_path,
        [
            index.entry(kind.KERNEL_NORMS_CSV, "kernel_norms.csv", phase="start", epoch=0),
            index.entry(kind.KERNEL_GRID, "kernels/start/conv1.png", phase="start", layer="conv1", epoch=0),
        ],
    )
    index.append_to_index(tmp_path, [index.entry(kind.KERNEL_NORMS_CSV, "kernel_norms.csv", phase="epoch5", epoch=5)])
    entries = json.loads((tmp_path / "index.json").read_text())
    assert entries == [
        {"kind": "kernel_grid", "path": "kernels/start/conv1.png", "layer": "conv1", "epoch": 0, "phase": "start"},
        {"kind": "kernel_norms_csv", "path": "kernel_norms.csv", "layer": None, "epoch": 5, "phase": "epoch5"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]
    with pytest.raises(ValueError):
        index.entry(kind.KERNEL_GRID, tmp_path / "abs.png", phase="end")
    with pytest.raises(ValueError, match="not_a_kind"):
        index.entry("not_a_kind", "x.png", phase="end")


def test_find_artifacts_by_kind_and_phase_in_written_order(tmp_path, caplog):
    kind = index.ArtifactKind
    written = [
        index.entry(kind.ATTENTION_NPZ, "attention_epoch1.npz", phase="epoch1", epoch=1),
        index.entry(kind.ATTENTION_MAP, "attention/end/00_cat.png", phase="end", epoch=2),
        index.entry(kind.ATTENTION_NPZ, "arrays/final.npz", phase="end", epoch=2),
        index.entry(kind.ATTENTION_NPZ, "attention_epoch2.npz", phase="epoch2", epoch=2),
    ]
    index.append_to_index(tmp_path, written)
    find = index.find_artifacts
    assert find(tmp_path, kind.ATTENTION_NPZ) == [tmp_path / e["path"] for e in written if e["kind"] == "attention_npz"]
    assert find(tmp_path, kind.ATTENTION_NPZ, phase="end") == [tmp_path / "arrays" / "final.npz"]
    assert find(tmp_path, kind.KERNEL_NORMS_CSV) == []
    with caplog.at_level(logging.DEBUG, logger="gnr650.interpret.index"):
        assert find(tmp_path / "older_run", kind.ATTENTION_NPZ) == []  # no index: nothing, no error
        (tmp_path / "index.json").write_text("[{")
        assert find(tmp_path, kind.ATTENTION_NPZ) == []
    assert [r.levelname for r in caplog.records] == ["DEBUG", "WARNING"]
    assert "No index.json" in caplog.records[0].message and "Unreadable index.json" in caplog.records[1].message


def test_cls_row_patch_grid_and_rollout_of_attention_set_by_hand():
    """One layer, 1 prefix token, 2 x 3 patches: the CLS row is row 0, laid out row by row; rollout of a layer
    whose CLS row puts 3/4 on patch 5 and 1/4 on CLS: (A + I) / 2 gives CLS 5/8, patch 5 3/8: the patch map is 1
    at (1, 2) and 0 elsewhere."""
    attn = torch.zeros(1, 1, 2, 7, 7)
    attn[..., 0, :] = torch.tensor([0.25, 0, 0, 0, 0, 0, 0.75])
    attn[..., 1:, 1] = 1.0  # every patch query on patch 0: a row other than CLS's
    assert torch.equal(attn_lib.cls_attention(attn)[0, 0, 0], attn[0, 0, 0, 0])
    grid = attn_lib.patch_maps(attn_lib.cls_attention(attn), 1, (2, 3))
    assert grid.shape == (1, 1, 2, 2, 3) and grid[0, 0, 0, 1, 2] == 0.75 and grid.sum() == 2 * 0.75
    expected = torch.zeros(1, 2, 3)
    expected[0, 1, 2] = 1.0
    torch.testing.assert_close(attn_lib.attention_rollout(attn, 1, (2, 3)), expected)
    with pytest.raises(ValueError, match="6 patch tokens do not fill a 2x2 grid"):
        attn_lib.patch_maps(attn_lib.cls_attention(attn), 1, (2, 2))
    with pytest.raises(ValueError, match="5 patch tokens do not fill a 2x3 grid"):
        attn_lib.patch_maps(attn_lib.cls_attention(attn), 2, (2, 3))


class HalfAttention(nn.Module):
    """Has ``attn_drop`` but no ``fused_attn`` switch (or the reverse): not timm attention, not listed."""

    def __init__(self, fused: bool):
        super().__init__()
        if fused:
            self.fused_attn = True
        else:
            self.attn_drop = nn.Dropout(0.0)


def test_attention_layers_need_both_the_fused_switch_and_attn_drop():
    net = vit(32)
    net.extra = nn.Sequential(HalfAttention(True), HalfAttention(False))
    assert [name for name, _ in attn_lib.attention_layers(net)] == [f"blocks.{i}.attn" for i in range(len(net.blocks))]
    with pytest.raises(ValueError, match="Sequential has no timm attention layers"):
        attn_lib.extract_attention(net.extra, torch.zeros(1, 3, 32, 32))
