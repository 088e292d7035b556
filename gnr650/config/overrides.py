"""Check a command line's overrides before Hydra runs the task, so that a wrong key fails with one message that says
what was probably meant, before any run directory exists.

Hydra's own messages lead astray here: for ``optimizer.lr=1`` it suggests ``+optimizer.lr=1``, which it then accepts
(``+`` adds keys even to a typed node) and the run crashes after loading the data. So the config is composed once
here, as Hydra will compose it, and:

- an unknown key gets a did-you-mean (close matches among the config's keys, plus ``KEY_ALIASES``);
- an unknown option of a group gets the close options (and ``finetune=topK`` gets ``finetune.train_blocks=K``);
- a key that nothing would accept is refused: a key that is not a field of its schema (gnr650/config/schema.py), or
  one that the ``_target_`` of its node does not take as a parameter.

Anything else (a wrong type, a sweep that Hydra refuses) is left to Hydra's own message.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import omegaconf
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from gnr650.errors import UserError, reporting_user_errors

# Names users reach for that no string distance finds: the code has two learning rates (the head's and the
# backbone's, gnr650/training/optim.py) and no ``lr``.
KEY_ALIASES = {"lr": ("lr_head", "lr_backbone")}
# ``finetune=topK``: configs/finetune/top4.yaml with another number of blocks.
TOP_BLOCKS = re.compile(r"top(\d+)")
# Keys of a ``_target_`` node that Hydra's instantiate reads itself.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigKeyError(ValueError, UserError):
    """An override names a key or option the config does not have, or one that no code would read."""


def run_checked(main: Callable[[], Any], config_dir: Path, config_name: str) -> None:
    """Call an entry point's ``@hydra.main`` function after ``check_command_line``; a ``ConfigKeyError`` is reported
    as every UserError is (``gnr650.errors.reporting_user_errors``: its message alone, exit status 2)."""
    with reporting_user_errors(Path(sys.argv[0]).name):
        check_command_line(sys.argv[1:], config_dir, config_name)
    main()


def check_command_line(argv: list[str], config_dir: Path, config_name: str) -> None:
    """Compose ``config_name`` with the overrides in ``argv`` (a sweep by its first value) and raise a
    ``ConfigKeyError`` for an unknown key or option, or a key that the code would not accept."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return
    if args.config_path or args.config_dir:
        return  # another config tree: Hydra checks it alone
    for overrides in single_runs(args.overrides, config_dir):
        check_single_run(overrides, config_dir, args.config_name or config_name)


def check_single_run(overrides: list[str], config_dir: Path, config_name: str) -> None:
    """``check_command_line`` for one run's overrides (no sweeps)."""
    missing = missing_group_option(overrides, config_dir)
    if missing:
        raise ConfigKeyError(missing)
    try:
        cfg = _compose(config_dir, config_name, overrides)
    except MissingConfigException as error:
        hint = missing_option_hint(error)
        if hint:
            raise ConfigKeyError(hint) from None
        return
    except ConfigCompositionException as error:
        if not isinstance(error.__cause__, (omegaconf.errors.ConfigKeyError, omegaconf.errors.ConfigAttributeError)):
            return  # a wrong type or the like: Hydra's message names the key and the value
        message = unknown_key_hint(error.__cause__.full_key, overrides, config_dir, config_name)
        if message:
            raise ConfigKeyError(message) from None
        return
    problems = list(unaccepted_keys(cfg))
    if problems:
        keys = sorted(leaf_keys(cfg))
        raise ConfigKeyError("\n".join(f"{problem}{did_you_mean(key, keys)}" for key, problem in problems)) from None


def single_runs(overrides: list[str], config_dir: Path) -> Iterator[list[str]]:
    """The overrides of the runs worth composing for a command line: every sweep (``a=1,2``, ``range(...)``) at its
    first value, then each further option of a sweep over a config group (``finetune=top4,full``) alone. Sweeps
    without values to list (``interval(...)``) are left to Hydra."""
    first: list[str] = []
    further: list[tuple[int, list[str]]] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            first.append(override.input_line)
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - interval sweeps and the like: nothing to compose with
            continue
        key = override.get_key_element()
        if (config_dir / override.key_or_group).is_dir():
            further.append((len(first), [f"{key}={v}" for v in values[1:]]))
        first.append(f"{key}={values[0]}")
    yield first
    for position, options in further:
        for option in options:
            yield [*first[:position], option, *first[position + 1 :]]


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def missing_group_option(overrides: list[str], config_dir: Path) -> str | None:
    """The message for ``group=option`` where the group's folder has no such option. Hydra says so itself, except
    for a group its defaults list marks ``optional`` (``recipe``), where a misspelt option would silently do nothing."""
    for override in OverridesParser.create().parse_overrides(overrides):
        group, option = override.key_or_group, override.value()
        if override.is_delete() or group.startswith("hydra") or not isinstance(option, str):
            continue
        folder = config_dir / group
        if folder.is_dir() and not (folder / f"{option}.yaml").is_file():
            options = sorted(f.stem for f in folder.glob("*.yaml"))
            return missing_option_hint(MissingConfigException("", f"{group}/{option}", options))
    return None


