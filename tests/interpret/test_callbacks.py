"""Export callbacks in real (tiny) Lightning runs: what lands in artifacts/ and index.json, and when."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from gnr650.interpret import callbacks as callbacks_module
from gnr650.interpret.callbacks import (
    AttentionExport,
    FeatureMapExport,
    KernelImageExport,
    KernelNormExport,
    ViTWeightNormExport,
)
from gnr650.interpret.index import ArtifactKind, find_artifacts
from tests.helpers import no_hooks

CLASSES = ["cat", "horse", "ship", "truck"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "callbacks"


class FakeData(pl.LightningDataModule):
    """The datamodule interface the exports use: ``class_names`` and ``split(name)``."""

    def __init__(self, per_class: int = 4, size: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(len(CLASSES)).repeat(per_class)
        self.class_names = list(CLASSES)
        self.splits = {
            s: SimpleNamespace(
                images=torch.randint(0, 256, (labels.numel(), 3, size, size), generator=g, dtype=torch.uint8),
                labels=labels,
            )
            for s in ("train", "val", "test")
        }

    def split(self, name):
        return self.splits[name]

    def _loader(self, name):
        return DataLoader(TensorDataset(self.splits[name].images, self.splits[name].labels), batch_size=8)

    def train_dataloader(self):
        return self._loader("train")

    def test_dataloader(self):
        return self._loader("test")


class FakeModule(pl.LightningModule):
    """``net`` plus ``preprocess`` (uint8 -> resized, normalised float), like the project's module."""

    def __init__(self, net, img_size: int):
        super().__init__()
        self.net = net
        self.img_size = img_size

    def preprocess(self, images):
        x = F.interpolate(images.float() / 255, size=self.img_size, mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.25

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(self.preprocess(batch[0])), batch[1])

    def test_step(self, batch, batch_idx):
        self.net(self.preprocess(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def trainer(callbacks, max_epochs=2):
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        callbacks=callbacks,
    )


def small_convnet():
    """Any conv net: the norm exports need nothing ResNet-specific."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, len(CLASSES)),
    )


def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=len(CLASSES))


def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=len(CLASSES), img_size=48)


def read_csv(path):
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        return list(csv.DictReader(f))


def check_index(artifacts: Path) -> list[dict]:
    """Every entry has the five fields and points at a file that opens as what it claims to be."""
    entries = json.loads((artifacts / "index.json").read_text())
    for e in entries:
        assert set(e) == {"kind", "path", "layer", "epoch", "phase"}
        path = artifacts / e["path"]
        assert path.is_file(), e
        if path.suffix == ".png":
            with Image.open(path) as img:
                img.verify()
                assert img.format == "PNG"
        elif path.name.endswith((".csv", ".csv.gz")):
            with (
                gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="") as f
            ):  # a header and a first row (the long kernel_norms.csv has millions)
                reader = csv.reader(f)
                header, first = next(reader), next(reader, None)
                assert header and first and len(first) == len(header)
        else:
            assert path.suffix == ".npz"
            np.load(path, allow_pickle=False).close()
    return entries


@pytest.fixture
def drawn(monkeypatch) -> dict[str, list[tuple]]:
    """The arguments of every feature-map and kernel-difference figure the callbacks draw."""
    calls: dict[str, list[tuple]] = {"feature_map_figure": [], "kernel_difference_figure": []}
    for name, record in calls.items():
        draw = getattr(callbacks_module, name)
        monkeypatch.setattr(callbacks_module, name, lambda *args, _d=draw, _r=record: _r.append(args) or _d(*args))
    return calls


def test_resnet_exports_in_a_fit_and_test_run(tmp_path, drawn):
    model, dm = FakeModule(resnet(), 32), FakeData()
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    callbacks = [
        KernelNormExport(str(tmp_path)),
        KernelImageExport(str(tmp_path), num_kernels=16),
        FeatureMapExport(str(tmp_path), image_class="horse"),
    ]
    t = trainer(callbacks)
    t.fit(model, datamodule=dm)
    t.test(model, datamodule=dm, verbose=False)
    torch.save(model.net.state_dict(), tmp_path / "final.pt")

    artifacts = tmp_path / "artifacts"
    entries = check_index(artifacts)
    assert {e["kind"] for e in entries} == {
        "kernel_norms_csv",
        "kernel_norm_stats_csv",
        "kernel_norms_plot",
        "kernel_grid",
        "kernel_diff_grid",
        "feature_maps",
    }
    grids = {(e["layer"], e["epoch"]) for e in entries if e["kind"] == "kernel_grid"}
    stages = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert grids == {(name, epoch) for name in stages for epoch in (0, 2)}
    diffs = [(e["path"], e["layer"], e["phase"], e["epoch"]) for e in entries if e["kind"] == "kernel_diff_grid"]
    assert diffs == [(f"kernels/end-start/{name}.png", name, "end", 2) for name in stages]
    state = torch.load(tmp_path / "final.pt")
    for (grid, _), name in zip(drawn["kernel_difference_figure"], stages):  # end - start of the first 16 kernels
        change = (state[f"{name}.weight"][0] - start[f"{name}.weight"][0]).double().mean(0)
        np.testing.assert_allclose(grid[1 : 1 + change.shape[0], 1 : 1 + change.shape[1]], change, atol=1e-7)
    [fmap] = [e for e in entries if e["kind"] == "feature_maps"]
    assert fmap["path"] == "feature_maps/end_horse_1.png" and (fmap["epoch"], fmap["phase"]) == (2, "end")
    [(_, shown, left_out, *_)] = drawn["feature_map_figure"]
    assert list(shown) == ["stem", "layer1", "layer2"] and left_out == {"layer3": (2, 2), "layer4": (1, 1)}
    assert {(e["path"].split("/")[1], e["phase"]) for e in entries if e["kind"] == "kernel_grid"} == {
        ("start", "start"),
        ("end", "end"),
    }
    [norms_csv] = find_artifacts(artifacts, ArtifactKind.KERNEL_NORMS_CSV)  # rewritten each phase: one entry
    [stats_csv] = find_artifacts(artifacts, ArtifactKind.KERNEL_NORM_STATS_CSV)
    assert (norms_csv, stats_csv) == (artifacts / "kernel_norms.csv.gz", artifacts / "kernel_norm_stats.csv")
    text = gzip.decompress(
        norms_csv.read_bytes()
    ).decode()  # 2.8 M rows: counted, not parsed (the small net's test checks every value)
    kernels = sum(w.shape[0] * w.shape[1] for w in state.values() if w.ndim == 4)
    assert text.count("\n") == 1 + 2 * kernels  # every 2-D kernel of every conv, at each phase
    assert text.count(",start,0,") == text.count(",end,2,") == kernels
    assert text.rindex(",start,0,") < text.index(",end,2,")

    rows = read_csv(stats_csv)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("start", "0")] * 20 + [("end", "2")] * 20
    for r in rows[20:]:  # the end rows describe the weights the run finished with
        w = state[r["layer"] + ".weight"].double()
        norms = w.pow(2).sum(dim=(2, 3)).sqrt()
        assert int(r["count"]) == norms.numel()
        assert float(r["mean"]) == pytest.approx(norms.mean().item(), rel=1e-5)
        assert float(r["max"]) == pytest.approx(norms.max().item(), rel=1e-5)
    assert any(r0["mean"] != r1["mean"] for r0, r1 in zip(rows[:20], rows[20:]))  # training changed them
    assert no_hooks(model.net)


def test_kernel_norms_hold_every_kernel_of_the_start_and_end_weights(tmp_path):
    model, dm = FakeModule(small_convnet(), 32), FakeData()
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    t = trainer([KernelNormExport(str(tmp_path))])
    t.fit(model, datamodule=dm)
    t.test(model, datamodule=dm, verbose=False)
    torch.save(model.net.state_dict(), tmp_path / "final.pt")
    end = torch.load(tmp_path / "final.pt")

    rows = read_csv(tmp_path / "artifacts" / "kernel_norms.csv.gz")
    convs = [name.removesuffix(".weight") for name, w in end.items() if w.ndim == 4]
    kernels = [
        (c, o, i) for c in convs for o in range(end[c + ".weight"].shape[0]) for i in range(end[c + ".weight"].shape[1])
    ]
    assert len(rows) == len(kernels) * 2 == (3 * 8 + 8 * 6) * 2
    expected = [(phase, epoch, *k) for phase, epoch in (("start", "0"), ("end", "2")) for k in kernels]
    assert [(r["phase"], r["epoch"], r["layer"], int(r["out"]), int(r["in"])) for r in rows] == expected
    for r, (phase, *_) in zip(rows, expected):
        weight = (start if phase == "start" else end)[r["layer"] + ".weight"]
        kernel = weight[int(r["out"]), int(r["in"])]
        assert float(r["norm"]) == pytest.approx(torch.linalg.norm(kernel).item(), rel=1e-6), r
    assert any(s["norm"] != e["norm"] for s, e in zip(rows[: len(kernels)], rows[len(kernels) :]))


def test_vit_exports_attention_for_every_class(tmp_path):
    model, dm = FakeModule(vit(), 48), FakeData()
    t = trainer(
        [AttentionExport(str(tmp_path), per_head_layers=[-1], every_n_epochs=1), ViTWeightNormExport(str(tmp_path))],
        max_epochs=1,
    )
    t.fit(model, datamodule=dm)
    t.test(model, datamodule=dm, verbose=False)

    artifacts = tmp_path / "artifacts"
    entries = check_index(artifacts)
    kinds = [e["kind"] for e in entries]
    assert sorted(set(kinds)) == [
        "attention_map",
        "attention_npz",
        "attention_rollout",
        "vit_weight_norms_csv",
        "vit_weight_norms_plot",
    ]
    map_phases = [e["phase"] for e in entries if e["kind"] == "attention_map"]
    assert map_phases == ["epoch1"] * len(CLASSES) + ["end"] * len(CLASSES)
    assert find_artifacts(artifacts, ArtifactKind.ATTENTION_NPZ, phase="epoch1") == [artifacts / "attention_epoch1.npz"]
    [npz] = find_artifacts(artifacts, ArtifactKind.ATTENTION_NPZ, phase="end")
    with np.load(npz, allow_pickle=False) as z:
        assert z["cls_attention"].shape == (len(CLASSES), 12, 3, 1 + 9)
        np.testing.assert_allclose(z["cls_attention"].sum(-1), 1, rtol=1e-5)
        assert z["rollout"].shape == (len(CLASSES), 3, 3) and z["grid"].tolist() == [3, 3]
        assert z["labels"].tolist() == [0, 1, 2, 3] and z["class_names"].tolist() == CLASSES
        assert z["images"].shape == (len(CLASSES), 3, 32, 32) and z["images"].dtype == np.uint8
        with torch.no_grad():  # the best weights' predictions, recomputed here from the saved images
            logits = model.net.eval()(model.preprocess(torch.from_numpy(z["images"])))
        assert z["predictions"].tolist() == logits.argmax(dim=1).tolist()
    rows = read_csv(artifacts / "vit_weight_norms.csv")
    assert len(rows) == 2 * 48 and rows[0]["layer"] == "blocks.0.attn.qkv"
    assert all(blk.attn.fused_attn for blk in model.net.blocks)  # training stays on the fused path
    assert no_hooks(model.net)


def test_without_fit_start_is_exported_at_test_start(tmp_path):
    model, dm = FakeModule(small_convnet(), 32), FakeData()
    trainer([KernelNormExport(str(tmp_path))]).test(model, datamodule=dm, verbose=False)
    rows = read_csv(tmp_path / "artifacts" / "kernel_norm_stats.csv")
    assert [(r["phase"], r["layer"]) for r in rows] == [("start", "0"), ("start", "2"), ("end", "0"), ("end", "2")]


def test_every_n_epochs(tmp_path):
    model, dm = FakeModule(small_convnet(), 32), FakeData()
    t = trainer([KernelNormExport(str(tmp_path), at_start=False, every_n_epochs=1)])
    t.fit(model, datamodule=dm)
    t.test(model, datamodule=dm, verbose=False)
    rows = read_csv(tmp_path / "artifacts" / "kernel_norm_stats.csv")
    assert [(r["phase"], r["epoch"]) for r in rows[::2]] == [("epoch1", "1"), ("epoch2", "2"), ("end", "2")]


def test_only_global_rank_zero_writes(tmp_path):
    callback = KernelNormExport(str(tmp_path))
    rank1 = SimpleNamespace(is_global_zero=False, current_epoch=0)
    callback.on_fit_start(rank1, FakeModule(small_convnet(), 32))
    callback.on_test_end(rank1, FakeModule(small_convnet(), 32))
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    "fragment,expected",
    [
        (
            "resnet_exports",
            {"kernel_norms": KernelNormExport, "kernel_images": KernelImageExport, "feature_maps": FeatureMapExport},
        ),
        ("vit_exports", {"attention": AttentionExport, "vit_weight_norms": ViTWeightNormExport}),
    ],
)
def test_config_fragments_instantiate(tmp_path, fragment, expected):
    cfg = OmegaConf.create(
        {
            "paths": {"output_dir": str(tmp_path)},
            "viz": {"image_class": "ship", "image_path": None},
            "callbacks": OmegaConf.load(CONFIGS / f"{fragment}.yaml"),
        }
    )
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    assert {name: type(cb) for name, cb in callbacks.items()} == expected
    assert all(cb.artifacts_dir == tmp_path / "artifacts" for cb in callbacks.values())
    if "feature_maps" in callbacks:
        assert callbacks["feature_maps"].image_class == "ship"
