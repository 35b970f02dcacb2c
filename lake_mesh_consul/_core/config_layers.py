"""Merging the three levels: the effective settings of a service or endpoint, with provenance.

A :class:`ConfigSnapshot` is an immutable view of every configured layer: the global level
(MeshConfig from code/environment/file, then ``<prefix>/global`` from KV), each service's
layers and each endpoint's layers. :meth:`ConfigSnapshot.effective` merges them::

    built-in default < global < service < endpoint        (most specific wins)

and inside one level, ``local (file < env < code) < KV``. Every value of the result carries
a :class:`Provenance`: the level and the source (``kv:<key>``, ``code``, ``env:<VAR>``,
``file:<path>`` or ``built-in``).

Everything here is pure and thread-safe (immutable values swapped by reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lake_mesh_consul._core.config_models import (
    EndpointConfig,
    ServiceConfig,
    flatten,
    from_flat,
)
from lake_mesh_consul._core.config_schema import (
    ENDPOINT,
    FIELDS,
    FIELDS_BY_PATH,
    GLOBAL,
    SERVICE,
    Level,
    to_json_value,
)

__all__ = [
    "BUILT_IN",
    "ConfigSnapshot",
    "EffectiveConfig",
    "Layer",
    "Provenance",
    "layer_from",
]

#: The source name of built-in defaults.
BUILT_IN = "built-in"


@dataclass(frozen=True)
class Provenance:
    """Where an effective value came from.

    Attributes:
        level: ``"endpoint"``, ``"service"``, ``"global"`` or ``"default"``.
        source: ``"kv:<key>"``, ``"code"``, ``"env:<VAR>"``, ``"file:<path>"`` or
            ``"built-in"``.
    """

    level: Literal["endpoint", "service", "global", "default"]
    source: str

    @property
    def kv_key(self) -> str | None:
        """The KV key when the value came from KV."""
        return self.source[3:] if self.source.startswith("kv:") else None


@dataclass(frozen=True)
class Layer:
    """The settings one source gives one level, by dotted path, with a source per path.

    Attributes:
        values: normalised settings by dotted path (read-only).
        sources: the source of each path (read-only).
        modify_index: the KV ModifyIndex of the document (0 when not from KV).
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    modify_index: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Layer)
            and dict(self.values) == dict(other.values)
            and dict(self.sources) == dict(other.sources)
        )

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.sources.items())))


def layer_from(obj: Any, source: str, *, modify_index: int = 0) -> Layer:
    """A layer from a MeshConfig, ServiceConfig, EndpointConfig or settings by path.

    For a MeshConfig, ``obj.sources`` names the source of each setting read from the
    environment or a file; the rest is ``source`` (normally ``"code"``). Bootstrap
    settings are left out (they do not vary by service).
    """
    if isinstance(obj, Mapping):
        values = dict(obj)
        per_path: Mapping[str, str] = {}
    else:
        values = flatten(obj)
        per_path = getattr(obj, "sources", {}) or {}
    values = {p: v for p, v in values.items() if not FIELDS_BY_PATH[p].bootstrap}
    if not isinstance(obj, Mapping) and type(obj).__name__ == "MeshConfig":
        # A bootstrap field is always set; only the settings somebody set form the layer.
        values = {p: v for p, v in values.items() if v is not None}
    sources = {p: per_path.get(p, source) for p in values}
    return Layer(values, sources, modify_index)


EMPTY_LAYER = Layer({}, {})


