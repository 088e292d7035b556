"""``Robustness``: does the fine-tuned network hold up? The evaluated (best-on-val) weights on the test split under
the shift suite, calibration clean and shifted (temperature fitted on val), and the WiSE-FT curve.

At the run's first fit start it keeps the start's weights (saved in ``start_state/Robustness.pt`` so a resumed run
interpolates from the true start, see start_state.py); at the final evaluation it writes ``artifacts/robustness.json``
(the numbers), ``robustness.csv`` (one row per shift and level) and ``reliability.png``, all in the index.

WiSE-FT (Wortsman et al. 2022): every floating-point entry of the state dict outside the classifier becomes
``(1 - a) start + a end`` for each ``a`` in ``wise_alphas``, the fine-tuned classifier kept; each is evaluated on
the clean images and on every shift at its middle level. ``a = 1`` is the evaluated network itself.
"""

from __future__ import annotations

import csv
import logging
import time

import numpy as np
import torch
from matplotlib.figure import Figure

from gnr650.data.validation import is_count
from gnr650.errors import UserError
from gnr650.files import write_json
from gnr650.finetune.strategies import evaluating, is_under
from gnr650.interpret import analysis as an
from gnr650.interpret.callbacks import ArtifactExport, _datamodule, _model_name
from gnr650.interpret.figures import save_figure
from gnr650.interpret.index import PHASE_END, ArtifactKind, entry
from gnr650.robustness.calibration import calibration, fit_temperature, reliability_bins
from gnr650.robustness.shift_cache import ShiftCache
from gnr650.robustness.shifts import CORRUPTION, Shift, ShiftNotApplicable, select_shifts

log = logging.getLogger(__name__)

WISE_SHIFTS = "each shift at its middle level"


class RobustnessSettingError(ValueError, UserError):
    """A ``robustness`` setting the suite cannot use."""


