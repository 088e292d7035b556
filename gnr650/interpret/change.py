"""``ChangeAnalysis``: what fine-tuning changed, start (W0: pretrained or random init) vs end (the evaluated,
best-on-validation weights), written to ``artifacts/analysis.json`` plus CSVs and figures, all in the index.

At fit start (or test start when nothing is fitted) it copies W0 and runs the probe set through the network
once; at the end it runs the same images through the evaluated network once (unless nothing before the
classifier changed: ``frozen``, ``last``, k-NN reuse the start pass). Those two hooked passes feed
weight drift, CKA, the per-layer probes and the attention statistics. Explanations (faithfulness, Grad-CAM),
the confusion matrix, per-class accuracy and the t-SNE are of the end network.

W0 and the start pass's features are saved in ``<run_dir>/start_state/ChangeAnalysis.pt`` at the run's first fit
start; a resumed run reads them back (start_state.py), so its numbers are the uninterrupted run's.
"""

from __future__ import annotations

import csv
import logging
import time

import torch

from gnr650.data.validation import is_count
from gnr650.files import write_json
from gnr650.finetune.strategies import evaluating
from gnr650.interpret import analysis as an
from gnr650.interpret import attention as attn_lib
from gnr650.interpret import change_figures as figs
from gnr650.interpret import faithfulness as faith
from gnr650.interpret.callbacks import ArtifactExport, _datamodule, _inputs, _model_name
from gnr650.interpret.features import pick_image
from gnr650.interpret.figures import save_figure
from gnr650.interpret.index import PHASE_END, ArtifactKind, entry
from gnr650.interpret.start_state import continues_run

log = logging.getLogger(__name__)

# analysis.probe_images=null: this many probe images, or the whole split when it has fewer (without a warning: a
# smaller data set is no reason to set the key).
DEFAULT_PROBE_IMAGES = 512
# Index kinds of this callback's artefacts (the summary finds them by kind).
FAITHFULNESS_BATCH = 16  # images per Grad-CAM / rollout batch (ViT attention weights are [B, L, H, T, T])
PROBE_METHOD = (
    "closed-form ridge regression on one-hot labels (penalty {ridge} x feature count, features standardised), "
    "fit on one class-balanced half of the probe set, accuracy on the other half"
)


