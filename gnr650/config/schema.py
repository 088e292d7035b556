"""Structured-config schemas (Hydra 1.3): a wrong type (``batch_size=abc``) or an unknown key
(``optimizer.lr_haed=1``) fails when Hydra composes the config, with Hydra's message naming the key.

The values and their comments stay in the YAML files; the schemas give the types (``MISSING`` = set
by the YAML). configs/train.yaml lists ``base_train`` first in its defaults, and every
configs/finetune/*.yaml lists ``/finetune_schema@_here_``. The groups built by ``_target_``
(dataset, model, trainer, callbacks, logger) have no schema: their constructors' signatures check them.
Hydra adds a ``+key`` even to a typed node (its force-add lifts struct mode), so gnr650/config/overrides.py refuses
keys that are not fields here, or parameters of a node's ``_target_``, before the task runs.
Values that are one of several types (``train_blocks``: int or ``all``) are ``Any`` here, because
OmegaConf 2.3 has no unions; the code that reads them checks what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LoraSchema:
    """``finetune.lora`` (gnr650/finetune/lora.py)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.qkv"])


@dataclass
class VptSchema:
    """``finetune.vpt`` (gnr650/finetune/vpt.py)."""

    tokens: int = 10
    deep: bool = False


@dataclass
class KnnSchema:
    """``finetune.knn`` (gnr650/finetune/knn.py)."""

    k: int = 20
    temperature: float = 0.07


@dataclass
class FinetuneSchema:
    """configs/finetune/*.yaml: what trains (gnr650/finetune/strategies.py)."""

    name: str = MISSING
    train_blocks: Any = MISSING  # "all" or the number of blocks to train (checked by trainable_modules)
    train_head: bool = MISSING
    # Which end train_blocks counts from: top = the last k blocks and the neck, bottom = the stem and the first k.
    blocks_from: str = "top"
    # LP-FT: epochs in which only the head trains (backbone frozen, eval mode) before the strategy fine-tunes.
    lp_epochs: int | None = None
    # Frozen-prefix feature caching (gnr650/finetune/feature_cache.py): auto = on where exact (no augmentation,
    # something frozen before the first trainable block), true = refuse the run where not, false = off.
    cache_features: Any = "auto"
    cache_max_gb: float = 16.0
    # The strategy zoo: parameters selected by kind (bias / norm), adapters, prompts, layer decay, k-NN, head grid.
    train_params: Any = None
    lora: LoraSchema | None = None
    vpt: VptSchema | None = None
    layer_decay: float | None = None
    knn: KnnSchema | None = None
    head_grid: bool = False
    head_grid_lrs: list[float] = field(default_factory=lambda: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3])
    head_grid_weight_decays: list[float] = field(default_factory=lambda: [0.0, 1.0e-4, 0.05])


@dataclass
class OptimizerSchema:
    """The ``optimizer`` node: AdamW or SGD and its warm-up + cosine schedule (gnr650/training/optim.py)."""

    algorithm: str = MISSING  # adamw or sgd (checked by gnr650/training/optim.py)
    lr_head: float = MISSING
    lr_backbone: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    momentum: float = MISSING
    warmup_epochs: float = MISSING
    min_lr_ratio: float = MISSING
    label_smoothing: float = MISSING


@dataclass
class PathsSchema:
    """configs/paths/default.yaml."""

    root_dir: str = MISSING
    data_dir: str = MISSING
    weights_dir: str | None = MISSING
    cache_dir: str | None = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class VizSchema:
    """Inputs of the interpretability exports."""

    image_class: str | None = MISSING
    image_path: str | None = MISSING


@dataclass
class AnalysisSchema:
    """``analysis`` (configs/callbacks/analysis.yaml): the settings of the ChangeAnalysis callback."""

    probe_images: int | None = None
    probe_seed: int = 0
    faithfulness_images: int = 16
    faithfulness_steps: int = 8
    tsne: bool = False


@dataclass
class RobustnessSchema:
    """``robustness`` (configs/callbacks/robustness.yaml): the settings of the shift suite."""

    images: int | None = 1000
    shifts: list[str] = field(default_factory=lambda: ["all"])
    seed: int = 0
    baseline: str = "finetune=last"
    wise_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass
class TuneSchema:
    """``tune`` (configs/protocol/tuned.yaml): the learning-rate search and the seeds after it (gnr650/tuning)."""

    lr_scales: list[float] = MISSING
    seeds: list[int] = MISSING
    trial_callbacks: list[str] = MISSING


@dataclass
class TrainSchema:
    """The root of configs/train.yaml."""

    task_name: str = MISSING
    seed: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    resume: Any = MISSING  # false, true (the newest run with the same overrides) or a run directory
    ckpt_path: str | None = MISSING
    last_ckpt_every_s: float = MISSING
    skip_done: bool = MISSING
    optimized_metric: str | None = MISSING
    compile: bool = MISSING
    channels_last: Any = MISSING  # auto, true or false
    viz: VizSchema = field(default_factory=VizSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    finetune: FinetuneSchema = field(default_factory=FinetuneSchema)
    analysis: AnalysisSchema | None = None  # set by the analysis callbacks option
    robustness: RobustnessSchema | None = None  # set by the robustness callbacks option
    tune: TuneSchema | None = None  # set by protocol=tuned
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where the defaults lists find them; before any composition."""
    store = ConfigStore.instance()
    store.store(name="base_train", node=TrainSchema)
    store.store(name="finetune_schema", node=FinetuneSchema)  # no group: --help lists only groups users pick
