"""The strategy catalogue: methods, techniques, hyperparameter grids, strategies and schemes."""

from automc.catalog._catalog import (
    SCHEME_SEP,
    Catalog,
    Hyperparameter,
    Method,
    Scheme,
    SearchRules,
    Strategy,
    format_value,
    load_catalog,
    scheme_id,
    scheme_key,
    scheme_text,
    setting_id,
)

__all__ = [
    "SCHEME_SEP",
    "Catalog",
    "Hyperparameter",
    "Method",
    "Scheme",
    "SearchRules",
    "Strategy",
    "format_value",
    "load_catalog",
    "scheme_id",
    "scheme_key",
    "scheme_text",
    "setting_id",
]
