"""A wrong key on the command line fails before anything runs, with one message saying what was probably meant
(gnr650/config/overrides.py): unknown keys and options get a did-you-mean, and ``+key`` that no code reads is
refused at composition."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gnr650.config import ConfigKeyError, run_checked
from gnr650.config.overrides import check_command_line, leaf_keys, unaccepted_keys
from gnr650.errors import EXIT_USER_ERROR
from tests.helpers import CONFIG_DIR, ROOT, make_cfg


def refused(argv: list[str], config_name: str = "train") -> str:
    with pytest.raises(ConfigKeyError) as err:
        check_command_line(argv, CONFIG_DIR, config_name)
    return str(err.value)


@pytest.mark.parametrize(
    "override,meant",
    [
        ("optimizer.lr=1", ["optimizer.lr_head", "optimizer.lr_backbone"]),  # the alias: difflib cannot know it
        ("optimizer.lr_haed=1", ["optimizer.lr_head"]),
        ("dataset.per_clas=5", ["dataset.per_class"]),  # synthetic data (debug=smoke)
        ("epochs=3", ["trainer.max_epochs"]),
    ],
)
def test_unknown_key_names_the_keys_meant(override, meant):
    message = refused(["debug=smoke", override])
    assert all(key in message for key in meant) and "+" not in message, message


def test_unknown_key_in_a_sweep_is_refused_too():
    message = refused(["-m", "debug=smoke", "optimizer.lr=1e-3,1e-4"])
    assert "optimizer.lr_head" in message and "optimizer.lr_backbone" in message


@pytest.mark.parametrize("argv", [["finetune=top5"], ["-m", "finetune=top4,top5,full"]])
def test_top_k_option_suggests_train_blocks(argv):
    message = refused(argv)
    assert "finetune.train_blocks=5" in message and all(o in message for o in ("bitfit", "top4", "vpt_deep"))


def test_misspelt_option_names_the_close_one():
    assert "finetune=vpt?" in refused(["finetune=vtp"])


def test_misspelt_option_of_an_optional_group_is_refused_too():
    """``recipe`` is optional in the defaults list (strategies without a recipe of their own have no file), so
    Hydra would compose ``recipe=sharde`` silently without one."""
    message = refused(["finetune=bitfit", "recipe=sharde"])
    assert "recipe=shared?" in message and "bitfit" in message
    check_command_line(["finetune=bitfit", "recipe=shared"], CONFIG_DIR, "train")


@pytest.mark.parametrize(
    "added,why",
    [
        ("+optimizer.lr=1", "OptimizerSchema"),  # the schema's fields
        ("+foo=1", "TrainSchema"),
        ("+dataset.foo=1", "gnr650.data.SyntheticDataModule"),  # the _target_'s parameters
        ("+trainer.max_epoch=3", "pytorch_lightning.Trainer"),
        ("+callbacks.lr_monitor.interval=step", "pytorch_lightning.callbacks.LearningRateMonitor"),
    ],
)
def test_added_key_that_no_code_reads_is_refused(added, why):
    message = refused(["debug=smoke", added])
    assert added[1:].split("=")[0] in message and why in message, message


def test_added_key_message_names_the_keys_meant():
    message = refused(["debug=smoke", "+optimizer.lr=1"])
    assert "optimizer.lr_head" in message and "optimizer.lr_backbone" in message
    assert "trainer.max_epochs" in refused(["debug=smoke", "+trainer.max_epoch=3"])


def test_added_parameter_of_the_target_is_accepted():
    check_command_line(["debug=smoke", "+trainer.gradient_clip_val=1.0"], CONFIG_DIR, "train")
    check_command_line(["debug=smoke", "trainer.gradient_clip_val=1.0"], CONFIG_DIR, "train")  # Hydra's hint: right


def test_eval_command_line_is_checked():
    message = refused(["run=/some/run", "dataset=imagefolder", "dataset.rooot=/data"], "eval")
    assert "dataset.root" in message


def test_refused_command_line_never_starts_the_task(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(sys, "argv", ["train.py", "debug=smoke", "+optimizer.lr=1"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_checked(lambda: started.append(True), CONFIG_DIR, "train")
    err = capsys.readouterr().err
    assert exit_.value.code == EXIT_USER_ERROR and "optimizer.lr_head" in err and "Traceback" not in err
    assert not started


GROUP_OPTIONS = sorted(
    (path.parent.name, path.stem)
    for path in CONFIG_DIR.glob("*/*.yaml")
    if path.parent.name not in ("paths", "hydra", "hparams_search")  # no keys of the task / a plugin
)


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_shipped_option_is_accepted(group, option, tmp_path):
    """The check refuses nothing that configs/ ships: every key of every option is read by some code."""
    cfg = make_cfg([f"{group}={option}"], tmp_path)
    assert list(unaccepted_keys(cfg)) == []
    assert f"{group}.name" in set(leaf_keys(cfg)) or group not in ("model", "finetune")


@pytest.mark.slow  # starts train.py and eval.py (imports take seconds)
@pytest.mark.parametrize(
    "script,args,meant",
    [
        ("train.py", ["debug=smoke", "+optimizer.lr=1"], "optimizer.lr_head"),
        ("train.py", ["debug=smoke", "finetune=top5"], "finetune.train_blocks=5"),
        ("eval.py", ["run=nowhere", "dataset=synthetic", "+dataset.foo=1"], "SyntheticDataModule"),
    ],
)
def test_entry_point_prints_one_message_and_starts_no_run(script, args, meant, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_USER_ERROR and meant in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]
    assert not list(tmp_path.iterdir())
