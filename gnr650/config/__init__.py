"""Typed schemas of the configuration, checked by Hydra when it composes (gnr650/config/schema.py), and the check of
a command line's keys before a run starts (gnr650/config/overrides.py)."""

from gnr650.config.overrides import ConfigKeyError, run_checked
from gnr650.config.schema import register_schemas

__all__ = ["ConfigKeyError", "register_schemas", "run_checked"]
