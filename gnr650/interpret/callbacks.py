"""Interpretability exports as Lightning callbacks, writing under ``<output_dir>/artifacts/``.

Schedule (shared by all): ``start`` in ``on_fit_start`` (or in ``on_test_start`` when fit never ran,
e.g. the frozen strategy; exported once per run: a resumed run reads back the saved start, see start_state.py),
``epoch<N>`` every ``every_n_epochs`` training epochs, ``end`` in
``on_test_end`` (the final evaluation, best weights loaded; labelled with the epoch of those weights, see
``weights_epoch``). Only global rank 0 writes; every file
is listed in ``artifacts/index.json``. Extraction uses ``pl_module.net`` on a handful of images in
eval mode without grad, and leaves no hooks behind, so the training loop is untouched.
"""

from __future__ import annotations

import logging
import re
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from gnr650.interpret import attention as attn_lib
from gnr650.interpret import features as feat_lib
from gnr650.interpret import kernels as kern_lib
from gnr650.interpret.figures import (
    attention_figure,
    feature_map_figure,
    kernel_difference_figure,
    kernel_figure,
    norm_figure,
    rollout_overview_figure,
    save_figure,
)
from gnr650.interpret.index import PHASE_END, PHASE_START, ArtifactKind, append_to_index, artifacts_dir, entry
from gnr650.interpret.start_state import continues_run, load_start_state, save_start_state, start_state_path
from gnr650.runs.checkpoints import refusing_pickled_code

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _datamodule(trainer: pl.Trainer):
    dm = trainer.datamodule
    if dm is None:
        raise RuntimeError(
            "interpretability exports need trainer.datamodule (class_names, split()); "
            "pass datamodule= to trainer.fit/test"
        )
    return dm


