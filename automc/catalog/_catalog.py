"""Catalogue data model: read ``catalog.toml`` once, expand grids into strategies, parse and print them."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from automc.errors import NotFoundError, ValidationError

Value = float | int | str


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter shared by the methods that declare it; ``domain`` is a range or a choice list."""

    name: str
    description: str
    type: str  # "float" | "int" | "str" | "policy" (a word of the domain, or per-layer keep ratios ``0.5:0.25:1``)
    domain: tuple[Any, ...]

    def coerce(self, value: Any) -> Value:
        """Return ``value`` in this hyperparameter's type, or raise ``ValidationError``."""
        try:
            if self.type in ("str", "policy"):
                if not isinstance(value, str):
                    raise TypeError
                out: Value = value
            elif self.type == "int":
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise TypeError
                out = int(float(value))
            else:
                if isinstance(value, bool):
                    raise TypeError
                out = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"expected {self.type}, got {value!r}", field=self.name) from None
        if not self.in_domain(out):
            raise ValidationError(f"{out!r} is outside the domain {self.domain_text()}", field=self.name)
        return out

    def in_domain(self, value: Value) -> bool:
        if self.type == "policy":
            from automc.catalog.policy import is_policy_text

            return value in self.domain or is_policy_text(str(value))
        if self.type == "str":
            return value in self.domain
        lo, hi = self.domain
        return lo <= value <= hi  # type: ignore[operator]

    def domain_text(self) -> str:
        if self.type == "policy":
            return " or ".join(self.domain) + " or keep ratios in (0, 1] joined by ':'"
        if self.type == "str":
            return "{" + ", ".join(self.domain) + "}"
        return f"[{self.domain[0]}, {self.domain[1]}]"


@dataclass(frozen=True)
class Method:
    """A compression method: its techniques and its hyperparameter grid (name -> allowed values)."""

    name: str
    title: str
    reference: str
    techniques: tuple[str, ...]
    grid: dict[str, tuple[Value, ...]] = field(hash=False)

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def n_strategies(self) -> int:
        return functools.reduce(lambda a, b: a * b, (len(v) for v in self.grid.values()), 1)


def format_value(value: Value) -> str:
    """Canonical text of a hyperparameter value (floats keep their dot, strings stay bare)."""
    return value if isinstance(value, str) else repr(value)


def setting_id(name: str, value: Value) -> str:
    """Natural key of a hyperparameter setting, e.g. ``kd_alpha=0.3``."""
    return f"{name}={format_value(value)}"


@dataclass(frozen=True)
class Strategy:
    """One method with one value for each of its hyperparameters; ``id`` is its canonical text."""

    method: str
    settings: tuple[tuple[str, Value], ...]

    @property
    def id(self) -> str:
        inner = ",".join(setting_id(k, v) for k, v in self.settings)
        return f"{self.method}({inner})"

    @property
    def params(self) -> dict[str, Value]:
        return dict(self.settings)

    def settings_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)

    def __str__(self) -> str:
        return self.id


SCHEME_SEP = " > "  # between the strategy ids of a scheme's text; the only place it is written


def scheme_text(key: Sequence[str]) -> str:
    """The text of a scheme given as its strategy ids (``""`` for the base model)."""
    return SCHEME_SEP.join(key)


def scheme_key(text: str | None) -> tuple[str, ...]:
    """The strategy ids of a scheme's text, as ``scheme_text`` writes it (``""`` or None: the base model)."""
    return tuple(text.split(SCHEME_SEP)) if text else ()


