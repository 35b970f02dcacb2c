"""Typed, frozen models of the per-service and per-endpoint levels, and their sections.

:class:`ServiceConfig` and :class:`EndpointConfig` (re-exported by
:mod:`lake_mesh_consul._core.config`) hold the settings *one level* sets: a field left at
``None`` is not set there and falls back to the next level (endpoint > service > global >
built-in default). :func:`~lake_mesh_consul._core.config_layers.effective` merges them.

Every value is validated on construction against :data:`~._core.config_schema.FIELDS`;
durations may be given as Consul writes them (``"250ms"``, ``"1m30s"``) and are stored as
seconds. A bad value raises :class:`~lake_mesh_consul.errors.ConfigValidationError` naming
the field.

The policy objects of :mod:`lake_mesh_consul.policies` are built lazily
(``ServiceConfig.retry_policy()``), so importing this module imports neither pybreaker nor tenacity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from lake_mesh_consul._core.config_schema import (
    ENDPOINT,
    FIELDS_BY_PATH,
    SECTIONS,
    SERVICE,
    Level,
    check_consistency,
    check_value,
    parse_document,
    to_document,
)
from lake_mesh_consul.errors import ConfigValidationError

__all__ = [
    "BreakerSettings",
    "DetectorSettings",
    "EndpointConfig",
    "RetrySettings",
    "ServiceConfig",
    "flatten",
    "from_flat",
]

T = TypeVar("T")


def _normalise(obj: Any, prefix: str, level: Level | None) -> None:
    """Validate every set field of a settings dataclass in place (frozen-safe)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in SECTIONS:
            expected = _SECTION_TYPES[f.name]
            if value is None:
                object.__setattr__(obj, f.name, expected())
            elif isinstance(value, Mapping):
                object.__setattr__(obj, f.name, expected(**dict(value)))
            elif not isinstance(value, expected):
                raise ConfigValidationError(
                    f"expected {expected.__name__}, got {type(value).__name__}", field=f.name
                )
            continue
        if value is None:
            continue
        path = f"{prefix}{f.name}"
        spec = FIELDS_BY_PATH[path]
        if level is not None and level not in spec.levels:  # pragma: no cover - by design
            raise ConfigValidationError(f"cannot be set at the {level} level", field=path)
        object.__setattr__(obj, f.name, check_value(spec, value))