def _inputs(pl_module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
    """uint8 images as the net's input: the module's own preprocessing (no augmentation), on its
    device and in its dtype (callbacks bypass Lightning's input conversion, e.g. for bf16-true)."""
    return pl_module.preprocess(images.to(pl_module.device)).to(pl_module.dtype)


def weights_epoch(trainer: pl.Trainer) -> int:
    """Training epochs completed by the weights the final evaluation uses: those of the checkpoint it loaded
    (Lightning stores the 0-based epoch it was saved in, after that epoch's validation), else the
    trainer's count. So "end (epoch 47)" of a 60-epoch run shows the best checkpoint ``epoch047-...``
    (``gnr650.runs.BestCheckpoint`` names it counting from 1)."""
    path = trainer.ckpt_path
    if not path:
        return trainer.current_epoch
    with refusing_pickled_code(path):
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(saved["epoch"]) + 1


def _model_name(net: torch.nn.Module) -> str:
    return getattr(net, "pretrained_cfg", {}).get("architecture") or type(net).__name__


class ArtifactExport(pl.Callback):
    """Base class: when to export, rank-0 only, and index bookkeeping. Subclasses implement
    ``export(trainer, pl_module, phase, epoch)`` returning the index entries of the files written."""

    def __init__(self, output_dir: str, at_start: bool = True, at_end: bool = True, every_n_epochs: int = 0):
        self.artifacts_dir = artifacts_dir(output_dir)
        self.at_start = at_start
        self.at_end = at_end
        self.every_n_epochs = every_n_epochs
        self._started = False

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: str, epoch: int) -> list[dict]:
        raise NotImplementedError

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: str, epoch: int) -> None:
        """Export on rank 0; ``epoch`` counts the training epochs completed so far."""
        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        entries = self.export(trainer, pl_module, phase, epoch)
        append_to_index(self.artifacts_dir, entries)
        log.info("%s %s: %d artefacts in %.1fs", type(self).__name__, phase, len(entries), time.perf_counter() - t0)

    def start_state(self, pl_module: pl.LightningModule) -> dict:
        """What this export keeps of the start until the end, beyond the files it wrote: saved once, at the
        run's first fit start (see start_state.py). The base saves only the start's epoch."""
        return {}

    def restore_start(self, state: dict, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A process continuing the run takes back the saved start (``start_state`` plus ``epoch``) instead
        of exporting the start again: the start files and their index entries stay the first process's."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and trainer.is_global_zero:
            self._start_phase(trainer, pl_module)
        self._started = True

    def _start_phase(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = start_state_path(self.artifacts_dir.parent, type(self).__name__)
        if continues_run(trainer, self.artifacts_dir.parent):
            state = load_start_state(path)
            if state is not None:
                self.restore_start(state, trainer, pl_module)
                log.info(
                    "%s: start (epoch %d) read from %s, not exported again.", type(self).__name__, state["epoch"], path
                )
                return
            log.warning(
                "%s: no saved start in %s (the run began before starts were saved), so its start exports and "
                "start-vs-end numbers are of the weights resumed from %s, not of the run's start.",
                type(self).__name__,
                path,
                trainer.ckpt_path,
            )
        epoch = trainer.current_epoch
        self._run(trainer, pl_module, PHASE_START, epoch)
        if trainer.state.fn == TrainerFn.FITTING:  # only a fit can be interrupted and resumed
            save_start_state(path, {"epoch": epoch, **self.start_state(pl_module)})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every_n_epochs and done % self.every_n_epochs == 0:
            self._run(trainer, pl_module, f"epoch{done}", done)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._started:
            self.on_fit_start(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end and trainer.is_global_zero:  # only rank 0 writes, so only rank 0 reads the checkpoint
            self._run(trainer, pl_module, PHASE_END, weights_epoch(trainer))


class _NormExport(ArtifactExport):
    """Weight L2 norms per layer: ``stats_csv`` (their mean/std/min/max, one row per phase and layer, every phase
    so far), whatever else ``csv_files`` adds, and ``<name>.png`` (distributions of the first phase against the
    latest)."""

    name = ""
    stats_csv = ""
    stats_kind: ArtifactKind
    plot_kind: ArtifactKind
    title = ""
    ylabel = ""

    def __init__(self, output_dir: str, at_start: bool = True, at_end: bool = True, every_n_epochs: int = 0):
        super().__init__(output_dir, at_start, at_end, every_n_epochs)
        self._tables = {file: kern_lib.PhaseTable(columns) for file, (_, columns) in self.csv_files().items()}
        self._phases: dict[str, dict[str, torch.Tensor]] = {}

    def layers(self, net: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError

    def norms(self, layers: list[tuple[str, torch.nn.Module]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def csv_files(self) -> dict[str, tuple[ArtifactKind, tuple[str, ...]]]:
        """CSV file -> (its index kind, its columns)."""
        return {self.stats_csv: (self.stats_kind, kern_lib.NORM_STATS_COLUMNS)}

    def rows(self, norms: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], phase: str, epoch: int):
        """CSV file -> its rows for this phase (CSV text)."""
        return {self.stats_csv: kern_lib.norm_stats(norms, shapes, phase, epoch)}

    def start_state(self, pl_module):
        """The start's norms (the plot shows them against the latest; the start's rows if the CSVs are lost)."""
        ((label, norms),) = list(self._phases.items())[:1]
        shapes = {name: tuple(m.weight.shape) for name, m in self.layers(pl_module.net)}
        return {"label": label, "norms": norms, "shapes": shapes}

    def restore_start(self, state, trainer, pl_module):
        """Rows of every phase so far as the CSVs hold them (they are rewritten as read), the start's norms."""
        self._phases = {state["label"]: state["norms"]}
        for file, table in self._tables.items():
            path = self.artifacts_dir / file
            if path.is_file():
                self._tables[file] = kern_lib.PhaseTable.read(path, table.columns)
            else:
                table.set(PHASE_START, self.rows(state["norms"], state["shapes"], PHASE_START, state["epoch"])[file])

    def export(self, trainer, pl_module, phase, epoch):
        layers = self.layers(pl_module.net)
        if not layers:
            raise ValueError(f"{type(self).__name__}: {type(pl_module.net).__name__} has no layers of this kind")
        norms = self.norms(layers)
        self._phases[f"{phase} (epoch {epoch})"] = norms
        entries = []
        for file, rows in self.rows(norms, {n: tuple(m.weight.shape) for n, m in layers}, phase, epoch).items():
            self._tables[file].set(phase, rows)  # a repeated phase replaces its rows
            self._tables[file].write(self.artifacts_dir / file)
            entries.append(entry(self.csv_files()[file][0], file, phase=phase, epoch=epoch))
        png_path = f"{self.name}.png"
        shown = dict(list(self._phases.items())[:1] + list(self._phases.items())[-1:])
        title = f"{_model_name(pl_module.net)}: {self.title}, {len(layers)} layers"
        save_figure(norm_figure(shown, title, self.ylabel), self.artifacts_dir / png_path)
        return entries + [entry(self.plot_kind, png_path, phase=phase, epoch=epoch)]


class KernelNormExport(_NormExport):
    """L2 norm of every 2-D kernel ``w[out, in]`` of every Conv2d: ``kernel_norms.csv.gz`` (long format, one row
    per kernel and phase; gzip: 26 MB instead of 116 MB for ResNet-18's start and end), ``kernel_norm_stats.csv``
    (per layer and phase) and ``kernel_norms.png``."""

    name = "kernel_norms"
    stats_csv, stats_kind = "kernel_norm_stats.csv", ArtifactKind.KERNEL_NORM_STATS_CSV
    kernels_csv = "kernel_norms.csv.gz"
    plot_kind = ArtifactKind.KERNEL_NORMS_PLOT
    title = "L2 norm of every 2-D kernel w[out, in] per conv layer"
    ylabel = "kernel L2 norm  ‖w[out, in]‖₂"

    def layers(self, net):
        return kern_lib.conv_layers(net)

    def norms(self, layers):
        return kern_lib.kernel_norms(layers)

    def csv_files(self):
        return {self.kernels_csv: (ArtifactKind.KERNEL_NORMS_CSV, kern_lib.KERNEL_NORM_COLUMNS)} | super().csv_files()

    def rows(self, norms, shapes, phase, epoch):
        return {self.kernels_csv: kern_lib.kernel_norm_rows(norms, phase, epoch)} | super().rows(
            norms, shapes, phase, epoch
        )


class ViTWeightNormExport(_NormExport):
    """L2 norm of every output row of each block's qkv, proj, fc1, fc2, summed up per layer
    (``vit_weight_norms.csv``/``.png``): the transformer counterpart of the kernel-norm study."""

    name = "vit_weight_norms"
    stats_csv, stats_kind = "vit_weight_norms.csv", ArtifactKind.VIT_WEIGHT_NORMS_CSV
    plot_kind = ArtifactKind.VIT_WEIGHT_NORMS_PLOT
    title = "linear-layer row L2 norms per block (qkv, proj, fc1, fc2)"
    ylabel = "row L2 norm  ‖W[i, :]‖₂"

    def layers(self, net):
        return kern_lib.vit_linear_layers(net)

    def norms(self, layers):
        return kern_lib.row_norms(layers)


class KernelImageExport(ArtifactExport):
    """Kernel grids of chosen conv layers: ``kernels/<phase>/<layer>.png``, and for every phase after the start
    the change of those kernels, ``kernels/<phase>-start/<layer>.png`` (end - start on its own symmetric scale:
    the start and end grids, each kernel scaled to its own max, can look the same when little changed).

    ``layers``: conv module names (default: the first conv and one conv per stage); ``num_kernels``:
    first N kernels shown; ``channel``: show this input channel instead of the mean over input channels
    (the RGB first layer is shown in colour unless a channel is chosen).
    """

    def __init__(
        self,
        output_dir: str,
        layers: list[str] | None = None,
        num_kernels: int = 64,
        channel: int | None = None,
        at_start: bool = True,
        at_end: bool = True,
        every_n_epochs: int = 0,
    ):
        super().__init__(output_dir, at_start, at_end, every_n_epochs)
        self.layers = list(layers) if layers else None
        self.num_kernels = num_kernels
        self.channel = channel
        self._start: dict = {}  # {"epoch": int, "kernels": {layer: the shown kernels at the start}}

    def start_state(self, pl_module):
        """The start's shown kernels: every later phase draws its change from them."""
        return {"kernels": self._start["kernels"]}

    def restore_start(self, state, trainer, pl_module):
        self._start = state

    def _how(self, is_rgb: bool) -> str:
        if is_rgb:
            return "RGB, min-max per kernel"
        return f"input channel {self.channel}" if self.channel is not None else "mean over input channels"

    def export(self, trainer, pl_module, phase, epoch):
        convs = dict(kern_lib.conv_layers(pl_module.net))
        names = self.layers or kern_lib.default_kernel_layers(pl_module.net)
        unknown = [n for n in names if n not in convs]
        if unknown:
            raise ValueError(f"not Conv2d layers of the model: {unknown}; available: {list(convs)}")
        if phase == PHASE_START:
            kernels = {name: convs[name].weight.detach()[: self.num_kernels].float().cpu().clone() for name in names}
            self._start = {"epoch": epoch, "kernels": kernels}
        entries = []
        for name in names:
            weight = convs[name].weight
            grid, is_rgb = kern_lib.kernel_grid(weight, self.num_kernels, self.channel)
            shown = min(self.num_kernels, weight.shape[0])
            shape = "x".join(map(str, weight.shape))
            title = (
                f"{name}  ({shape}), {phase} (epoch {epoch})\n"
                f"first {shown} of {weight.shape[0]} kernels, {self._how(is_rgb)}"
            )
            path = f"kernels/{phase}/{name}.png"
            save_figure(kernel_figure(grid, is_rgb, title), self.artifacts_dir / path)
            entries.append(entry(ArtifactKind.KERNEL_GRID, path, phase=phase, layer=name, epoch=epoch))
            if phase == PHASE_START or name not in self._start.get("kernels", {}):
                continue
            start = self._start["kernels"][name]
            end = weight.detach()[: self.num_kernels].float().cpu()
            change = float((end - start).norm() / start.norm().clamp_min(1e-12))
            title = (
                f"{name}  ({shape}): change of the kernels\n{phase} (epoch {epoch}) − start (epoch "
                f"{self._start['epoch']}), first {shown} of {weight.shape[0]} kernels\n"
                f"{self._how(False)}; ‖Δw‖ / ‖w_start‖ = {change:.1%} over them"
            )
            diff = kern_lib.kernel_difference_grid(start, end, self.num_kernels, self.channel)
            path = f"kernels/{phase}-start/{name}.png"
            save_figure(kernel_difference_figure(diff, title), self.artifacts_dir / path)
            entries.append(entry(ArtifactKind.KERNEL_DIFF_GRID, path, phase=phase, layer=name, epoch=epoch))
        return entries


class FeatureMapExport(ArtifactExport):
    """Activations after the stem and each stage for one image: ``feature_maps/<phase>_<image>.png``.

    The image is the first one of class ``image_class`` (by name) in ``split``, or the file
    ``image_path`` when given. ``stages`` maps a label to a module name (default: ResNet stem and
    ``layer1``..``layer4``); the first ``num_channels`` channels of each are shown. Stages whose map is
    smaller than ``min_size`` in height or width (ResNet's ImageNet stem on 32x32 inputs: layer3 2x2, layer4
    1x1) are left out and named in the figure.
    """

    def __init__(
        self,
        output_dir: str,
        image_class: str | None = "horse",
        image_path: str | None = None,
        split: str = "test",
        stages: dict[str, str] | None = None,
        num_channels: int = 16,
        min_size: int = 4,
        at_start: bool = False,
        at_end: bool = True,
        every_n_epochs: int = 0,
    ):
        super().__init__(output_dir, at_start, at_end, every_n_epochs)
        self.image_class = image_class
        self.image_path = image_path
        self.split = split
        self.stages = dict(stages) if stages else None
        self.num_channels = num_channels
        self.min_size = min_size

    def export(self, trainer, pl_module, phase, epoch):
        dm = _datamodule(trainer)
        data = dm.split(self.split)
        image, caption = feat_lib.pick_image(
            data.images, data.labels, dm.class_names, self.image_class, self.image_path
        )
        net = pl_module.net
        x = _inputs(pl_module, image[None])
        maps = feat_lib.feature_maps(net, x, self.stages or feat_lib.default_stages(net))
        shown, left_out = feat_lib.spatial_maps({k: v[0] for k, v in maps.items()}, self.min_size)
        if left_out:
            log.info(
                "Feature maps of %s left out: smaller than %dx%d at %dx%d input%s.",
                ", ".join(f"{label} ({h}x{w})" for label, (h, w) in left_out.items()),
                self.min_size,
                self.min_size,
                *x.shape[-2:],
                "; model.stem=cifar (3x3 stride-1 stem, no max-pool) keeps every map 4x larger"
                if isinstance(getattr(net, "maxpool", None), torch.nn.MaxPool2d)
                else "",
            )
        title = f"{_model_name(net)} feature maps: {caption} ({self.split} split), {phase} (epoch {epoch})"
        fig = feature_map_figure(image, shown, left_out, tuple(x.shape[-2:]), self.num_channels, title)
        path = f"feature_maps/{phase}_{_slug(caption)}.png"
        save_figure(fig, self.artifacts_dir / path)
        return [entry(ArtifactKind.FEATURE_MAPS, path, phase=phase, epoch=epoch)]


class AttentionExport(ArtifactExport):
    """ViT CLS-to-patch attention of every layer and attention rollout for ``images_per_class`` images of
    each class of ``split`` (drawn with ``seed``): one figure per image in ``attention/<phase>/``, a
    rollout overview, and the raw arrays (``attention.npz`` for ``end``, ``attention_<phase>.npz`` else) with the
    model's prediction for each image (so the summary can mark each job right or wrong on it).

    ``per_head_layers``: layer indices (negative allowed) also shown per head; default first, middle, last.
    """

    def __init__(
        self,
        output_dir: str,
        split: str = "test",
        images_per_class: int = 1,
        seed: int = 0,
        per_head_layers: list[int] | None = None,
        at_start: bool = False,
        at_end: bool = True,
        every_n_epochs: int = 0,
    ):
        super().__init__(output_dir, at_start, at_end, every_n_epochs)
        self.split = split
        self.images_per_class = images_per_class
        self.seed = seed
        self.per_head_layers = per_head_layers

    def export(self, trainer, pl_module, phase, epoch):
        dm = _datamodule(trainer)
        data = dm.split(self.split)
        idx = attn_lib.images_per_class(data.labels, len(dm.class_names), self.images_per_class, self.seed)
        images, labels = data.images[idx], data.labels[idx]
        net = pl_module.net
        with attn_lib.capture_outputs({"logits": net}) as outputs:  # the same forward pass: no second one
            attn, layer_names = attn_lib.extract_attention(net, _inputs(pl_module, images))
        predictions = outputs["logits"][0].argmax(dim=1).cpu()
        grid, prefix = attn_lib.patch_grid(net), int(net.num_prefix_tokens)
        maps = attn_lib.patch_maps(attn_lib.cls_attention(attn), prefix, grid)  # [B, L, H, gh, gw]
        rollout = attn_lib.attention_rollout(attn, prefix, grid)
        n_layers, n_heads = attn.shape[1], attn.shape[2]
        per_head = self.per_head_layers if self.per_head_layers is not None else [0, n_layers // 2, n_layers - 1]
        per_head = sorted({i % n_layers for i in per_head})
        labels_short = [n.removesuffix(".attn") for n in layer_names]

        out_dir = f"attention/{phase}"
        entries = []
        for i, (image, label) in enumerate(zip(images, labels)):
            cls = dm.class_names[int(label)]
            title = (
                f"{_model_name(net)} CLS→patch attention: {cls} ({self.split} #{int(idx[i])}), "
                f"{phase} (epoch {epoch})\n{n_layers} layers, {n_heads} heads, {grid[0]}x{grid[1]} patches"
            )
            fig = attention_figure(
                image,
                maps[i].mean(dim=1),
                rollout[i],
                {layer: maps[i, layer] for layer in per_head},
                labels_short,
                title,
            )
            path = f"{out_dir}/{i:02d}_{_slug(cls)}.png"
            save_figure(fig, self.artifacts_dir / path)
            entries.append(entry(ArtifactKind.ATTENTION_MAP, path, phase=phase, epoch=epoch))
        captions = [f"{dm.class_names[int(lab)]} (#{int(j)})" for lab, j in zip(labels, idx)]
        fig = rollout_overview_figure(
            images, rollout, captions, f"{_model_name(net)} attention rollout, {phase} (epoch {epoch})"
        )
        path = f"{out_dir}/rollout.png"
        save_figure(fig, self.artifacts_dir / path)
        entries.append(entry(ArtifactKind.ATTENTION_ROLLOUT, path, phase=phase, epoch=epoch))
        npz = "attention.npz" if phase == PHASE_END else f"attention_{phase}.npz"
        attn_lib.save_attention_npz(
            self.artifacts_dir / npz,
            attn,
            rollout,
            grid,
            prefix,
            labels,
            predictions,
            list(dm.class_names),
            images,
            layer_names,
        )
        entries.append(entry(ArtifactKind.ATTENTION_NPZ, npz, phase=phase, epoch=epoch))
        return entries
