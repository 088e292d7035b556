"""The attention explorer's embedded data, decoded here independently of the page's script: maps within the stated
quantisation error, right/wrong marks from labels vs predictions, and the page size at realistic shapes."""

from __future__ import annotations

import base64
import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gnr650.summary.attention import load_attention
from gnr650.summary.collect import collect_jobs
from gnr650.summary.explorer import explorer_section
from tests.summary.jobs import EUROSAT, attention_arrays, make_job

SMALL = {"n_layers": 4, "grid": 5, "heads": 3, "classes": EUROSAT[:4], "image_size": 40}
VIT_TI_224 = {"n_layers": 12, "grid": 14, "heads": 3, "classes": EUROSAT, "image_size": 64}  # EuroSAT images: 64 px


def make_jobs(root: Path, n: int, shape: dict, without_predictions: tuple[int, ...] = ()) -> list:
    for num in range(n):
        make_job(
            root,
            num,
            [f"finetune=s{num}"],
            attention=0.3 + num / 10,
            attention_shape={**shape, "seed": num, "predictions": num not in without_predictions},
        )
    return load_attention(collect_jobs(root))


def embedded(fragment: str) -> dict:
    match = re.search(r'<script type="application/json" class="ae-data">(.*?)</script>', fragment, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def stored_maps(job: dict, levels: int) -> np.ndarray:
    """The job's maps [n_stored, patches] as the page reads them: inflate, then each map's min + code * step."""
    codes = np.frombuffer(zlib.decompress(base64.b64decode(job["codes"])), np.uint8)
    ranges = np.frombuffer(base64.b64decode(job["ranges"]), "<f4").reshape(-1, 2).astype(np.float64)
    codes = codes.reshape(len(ranges), -1)
    return ranges[:, :1] + codes * (ranges[:, 1:] - ranges[:, :1]) / levels


def check_maps(attentions: list, data: dict) -> None:
    """Every stored map equals the loaded one within half a quantisation step of its own range; layers without
    per-head maps hold the head mean; the mean of stored heads is within the largest of their half steps."""
    for e, job in zip(attentions, data["jobs"]):
        expected, heads_at = [], []  # storage order: per image, per layer the heads or the mean, then the rollout
        for image in range(len(e.images)):
            for layer in range(e.heads.shape[1]):
                if layer in job["perHead"]:
                    heads_at.append((len(expected), image, layer))
                    expected += list(e.heads[image, layer])
                else:
                    expected.append(e.maps[image, layer])
            expected.append(e.rollout[image])
        expected = np.stack(expected).reshape(len(expected), -1).astype(np.float64)
        step = np.ptp(expected, axis=1, keepdims=True) / data["levels"]
        values = stored_maps(job, data["levels"])
        assert values.shape == expected.shape
        assert np.all(np.abs(values - expected) <= step / 2 + 1e-7)
        for at, image, layer in heads_at:
            heads = slice(at, at + e.heads.shape[2])
            error = np.abs(values[heads].mean(axis=0) - e.maps[image, layer].ravel()).max()
            assert error <= step[heads].max() / 2 + 1e-7


def test_embedded_maps_decode_within_the_quantisation_error(tmp_path: Path):
    attentions = make_jobs(tmp_path, 3, SMALL)
    data = embedded(explorer_section(attentions))
    assert [job["perHead"] for job in data["jobs"]] == [[0, 1, 2, 3]] * 3  # all fit the default budget
    check_maps(attentions, data)
    assert [job["label"] for job in data["jobs"]] == ["finetune=s0", "finetune=s1", "finetune=s2"]
    assert data["jobs"][1]["colour"] != data["jobs"][0]["colour"]


def test_per_head_maps_are_dropped_evenly_to_fit_the_budget(tmp_path: Path):
    attentions = make_jobs(tmp_path, 2, SMALL)
    patches, n_images = 25, len(SMALL["classes"])
    base = 2 * n_images * (SMALL["n_layers"] + 1) * patches  # head means and rollout, both jobs
    per_layer = 2 * n_images * (SMALL["heads"] - 1) * patches  # what one layer's heads add
    data = embedded(explorer_section(attentions, max_codes=base + 2 * per_layer))
    assert [job["perHead"] for job in data["jobs"]] == [[0, 3]] * 2  # first and last
    check_maps(attentions, data)
    data = embedded(explorer_section(attentions, max_codes=base + per_layer))
    assert data["jobs"][0]["perHead"] == [3]  # the last layer
    data = embedded(explorer_section(attentions, max_codes=base))
    assert data["jobs"][0]["perHead"] == []
    check_maps(attentions, data)


def test_each_image_once_in_class_order_with_right_and_wrong_marks(tmp_path: Path):
    attentions = make_jobs(tmp_path, 3, SMALL, without_predictions=(2,))
    data = embedded(explorer_section(attentions))
    assert [image["class"] for image in data["images"]] == SMALL["classes"]  # the jobs' images are the same ones
    for image, expected in zip(data["images"], attention_arrays(1.0, **SMALL)["images"]):
        header, payload = image["src"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
        assert decoded.shape == expected.transpose(1, 2, 0).shape
    for num, job in enumerate(data["jobs"]):
        written = attention_arrays(0.3 + num / 10, **SMALL, seed=num)  # what make_job wrote for this job
        assert job["slots"] == list(range(len(SMALL["classes"])))
        if num == 2:  # a file from before predictions were saved
            assert job["marks"] == [None] * len(SMALL["classes"])
            continue
        predicted = [SMALL["classes"][p] for p in written["predictions"]]
        right = list(written["predictions"] == written["labels"])
        assert job["marks"] == [{"predicted": p, "correct": r} for p, r in zip(predicted, right)]
        assert 0 < sum(right) < len(right)  # both marks are exercised


def test_a_job_missing_an_image_has_no_slot_for_it(tmp_path: Path):
    attentions = make_jobs(tmp_path, 2, SMALL)
    attentions[1].images = attentions[1].images[:2].copy()
    attentions[1].images[1] = 255 - attentions[1].images[1]  # another image of the second class
    data = embedded(explorer_section(attentions))
    assert len(data["images"]) == 5
    assert data["jobs"][0]["slots"] == [0, 1, None, 2, 3] and data["jobs"][1]["slots"] == [0, None, 1, None, None]


@pytest.mark.parametrize(("n_jobs", "limit"), [(4, 450_000), (12, 1_250_000)])
def test_size_at_vit_ti_224_keeps_every_head(tmp_path: Path, n_jobs: int, limit: int):
    """12 jobs x 10 classes x 12 layers x 3 heads on a 14x14 grid: the whole zoo's report has 3 MB, the explorer
    gets at most 1.25 MB of it (4 jobs: 0.45 of 1.5 MB), with every head of every layer kept."""
    attentions = make_jobs(tmp_path, n_jobs, VIT_TI_224)
    fragment = explorer_section(attentions)
    assert len(fragment.encode()) <= limit
    assert all(job["perHead"] == list(range(12)) for job in embedded(fragment)["jobs"])


def test_size_at_vit_b_224_stays_in_budget_by_dropping_heads(tmp_path: Path):
    attentions = make_jobs(tmp_path, 12, {**VIT_TI_224, "heads": 12})
    fragment = explorer_section(attentions)
    assert len(fragment.encode()) <= 1_250_000
    kept = embedded(fragment)["jobs"][0]["perHead"]
    assert 0 < len(kept) < 12 and kept[-1] == 11


def test_no_attention_no_section():
    assert explorer_section([]) is None
