"""Bad and hostile input: each gives a clear error naming what is wrong and what to do, or a correct
conversion; never a crash deep in torch, and nothing already computed is lost."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image
from safetensors.torch import save_file

from gnr650.data import (
    Cifar10SubsetDataModule,
    EuroSATDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    decoded_store,
)
from gnr650.data.folders import DataNotFoundError
from gnr650.data.images import ImageDecodeError, decode_images
from gnr650.data.storage import SplitStorage
from gnr650.finetune.strategies import StrategyError
from gnr650.models import WeightsError, build_resnet18, build_vit
from gnr650.runs.preflight import PreflightError
from gnr650.train import train
from gnr650.training.optim import OptimizerSettingError
from tests.helpers import ROOT, RunsCodeWhenUnpickled, make_cfg, write_image

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def class_folders(root: Path, classes=("a", "b"), n: int = 5) -> Path:
    for c in classes:
        for i in range(n):
            write_image(root / c / f"{i}.png", RNG)
    return root


def load(root: Path, tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup()
    return dm


def decoded(dm: ImageFolderDataModule, name: str) -> np.ndarray:
    """The decoded image of file ``name`` (HxWx3), whichever split it landed in."""
    for split in dm.splits.values():
        for i, f in enumerate(split.files):
            if f.endswith(name):
                return split.images[i].permute(1, 2, 0).numpy()
    raise KeyError(name)


def test_truncated_jpeg_is_named(tmp_path):
    root = class_folders(tmp_path / "data")
    bad = root / "b" / "cut.jpg"
    Image.fromarray(PIXELS).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:-20])  # only the last bytes missing: the header still parses
    with pytest.raises(ImageDecodeError, match=rf"'{bad}'.*truncated"):
        load(root, tmp_path)


def test_zero_byte_file_is_named(tmp_path):
    root = class_folders(tmp_path / "data")
    (root / "a" / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=rf"'{root / 'a' / 'empty.jpg'}'.*empty"):
        load(root, tmp_path)


def test_non_image_file_in_a_class_folder(tmp_path):
    root = class_folders(tmp_path / "data")
    (root / "a" / "notes.txt").write_text("labelling notes")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    dm = load(root, tmp_path)  # skipped, with a warning
    assert not any(f.endswith(("notes.txt", ".DS_Store")) for s in dm.splits.values() for f in s.files)
    (root / "b" / "readme.jpg").write_text("not really a JPEG")
    with pytest.raises(ImageDecodeError, match=rf"'{root / 'b' / 'readme.jpg'}'.*not an image"):
        load(root, tmp_path)


def test_grayscale_images_become_gray_rgb(tmp_path):
    root = class_folders(tmp_path / "data")
    Image.fromarray(PIXELS[..., 0], "L").save(root / "a" / "gray.png")
    Image.fromarray(PIXELS[..., 0] > 127).save(root / "a" / "bilevel.png")
    dm = load(root, tmp_path)
    assert (decoded(dm, "gray.png") == PIXELS[..., :1]).all()
    assert set(np.unique(decoded(dm, "bilevel.png"))) == {0, 255}


def test_rgba_and_palette_images_become_rgb(tmp_path):
    root = class_folders(tmp_path / "data")
    opaque = np.dstack([PIXELS, np.full((32, 32), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(root / "a" / "rgba.png")
    see_through = np.dstack([PIXELS, np.zeros((32, 32), np.uint8)])
    Image.fromarray(see_through, "RGBA").save(root / "a" / "clear.png")
    Image.fromarray(PIXELS).convert("P").save(root / "b" / "palette.png", transparency=0)
    dm = load(root, tmp_path)
    assert (decoded(dm, "rgba.png") == PIXELS).all()
    assert (decoded(dm, "clear.png") == 0).all()  # fully transparent: composited over black
    assert decoded(dm, "palette.png").shape == (32, 32, 3)


def test_cmyk_images_become_rgb(tmp_path):
    root = class_folders(tmp_path / "data")
    yy, xx = np.meshgrid(np.arange(32) * 8, np.arange(32) * 8, indexing="ij")
    smooth = np.stack([yy, xx, np.full((32, 32), 128)], -1).astype(np.uint8)  # JPEG-friendly
    Image.fromarray(smooth).convert("CMYK").save(root / "a" / "cmyk.jpg", quality=95)
    Image.fromarray(PIXELS).convert("CMYK").save(root / "b" / "cmyk.tif")
    dm = load(root, tmp_path)
    assert np.abs(decoded(dm, "cmyk.jpg").astype(int) - smooth).max() <= 8
    assert (decoded(dm, "cmyk.tif") == PIXELS).all()


def png_16bit_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    root = class_folders(tmp_path / "data")
    deep = PIXELS.astype(np.uint16) * 257  # 8-bit values v stored as 16-bit v * 257
    Image.fromarray(deep[..., 0]).save(root / "a" / "gray16.png")
    Image.fromarray(deep[..., 1]).save(root / "a" / "gray16.tif")
    png_16bit_rgb(root / "b" / "rgb16.png", deep)
    dark = np.full((32, 32), 1000, np.uint16)  # dark, not saturated: 1000 / 65535 of full scale
    Image.fromarray(dark).save(root / "b" / "dark16.png")
    dm = load(root, tmp_path)
    assert (decoded(dm, "gray16.png") == PIXELS[..., :1]).all()
    assert (decoded(dm, "gray16.tif") == PIXELS[..., 1:2]).all()
    assert (decoded(dm, "rgb16.png") == PIXELS).all()
    assert (decoded(dm, "dark16.png") == round(1000 / 65535 * 255)).all()


def test_images_of_mixed_sizes_are_resized_to_the_common_size(tmp_path):
    root = class_folders(tmp_path / "data")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(root / "a" / "wide.png")
    Image.new("RGB", (64, 64), (0, 255, 0)).save(root / "b" / "large.png")
    dm = load(root, tmp_path)
    assert all(s.images.shape[-2:] == (32, 32) for s in dm.splits.values())
    assert (decoded(dm, "wide.png")[..., 0] == 255).all() and (decoded(dm, "large.png")[..., 1] == 255).all()
    assert load(root, tmp_path, decode_size=[24, 24]).splits["train"].images.shape[-2:] == (24, 24)


def test_unicode_class_folders_train_end_to_end(tmp_path):
    classes = ("chat_é", "犬", "Straße mit Leerzeichen")
    root = class_folders(tmp_path / "données", classes, n=6)
    # Hydra's override grammar needs quotes around non-ASCII characters (and spaces) in a value.
    results = train(
        make_cfg(
            [
                "dataset=imagefolder",
                f"dataset.root='{root}'",
                "model=resnet18",
                "model.img_size=32",
                "trainer.max_epochs=1",
                "batch_size=8",
                "logger=none",
                "callbacks=none",
            ],
            tmp_path / "out",
        )
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert saved["status"] == "completed" and saved["data"]["classes"] == sorted(classes)
    assert set(saved["per_class"]["test"]) == set(classes) == set(results["per_class"]["test"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer\n    full_key: batch_size"),
        (
            "finetune.train_head=maybe",
            "Value 'maybe' is not a valid bool (type str)\n    full_key: finetune.train_head",
        ),
        ("optimizer.lr_haed=1", "Key 'lr_haed' not in 'OptimizerSchema'\n    full_key: optimizer.lr_haed"),
        ("finetune.cache_max_gb=lots", "could not be converted to Float\n    full_key: finetune.cache_max_gb"),
    ],
)
def test_wrong_type_or_unknown_key_is_refused_at_composition(override, message, tmp_path):
    """The schemas (gnr650/config/schema.py) refuse it when Hydra composes, naming the key."""
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(["debug=smoke", override], tmp_path)
    assert message in str(err.value.__cause__)


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_wrong_type_on_the_command_line_starts_no_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "debug=smoke", "optimizer.lr_head=fast", f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    message = "Value 'fast' of type 'str' could not be converted to Float\n    full_key: optimizer.lr_head"
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.rglob("results.json"))


def test_numbers_of_the_other_kind_are_accepted(tmp_path):
    """An int where a float is expected is fine; the schema converts it."""
    cfg = make_cfg(["optimizer.lr_backbone=1", "finetune.cache_max_gb=2", "seed=3"], tmp_path)
    assert (cfg.optimizer.lr_backbone, cfg.finetune.cache_max_gb, cfg.seed) == (1.0, 2.0, 3)
    assert isinstance(cfg.optimizer.lr_backbone, float)
    # The dataset group has no schema: its constructor checks its values.
    with pytest.raises(ValueError, match=r"dataset.per_class must be a positive integer \(got abc\)"):
        SyntheticDataModule(per_class="abc")


@pytest.mark.parametrize("value", [0, -5])
def test_zero_or_negative_per_class(value, tmp_path):
    with pytest.raises(ValueError, match=rf"dataset.per_class must be a positive integer \(got {value}\)"):
        SyntheticDataModule(per_class=value)
    with pytest.raises(ValueError, match=rf"dataset.per_class must be a positive integer \(got {value}\)"):
        Cifar10SubsetDataModule(root=str(tmp_path), per_class=value)
    with pytest.raises(Exception, match="per_class must be a positive integer"):  # wrapped by Hydra's instantiate
        train(make_cfg(["debug=smoke", "model=resnet18", f"dataset.per_class={value}"], tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "results.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "abc"])
def test_fraction_outside_zero_to_one(fraction, tmp_path):
    for module in (ImageFolderDataModule, EuroSATDataModule):
        with pytest.raises(ValueError, match=r"dataset.fraction must be a number in \(0, 1\]"):
            module(root=str(tmp_path), fraction=fraction)
    ImageFolderDataModule(root=str(tmp_path), fraction=1)  # the closed end is allowed


@pytest.mark.parametrize(
    "content,message",
    [
        ([1, 2, 3], "is not a state dict"),
        ({"lr": 0.1, "epochs": 3}, "is not a state dict"),
        ({}, "is not a state dict"),
        (RunsCodeWhenUnpickled(), "needs arbitrary pickled code"),
        (b"not a weights file", "Cannot read weights file"),
    ],
    ids=["list", "dict-of-numbers", "empty", "pickled-code", "garbage"],
)
def test_weights_file_that_is_not_a_state_dict(content, message, tmp_path):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message) as err:
        build_resnet18(4, weights=str(path))
    assert f"'{path}'" in str(err.value)
    fake = tmp_path / "weights.safetensors"
    fake.write_text("{}")
    with pytest.raises(WeightsError, match="Cannot read weights file"):
        build_resnet18(4, weights=str(fake))
    save_file({"only.this": torch.zeros(2)}, str(fake))
    with pytest.raises(WeightsError, match="do not match this model"):
        build_resnet18(4, weights=str(fake))


def test_output_directory_that_is_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PreflightError, match=rf"Output directory '{blocker / 'run'}' is not writable.*hydra.run.dir"):
        train(make_cfg(["debug=smoke", "model=resnet18"], blocker / "run"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(PreflightError, match=rf"'{locked}' is not writable"):
            train(make_cfg(["debug=smoke", "model=resnet18"], locked))


def test_unknown_optimizer_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    import gnr650.train as train_module

    monkeypatch.setattr(train_module, "build", lambda cfg: pytest.fail("the data were read"))
    with pytest.raises(OptimizerSettingError, match=r"optimizer.algorithm='adam' is not one of adamw, sgd"):
        train(make_cfg(["debug=smoke", "model=resnet18", "optimizer.algorithm=adam"], tmp_path / "run"))


def test_results_are_not_lost_when_results_json_cannot_be_written(tmp_path, monkeypatch, caplog):
    import gnr650.runs.results as results_module

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results_module, "write_json", refuse)
    with pytest.raises(PermissionError):
        train(
            make_cfg(
                ["debug=smoke", "model=resnet18", "trainer.max_epochs=1", "logger=none", "callbacks=none"], tmp_path
            )
        )
    logged = [r.getMessage() for r in caplog.records if "Could not write" in r.getMessage()]
    assert logged and '"status": "completed"' in logged[0] and '"test/acc"' in logged[0]


def test_missing_data_dir_says_where_it_looked_and_what_to_do(tmp_path):
    cfg = make_cfg(
        ["dataset=cifar10-subset", "model=resnet18", f"paths.data_dir={tmp_path / 'nowhere'}"], tmp_path / "out"
    )
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


def write_unreadable(folder: Path, n: int) -> list[Path]:
    """``n`` broken .jpg files spread over ``folder``'s class folders: empty, text, and truncated JPEGs (whose
    header reads, so only decoding finds them)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    bad = []
    for i in range(n):
        path = classes[i % len(classes)] / f"bad{i:02d}.jpg"
        if i % 3 == 0:
            path.write_bytes(b"")
        elif i % 3 == 1:
            path.write_text("not an image")
        else:
            Image.fromarray(PIXELS).save(path, quality=95)
            path.write_bytes(path.read_bytes()[:-200])
        bad.append(path)
    return bad


