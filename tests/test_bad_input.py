"""Bad input from the core issue: each gives an error that says what is wrong and what to do."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import make_cfg, write_image
from gnr650.data import EuroSATDataModule, ImageFolderDataModule
from gnr650.data.folders import DataNotFoundError
from gnr650.data.images import ImageDecodeError
from gnr650.finetune import StrategyError
from gnr650.models import WeightsError, build_resnet18, build_vit
from gnr650.train import train


def test_missing_data_dir_says_where_it_looked_and_what_to_do(tmp_path):
    cfg = make_cfg(["dataset=cifar10-subset", "model=resnet18", f"paths.data_dir={tmp_path / 'nowhere'}"], tmp_path / "out")
    with pytest.raises(DataNotFoundError) as err:
        train(cfg)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "dataset.download=true" in message and "paths.data_dir" in message
    assert '"status": "failed"' in (tmp_path / "out" / "results.json").read_text()


def test_empty_data_dir_for_eurosat(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="No class folders"):
        EuroSATDataModule(root=str(tmp_path)).setup()
    with pytest.raises(DataNotFoundError, match="GNR650_DATA_DIR"):
        EuroSATDataModule(root=str(tmp_path / "empty")).setup()


def test_corrupt_image_is_named(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / "data" / c / f"{i}.jpg", rng)
    bad = tmp_path / "data" / "b" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ImageDecodeError, match=str(bad)):
        ImageFolderDataModule(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")).setup()


def test_empty_class_folder(tmp_path):
    write_image(tmp_path / "data" / "a" / "0.png", np.random.default_rng(0))
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataNotFoundError, match=r"'.*data/b' holds no image files \(notes.txt\)"):
        ImageFolderDataModule(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")).setup()


def test_weights_for_another_architecture_name_the_keys(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in build_resnet18(10).net.state_dict().items()}, str(path))
    with pytest.raises(WeightsError) as err:
        build_vit(10, "vit_tiny_patch16_224", img_size=32, weights=str(path))
    assert "missing: cls_token, pos_embed" in str(err.value) and "unexpected: " in str(err.value)
    assert "layer1.0.bn1" in str(err.value).split("unexpected: ")[1]


def test_weights_with_wrong_width_name_the_shapes(tmp_path):
    small = build_vit(10, "vit_tiny_patch16_224", img_size=32, pretrained=False).net.state_dict()
    small["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 192)
    path = tmp_path / "w.pth"
    torch.save(small, path)
    with pytest.raises(WeightsError, match=r"wrong shapes: blocks.0.mlp.fc1.weight \(10, 192\) vs model \(768, 192\)"):
        build_vit(10, "vit_tiny_patch16_224", img_size=32, weights=str(path))


def test_train_blocks_larger_than_model_via_config(tmp_path):
    cfg = make_cfg(["debug=smoke", "model=vit_ti16", "finetune=top4", "finetune.train_blocks=13"], tmp_path)
    with pytest.raises(StrategyError, match="has only 12 blocks"):
        train(cfg)


def test_offline_hub_error_names_the_local_alternative(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time, so patch it
    with pytest.raises(WeightsError) as err:
        build_vit(10, "vit_base_patch16_224", img_size=32, pretrained=True, weights_dir=str(tmp_path))
    message = str(err.value)
    assert "model=vit_ti16" in message and "GNR650_WEIGHTS_DIR" in message and "HF_HUB_OFFLINE=1" in message
