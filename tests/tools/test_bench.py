"""gnr650-bench on a tiny synthetic config: it runs both loops, prints the numbers and writes the markdown."""

import re

import pytest
import torch

from gnr650.tools.bench import _epochs, main, write_markdown

TINY = ["debug=smoke", "model=resnet18", "batch_size=32", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("mode", ["epoch", "run"])
def test_bench_prints_both_loops_and_the_ratio(mode, tmp_path, capsys):
    out = tmp_path / "docs" / "benchmarks.md"
    assert (
        main(TINY + ["trainer.max_epochs=2", "--mode", mode, "--epochs", "2", "--repeats", "1", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    for name in ("framework (train.py)", "plain PyTorch loop"):
        row = next(line for line in text.splitlines() if line.startswith(name))
        images_s, _, epoch_s, _, total_s, _ = map(float, row[len(name) :].split()[:6])
        assert images_s > 0 and 0 < epoch_s < total_s
    for kind in ("best-of", "medians"):
        ratio = re.search(kind + r".*: epoch time ([\d.]+), images/s ([\d.]+), whole run ([\d.]+)", text)
        assert ratio and all(float(x) > 0 for x in ratio.groups())
    md = out.read_text()
    assert md.startswith("# Benchmarks") and f"--mode {mode}" in md and "| plain PyTorch loop |" in md
    assert "machine: " in md and "**ratio framework/plain, best-of" in md
    # The section is named by the measurement, not by where it was recorded (re-recording elsewhere replaces it).
    assert f"## `gnr650-bench {' '.join(TINY)} trainer.max_epochs=2 --mode {mode}" in md and "--out" not in md


def test_markdown_sections_are_replaced_by_command(tmp_path):
    path = tmp_path / "b.md"
    write_markdown(path, "## `gnr650-bench a`\n\nALPHA\n")
    write_markdown(path, "## `gnr650-bench b`\n\nBETA\n")
    write_markdown(path, "## `gnr650-bench a`\n\nGAMMA\n")
    text = path.read_text()
    assert text.count("## `gnr650-bench a`") == 1 and "GAMMA" in text and "ALPHA" not in text and "BETA" in text


def test_epoch_marks_to_epoch_and_training_times():
    marks = [("epoch", 0.0), ("val", 1.0), ("epoch", 1.5), ("val", 2.5), ("end", 3.2)]
    assert _epochs(marks) == ([1.5, pytest.approx(1.7)], [1.0, 1.0])


def test_strategies_mode_compares_each_strategy_with_the_first(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    args = ["debug=smoke", "model=vit_ti16", "trainer.enable_progress_bar=false", "--strategies", "full,last"]
    assert main(args + ["--epochs", "2", "--repeats", "1", "--out", str(out)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1]}
    full, last = rows["full"], rows["last"]
    assert full[5:8] == ["1.00", "/", "1.00"]  # the first strategy against itself
    assert int(full[1].replace(",", "")) > int(last[1].replace(",", "")) > 0
    assert float(last[2]) > 0 and last[8] == "head_drop"  # `last` trains on features cached before the head
    assert "| full |" in out.read_text() and "--strategies full,last" in out.read_text()


def test_a_user_error_is_its_message_alone_with_exit_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SystemExit) as stopped:
        main(TINY + ["dataset=imagefolder", f"dataset.root={missing}", "--out", str(tmp_path / "b.md")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("gnr650-bench: error: ") and str(missing) in err, err
    assert not (tmp_path / "b.md").exists()


@pytest.mark.parametrize("finetune,phases", [("top4", 5), ("full", 4), ("frozen", 3)])
def test_phases_mode_times_every_phase_at_each_precision(finetune, phases, tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    args = ["debug=smoke", "model=vit_ti16", f"finetune={finetune}", "--phases", "--images", "16", "--repeats", "1"]
    assert main(args + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()[:1]}
    expected = ["cache", "train", "evaluate", "analysis", "predict"]
    expected = {"top4": expected, "full": expected[1:], "frozen": expected[2:]}[finetune]  # what the run computes
    assert [p for p in rows if p in expected] == expected and len(expected) == phases
    for phase in expected:
        fp32, bf16, ratio = map(float, rows[phase])
        assert fp32 > 0 and bf16 > 0 and ratio == pytest.approx(bf16 / fp32, rel=0.02, abs=0.006)  # of rounded numbers
    md = out.read_text()
    assert "| phase | 32-true images/s | bf16-mixed images/s | bf16-mixed / 32-true |" in md
    assert "First call of each phase" in md and "--phases" in md


def test_the_hand_written_loops_autocast_as_lightning_does():
    from gnr650.training.precision import autocast

    layer = torch.nn.Linear(4, 2)
    for precision, dtype in (("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)):
        with autocast(precision, torch.device("cpu")):
            assert layer(torch.ones(1, 4)).dtype == dtype
    with pytest.raises(ValueError, match="32-true or bf16-mixed"):
        autocast("16-mixed", torch.device("cpu"))


def test_phases_refuse_auto_as_a_precision_to_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["debug=smoke", "--phases", "--precisions", "32-true,auto", "--out", str(tmp_path / "b.md")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "--precisions takes trainer.precision values" in err, err
    assert not (tmp_path / "b.md").exists()