def test_every_unreadable_image_is_named_in_one_error(tmp_path):
    root = class_folders(tmp_path / "data", classes=("a", "b", "c"), n=8)
    bad = write_unreadable(root, 23)
    with pytest.raises(ImageDecodeError) as err:
        load(root, tmp_path)
    message = str(err.value)
    assert message.startswith("23 image files cannot be decoded") and "... and 3 more" in message
    assert sum(f"'{p}'" in message for p in bad) == 20 and "dataset.skip_unreadable=true" in message
    assert {path for path, _ in err.value.unreadable} == {str(p) for p in bad}  # all splits, truncated ones too
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_skip_unreadable_trains_on_the_rest_with_one_warning(tmp_path, caplog, monkeypatch):
    root = class_folders(tmp_path / "data", classes=("a", "b", "c"), n=8)
    bad = write_unreadable(root, 4)
    with caplog.at_level(logging.WARNING, logger="gnr650.data.decoded_store"):
        dm = load(root, tmp_path, skip_unreadable=True)
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "Left out 4 unreadable image files" in warnings[0]
    assert all(f"'{p}'" in warnings[0] for p in bad)
    files = [f for s in dm.splits.values() for f in s.files]
    assert sorted(files) == sorted(str(p) for p in root.glob("*/*.png"))  # every readable file, once
    for split in dm.splits.values():  # labels still belong to their files
        assert [dm.class_names[i] for i in split.labels.tolist()] == [Path(f).parent.name for f in split.files]
        assert len(split.images) == len(split.files)
    # The store, keyed by the setting, is reused (nothing decoded) and still leaves them out ...
    monkeypatch.setattr(decoded_store, "decode_chunks", lambda *a, **k: pytest.fail("decoded again"))
    again = load(root, tmp_path, skip_unreadable=True)
    assert {k: s.files for k, s in again.splits.items()} == {k: s.files for k, s in dm.splits.items()}
    monkeypatch.undo()
    with pytest.raises(ImageDecodeError, match="4 image files"):  # ... and never serves the run that did not ask
        load(root, tmp_path)
    overrides = ["debug=smoke", "model=resnet18", "dataset=imagefolder", f"dataset.root={root}"]
    cfg = make_cfg([*overrides, "dataset.skip_unreadable=true"], tmp_path / "out")
    results = train(cfg)
    assert results["status"] == "completed" and sum(results["data"]["sizes"].values()) == 3 * 8


