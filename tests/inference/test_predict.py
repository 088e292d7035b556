"""gnr650-predict: one row per image with the run's classes, probabilities as the checkpoint gives them,
unreadable files listed, attention overlays for ViTs, clear errors for unusable runs and inputs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from matplotlib.text import Text
from PIL import Image

from gnr650.inference import RunDirError, load_run, predict
from gnr650.inference.cli import predict_main
from gnr650.inference.predict import (
    PredictInputError,
    collect_images,
    predict_files,
    predict_images,
    write_predictions,
)
from gnr650.interpret.figures import DPI
from gnr650.models import WeightsError


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """RGB images of the training size and of another size, greyscale, RGBA, and one file that is no image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"rgb{i}.png")
    (root / "nested").mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / "nested" / "odd_size.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "nested" / "grey.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(root / "nested" / "rgba.png")
    (root / "nested" / "broken.jpg").write_bytes(b"not an image")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _reference_probs(run_dir: Path, image: np.ndarray) -> np.ndarray:
    """Independent of the inference code: torchvision ResNet-18, the checkpoint's tensors, results.json's
    normalisation, computed by hand."""
    results = json.loads((run_dir / "results.json").read_text())
    state = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    net = torchvision.models.resnet18(num_classes=len(results["data"]["classes"]))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    mean = torch.tensor(results["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(results["preprocess"]["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.no_grad():
        return net.eval()(x).softmax(-1)[0].numpy()


def test_predict_folder_one_row_per_image(resnet_run, images, tmp_path):
    out = tmp_path / "predictions.csv"
    assert predict_main([str(resnet_run), str(images), "--out", str(out), "--topk", "3", "--batch-size", "2"]) == 0
    rows = _rows(out)
    files = sorted(str(p) for p in images.rglob("*") if p.is_file())
    assert sorted(r["file"] for r in rows) == files
    classes = json.loads((resnet_run / "results.json").read_text())["data"]["classes"]
    broken = [r for r in rows if r["error"]]
    assert [Path(r["file"]).name for r in broken] == ["broken.jpg"] and broken[0]["class"] == ""
    for row in (r for r in rows if not r["error"]):
        top = row["top3_classes"].split(";")
        probs = [float(p) for p in row["top3_probabilities"].split(";")]
        assert len(top) == 3 and set(top) <= set(classes) and top[0] == row["class"]
        assert probs == sorted(probs, reverse=True) and float(row["probability"]) == probs[0] and sum(probs) <= 1 + 1e-5
    rgb = next(r for r in rows if r["file"].endswith("rgb0.png"))
    expected = _reference_probs(resnet_run, np.array(Image.open(images / "rgb0.png")))
    assert rgb["class"] == classes[int(expected.argmax())]
    assert float(rgb["probability"]) == pytest.approx(float(expected.max()), abs=1e-5)


def test_greyscale_file_is_predicted_as_its_rgb_copy_and_tensors_of_other_channels_are_refused(resnet_run, images):
    run = load_run(resnet_run)
    grey = np.asarray(Image.open(images / "nested" / "grey.png"))
    rgb = torch.from_numpy(np.repeat(grey[..., None], 3, axis=2)).permute(2, 0, 1)[None].contiguous()
    [p] = predict_files(run, [images / "nested" / "grey.png"], topk=4)
    probs = predict_images(run, rgb)[0]
    assert p.probabilities == pytest.approx(probs.sort(descending=True).values.tolist(), abs=1e-6)
    with pytest.raises(PredictInputError, match=r"takes \[N, 3, H, W\].*decode_image"):
        predict_images(run, rgb[:, :1])


def test_attention_overlays_for_vit_only(vit_run, resnet_run, images, tmp_path):
    files = collect_images([images])
    predictions = predict_files(load_run(vit_run), files, topk=2, attention_dir=tmp_path / "attention")
    readable = [p for p in predictions if not p.error]
    assert len(readable) == len(files) - 1
    assert all(Path(p.attention).is_file() and Path(p.attention).parent == tmp_path / "attention" for p in readable)
    assert len({p.attention for p in readable}) == len(readable)
    with pytest.raises(PredictInputError, match="need a ViT"):
        predict_files(load_run(resnet_run), files, attention_dir=tmp_path / "none")


def test_attention_overlay_is_readable(vit_run, images, monkeypatch, tmp_path):
    """A 32 px input shown at >= 256 px in sharp blocks, a translucent map over it, a slim labelled colour bar
    no taller than the image."""
    figures = []

    def keep(figure, path):
        figures.append(figure)
        return path

    monkeypatch.setattr(predict, "save_figure", keep)
    predict_files(load_run(vit_run), [images / "rgb0.png"], attention_dir=tmp_path)
    [figure] = figures
    dpi = DPI  # save_figure's
    panels = [ax for ax in figure.axes if ax.images]
    [colorbar] = [ax for ax in figure.axes if not ax.images]
    for ax in panels:
        box = ax.get_position()
        assert box.width * figure.get_figwidth() * dpi >= 256 and box.height * figure.get_figheight() * dpi >= 256
        assert ax.images[0].get_interpolation() == "nearest"  # the input's pixels, not a blur of them
    [attention] = [image for ax in panels for image in ax.images if image.get_alpha() is not None]
    assert 0.4 <= attention.get_alpha() <= 0.5
    bar, panel = colorbar.get_position(), panels[0].get_position()
    assert bar.height <= panel.height and bar.width * figure.get_figwidth() <= 0.25  # inches
    assert "attention" in colorbar.get_ylabel()


def _copy_run(source: Path, dest: Path, **changes) -> Path:
    shutil.copytree(source, dest)
    results = json.loads((dest / "results.json").read_text())
    results.update(changes)
    (dest / "results.json").write_text(json.dumps(results))
    return dest


def test_moved_run_dir_finds_its_recorded_checkpoint(resnet_run, tmp_path):
    results = json.loads((resnet_run / "results.json").read_text())
    name = Path(results["checkpoint"]).name
    moved = _copy_run(resnet_run, tmp_path / "moved", run_dir="/gone/run", checkpoint=f"/gone/run/checkpoints/{name}")
    assert load_run(moved).checkpoint == moved / "checkpoints" / name


def test_unusable_runs_are_clear_errors(resnet_run, vit_run, tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run(tmp_path)
    name = Path(json.loads((resnet_run / "results.json").read_text())["checkpoint"]).name
    no_ckpt = tmp_path / "no_ckpt"
    _copy_run(resnet_run, no_ckpt, run_dir=str(no_ckpt), checkpoint=str(no_ckpt / "checkpoints" / name))
    shutil.rmtree(no_ckpt / "checkpoints")
    with pytest.raises(RunDirError, match="checkpoints/ holds: nothing"):
        load_run(no_ckpt)
    frozen = _copy_run(resnet_run, tmp_path / "frozen", checkpoint=None)
    with pytest.raises(RunDirError, match="recorded no checkpoint"):
        load_run(frozen)
    vit_ckpt = json.loads((vit_run / "results.json").read_text())["checkpoint"]
    other = _copy_run(resnet_run, tmp_path / "other_arch", checkpoint=vit_ckpt)
    with pytest.raises(WeightsError, match="another architecture"):
        load_run(other)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        predict_main([str(tmp_path), str(tmp_path)])
    assert stopped.value.code == 2
    assert re.fullmatch(r"gnr650-predict: error: [^\n]*not a run directory[^\n]*\n", capsys.readouterr().err)


def test_missing_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(PredictInputError, match="do not exist"):
        collect_images([tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictInputError, match="No image files"):
        collect_images([tmp_path / "empty"])


def test_inputs_are_files_as_given_then_image_files_of_folders_in_sorted_order(images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        shutil.copy(images / "rgb0.png", folder / name)
    single = images / "rgb1.png"
    assert collect_images([single, folder]) == [single, folder / "a.jpg", folder / "b.png"]
    with pytest.raises(PredictInputError, match=r"do not exist: \['.*nope.jpg'\]"):
        collect_images([single, tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictInputError, match=r"No image files in \['.*empty'\] .* for .jpg, .jpeg, .png"):
        collect_images([tmp_path / "empty"])


def test_unreadable_batches_do_not_stop_the_rest_and_their_rows_say_why(resnet_run, images, tmp_path):
    """Batches of one, the unreadable file first: every later image is still predicted; its CSV row names the file
    and leaves class, probability and attention empty."""
    run = load_run(resnet_run)
    files = [images / "nested" / "broken.jpg", images / "rgb0.png", images / "rgb1.png"]
    predictions = predict_files(run, files, topk=1, batch_size=1)
    assert [len(p.classes) for p in predictions] == [0, 1, 1]
    assert "broken.jpg" in predictions[0].error and "Cannot decode image" in predictions[0].error
    rows = _rows(write_predictions(tmp_path / "p.csv", predictions, topk=1))
    assert [(r["class"], r["probability"], r["attention"]) for r in rows[:1]] == [("", "", "")]
    assert rows[1]["attention"] == "" and float(rows[1]["probability"]) == pytest.approx(
        predictions[1].probabilities[0]
    )


def test_topk_is_five_by_default_and_at_least_one(unsorted_class_run, images):
    run = load_run(unsorted_class_run)  # 12 classes (the fixture is shared with test_evaluate.py)
    assert len(run.class_names) > 5
    [five] = predict_files(run, [images / "rgb0.png"])
    [one] = predict_files(run, [images / "rgb0.png"], topk=1)
    assert len(five.classes) == 5 and one.classes == five.classes[:1]
    with pytest.raises(PredictInputError, match=r"topk must be at least 1 \(got 0\)"):
        predict_files(run, [images / "rgb0.png"], topk=0)


def test_attention_overlay_names_the_file_and_its_top_class_and_the_csv_links_it(
    vit_run, images, monkeypatch, tmp_path
):
    figures = []
    monkeypatch.setattr(predict, "save_figure", lambda figure, path: figures.append(figure) or path)
    [p] = predict_files(load_run(vit_run), [images / "rgb0.png"], topk=2, attention_dir=tmp_path)
    texts = {t.get_text() for t in figures[0].findobj(Text)}
    assert "rgb0.png" in texts
    assert any(t.startswith(f"{p.classes[0]} ({p.probabilities[0]:.1%})\n") for t in texts), texts
    [row] = _rows(write_predictions(tmp_path / "p.csv", [p], topk=2))
    assert row["attention"] == p.attention == str(tmp_path / "00000_rgb0.png")