def scheme_id(key: Sequence[str]) -> str:
    """A scheme's content hash from its strategy ids; stored ids (KB, model cache) are keyed by it."""
    return hashlib.sha256(scheme_text(key).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Scheme:
    """An ordered sequence of strategies, applied one after another; ``id`` is a stable content hash."""

    strategies: tuple[Strategy, ...]

    @property
    def key(self) -> tuple[str, ...]:
        """The strategy ids in order (``automc.search``'s ``SchemeKey``)."""
        return tuple(s.id for s in self.strategies)

    @property
    def text(self) -> str:
        return scheme_text(self.key)

    @property
    def id(self) -> str:
        return scheme_id(self.key)

    def __len__(self) -> int:
        return len(self.strategies)

    def __str__(self) -> str:
        return self.text


# Matched against stripped text: no two adjacent \s* that could trade characters, so matching is linear.
_STRATEGY_RE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\s*(?:\((.*)\))?", re.S)
# A scheme of L <= 5 strategies with every value spelt out is well under 2 000 characters.
MAX_SCHEME_CHARS = 10_000


class Catalog:
    """Methods, techniques and hyperparameters read from one TOML file."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.hyperparameters = {
            name: Hyperparameter(name, h["description"], h["type"], tuple(h["domain"]))
            for name, h in data["hyperparameters"].items()
        }
        self.techniques: dict[str, str] = dict(data["techniques"])
        self.methods: dict[str, Method] = {}
        for name, m in data["methods"].items():
            grid = {}
            for hp, values in m["grid"].items():
                if hp not in self.hyperparameters:
                    raise ValidationError(f"unknown hyperparameter {hp!r}", field=f"methods.{name}.grid")
                h = self.hyperparameters[hp]
                grid[hp] = tuple(h.coerce(v) for v in values)
            for t in m["techniques"]:
                if t not in self.techniques:
                    raise ValidationError(f"unknown technique {t!r}", field=f"methods.{name}.techniques")
            self.methods[name] = Method(name, m["title"], m["reference"], tuple(m["techniques"]), grid)
        self.search_rules = search_rules(data.get("search", {}), self.methods)

    # -- lookup ------------------------------------------------------------------------------------------
    def method(self, name: str) -> Method:
        """Return the method named ``name``; raises ``NotFoundError``."""
        try:
            return self.methods[name]
        except KeyError:
            raise NotFoundError(
                f"unknown method {name!r}; known methods: {', '.join(self.methods)}") from None

    # -- strategies --------------------------------------------------------------------------------------
    def strategies(self, method: str | None = None) -> list[Strategy]:
        """Every grid strategy (of one method, or of all), in a stable order."""
        names = [method] if method else list(self.methods)
        out = []
        for name in names:
            m = self.method(name)
            keys = list(m.grid)
            for values in itertools.product(*(m.grid[k] for k in keys)):
                out.append(Strategy(name, tuple(zip(keys, values, strict=True))))
        return out

    def n_strategies(self) -> int:
        return sum(m.n_strategies for m in self.methods.values())

    def make_strategy(self, method: str, params: dict[str, Any], *, complete: bool = True) -> Strategy:
        """Build a validated strategy; missing values raise unless ``complete`` is False."""
        m = self.method(method)
        unknown = sorted(set(params) - set(m.grid))
        if unknown:
            raise ValidationError(
                f"{method} has no hyperparameter {unknown[0]!r}; it takes {', '.join(m.grid)}",
                field=unknown[0])
        missing = [k for k in m.grid if k not in params]
        if missing and complete:
            raise ValidationError(f"{method} needs a value for {', '.join(missing)}", field=missing[0])
        settings = tuple((k, self.hyperparameters[k].coerce(params[k])) for k in m.grid if k in params)
        return Strategy(method, settings)

    def in_grid(self, strategy: Strategy) -> bool:
        grid = self.method(strategy.method).grid
        return len(strategy.settings) == len(grid) and all(v in grid[k] for k, v in strategy.settings)

    def parse_strategy(self, text: str) -> Strategy:
        """Parse ``NS(target_ratio_factor=0.5, finetune_epochs_factor=0.4)``; omitted values take the grid's
        middle value so a short form stays usable; raises ``ValidationError``."""
        _check_length(text)
        match = _STRATEGY_RE.fullmatch(text.strip())
        if not match:
            raise ValidationError(f"cannot parse strategy {_short(text.strip())!r}; expected METHOD(name=value, ...)")
        method, inner = match.group(1), (match.group(2) or "").strip()
        m = self.method(method)
        params: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in inner.split(","))):
            key, sep, raw = part.partition("=")
            if not sep:
                raise ValidationError(f"expected name=value, got {part!r}", field=method)
            key, raw = key.strip(), raw.strip().strip("'\"")
            if key in params:
                raise ValidationError(f"given twice in {method}(...)", field=key)
            text = key in self.hyperparameters and self.hyperparameters[key].type in ("str", "policy")
            params[key] = raw if text else _number(raw, key)
        for k, values in m.grid.items():
            params.setdefault(k, values[len(values) // 2])
        return self.make_strategy(method, params)

    def parse_scheme(self, text: str) -> Scheme:
        """Parse ``A(...) > B(...)`` into a scheme; raises ``ValidationError``."""
        _check_length(text)
        parts = [p for p in _split_top(text, SCHEME_SEP.strip()) if p.strip()]
        if not parts:
            raise ValidationError("empty scheme; expected METHOD(...) > METHOD(...)")
        return Scheme(tuple(self.parse_strategy(p) for p in parts))


def _check_length(text: str) -> None:
    if len(text) > MAX_SCHEME_CHARS:
        raise ValidationError(f"scheme text of {len(text):,} characters is longer than the {MAX_SCHEME_CHARS:,} "
                              "allowed")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _number(raw: str, key: str) -> float | int:
    try:
        return int(raw) if re.fullmatch(r"[+-]?\d+", raw) else float(raw)
    except ValueError:
        raise ValidationError(f"expected a number, got {raw!r}", field=key) from None


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@dataclass(frozen=True)
class SearchRules:
    """The ``[search]`` table: what makes a sequence of strategies a scheme the search may build."""

    max_length: int = 5
    max_epochs_factor_sum: float = 4.0
    only_first: tuple[str, ...] = ()
    only_last: tuple[str, ...] = ()
    not_after: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # B -> methods not before B
    exclude: tuple[str, ...] = ()  # methods the search never proposes (still in the catalogue and the KB)


def search_rules(table: dict[str, Any], methods: dict[str, Method]) -> SearchRules:
    """Read and check the ``[search]`` table; raises ``ValidationError`` naming the bad field."""
    def names(value: Any, where: str) -> tuple[str, ...]:
        for n in value:
            if n not in methods:
                raise ValidationError(f"unknown method {n!r}", field=f"search.{where}")
        return tuple(value)

    d = SearchRules()
    not_after = {names([m], "not_after")[0]: names(v, f"not_after.{m}")
                 for m, v in table.get("not_after", {}).items()}
    rules = SearchRules(int(table.get("max_length", d.max_length)),
                        float(table.get("max_epochs_factor_sum", d.max_epochs_factor_sum)),
                        names(table.get("only_first", ()), "only_first"),
                        names(table.get("only_last", ()), "only_last"), not_after,
                        names(table.get("exclude", ()), "exclude"))
    if rules.max_length < 1 or rules.max_epochs_factor_sum <= 0:
        raise ValidationError("max_length and max_epochs_factor_sum must be positive", field="search")
    return rules


@functools.cache
def _default_catalog() -> Catalog:
    text = resources.files("automc.catalog").joinpath("catalog.toml").read_text()
    return Catalog(tomllib.loads(text))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The built-in catalogue, or one read from ``path``."""
    if path is None:
        return _default_catalog()
    return Catalog(tomllib.loads(Path(path).read_text()))