def missing_option_hint(error: MissingConfigException) -> str | None:
    """For ``group=option`` where the group has no such option: the options, the close ones, and for
    ``finetune=topK`` the override that trains the last K blocks."""
    if not error.missing_cfg_file or error.options is None:
        return None
    group, _, option = error.missing_cfg_file.rpartition("/")
    if group.startswith("hydra/"):
        return None  # Hydra's plugins: its message names the missing plugin's group
    options = list(error.options)
    top = TOP_BLOCKS.fullmatch(option)
    if group == "finetune" and top and "top4" in options:
        k = top.group(1)  # the name too, so that results.json and the summaries say top{k}
        hints = [f"finetune=top4 finetune.train_blocks={k} finetune.name=top{k} (the last {k} blocks)"]
    else:
        hints = [f"{group}={o}" for o in difflib.get_close_matches(option, options, n=3)]
    return f"{group}={option}: the group '{group}' has no option '{option}'. Options: {', '.join(options)}." + (
        f" Did you mean {' or '.join(hints)}?" if hints else ""
    )


def unknown_key_hint(key: str, overrides: list[str], config_dir: Path, config_name: str) -> str | None:
    """For an override of a key the config does not have: its close matches among the keys of the config composed
    without that override. None where Hydra's own hint is right (a parameter of the node's ``_target_``, which
    ``+key=value`` adds) or no config composes without it."""
    rest = [o for o in overrides if _override_key(o) != key]
    if len(rest) == len(overrides):
        return None
    try:
        cfg = _compose(config_dir, config_name, rest)
    except ConfigCompositionException:
        return None
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and "_target_" in parent and name in (target_parameters(parent) or {name}):
        return None
    return f"'{key}' is not a key of the config{did_you_mean(key, sorted(leaf_keys(cfg)))}"


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def did_you_mean(key: str, keys: list[str]) -> str:
    """``. Did you mean a or b?``: close matches of ``key`` among the leaf ``keys`` (of the whole dotted key, of its
    last part, and ``KEY_ALIASES``), only those under the same parent where there are some; else where to see the
    keys."""
    parent, _, name = key.rpartition(".")
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(k.rpartition(".")[2], []).append(k)
    names = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.65) + list(KEY_ALIASES.get(name, ()))
    matches = difflib.get_close_matches(key, keys, n=3, cutoff=0.8) + [k for n in names for k in by_name.get(n, [])]
    matches = list(dict.fromkeys(m for m in matches if m != key))
    siblings = [m for m in matches if m.rpartition(".")[0] == parent]
    if not matches:
        return ". `--cfg job` prints the config with every key."
    return f". Did you mean {' or '.join((siblings or matches)[:4])}?"


def leaf_keys(cfg: DictConfig) -> Iterator[str]:
    """Every key of ``cfg`` that holds a value (not a mapping), as a dotted path."""

    def walk(node: Any, prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            elif key not in INSTANTIATE_KEYS:
                yield f"{prefix}{key}"

    yield from walk(OmegaConf.to_container(cfg, resolve=False), "")


def unaccepted_keys(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    """(key, why) for each key no code reads: not a field of its node's schema, or not a parameter of its node's
    ``_target_`` (a target that takes ``**kwargs`` accepts any)."""

    def walk(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, ListConfig):
            for i, item in enumerate(node._iter_ex(resolve=False)):
                yield from walk(item, f"{prefix}[{i}].")
            return
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
            return
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = {f.name for f in dataclasses.fields(schema)}
            for key in node:
                if key not in fields:
                    yield (
                        f"{prefix}{key}",
                        (
                            f"'{prefix}{key}' is not a setting that the code reads ({schema.__name__} in "
                            "gnr650/config/schema.py lists them)"
                        ),
                    )
        elif "_target_" in node:
            accepted = target_parameters(node)
            for key in node:
                if accepted is not None and key not in accepted and key not in INSTANTIATE_KEYS:
                    yield f"{prefix}{key}", f"'{prefix}{key}' is not a parameter of {node._target_}"
        for key, value in node.items_ex(resolve=False):
            yield from walk(value, f"{prefix}{key}.")

    yield from walk(cfg, "")


def target_parameters(node: DictConfig) -> set[str] | None:
    """The keyword parameters of ``node._target_`` (a class: its ``__init__`` and those of the base classes that its
    ``**kwargs`` reach); None when it takes any keyword or cannot be imported (instantiate then says why)."""
    try:
        target = get_object(node._target_)
    except Exception:  # noqa: BLE001 - a bad _target_ is instantiate's error to report, with its own message
        return None
    if inspect.isclass(target):
        functions = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__]
    else:
        functions = [target]
    accepted: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        accepted |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return accepted
    return None
