"""`Policy`: for each prunable unit a scheme, a ratio and the scheme's parameters; JSON I/O.

A policy is plain data: it names units by their stable names (see `analysis.py`) and can be
checked against a `ModelAnalysis` with `Policy.validate`. Units a policy does not name stay
dense. The JSON form carries a schema version so old files fail clearly, not silently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prunetune.errors import PolicyError
from prunetune.files import atomic_write

from .graph import IMPORTANCES
from .schemes import OPTION_FIELDS, PruningScheme, get_scheme, scheme_names

__all__ = ["IMPORTANCES", "POLICY_SCHEMA", "Policy", "PolicyError", "PolicyValidator",
           "UnitPolicy"]

POLICY_SCHEMA = 1


def _where(unit: str | None) -> str:
    return f" for unit {unit!r}" if unit else ""


@dataclass(frozen=True)
class UnitPolicy:
    """How to prune one unit.

    scheme: a registered scheme's name or `package.module:attr` (`schemes.get_scheme`); ratio:
    fraction removed (channels for `channel`, weights for the sparse schemes). The option
    fields belong to the scheme that names them (`PruningScheme.option_fields`), which checks
    them and fills in defaults: block: `(bo, bi)` for `block` (default (8, 8)); n, m: N:M for
    `nm` (m defaults to 4 and n follows from the ratio); pattern: `patdnn`, `row` or `col` for
    `pattern` (default patdnn).
    """

    scheme: str
    ratio: float
    block: tuple[int, int] | None = None
    n: int | None = None
    m: int | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        self._normalise(None)

    @property
    def spec(self) -> PruningScheme:
        """The registered scheme object of `scheme` (`schemes.get_scheme`)."""
        return get_scheme(self.scheme)

    @property
    def options(self) -> dict[str, Any]:
        """The scheme's option fields and their values, e.g. `{"n": 2, "m": 4}`."""
        return {name: getattr(self, name) for name in self.spec.option_fields}

    def _normalise(self, unit: str | None) -> None:
        where = _where(unit)
        try:
            if not isinstance(self.scheme, str):
                raise PolicyError(f"unknown scheme {self.scheme!r}; use one of "
                                  f"{', '.join(scheme_names())}")
            scheme = get_scheme(self.scheme)
        except PolicyError as err:  # the unit goes right after the scheme's name
            raise PolicyError(str(err).replace(f"scheme {self.scheme!r}",
                                               f"scheme {self.scheme!r}{where}", 1)) from None
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise PolicyError(f"ratio must be a number{where}, got {self.ratio!r}")
        ratio = float(self.ratio)
        hi = scheme.max_ratio
        if not math.isfinite(ratio) or not 0.0 <= ratio <= hi:
            raise PolicyError(f"ratio must be in [0, {hi}]{where} (scheme {self.scheme!r}), "
                              f"got {self.ratio!r}")
        object.__setattr__(self, "ratio", ratio)
        for name in OPTION_FIELDS:
            if getattr(self, name) is not None and name not in scheme.option_fields:
                owner = next((n for n in scheme_names()
                              if name in get_scheme(n).option_fields), "another scheme")
                raise PolicyError(f"{name!r} applies only to scheme {owner!r}{where}, not to "
                                  f"{self.scheme!r}; remove it")
        given = {name: getattr(self, name) for name in scheme.option_fields}
        for name, value in scheme.normalise(given, ratio, where).items():
            object.__setattr__(self, name, value)

    def with_ratio(self, ratio: float) -> UnitPolicy:
        """The same scheme and options at `ratio` (N:M's n follows it)."""
        return UnitPolicy(self.scheme, ratio, **self.spec.with_ratio(self.options, ratio))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme, "ratio": self.ratio}
        for name in OPTION_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, raw: Any, unit: str | None = None) -> UnitPolicy:
        where = _where(unit)
        if not isinstance(raw, dict):
            raise PolicyError(f"entry{where} must be an object like "
                              f'{{"scheme": "channel", "ratio": 0.3}}, got {raw!r}')
        allowed = {"scheme", "ratio", *OPTION_FIELDS}
        extra = sorted(set(raw) - allowed)
        if extra:
            raise PolicyError(f"unknown field(s) {extra}{where}; allowed: {sorted(allowed)}")
        for key in ("scheme", "ratio"):
            if key not in raw:
                raise PolicyError(f"missing field {key!r}{where}")
        obj = cls.__new__(cls)
        for name in allowed:
            value = raw.get(name)
            if name in OPTION_FIELDS and isinstance(value, list):  # JSON has no tuples
                value = tuple(value)
            object.__setattr__(obj, name, value)
        obj._normalise(unit)
        return obj