class _Section:
    """Shared behaviour of the nested sections: validation and flattening."""

    _prefix = ""

    def __post_init__(self) -> None:
        _normalise(self, self._prefix, None)

    def is_empty(self) -> bool:
        """True when no field is set."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BreakerSettings(_Section):
    """Circuit-breaker thresholds (any level; ``None`` = not set here).

    Attributes:
        consecutive_failures: consecutive failures that open the breaker (1..10000).
        reset_timeout: seconds open before a half-open probe (``"30s"`` accepted).
        half_open_max_calls: concurrent probes admitted while half-open.
        half_open_successes: successful probes that close a half-open breaker.
        failure_rate: failure percentage in (0, 100] over the window that opens it.
        window_size: calls in the failure-rate window.
        minimum_calls: calls the window needs before ``failure_rate`` applies.
    """

    _prefix = "breaker."

    consecutive_failures: int | None = None
    reset_timeout: float | None = None
    half_open_max_calls: int | None = None
    half_open_successes: int | None = None
    failure_rate: float | None = None
    window_size: int | None = None
    minimum_calls: int | None = None


@dataclass(frozen=True)
class DetectorSettings(_Section):
    """Outlier-detection settings (global or service level).

    Attributes:
        consecutive_failures: consecutive failures that eject an endpoint.
        failure_rate: failure percentage in (0, 100] over the window that ejects.
        window_size: calls in the failure-rate window.
        min_requests: calls the window needs before ``failure_rate`` applies.
        interval: seconds between outlier analyses.
        base_ejection_time: first ejection, multiplied by the number of ejections.
        max_ejection_time: longest single ejection.
        max_ejection_percent: most endpoints ejected at once, in percent.
    """

    _prefix = "detector."

    consecutive_failures: int | None = None
    failure_rate: float | None = None
    window_size: int | None = None
    min_requests: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_time: float | None = None
    max_ejection_percent: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_consistency(flatten(self, prefix="detector."))


@dataclass(frozen=True)
class RetrySettings(_Section):
    """Retry settings (global or service level).

    Attributes:
        attempts: attempts in all, the first included (1..100).
        backoff_base: first backoff in seconds (full-jitter exponential).
        backoff_max: longest backoff in seconds.
        retry_on: failure kinds retried, from ``connect_failure``, ``reset``, ``timeout``,
            ``gateway_error``, ``throttled``, ``server_error``, ``error`` (default: the
            first five; add ``server_error`` to retry plain 500s).
        budget_ratio: retries allowed as a fraction of requests, in [0, 1].
        budget_min_per_second: retries per second always allowed.
    """

    _prefix = "retry."

    attempts: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None
    retry_on: tuple[str, ...] | None = None
    budget_ratio: float | None = None
    budget_min_per_second: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_consistency(flatten(self, prefix="retry."))


_SECTION_TYPES: dict[str, type[Any]] = {
    "breaker": BreakerSettings,
    "detector": DetectorSettings,
    "retry": RetrySettings,
}


def flatten(obj: Any, *, prefix: str = "") -> dict[str, Any]:
    """The set fields of a settings dataclass (sections included) by dotted path."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name.startswith("_"):
            continue
        value = getattr(obj, f.name)
        if f.name in SECTIONS and value is not None and dataclasses.is_dataclass(value):
            out.update(flatten(value, prefix=f"{prefix}{f.name}."))
        elif value is not None and f"{prefix}{f.name}" in FIELDS_BY_PATH:
            out[f"{prefix}{f.name}"] = value
    return out