class ChangeAnalysis(ArtifactExport):
    """Start-vs-end analysis on ``probe_images`` class-balanced images of ``split`` drawn with ``seed`` (None: up to
    ``DEFAULT_PROBE_IMAGES``, see ``probe_size``).

    ``faithfulness_images`` (first of the probe set) get deletion/insertion curves with ``faithfulness_steps``
    steps; ``gradcam_image_class`` adds that class's first test image to the one-per-class Grad-CAM figure;
    ``gradcam_layer`` names the module (default: ViT last block's ``norm1``; ResNet the deepest stage whose
    output is still at least 4x4). 0 images switches faithfulness off; ``tsne: false`` the t-SNE.
    """

    def __init__(
        self,
        output_dir: str,
        probe_images: int | None = None,
        split: str = "val",
        seed: int = 0,
        batch_size: int = 128,
        ridge: float = 1.0,
        faithfulness_images: int = 16,
        faithfulness_steps: int = 8,
        gradcam_image_class: str | None = None,
        gradcam_layer: str | None = None,
        tsne: bool = True,
    ):
        if probe_images is not None and not is_count(probe_images):
            raise ValueError(
                f"analysis.probe_images must be a positive number of images, or null for up to {DEFAULT_PROBE_IMAGES} "
                f"(got {probe_images!r}); or callbacks without analysis to switch the analysis off."
            )
        super().__init__(output_dir, at_start=True, at_end=True, every_n_epochs=0)
        self.probe_images = probe_images
        self.split = split
        self.seed = seed
        self.batch_size = batch_size
        self.ridge = ridge
        self.faithfulness_images = faithfulness_images
        self.faithfulness_steps = faithfulness_steps
        self.gradcam_image_class = gradcam_image_class
        self.gradcam_layer = gradcam_layer
        self.tsne = tsne
        self._start: dict | None = None

    # ---- schedule -------------------------------------------------------------------------------------------
    def export(self, trainer, pl_module, phase, epoch):
        if phase == "start":
            self._record_start(trainer, pl_module, epoch)
            return []
        if self._start is None:
            raise RuntimeError("ChangeAnalysis reached the end without a start: on_fit_start/on_test_start never ran")
        return self._write_end(trainer, pl_module, epoch)

    def probe_size(self, available: int) -> int:
        """How many probe images a split of ``available`` images gives: ``probe_images``, with a warning when the
        split has fewer (the user asked for more than there are); unset, up to ``DEFAULT_PROBE_IMAGES``."""
        if self.probe_images is None:
            return min(DEFAULT_PROBE_IMAGES, available)
        if self.probe_images > available:
            log.warning(
                "analysis.probe_images=%d but the %s split has %d images: using all of them.",
                self.probe_images,
                self.split,
                available,
            )
        return min(self.probe_images, available)

    def _batches(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(images.split(self.batch_size))

    def _record_start(self, trainer, pl_module, epoch: int) -> None:
        t0 = time.perf_counter()
        dm = _datamodule(trainer)
        data = dm.split(self.split)
        probe_images = self.probe_size(len(data.labels))
        if trainer.training and trainer.ckpt_path and not continues_run(trainer, self.artifacts_dir.parent):
            log.info(
                "ChangeAnalysis: this run starts from ckpt_path=%s, so W0 is that checkpoint's weights as loaded.",
                trainer.ckpt_path,
            )
        idx = an.probe_indices(data.labels, probe_images, self.seed)
        images, labels = data.images[idx], data.labels[idx]
        net = pl_module.net
        features = an.probe_pass(net, self._batches(images), lambda b: _inputs(pl_module, b))
        self._start = {
            "epoch": epoch,
            "weights": an.snapshot(net),
            "buffers": an.buffer_snapshot(net),
            "features": features,
            "seconds": time.perf_counter() - t0,
            "indices": idx,
            "images": images,
            "labels": labels,
        }

    def start_state(self, pl_module):
        """W0 (each parameter in its own dtype: the float64 snapshot back from it is exact), the buffers, the
        start probe pass's features and the probe images' positions: the end compares against exactly these."""
        dtypes = {name: p.dtype for name, p in pl_module.net.named_parameters()}
        start = self._start
        return {
            "weights": {name: w.to(dtypes[name]) for name, w in start["weights"].items()},
            "buffers": start["buffers"],
            "features": vars(start["features"]),
            "indices": start["indices"],
            "seconds": start["seconds"],
        }

    def restore_start(self, state, trainer, pl_module):
        data = _datamodule(trainer).split(self.split)
        idx = state["indices"]
        self._start = {
            "epoch": state["epoch"],
            "weights": {name: w.to(torch.float64) for name, w in state["weights"].items()},
            "buffers": state["buffers"],
            "features": an.ProbeFeatures(**state["features"]),
            "seconds": state["seconds"],
            "indices": idx,
            "images": data.images[idx],
            "labels": data.labels[idx],
        }

    # ---- end ------------------------------------------------------------------------------------------------
    def _write_end(self, trainer, pl_module, epoch: int) -> list[dict]:
        dm = _datamodule(trainer)
        net, start = pl_module.net, self._start
        labels = start["labels"]
        t0 = time.perf_counter()
        end_weights = an.snapshot(net)
        if an.same_probe_features(net, (start["weights"], start["buffers"]), (end_weights, an.buffer_snapshot(net))):
            log.info("ChangeAnalysis: nothing before the classifier changed; the end features are the start pass's.")
            end = start["features"]
        else:
            end = an.probe_pass(net, self._batches(start["images"]), lambda b: _inputs(pl_module, b))
        phases = {"start": start["epoch"], "end": epoch}
        where = f"start (epoch {phases['start']}) vs end (epoch {epoch})"
        name = _model_name(net)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        entries: list[dict] = []

        groups = an.parameter_groups(net)
        blocks = an.block_groups(net, groups)
        drift = an.weight_drift(start["weights"], end_weights, groups | blocks)
        drift_rows = [
            {"module": m, "level": "block" if m in blocks else "layer", "drift": d, **self._epochs(phases)}
            for m, d in drift.items()
        ]
        entries += self._csv("weight_drift.csv", ArtifactKind.WEIGHT_DRIFT_CSV, drift_rows, epoch)
        kinds = an.layer_kinds(net, [m for m in groups if m not in blocks])
        entries += self._plot(
            figs.drift_figure(
                {kind: {m: drift[m] for m in layers} for kind, layers in kinds.items()},
                f"{name}: weight drift ‖W_end − W0‖F / ‖W0‖F, {where}",
                "relative change",
            ),
            "change/weight_drift.png",
            epoch,
        )

        layers = list(end.cls)
        fit, score = an.probe_halves(labels)
        k = len(dm.class_names)
        cka = {layer: an.linear_cka(start["features"].cls[layer], end.cls[layer]) for layer in layers}
        cka_patch = {
            layer: an.linear_cka(start["features"].patch_mean[layer], end.patch_mean[layer]) for layer in end.patch_mean
        }
        probe = {
            layer: {
                phase: an.ridge_probe_accuracy(
                    f.cls[layer][fit], labels[fit], f.cls[layer][score], labels[score], k, self.ridge
                )
                for phase, f in (("start", start["features"]), ("end", end))
            }
            for layer in layers
        }
        rep_rows = [
            {
                "layer": layer,
                "cka_cls_or_gap": cka[layer],
                "cka_patch_mean": cka_patch.get(layer, ""),
                "probe_start": probe[layer]["start"],
                "probe_end": probe[layer]["end"],
                **self._epochs(phases),
            }
            for layer in layers
        ]
        entries += self._csv("representations.csv", ArtifactKind.REPRESENTATION_CSV, rep_rows, epoch)
        series = {"CLS token" if end.patch_mean else "global average pool": [cka[layer] for layer in layers]}
        if cka_patch:
            series["mean patch token"] = [cka_patch[layer] for layer in layers]
        block_names = list(blocks)
        panels = [
            ("weight drift per block", "‖ΔW‖F / ‖W0‖F", block_names, {"drift": [drift[b] for b in block_names]}),
            ("linear CKA, start vs end", "linear CKA", layers, series),
            (
                f"linear probe (ridge; fit on half of {len(labels)} probe images, scored on the other half)",
                "probe accuracy",
                layers,
                {f"{p} (epoch {phases[p]})": [probe[layer][p] for layer in layers] for p in phases},
            ),
        ]

        result = {
            "probe_images": len(labels),
            "probe_split": self.split,
            "probe_seed": self.seed,
            "probe_indices": start["indices"].tolist(),  # positions in the probe split
            "probe_method": PROBE_METHOD.format(ridge=self.ridge),
            "epochs": phases,
            "model": name,
            "blocks": list(blocks),
            "weight_drift": drift,
            "cka": cka,
            "cka_patch_mean": cka_patch,
            "layer_probe": probe,
        }
        if end.attention_distance:
            entries += self._attention(start["features"], end, phases, result, panels, epoch)
        else:
            log.info("ChangeAnalysis: %s has no attention layers; attention statistics and rollout skipped.", name)

        entries += self._plot(figs.panels_figure(panels, f"{name}: {where}"), "change/per_layer.png", epoch)
        seconds = {"start": start["seconds"], "end_pass_and_statistics": time.perf_counter() - t0}
        parts = {
            "faithfulness": lambda: (
                self._faithfulness(pl_module, start["images"][: self.faithfulness_images], name, result, epoch)
                if self.faithfulness_images > 0
                else []
            ),
            "gradcam": lambda: self._gradcam(dm, pl_module, name, epoch),
            "test_evaluation": lambda: self._evaluation(pl_module, name, epoch),
            "tsne": lambda: (
                self._tsne(start["features"].final, end.final, labels, dm.class_names, phases, name, epoch)
                if self.tsne
                else []
            ),
        }
        for part, run in parts.items():
            t0 = time.perf_counter()
            entries += run()
            seconds[part] = time.perf_counter() - t0
        result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}  # what each part cost (docs/benchmarks.md)

        write_json(self.artifacts_dir / "analysis.json", result)
        entries.append(entry(ArtifactKind.ANALYSIS_JSON, "analysis.json", phase=PHASE_END, epoch=epoch))
        return entries

    # ---- parts ----------------------------------------------------------------------------------------------
    @staticmethod
    def _epochs(phases: dict[str, int]) -> dict[str, int]:
        return {"start_epoch": phases["start"], "end_epoch": phases["end"]}

    def _csv(self, path: str, kind: ArtifactKind, rows: list[dict], epoch: int) -> list[dict]:
        with open(self.artifacts_dir / path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return [entry(kind, path, phase=PHASE_END, epoch=epoch)]

    def _plot(
        self, fig, path: str, epoch: int, kind: ArtifactKind = ArtifactKind.CHANGE_PLOT, layer: str | None = None
    ) -> list[dict]:
        save_figure(fig, self.artifacts_dir / path)
        return [entry(kind, path, phase=PHASE_END, layer=layer, epoch=epoch)]

    def _attention(self, start, end, phases, result, panels, epoch) -> list[dict]:
        blocks = list(end.attention_distance)
        by_phase = (("start", start), ("end", end))
        dist = {b: {p: f.attention_distance[b].mean(0).tolist() for p, f in by_phase} for b in blocks}
        ent = {b: {p: float(f.attention_entropy[b].mean()) for p, f in by_phase} for b in blocks}
        result["attention_distance"], result["attention_entropy"] = dist, ent
        heads = {b: {p: f.attention_entropy[b].mean(0).tolist() for p, f in by_phase} for b in blocks}
        rows = [
            {
                "block": b,
                "head": h,
                "distance_start_px": dist[b]["start"][h],
                "distance_end_px": dist[b]["end"][h],
                "cls_entropy_start": heads[b]["start"][h],
                "cls_entropy_end": heads[b]["end"][h],
                **self._epochs(phases),
            }
            for b in blocks
            for h in range(len(dist[b]["start"]))
        ]
        labels = {p: f"{p} (epoch {phases[p]})" for p in phases}
        panels.append(
            (
                "mean attention distance (dots: heads)",
                "input pixels",
                blocks,
                {labels[p]: [dist[b][p] for b in blocks] for p in phases},
            )
        )
        panels.append(
            (
                "entropy of the CLS attention over patches (head and image mean)",
                "nats",
                blocks,
                {labels[p]: [ent[b][p] for b in blocks] for p in phases},
            )
        )
        return self._csv("attention_stats.csv", ArtifactKind.ATTENTION_STATS_CSV, rows, epoch)

    def _faithfulness(self, pl_module, images, name, result, epoch) -> list[dict]:
        net = pl_module.net
        x = _inputs(pl_module, images)
        _, layer, reshape, grid = faith.gradcam_target(net, x, self.gradcam_layer)

        def predict(inputs):
            with evaluating(net):
                return net(inputs).float().softmax(1)

        curves: dict[str, dict[str, list[torch.Tensor]]] = {}
        random_orders = faith.random_ranking(len(x), grid[0] * grid[1], self.seed).split(FAITHFULNESS_BATCH)
        for part, random_order in zip(x.split(FAITHFULNESS_BATCH), random_orders):
            targets = predict(part).argmax(1)
            orders = {
                "gradcam": faith.ranking(faith.pooled(faith.gradcam_maps(net, part, layer, targets, reshape), grid))
            }
            if attn_lib.attention_layers(net):  # attention weights of a few images at a time: [B, L, H, T, T] is large
                attn, _ = attn_lib.extract_attention(net, part)
                orders["rollout"] = faith.ranking(attn_lib.attention_rollout(attn, int(net.num_prefix_tokens), grid))
            orders["random"] = random_order
            for method, by_kind in faith.perturbation_curves(
                predict, part, orders, grid, self.faithfulness_steps
            ).items():
                for kind, c in by_kind.items():
                    curves.setdefault(method, {}).setdefault(kind, []).append(c)
        joined = {m: {k: torch.cat(v) for k, v in by.items()} for m, by in curves.items()}
        result["faithfulness"] = {
            m: {f"{k}_auc": float(faith.auc(c).mean()) for k, c in by.items()} | {"images": len(x)}
            for m, by in joined.items()
        }
        result["faithfulness_grid"] = list(grid)
        mean_curves = {m: {k: c.mean(0).numpy() for k, c in by.items()} for m, by in joined.items()}
        fig = figs.faithfulness_figure(
            mean_curves,
            f"{name}: deletion / insertion on {len(x)} probe images, {grid[0]}x{grid[1]} cells, end (epoch {epoch})",
        )
        return self._plot(fig, "change/faithfulness.png", epoch, ArtifactKind.FAITHFULNESS_PLOT)

    def _gradcam(self, dm, pl_module, name, epoch) -> list[dict]:
        """Grad-CAM of the predicted class for one test image per class (plus ``gradcam_image_class``'s)."""
        data = dm.split("test")
        idx = attn_lib.images_per_class(data.labels, len(dm.class_names), 1, self.seed)
        images, captions = list(data.images[idx]), [f"{dm.class_names[int(data.labels[i])]} #{int(i)}" for i in idx]
        if self.gradcam_image_class:
            image, caption = pick_image(data.images, data.labels, dm.class_names, self.gradcam_image_class)
            images.insert(0, image)
            captions.insert(0, caption)
        images = torch.stack(images)
        net = pl_module.net
        x = _inputs(pl_module, images)
        layer_name, layer, reshape, grid = faith.gradcam_target(net, x, self.gradcam_layer)
        with evaluating(net):
            predicted = net(x).argmax(1)
        maps = faith.pooled(faith.gradcam_maps(net, x, layer, predicted, reshape), grid)  # back on the layer's grid
        captions = [f"{c} → {dm.class_names[int(p)]}" for c, p in zip(captions, predicted)]
        fig = figs.gradcam_figure(
            images, maps, captions, f"{name} Grad-CAM at {layer_name} (predicted class), end (epoch {epoch})"
        )
        return self._plot(fig, "change/gradcam.png", epoch, ArtifactKind.GRADCAM_PLOT, layer_name)

    def _evaluation(self, pl_module, name, epoch) -> list[dict]:
        """Confusion matrix and per-class accuracy of the test split, from the final evaluation's metrics."""
        test = getattr(pl_module, "final_results", {}).get("test")
        if not test:
            return []
        title = f"{name}: test split, end (epoch {epoch}), accuracy {100 * test['acc']:.2f}%"
        fig = figs.evaluation_figure(test["confusion_matrix"], test["per_class"], title)
        return self._plot(fig, "change/test_evaluation.png", epoch, ArtifactKind.EVALUATION_PLOT)

    def _tsne(self, start, end, labels, class_names, phases, name, epoch) -> list[dict]:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(labels) - 1) // 3)))
        points = {
            f"{p} (epoch {phases[p]})": TSNE(
                2, perplexity=perplexity, init="pca", random_state=self.seed
            ).fit_transform(f.numpy())
            for p, f in (("start", start), ("end", end))
        }
        fig = figs.tsne_figure(
            points, labels.numpy(), list(class_names), f"{name}: t-SNE of the classifier input, probe set"
        )
        return self._plot(fig, "change/tsne.png", epoch, ArtifactKind.TSNE_PLOT)