class PolicyValidator(Protocol):
    """What can say whether a policy fits a model: a `ModelAnalysis` (`analysis.py`)."""

    def validate(self, policy: Policy) -> None:
        """Raise PolicyError unless `policy` can be applied."""


@dataclass
class Policy:
    """A per-unit pruning policy; units not named stay dense.

    importance: channel importance criterion (one of IMPORTANCES); round_to: channel counts of
    channel-pruned units are rounded down to a multiple of it (hardware-friendly widths).
    """

    units: dict[str, UnitPolicy] = field(default_factory=dict)
    importance: str = "magnitude"
    round_to: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.units, dict):
            raise PolicyError(f"units must be a mapping of unit name to UnitPolicy, got "
                              f"{type(self.units).__name__}")
        for name, up in self.units.items():
            if not isinstance(name, str) or not isinstance(up, UnitPolicy):
                raise PolicyError(f"units must map unit names to UnitPolicy, got {name!r}: "
                                  f"{up!r}")
        if self.importance not in IMPORTANCES:
            raise PolicyError(f"importance must be one of {', '.join(IMPORTANCES)}, got "
                              f"{self.importance!r}")
        if self.round_to is not None and (isinstance(self.round_to, bool)
                                          or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise PolicyError(f"round_to must be a positive integer or null, got "
                              f"{self.round_to!r}")

    # ---- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": POLICY_SCHEMA, "importance": self.importance, "round_to": self.round_to,
                "units": {k: v.to_dict() for k, v in self.units.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        if not isinstance(raw, dict):
            raise PolicyError(f"a policy must be a JSON object, got {type(raw).__name__}")
        schema = raw.get("schema")
        if schema != POLICY_SCHEMA:
            raise PolicyError(f"unsupported policy schema {schema!r}; this version reads schema "
                              f"{POLICY_SCHEMA} (write \"schema\": {POLICY_SCHEMA})")
        extra = sorted(set(raw) - {"schema", "importance", "round_to", "units"})
        if extra:
            raise PolicyError(f"unknown policy field(s) {extra}; allowed: schema, importance, "
                              "round_to, units")
        units = raw.get("units", {})
        if not isinstance(units, dict):
            raise PolicyError(f"'units' must map unit names to entries, got "
                              f"{type(units).__name__}")
        parsed = {str(k): UnitPolicy.from_dict(v, str(k)) for k, v in units.items()}
        return cls(parsed, importance=raw.get("importance", "magnitude"),
                   round_to=raw.get("round_to"))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise PolicyError(f"policy is not valid JSON: {err}") from None
        return cls.from_dict(raw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (`prunetune.files.atomic_write`)."""
        return atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {path} does not exist")
        try:
            return cls.from_json(path.read_text())
        except PolicyError as err:
            raise PolicyError(f"policy file {path}: {err}") from None

    # ---- checks and summaries -------------------------------------------------------------
    def validate(self, analysis: PolicyValidator) -> None:
        """Raise PolicyError unless the model `analysis` describes can take this policy: every
        unit exists, takes its scheme and its ratio (`ModelAnalysis.validate`)."""
        analysis.validate(self)

    def summary(self) -> dict[str, float | str]:
        """Flat, MLflow-param friendly: unit counts per scheme and ratio statistics."""
        out: dict[str, float | str] = {"policy.schema": float(POLICY_SCHEMA),
                                       "policy.importance": self.importance,
                                       "policy.round_to": str(self.round_to),
                                       "policy.units": float(len(self.units))}
        ratios = [u.ratio for u in self.units.values()]
        if ratios:
            out["policy.ratio.mean"] = sum(ratios) / len(ratios)
            out["policy.ratio.min"] = min(ratios)
            out["policy.ratio.max"] = max(ratios)
            out["policy.pruned_units"] = float(sum(r > 0 for r in ratios))
        for scheme in scheme_names():
            rs = [u.ratio for u in self.units.values() if u.scheme == scheme]
            if rs:
                out[f"policy.{scheme}.units"] = float(len(rs))
                out[f"policy.{scheme}.ratio.mean"] = sum(rs) / len(rs)
        return out