def test_unreadable_images_without_a_writable_cache(tmp_path, monkeypatch):
    """Decoded straight into memory (no store): the same one error, or the same split without them."""
    root = class_folders(tmp_path / "data", classes=("a",), n=4)
    bad = write_unreadable(root, 3)
    files = sorted(root.glob("a/*"))
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/gnr650-no-xdg")
    storage = SplitStorage("memory", cache_dir="/proc/gnr650-no-cache")  # not even root can make these
    with pytest.raises(ImageDecodeError) as err:
        decoded_store.decoded_split("ro", files, [0] * len(files), storage)
    assert {path for path, _ in err.value.unreadable} == {str(p) for p in bad}
    split = decoded_store.decoded_split("ro", files, list(range(len(files))), storage, skip_unreadable=True)
    good = [i for i, f in enumerate(files) if f not in bad]
    assert split.files == [str(files[i]) for i in good] and split.labels.tolist() == good
    assert torch.equal(split.images, decode_images([files[i] for i in good])) and split.skipped == sorted(map(str, bad))


def test_store_header_holds_any_number_of_left_out_files(tmp_path):
    dropped = list(range(5000, 7000))  # about 10 KiB of JSON: more than one header block
    images = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    written = decoded_store.write_store(tmp_path / "s.u8", "key", images.shape, iter([images]), dropped)
    found = decoded_store.read_store(tmp_path / "s.u8", "key")
    assert found == written and found.dropped == dropped and found.offset % decoded_store.HEADER_BYTES == 0
    assert torch.equal(decoded_store.open_store(found, in_memory=True), torch.from_numpy(images))


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
