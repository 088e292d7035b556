"""Decoded splits in memory or memory-mapped from a disk store: the same batches and results, a store never trusted
when incomplete, clear errors when the data fits nowhere or the disk fills up."""

from __future__ import annotations

import errno
import json
import logging
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gnr650.data import ImageFolderDataModule, datamodule
from gnr650.data import decoded_store as store_lib
from gnr650.data.datamodule import _prefetched
from gnr650.data.decoded_store import StoreError, decoded_split
from gnr650.data.images import decode_images, oversized_warning
from gnr650.data.storage import SplitStorage, StorageError, processes_per_node, release_freed_memory
from gnr650.train import build, train
from tests.helpers import ROOT, finish, make_cfg, real_data_dir, tiny_overrides, train_py, write_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of twelve 32x32 PNGs, as dataset=imagefolder reads them."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        for i in range(12):
            write_image(root / "folder" / c / f"{i}.png", rng)
    return root


def _module(folder, cache, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(folder / "folder"), cache_dir=str(cache), batch_size=8, **kwargs)
    dm.setup()
    return dm


def _files(d):
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.exists() else []


def _mapped_file(t: torch.Tensor) -> str:
    """The file the memory of ``t`` is mapped from ('' for anonymous memory), from /proc/self/maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(a, 16) for a in fields[0].split("-"))
        if low <= t.data_ptr() < high:
            return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError("address not mapped")


def test_memory_and_disk_give_identical_batches(folder, tmp_path):
    memory = _module(folder, tmp_path, storage="memory")
    disk = _module(folder, tmp_path, storage="disk")
    assert {s.storage for s in memory.splits.values()} == {"memory"}
    assert {s.storage for s in disk.splits.values()} == {"disk"}
    assert _mapped_file(disk.split("train").images).endswith(".u8")  # mapped, not read into memory
    assert not _mapped_file(memory.split("train").images).endswith(".u8")
    assert len(_files(tmp_path)) == 3  # one store per split, shared by both storages
    for epoch in range(2):
        loaders = memory.train_dataloader(), disk.train_dataloader()
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        pairs = list(zip(*loaders))
        assert len(pairs) == len(loaders[0]) > 1
        for (xm, ym), (xd, yd) in pairs:
            assert torch.equal(xm, xd) and torch.equal(ym, yd)
    for a, b in zip(memory.test_dataloader(), disk.test_dataloader()):
        assert all(torch.equal(xm, xd) and torch.equal(ym, yd) for (xm, ym), (xd, yd) in zip(a, b))
    assert memory.channel_stats() == disk.channel_stats()


@pytest.mark.slow  # > 10 s here: in the tier .ci/run also runs
def test_memory_and_disk_give_identical_results(fake_data, tmp_path):
    common = tiny_overrides("imagefolder", fake_data) + ["model=resnet18", "finetune=full", "trainer.max_epochs=2"]
    runs = {s: train(make_cfg(common + [f"dataset.storage={s}"], tmp_path / s)) for s in ("memory", "disk")}
    assert runs["memory"]["status"] == runs["disk"]["status"] == "completed"
    assert runs["memory"]["metrics"] == runs["disk"]["metrics"]
    assert runs["memory"]["confusion_matrix"] == runs["disk"]["confusion_matrix"]


def test_auto_keeps_what_fits_the_budget_in_memory_and_logs_why(folder, tmp_path, caplog):
    one_image = 3 * 32 * 32
    with caplog.at_level(logging.INFO, logger="gnr650.data"):
        dm = _module(folder, tmp_path, memory_budget_gb=25 * one_image / 1e9)  # train (21 images) fits, not val too
    assert [dm.splits[s].storage for s in ("train", "val", "test")] == ["memory", "disk", "disk"]
    # One line for the three splits: with train, val would exceed the budget, and so would test (their reasons read
    # alike, so they share one).
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Storage: ")]
    budget = f"dataset.memory_budget_gb={25 * one_image / 1e9:g} GB"
    assert line == (
        f"Storage: imagefolder-train (21 images at 32x32, 0.1 MB) in memory, because 0.1 MB fits {budget}; "
        "imagefolder-val (6 images at 32x32, 0.0 MB) and imagefolder-test (9 images at 32x32, 0.0 MB) memory-mapped "
        f"from disk, because 0.1 MB exceeds {budget}."
    )
    # Two processes per node each hold a copy: the same budget no longer takes the training split.
    two = _module(folder, tmp_path, memory_budget_gb=25 * one_image / 1e9, devices=2)
    assert two.split("train").storage == "disk"


def test_building_a_run_logs_one_storage_line_for_all_its_splits(fake_data, tmp_path, caplog):
    """All a job logs about storage is logged when its data are built (a whole job's console: tests/test_console.py)."""
    overrides = tiny_overrides("eurosat", fake_data) + ["model=resnet18", f"paths.cache_dir={tmp_path}"]
    with caplog.at_level(logging.INFO, logger="gnr650"):
        dm, _, _ = build(make_cfg(overrides, tmp_path))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Storage")]
    for split, size in dm.summary().items():
        assert f"eurosat-{split} ({size} images at 64x64, " in line
    assert "in memory, because" in line and "memory-mapped" not in line  # a few KB: in memory, by the default budget


def test_fitting_nowhere_is_a_clear_error_before_decoding(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(store_lib, "free_bytes", lambda d: 1000)
    monkeypatch.setattr(store_lib, "decode_chunks", lambda *a, **k: pytest.fail("decoded before the preflight"))
    with pytest.raises(StorageError) as e:
        _module(folder, tmp_path, memory_budget_gb=1e-6)
    message = str(e.value)
    for setting in ("dataset.decode_size", "dataset.memory_budget_gb=1e-06 GB", "paths.cache_dir"):
        assert setting in message
    assert "needs 0.1 MB on disk, but only 0.0 MB are free" in message and str(tmp_path) in message
    with pytest.raises(StorageError, match="dataset.storage=disk: .* needs 0.1 MB on disk"):
        _module(folder, tmp_path, storage="disk")
    assert _files(tmp_path) == []


def test_decode_size_resizes_at_decode_time_and_keys_the_store(folder, tmp_path):
    assert _module(folder, tmp_path, decode_size=16).split("train").images.shape[-2:] == (16, 16)
    assert _module(folder, tmp_path, decode_size=[8, 12]).split("train").images.shape[-2:] == (8, 12)
    native = _module(folder, tmp_path, decode_size=None).split("train")
    assert native.images.shape[-2:] == (32, 32)
    assert len(_files(tmp_path)) == 9  # three settings, three splits each
    wide = tmp_path / "wide.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(wide)
    assert decode_images([wide], 100).shape == (1, 3, 100, 133)  # the shorter side; the aspect kept
    with pytest.raises(ValueError, match="dataset.decode_size must be null"):
        _module(folder, tmp_path, decode_size="big")
    assert "dataset.decode_size=224" in oversized_warning((1024, 768), 224, None)
    assert oversized_warning((448, 448), 224, None) is None and oversized_warning((1024, 768), 224, 512) is None


def test_storage_settings_are_checked():
    with pytest.raises(ValueError, match="dataset.storage must be one of auto, memory, disk"):
        SplitStorage("ssd")
    with pytest.raises(ValueError, match="dataset.memory_budget_gb must be a positive number"):
        SplitStorage(memory_budget_gb=0)
    assert [processes_per_node(d) for d in (1, 4, "2", [0, 1, 2], "0,1")] == [1, 4, 2, 3, 2]


def _decode(files, cache):
    return decoded_split("kill-test", files, [0] * len(files), SplitStorage("disk", cache_dir=str(cache)))


def test_a_store_killed_mid_write_is_never_trusted_and_is_rebuilt(folder, tmp_path):
    files = sorted((folder / "folder").rglob("*.png"))
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from gnr650.data import decoded_store
        def stall(f, chunk):
            f.write(memoryview(chunk).cast("B")[: chunk.nbytes // 2])
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
        decoded_store._write_chunk = stall
        files = sorted(Path({str(folder / "folder")!r}).rglob("*.png"))
        decoded_store.decoded_split("kill-test", files, [0] * len(files),
            decoded_store.SplitStorage("disk", cache_dir={str(tmp_path)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    left = _files(tmp_path)
    assert len(left) == 1 and left[0].endswith(".tmp")  # killed mid-write: only the temporary file
    split = _decode(files, tmp_path)
    assert torch.equal(split.images, decode_images(files)) and split.storage == "disk"
    assert [n.endswith(".u8") for n in _files(tmp_path)] == [True]  # rebuilt; the dead writer's file removed


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_store_is_rebuilt(folder, tmp_path, damage, caplog):
    files = sorted((folder / "folder" / "a").glob("*.png"))
    _decode(files, tmp_path)
    (path,) = tmp_path.glob("*.u8")
    data = path.read_bytes()
    path.write_bytes(data[:-10] if damage == "truncate" else b"X" + data[1:])
    with caplog.at_level(logging.WARNING):
        split = _decode(files, tmp_path)
    assert "Ignoring the damaged or incomplete decoded store" in caplog.text
    assert torch.equal(split.images, decode_images(files)) and path.read_bytes() == data


def test_a_full_disk_stops_with_a_clear_error_and_removes_the_partial_file(folder, tmp_path, monkeypatch):
    def full(f, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_lib, "_write_chunk", full)
    with pytest.raises(StoreError, match="disk filled up while writing the decoded store .* partial file was removed"):
        _decode(sorted((folder / "folder").rglob("*.png")), tmp_path)
    assert _files(tmp_path) == []


def test_an_unwritable_cache_dir_falls_back_to_the_default_or_stops(folder, tmp_path, monkeypatch, caplog):
    files = sorted((folder / "folder" / "b").glob("*.png"))
    unwritable = "/proc/gnr650-no-cache"  # not even root can make it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with caplog.at_level(logging.WARNING):
        split = decoded_split("ro", files, [1] * len(files), SplitStorage("disk", cache_dir=unwritable))
    assert f"Cache folder '{unwritable}' is not writable" in caplog.text
    assert split.storage == "disk" and len(list((tmp_path / "xdg" / "gnr650").glob("ro-*.u8"))) == 1
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/gnr650-no-xdg")
    with pytest.raises(StorageError, match="no cache folder is writable.* paths.cache_dir"):
        decoded_split("ro2", files, [1] * len(files), SplitStorage("disk", cache_dir=unwritable))
    in_memory = decoded_split("ro2", files, [1] * len(files), SplitStorage("memory", cache_dir=unwritable))
    assert in_memory.storage == "memory" and torch.equal(in_memory.images, decode_images(files))


def test_nothing_is_written_into_the_data_folder_by_default(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(folder.rglob("*"))
    ImageFolderDataModule(root=str(folder / "folder")).setup()
    assert sorted(folder.rglob("*")) == before
    assert len(list((tmp_path / "xdg" / "gnr650").glob("imagefolder-*.u8"))) == 3


def test_prefetching_keeps_order_and_raises_the_source_error():
    def source():
        yield from ((torch.full((2,), i), torch.tensor([i])) for i in range(5))
        raise OSError("read failed")

    got = []
    with pytest.raises(OSError, match="read failed"):
        for batch in _prefetched(source(), pin=False):
            got.append(int(batch[1]))
    assert got == [0, 1, 2, 3, 4]


def _rss_anon() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_freed_memory_hands_freed_heap_back_to_the_os():
    chunks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MiB below the mmap threshold: heap memory
    del chunks[::2]  # 128 MiB of holes between live chunks: free() cannot return them, only malloc_trim can
    before = _rss_anon()
    assert release_freed_memory()
    assert before - _rss_anon() > 100 * 2**20
    del chunks


def test_disk_splits_release_freed_memory_before_each_pass(folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datamodule, "release_freed_memory", lambda: calls.append(1))
    for storage, expected in (("memory", 0), ("disk", 2)):
        calls.clear()
        loader = _module(folder, tmp_path, storage=storage).train_dataloader()
        for _ in range(2):
            assert sum(len(labels) for _, labels in loader) == len(loader.dataset)
        assert len(calls) == expected, storage


@pytest.mark.slow
def test_ddp_ranks_share_one_disk_store_and_match_one_process(fake_data, tmp_path):
    """Two gloo ranks on one node map the same store files (built once) and reach the single-process metrics."""
    run = tiny_overrides("imagefolder", fake_data) + [
        "model=resnet18",
        "finetune=last",  # no batch statistics in training: the ranks' half batches take the same steps
        "trainer.max_epochs=2",
        "dataset.storage=disk",
        "batch_size=6",  # 18 training images: whole batches on one process and on each rank (3 + 3)
    ]
    ddp = train_py(
        run + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"paths.cache_dir={tmp_path / 'c1'}"],
        tmp_path / "ddp",
    )
    single = train_py(run + [f"paths.cache_dir={tmp_path / 'c2'}"], tmp_path / "single")
    out = finish(ddp, timeout=600)
    finish(single, timeout=600)
    assert "Starting with 2 processes" in out
    assert out.count("memory-mapped from disk, because dataset.storage=disk.") == 2  # one line per rank
    assert [n.endswith(".u8") for n in _files(tmp_path / "c1")] == [True] * 3  # one store per split, no leftovers
    (results,) = [json.loads(p.read_text()) for p in (tmp_path / "ddp").rglob("results.json")]
    (reference,) = [json.loads(p.read_text()) for p in (tmp_path / "single").rglob("results.json")]
    assert results["status"] == "completed" and results["config"]["trainer"]["devices"] == 2
    for key, value in reference["metrics"].items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.realdata
@pytest.mark.skipif(real_data_dir() is None, reason="GNR650_DATA_DIR does not point at the real data")
def test_memory_and_disk_give_identical_results_on_the_cifar_subset(tmp_path):
    common = [
        "dataset=cifar10-subset",
        f"paths.data_dir={real_data_dir()}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "dataset.per_class=20",
        "dataset.val_per_class=20",
        "model=resnet18",
        "model.img_size=32",
        "model.pretrained=false",
        "finetune=full",
        "trainer.max_epochs=2",
        "batch_size=32",
        "logger=none",
        "callbacks=none",
    ]
    runs = {s: train(make_cfg(common + [f"dataset.storage={s}"], tmp_path / s)) for s in ("memory", "disk")}
    assert runs["memory"]["data"]["sizes"] == {"train": 200, "val": 200, "test": 10_000}
    assert runs["memory"]["metrics"] == runs["disk"]["metrics"]
    assert runs["memory"]["confusion_matrix"] == runs["disk"]["confusion_matrix"]


def _store(path: Path, key: str = "k", shape: tuple[int, ...] = (2, 3, 4, 4)):
    return store_lib.write_store(path, key, shape, iter([np.zeros(shape, dtype=np.uint8)]))


def test_a_store_is_trusted_only_for_its_key_version_and_rgb_shape(tmp_path, monkeypatch):
    assert store_lib.read_store(_store(tmp_path / "a.u8").path, "k") is not None
    assert store_lib.read_store(tmp_path / "a.u8", "other") is None  # a copied or renamed store of other files
    _store(tmp_path / "grey.u8", shape=(2, 1, 4, 4))
    assert store_lib.read_store(tmp_path / "grey.u8", "k") is None
    monkeypatch.setattr(store_lib, "CACHE_VERSION", store_lib.CACHE_VERSION - 1)
    _store(tmp_path / "old.u8")
    monkeypatch.undo()
    assert store_lib.read_store(tmp_path / "old.u8", "k") is None


def test_store_lookup_goes_on_past_folders_without_it_and_past_damage_it_cannot_remove(tmp_path, monkeypatch):
    """paths.cache_dir lacks the store, the default folder has it; a damaged copy that cannot be removed is skipped."""
    first, second, third = (tmp_path / d for d in ("first", "second", "third"))
    for d in (first, second, third):
        d.mkdir()
    written = _store(third / "s.u8")
    assert store_lib.find_store([first, third], "s.u8", "k") == written
    (second / "s.u8").write_bytes(b"damaged")
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(PermissionError(self)))
    assert store_lib.find_store([second, third], "s.u8", "k") == written


def test_the_key_depends_on_the_settings_not_their_order(tmp_path):
    files = [tmp_path / "x.png"]
    files[0].write_bytes(b"x")
    key = store_lib.fingerprint(files, {"decode_size": 32, "skip_unreadable": True})
    assert key == store_lib.fingerprint(files, {"skip_unreadable": True, "decode_size": 32})
    assert key != store_lib.fingerprint(files, {"decode_size": 64, "skip_unreadable": True})