@dataclass(frozen=True)
class EffectiveConfig:
    """The merged settings of one service (and optionally one of its endpoints).

    Attributes:
        service: the service name.
        endpoint: the endpoint id, or ``None`` for the service as a whole.
        values: every setting by dotted path (durations in seconds).
        provenance: the :class:`Provenance` of every value.

    ``settings`` and ``endpoint_settings`` give the typed view; ``breaker_policy()``,
    ``detector_policy()`` and ``retry_policy()`` build the policies of
    :mod:`lake_mesh_consul.policies`.
    """

    service: str
    endpoint: str | None
    values: Mapping[str, Any]
    provenance: Mapping[str, Provenance]

    def __getitem__(self, path: str) -> Any:
        return self.values[path]

    def get(self, path: str, default: Any = None) -> Any:
        """The value at ``path`` or ``default``."""
        return self.values.get(path, default)

    @property
    def strategy(self) -> str:
        """The effective strategy name."""
        return str(self.values["strategy"])

    @property
    def settings(self) -> ServiceConfig:
        """Every service-level setting resolved (endpoint overrides applied)."""
        return from_flat(ServiceConfig, self.values)

    @property
    def endpoint_settings(self) -> EndpointConfig | None:
        """Weight, drained, disabled and the endpoint's own overrides, resolved."""
        if self.endpoint is None:
            return None
        return from_flat(EndpointConfig, self.values)

    def breaker_policy(self) -> Any:
        """The breaker's ``BreakerPolicy`` for these settings (:mod:`lake_mesh_consul.policies`)."""
        from lake_mesh_consul._core.config_policies import breaker_policy

        return breaker_policy(self.values)

    def detector_policy(self) -> Any:
        """The detector's ``DetectorPolicy`` for these settings (``lake_mesh_consul.policies``)."""
        from lake_mesh_consul._core.config_policies import detector_policy

        return detector_policy(self.values)

    def retry_policy(self) -> Any:
        """The retry ``RetryPolicy`` for these settings (:mod:`lake_mesh_consul.policies`)."""
        from lake_mesh_consul._core.config_policies import retry_policy

        return retry_policy(self.values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{path: {"value", "level", "source"}}`` (durations as ``"1m30s"``)."""
        out: dict[str, Any] = {}
        for path, value in self.values.items():
            prov = self.provenance[path]
            out[path] = {
                "value": to_json_value(FIELDS_BY_PATH[path], value),
                "level": prov.level,
                "source": prov.source,
            }
        return out


def _merge(layers: tuple[Layer, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        values.update(layer.values)
        sources.update(layer.sources)
    return values, sources


@dataclass(frozen=True)
class ConfigSnapshot:
    """Every configured layer at one moment; immutable, so readers need no lock.

    Attributes:
        global_layers: global layers, lowest precedence first (local, then KV).
        service_layers: each service's layers, lowest first.
        endpoint_layers: each ``(service, endpoint id)``'s layers, lowest first.
        index: the KV index the snapshot reflects (0 before KV was read).
        stale: True while KV could not be read and an older view is in force.
    """

    global_layers: tuple[Layer, ...] = ()
    service_layers: Mapping[str, tuple[Layer, ...]] = field(default_factory=dict)
    endpoint_layers: Mapping[tuple[str, str], tuple[Layer, ...]] = field(default_factory=dict)
    index: int = 0
    stale: bool = False

    def same_settings(self, other: ConfigSnapshot) -> bool:
        """True when both snapshots give every service and endpoint the same settings."""
        return (
            self.global_layers == other.global_layers
            and _non_empty(self.service_layers) == _non_empty(other.service_layers)
            and _non_empty(self.endpoint_layers) == _non_empty(other.endpoint_layers)
        )

    def services(self) -> list[str]:
        """The services with settings of their own (or of their endpoints), sorted."""
        names = set(self.service_layers) | {svc for svc, _ in self.endpoint_layers}
        return sorted(names)

    def endpoints(self, service: str) -> list[str]:
        """The endpoint ids of ``service`` with settings of their own, sorted."""
        return sorted(eid for svc, eid in self.endpoint_layers if svc == service)

    def level_values(
        self, level: Level, service: str | None = None, endpoint: str | None = None
    ) -> dict[str, Any]:
        """The merged settings one level sets (not the effective result)."""
        if level == GLOBAL:
            layers = self.global_layers
        elif level == SERVICE:
            layers = self.service_layers.get(service or "", ())
        else:
            layers = self.endpoint_layers.get((service or "", endpoint or ""), ())
        return _merge(layers)[0]

    def effective(self, service: str, endpoint: str | None = None) -> EffectiveConfig:
        """The merged settings of ``service`` (and ``endpoint``), with provenance.

        Precedence: endpoint > service > global > built-in default; inside a level, KV >
        code > environment > file.
        """
        levels: list[tuple[Literal["global", "service", "endpoint"], tuple[Layer, ...]]] = [
            (GLOBAL, self.global_layers),
            (SERVICE, self.service_layers.get(service, ())),
        ]
        if endpoint is not None:
            levels.append((ENDPOINT, self.endpoint_layers.get((service, endpoint), ())))
        wanted = [
            f
            for f in FIELDS
            if not f.bootstrap
            and (SERVICE in f.levels or (endpoint is not None and ENDPOINT in f.levels))
        ]
        values: dict[str, Any] = {f.path: f.default for f in wanted}
        provenance: dict[str, Provenance] = {
            f.path: Provenance("default", BUILT_IN) for f in wanted
        }
        for level, layers in levels:
            merged, sources = _merge(layers)
            for path, value in merged.items():
                if path in values:
                    values[path] = value
                    provenance[path] = Provenance(level, sources[path])
        return EffectiveConfig(
            service, endpoint, MappingProxyType(values), MappingProxyType(provenance)
        )


def _non_empty(layers: Mapping[Any, tuple[Layer, ...]]) -> dict[Any, tuple[Layer, ...]]:
    return {k: v for k, v in layers.items() if any(layer.values for layer in v)}