def from_flat(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build ``cls`` (ServiceConfig, EndpointConfig...) from settings by dotted path.

    Paths ``cls`` has no field for are ignored, so an effective mapping can be narrowed.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, dot, rest = path.partition(".")
        if head not in names:
            continue
        if dot:
            sections.setdefault(head, {})[rest] = value
        else:
            top[path] = value
    for name, section in sections.items():
        top[name] = _SECTION_TYPES[name](**section)
    return cls(**top)


class _Level:
    """Shared behaviour of ServiceConfig and EndpointConfig."""

    _level: ClassVar[Level]

    def to_flat(self) -> dict[str, Any]:
        """The settings this level sets, by dotted path (durations in seconds)."""
        return flatten(self)

    def to_document(self) -> dict[str, Any]:
        """The settings as a JSON-ready document (durations as ``"1m30s"``)."""
        return to_document(flatten(self))

    @classmethod
    def from_document(
        cls: type[T], data: bytes | str | Mapping[str, Any], *, key: str | None = None
    ) -> T:
        """Parse and validate a JSON document (a KV value or a file's section).

        Raises:
            ConfigValidationError: naming ``key``, the field and the reason.
        """
        level: Level = cls._level  # type: ignore[attr-defined]
        return from_flat(cls, parse_document(data, level, key=key))


@dataclass(frozen=True)
class ServiceConfig(_Level):
    """Settings of one service (``<prefix>/services/<name>`` in KV); ``None`` = not set here.

    Attributes:
        strategy: load-balancing strategy name (``round_robin``, ``random``, ``weighted``,
            ``least_request``, ``peak_ewma``, ``ring_hash``, ``maglev``).
        breaker: breaker thresholds; detector: outlier detection; retry: retry policy.
        per_try_timeout: seconds one attempt may take.
        deadline: seconds a whole call may take, retries included.
        panic_threshold: percent of healthy endpoints below which all are used.
        slow_start_window: seconds over which a new endpoint ramps up.
        keep_warning: keep instances whose checks are ``warning``.
        deregister_critical_after: Consul deregisters our instance after this long critical.
        tags: only instances carrying every tag; meta: only instances with this meta.
        failover_datacenters: datacenters to try, in order, when the local one has none.

    Raises:
        ConfigValidationError: a value is out of range or of the wrong type.

    Example:
        >>> ServiceConfig(strategy="least_request", per_try_timeout="250ms").per_try_timeout
        0.25
    """

    _level: ClassVar[Level] = SERVICE

    strategy: str | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    per_try_timeout: float | None = None
    deadline: float | None = None
    panic_threshold: float | None = None
    slow_start_window: float | None = None
    keep_warning: bool | None = None
    deregister_critical_after: float | None = None
    tags: tuple[str, ...] | None = None
    meta: Mapping[str, str] | None = None
    failover_datacenters: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _normalise(self, "", SERVICE)
        check_consistency(flatten(self))

    def resolved(self) -> dict[str, Any]:
        """Every service-level setting: this level's value, else the built-in default."""
        from lake_mesh_consul._core.config_schema import defaults

        values = defaults(SERVICE)
        values.update(flatten(self))
        return values

    def breaker_policy(self) -> Any:
        """The breaker's ``BreakerPolicy`` for these settings (defaults filled in)."""
        from lake_mesh_consul._core.config_policies import breaker_policy

        return breaker_policy(self.resolved())

    def detector_policy(self) -> Any:
        """The detector's ``DetectorPolicy`` for these settings (defaults filled in)."""
        from lake_mesh_consul._core.config_policies import detector_policy

        return detector_policy(self.resolved())

    def retry_policy(self) -> Any:
        """The retry ``RetryPolicy`` for these settings (defaults filled in)."""
        from lake_mesh_consul._core.config_policies import retry_policy

        return retry_policy(self.resolved())


@dataclass(frozen=True)
class EndpointConfig(_Level):
    """Settings of one endpoint (service instance, by id); ``None`` = not set here.

    KV key: ``<prefix>/services/<service>/endpoints/<id>``. The most specific level: its
    values win over the service's and the global ones.

    Attributes:
        weight: weight override, 1..65535 (replaces Consul's ``Weights.Passing``).
        drained: take no new requests (in-flight requests finish).
        disabled: never picked, not even in panic mode.
        per_try_timeout: seconds one attempt on this endpoint may take.
        breaker: this endpoint's own breaker thresholds.

    Raises:
        ConfigValidationError: a value is out of range or of the wrong type.
    """

    _level: ClassVar[Level] = ENDPOINT

    weight: int | None = None
    drained: bool | None = None
    disabled: bool | None = None
    per_try_timeout: float | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def __post_init__(self) -> None:
        _normalise(self, "", ENDPOINT)


def normalise_global(obj: Any) -> None:
    """Validate the mesh-wide defaults and bootstrap settings of a MeshConfig in place.

    Raises:
        InvalidSetting: naming the setting (``breaker.consecutive_failures``), with the reason.
    """
    from lake_mesh_consul._core.config_schema import GLOBAL, fields_for
    from lake_mesh_consul.errors import InvalidSetting

    try:
        for name, section_type in _SECTION_TYPES.items():
            value = getattr(obj, name)
            if value is None:
                object.__setattr__(obj, name, section_type())
            elif isinstance(value, Mapping):
                object.__setattr__(obj, name, section_type(**dict(value)))
            elif not isinstance(value, section_type):
                raise ConfigValidationError(
                    f"expected {section_type.__name__}, got {type(value).__name__}", field=name
                )
        for spec in fields_for(GLOBAL):
            if spec.section is not None:
                continue
            value = getattr(obj, spec.path)
            if value is not None:
                object.__setattr__(obj, spec.path, check_value(spec, value))
        check_consistency(flatten(obj))
    except ConfigValidationError as exc:
        raise InvalidSetting(exc.field or "config", exc.reason) from None
    except TypeError as exc:  # an unknown keyword inside a section mapping
        raise InvalidSetting("config", str(exc)) from None
