"""Typed schemas of the configuration, checked by Hydra when it composes (gnr650/config/schema.py)."""

from gnr650.config.schema import register_schemas

__all__ = ["register_schemas"]