class Robustness(ArtifactExport):
    """The shift suite on ``images`` class-balanced images of ``split`` (None: all), drawn with ``seed``.

    ``shifts``: names or groups (gnr650/robustness/shifts.py); ``baseline``: the override naming the summary's
    mCE baseline (recorded here, used by the summary); ``wise_alphas``: the WiSE-FT mixing weights ([] = off);
    ``cache_dir``: where shifted images are stored (as the decoded stores).
    """

    def __init__(
        self,
        output_dir: str,
        images: int | None = 1000,
        shifts: list[str] | tuple[str, ...] = ("all",),
        seed: int = 0,
        baseline: str = "finetune=last",
        wise_alphas: list[float] | tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
        batch_size: int = 512,
        cache_dir: str | None = None,
        split: str = "test",
        calibration_split: str = "val",
    ):
        if images is not None and not is_count(images):
            raise RobustnessSettingError(
                f"robustness.images must be a positive number of images, or null for the whole split (got {images!r})."
            )
        alphas = [float(a) for a in wise_alphas]
        if any(not 0 <= a <= 1 for a in alphas):
            raise RobustnessSettingError(
                f"robustness.wise_alphas must lie in [0, 1] (0: the start backbone, 1: the fine-tuned one; "
                f"got {alphas}); [] switches WiSE off."
            )
        super().__init__(output_dir, at_start=True, at_end=True, every_n_epochs=0)
        self.shifts = select_shifts(list(shifts))  # a misspelt name fails here, before any data is read
        self.images, self.seed, self.baseline = images, seed, baseline
        self.wise_alphas = sorted(set(alphas))
        self.batch_size, self.cache_dir = batch_size, cache_dir
        self.split, self.calibration_split = split, calibration_split
        self._start_weights: dict[str, torch.Tensor] | None = None

    # ---- start: the weights WiSE interpolates from -----------------------------------------------------------
    def export(self, trainer, pl_module, phase, epoch):
        if phase == "start":
            if self.wise_alphas:
                self._start_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()
                }
            return []
        return self._write_end(trainer, pl_module, epoch)

    def start_state(self, pl_module):
        return {"weights": self._start_weights} if self._start_weights is not None else {}

    def restore_start(self, state, trainer, pl_module):
        self._start_weights = state.get("weights")

    # ---- end --------------------------------------------------------------------------------------------------
    def _subset(self, labels: torch.Tensor) -> torch.Tensor:
        """Positions of the evaluated images: class-balanced, drawn with ``seed``, in split order."""
        n = labels.numel() if self.images is None else min(self.images, labels.numel())
        return an.probe_indices(labels, n, self.seed).sort().values

    def _logits(self, trainer, pl_module, images: torch.Tensor) -> torch.Tensor:
        """The network's logits for uint8 ``images`` as the final evaluation computes them: its preprocessing (no
        augmentation) outside, the forward pass inside the trainer's precision context, eval mode, no grad."""
        out = []
        with evaluating(pl_module.net):
            for batch in images.split(self.batch_size):
                x = pl_module.preprocess(batch.to(pl_module.device))
                with trainer.precision_plugin.forward_context():
                    out.append(pl_module.net(x).float().cpu())
        return torch.cat(out)

    def _write_end(self, trainer, pl_module, epoch: int) -> list[dict]:
        t0 = time.perf_counter()
        dm = _datamodule(trainer)
        data = dm.split(self.split)
        idx = self._subset(data.labels)
        images, labels = data.images[idx].contiguous(), data.labels[idx]
        val = dm.split(self.calibration_split)
        val_idx = self._subset(val.labels)
        temperature = fit_temperature(self._logits(trainer, pl_module, val.images[val_idx]), val.labels[val_idx])
        clean_logits = self._logits(trainer, pl_module, images)
        clean = calibration(clean_logits, labels)

        cache = ShiftCache(images.numpy(), idx.numpy(), self.seed, self.cache_dir)
        rows, skipped, shifted_logits = [], [], []
        build_s = eval_s = 0.0
        runnable: list[Shift] = []
        for shift in self.shifts:
            try:
                shift.check_size(*images.shape[-2:])
            except ShiftNotApplicable as e:
                log.warning("Robustness: %s skipped: %s", shift.name, e)
                skipped.append({"shift": shift.name, "reason": str(e)})
                continue
            runnable.append(shift)
            for level in range(1, shift.levels + 1):
                t1 = time.perf_counter()
                shifted = cache.get(shift, level)
                t2 = time.perf_counter()
                logits = self._logits(trainer, pl_module, shifted)
                build_s, eval_s = build_s + t2 - t1, eval_s + time.perf_counter() - t2
                shifted_logits.append(logits)
                rows.append({"shift": shift.name, "group": shift.group, "level": level, **calibration(logits, labels)})

        middle = [r["acc"] for s in runnable for r in rows if r["shift"] == s.name and r["level"] == s.middle_level]
        end_point = {
            "clean_acc": clean["acc"],
            "shifted_acc": float(np.mean(middle)) if middle else None,
        }
        t3 = time.perf_counter()
        wise = self._wise(trainer, pl_module, cache, images, labels, runnable, end_point)
        wise_s = time.perf_counter() - t3
        result = self._numbers(clean, clean_logits, labels, temperature, rows, shifted_logits, skipped, wise)
        result.update(
            split=self.split,
            images=len(idx),
            native_size=list(images.shape[-2:]),
            weights_epoch=epoch,
            baseline=self.baseline,
            test_acc=pl_module.final_results.get(self.split, {}).get("acc"),
            seconds=time.perf_counter() - t0,
            seconds_building_shifts=build_s,
            seconds_evaluating_shifts=eval_s,
            seconds_wise=wise_s,
        )
        entries = self._files(
            result, rows, clean_logits, labels, temperature, shifted_logits, _model_name(pl_module.net)
        )
        self._log(result)
        return [entry(kind, path, phase=PHASE_END, epoch=epoch) for kind, path in entries]

    def _numbers(self, clean, clean_logits, labels, temperature, rows, shifted_logits, skipped, wise) -> dict:
        corrupted = [r["acc"] for r in rows if r["group"] == CORRUPTION]
        mean_corruption = float(np.mean(corrupted)) if corrupted else None
        pooled_labels = labels.repeat(len(shifted_logits))
        pooled = torch.cat(shifted_logits) if shifted_logits else None
        return {
            "clean": clean,
            "temperature": temperature,
            "clean_scaled": calibration(clean_logits, labels, temperature),
            "shifts": rows,
            "skipped": skipped,
            "mean_corruption_acc": mean_corruption,
            "relative_robustness": mean_corruption / clean["acc"]
            if mean_corruption is not None and clean["acc"]
            else None,
            "shifted_acc": float(np.mean([r["acc"] for r in rows])) if rows else None,
            "shifted": calibration(pooled, pooled_labels) if pooled is not None else None,
            "shifted_scaled": calibration(pooled, pooled_labels, temperature) if pooled is not None else None,
            "wise": wise,
            "wise_shifts": WISE_SHIFTS,
        }

    def _wise(self, trainer, pl_module, cache, images, labels, shifts: list[Shift], end_point: dict) -> list[dict]:
        """Accuracy clean and under each shift at its middle level, for each WiSE-FT mixing weight. ``end_point``
        holds the evaluated network's two numbers: alpha 1 is that network, and so is every alpha when nothing
        outside the classifier moved (``last``, ``frozen``, ``knn``), so those are not evaluated again."""
        if not self.wise_alphas:
            return []
        net = pl_module.net
        end = {k: v.detach().clone() for k, v in net.state_dict().items()}
        start, head = self._start_weights, an.classifier(net)[0]
        body = [k for k, v in end.items() if not is_under(k, [head])]  # a k-NN head fills its bank only when tested
        if start is None or any(k not in start or start[k].shape != end[k].shape for k in body):
            log.warning("Robustness: no start weights of this network's structure, so no WiSE curve.")
            return []
        moved = any(not torch.equal(end[k], v) for k, v in _interpolate(start, end, 0.0, head).items())

        def accuracy(x: torch.Tensor) -> float:
            return float((self._logits(trainer, pl_module, x).argmax(1) == labels).double().mean())

        curve = []
        try:
            for alpha in self.wise_alphas:
                if alpha == 1 or not moved:
                    curve.append({"alpha": alpha, **end_point})
                    continue
                net.load_state_dict(_interpolate(start, end, alpha, head))
                shifted = [accuracy(cache.get(s, s.middle_level)) for s in shifts]
                curve.append(
                    {
                        "alpha": alpha,
                        "clean_acc": accuracy(images),
                        "shifted_acc": float(np.mean(shifted)) if shifted else None,
                    }
                )
        finally:
            net.load_state_dict(end)
        return curve

    def _files(self, result, rows, clean_logits, labels, temperature, shifted_logits, model) -> list[tuple]:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.artifacts_dir / "robustness.json", result)
        with open(self.artifacts_dir / "robustness.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["shift", "group", "level", "acc", "ece", "nll", "brier"])
            writer.writeheader()
            writer.writerows(rows)
        panels = [
            ("clean", clean_logits, labels, 1.0),
            (f"clean, T = {temperature:.2f} (fit on val)", clean_logits, labels, temperature),
        ]
        if shifted_logits:
            panels.append(("every shift pooled", torch.cat(shifted_logits), labels.repeat(len(shifted_logits)), 1.0))
        save_figure(reliability_figure(panels, model), self.artifacts_dir / "reliability.png")
        return [
            (ArtifactKind.ROBUSTNESS_JSON, "robustness.json"),
            (ArtifactKind.ROBUSTNESS_CSV, "robustness.csv"),
            (ArtifactKind.RELIABILITY_PLOT, "reliability.png"),
        ]

    @staticmethod
    def _log(result: dict) -> None:
        clean, scaled = result["clean"], result["clean_scaled"]
        parts = [f"clean {clean['acc']:.1%}"]
        if result["mean_corruption_acc"] is not None:
            parts.append(
                f"corruptions {result['mean_corruption_acc']:.1%} (relative {result['relative_robustness']:.2f})"
            )
        if result["shifted_acc"] is not None:
            parts.append(f"every shift {result['shifted_acc']:.1%}")
        parts.append(f"ECE {clean['ece']:.1%} -> {scaled['ece']:.1%} at T = {result['temperature']:.2f}")
        log.info("Robustness: %s; %.0f s.", ", ".join(parts), result["seconds"])


def _interpolate(start: dict, end: dict, alpha: float, head: str) -> dict:
    """WiSE-FT's mix: floating-point entries outside ``head`` at ``(1 - alpha) start + alpha end``; the head, integer
    buffers (BatchNorm's batch count), and alpha 1 exactly the end's (alpha 0 exactly the start's)."""
    mixed = {}
    for k, e in end.items():
        s = start[k].to(e.device)
        if is_under(k, [head]) or not e.is_floating_point():
            mixed[k] = e
        elif alpha in (0.0, 1.0):
            mixed[k] = s if alpha == 0 else e
        else:
            mixed[k] = ((1 - alpha) * s.double() + alpha * e.double()).to(e.dtype)
    return mixed


def reliability_figure(panels: list[tuple[str, torch.Tensor, torch.Tensor, float]], model: str) -> Figure:
    """Reliability diagrams side by side: accuracy per confidence bin against the diagonal, the gap shaded, the
    share of images per bin below; each panel's ECE in its title."""
    fig = Figure(figsize=(4.2 * len(panels), 4.6), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for i, (title, logits, labels, t) in enumerate(panels):
        bins = reliability_bins(logits, labels, t)
        ece = calibration(logits, labels, t)["ece"]
        edges = np.array(bins["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
        conf = np.array([np.nan if c is None else c for c in bins["confidence"]])
        ax = fig.add_subplot(grid[0, i])
        ax.bar(centres, acc, width=width * 0.9, color="tab:blue", label="accuracy")
        ax.bar(
            centres,
            conf - acc,
            bottom=acc,
            width=width * 0.9,
            fill=False,
            hatch="///",
            edgecolor="tab:red",
            linewidth=0,
            label="gap to the bin's mean confidence",
        )
        ax.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{title}\nECE {ece:.1%}", ylabel="accuracy" if i == 0 else None)
        if i == 0:
            ax.legend(loc="upper left", fontsize=8)
        counts = np.array(bins["count"], dtype=float)
        share = fig.add_subplot(grid[1, i], sharex=ax)
        share.bar(centres, counts / max(counts.sum(), 1), width=width * 0.9, color="grey")
        share.set(xlabel="confidence (top-1 probability)", ylabel="share of images" if i == 0 else None)
    fig.suptitle(f"{model}: reliability on the test images")
    return fig
