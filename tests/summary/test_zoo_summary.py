"""The strategy-zoo additions to the summary: accuracy against trainable parameters, images/s and peak memory."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gnr650.summary import collect_jobs, write_summary
from gnr650.summary.figures import job_style, params_accuracy_figure
from tests.helpers import make_cfg
from tests.summary.jobs import make_job


def _zoo(root: Path) -> Path:
    accs = {("lora", 0): 0.90, ("lora", 1): 0.94, ("last", 0): 0.80, ("last", 1): 0.80}
    for num, ((finetune, seed), acc) in enumerate(accs.items()):
        job = make_job(root, num, [f"finetune={finetune}", f"seed={seed}"], acc=(acc, acc, acc))
        results = json.loads((job / "results.json").read_text())
        results |= {"throughput": 1000.0 + num, "peak_memory": 200.0 + num}
        (job / "results.json").write_text(json.dumps(results))
    return root


def test_one_point_per_strategy_at_the_mean_over_seeds(tmp_path):
    jobs = collect_jobs(_zoo(tmp_path))
    ax = params_accuracy_figure(jobs).axes[0]
    markers = [job_style(0).marker, job_style(2).marker]  # each strategy in the style of its first job
    points = [line.get_xydata()[0] for line in ax.lines if line.get_marker() in markers]
    # make_job gives job num n 2,000 * (n + 1) trainable parameters
    assert np.allclose(points, [(3_000, 92.0), (7_000, 80.0)])
    assert ax.get_xscale() == "symlog" and [t.get_text() for t in ax.texts] == ["finetune=lora", "finetune=last"]


def test_table_lists_images_per_second_and_peak_memory(tmp_path):
    write_summary(_zoo(tmp_path))
    rows = json.loads((tmp_path / "summary.json").read_text())["jobs"]
    assert [(r["images_per_s"], r["peak_memory_mb"]) for r in rows] == [(1000.0 + n, 200.0 + n) for n in range(4)]
    md = (tmp_path / "summary.md").read_text()
    assert "| Images/s | Peak Memory |" in md and "| 1,003 | 203 MB |" in md
    assert (tmp_path / "params_accuracy.png").stat().st_size > 0


def test_strategies_preset_sweeps_the_whole_zoo(tmp_path):
    cfg = make_cfg(["experiment=eurosat-vit-strategies"], tmp_path)
    assert cfg.task_name == "eurosat-vit-strategies" and cfg.model.name == "vit_b16"
    from hydra.core.hydra_config import HydraConfig

    swept = HydraConfig.get().sweeper.params["finetune"].split(",")
    configs = {p.stem for p in (Path(__file__).parents[2] / "configs" / "finetune").glob("*.yaml")}
    assert set(swept) == configs


def test_train_records_speed_and_memory(tmp_path):
    from gnr650.train import train

    overrides = ["debug=smoke", "model=resnet18", "trainer.max_epochs=2", "logger=none", "callbacks=none"]
    results = train(make_cfg(overrides, tmp_path))
    seen = 2 * results["data"]["sizes"]["train"]  # two epochs over the train split
    assert results["throughput"] == pytest.approx(seen / results["timing"]["fit_s"], rel=0.01)
    assert results["peak_memory"] > 100  # MB: the process holds torch at least


def test_peak_memory_is_the_jobs_own_in_a_shared_process(tmp_path):
    """Jobs of a sweep run in one process: an earlier, larger peak must not be reported for a later job."""
    from gnr650.train import train

    overrides = ["debug=smoke", "model=resnet18", "trainer.max_epochs=1", "logger=none", "callbacks=none"]
    small = train(make_cfg(overrides, tmp_path / "a"))["peak_memory"]
    big = torch.ones(2**29)  # 2 GiB, touched: this process's peak is now at least that much higher
    del big
    assert train(make_cfg(overrides, tmp_path / "b"))["peak_memory"] < small + 1024  # MB


def test_header_names_each_strategys_optimizer_when_they_differ(tmp_path):
    """With recipes of their own, strategies train at different rates: the header says whose is whose."""
    from gnr650.summary.header import header

    optimizers = {
        "last": {"algorithm": "adamw", "lr_head": 1e-3, "lr_backbone": 1e-4},
        "vpt": {"algorithm": "sgd", "lr_head": 0.05, "lr_backbone": 1e-4},
    }
    for num, (finetune, optimizer) in enumerate(optimizers.items()):
        job = make_job(tmp_path, num, [f"finetune={finetune}"])
        results = json.loads((job / "results.json").read_text())
        results |= {"finetune": finetune, "config": {"optimizer": optimizer}}
        (job / "results.json").write_text(json.dumps(results))
    rows = dict(header(collect_jobs(tmp_path)))
    assert rows["Optimizer"] == "last: AdamW, head 0.001, backbone 0.0001, vpt: SGD, head 0.05, backbone 0.0001"
    one = dict(header(collect_jobs(tmp_path)[:1]))
    assert one["Optimizer"] == "AdamW, head 0.001, backbone 0.0001"


def _efficiency(root: Path, sizes=(1, 10, 100), seeds=(0, 1, 2)) -> list:
    num = 0
    for base, finetune in ((0.4, "last"), (0.6, "lora")):
        for size in sizes:
            for seed in seeds:
                acc = base + 0.001 * size + 0.01 * seed
                make_job(
                    root,
                    num,
                    [f"finetune={finetune}", f"dataset.train_per_class={size}", f"seed={seed}"],
                    acc=(acc, acc, acc),
                )
                num += 1
    return collect_jobs(root)


def test_numeric_swept_settings_get_a_curve_of_mean_test_accuracy_with_t_intervals(tmp_path):
    from scipy import stats

    from gnr650.summary.figures import numeric_swept_keys, swept_value_figure

    jobs = _efficiency(tmp_path)
    assert numeric_swept_keys(jobs) == ["dataset.train_per_class"]  # not seed, not finetune
    ax = swept_value_figure(jobs, "dataset.train_per_class").axes[0]
    assert ax.get_xscale() == "log"  # 1 to 100 spans more than 10x
    drawn = {c.get_label(): c for c in ax.containers}  # one errorbar container per line
    assert set(drawn) == {"finetune=last", "finetune=lora"}
    assert drawn["finetune=last"].lines[0].get_color() == job_style(0).color  # the style of the line's first job
    assert drawn["finetune=lora"].lines[0].get_color() == job_style(9).color
    for label, base in (("finetune=last", 0.4), ("finetune=lora", 0.6)):
        x, y = drawn[label].lines[0].get_data()
        assert list(x) == [1, 10, 100]
        means = [100 * np.mean([base + 0.001 * s + 0.01 * seed for seed in (0, 1, 2)]) for s in (1, 10, 100)]
        assert np.allclose(y, means)
        for size, segment in zip((1, 10, 100), drawn[label].lines[2][0].get_segments()):
            values = [100 * (base + 0.001 * size + 0.01 * seed) for seed in (0, 1, 2)]
            low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
            assert np.allclose(segment[:, 1], [low, high])
    linear = swept_value_figure(_efficiency(tmp_path / "narrow", sizes=(2, 5, 10)), "dataset.train_per_class")
    assert linear.axes[0].get_xscale() == "linear"


def test_a_sweep_without_a_numeric_setting_has_no_curve(tmp_path):
    from gnr650.summary.figures import numeric_swept_keys

    assert numeric_swept_keys(collect_jobs(_zoo(tmp_path))) == []  # finetune and seed only


def test_data_efficiency_preset_sweeps_sizes_strategies_and_seeds(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.helpers import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=eurosat-data-efficiency"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["dataset.train_per_class"] == "1,2,5,10,25,100" and params.finetune == "last,lora,full"
    assert params.seed == "0,1,2" and list(cfg.callbacks) == ["model_checkpoint", "lr_monitor"]
    assert cfg.dataset.min_train_images == 1000  # every size trains as many steps as 100 images per class
