"""The strategy catalogue: methods, techniques, hyperparameter grids, strategies and schemes."""

from automc.catalog._catalog import (
    Catalog,
    Hyperparameter,
    Method,
    Scheme,
    SearchRules,
    Strategy,
    format_value,
    load_catalog,
    setting_id,
)

__all__ = [
    "Catalog",
    "Hyperparameter",
    "Method",
    "Scheme",
    "SearchRules",
    "Strategy",
    "format_value",
    "load_catalog",
    "setting_id",
]
