"""Local configuration sources: the environment (``LAKE_MESH_*``) and a JSON or TOML file.

Precedence of the sources of one level, lowest first::

    built-in default < local file < environment < code (constructor arguments) < Consul KV

and across levels the most specific wins (endpoint > service > global), whatever the
source: a service setting written in code beats a global one in KV.

The connection settings read ``CONSUL_*`` exactly like Consul's CLI
(:meth:`MeshConfig.from_env`); the mesh-wide defaults read ``LAKE_MESH_<PATH>`` where
``<PATH>`` is the setting's dotted path in upper case with ``_`` for ``.``
(``LAKE_MESH_BREAKER_FAILURE_THRESHOLD=5``, ``LAKE_MESH_WATCH_WAIT=2m``,
``LAKE_MESH_KV_PREFIX=team/mesh``). Lists are comma-separated, maps ``k=v,k2=v2``.

The file mirrors the KV layout (``global``, ``services``, ``endpoints``) and may carry the
connection settings under ``consul``::

    {
      "consul": {"address": "127.0.0.1:8500", "datacenter": "dc1"},
      "global": {"strategy": "least_request", "retry": {"attempts": 2}},
      "services": {"web": {"per_try_timeout": "250ms"}},
      "endpoints": {"web": {"web-1": {"weight": 5}}}
    }
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lake_mesh_consul._core.config_models import (
    _SECTION_TYPES,
    EndpointConfig,
    ServiceConfig,
    flatten,
    from_flat,
)
from lake_mesh_consul._core.config_schema import (
    ENDPOINT,
    FIELDS_BY_PATH,
    GLOBAL,
    SECTIONS,
    SERVICE,
    _decode,
    env_var,
    fields_for,
    parse_document,
    parse_env_value,
)
from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

if TYPE_CHECKING:
    from lake_mesh_consul._core.config import MeshConfig

__all__ = ["CONNECTION_FIELDS", "FileConfig", "layered_from_env", "load_file", "mesh_from_file"]

#: MeshConfig's connection settings a file may set under ``"consul"``.
CONNECTION_FIELDS: tuple[str, ...] = (
    "address",
    "scheme",
    "datacenter",
    "token",
    "token_file",
    "ca_file",
    "ca_path",
    "client_cert",
    "client_key",
    "verify",
    "tls_server_name",
    "namespace",
    "partition",
    "connect_timeout",
    "read_timeout",
    "max_answer_bytes",
)

#: The CONSUL_* variables that set each connection field (an env var beats the file).
_CONNECTION_ENV: dict[str, tuple[str, ...]] = {
    "address": ("CONSUL_HTTP_ADDR",),
    "scheme": ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"),
    "datacenter": ("CONSUL_DATACENTER",),
    "token": ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"),
    "token_file": ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"),
    "ca_file": ("CONSUL_CACERT",),
    "ca_path": ("CONSUL_CAPATH",),
    "client_cert": ("CONSUL_CLIENT_CERT",),
    "client_key": ("CONSUL_CLIENT_KEY",),
    "verify": ("CONSUL_HTTP_SSL_VERIFY",),
    "tls_server_name": ("CONSUL_TLS_SERVER_NAME",),
    "namespace": ("CONSUL_NAMESPACE",),
    "partition": ("CONSUL_PARTITION",),
}

_TOP_KEYS = ("consul", "global", "services", "endpoints")


def _layered_flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """The global-level settings among MeshConfig keyword arguments, by dotted path."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in SECTIONS and value is not None:
            if isinstance(value, Mapping):
                out.update({f"{name}.{k}": v for k, v in value.items() if v is not None})
            else:
                out.update(flatten(value, prefix=f"{name}."))
        elif name in FIELDS_BY_PATH and value is not None:
            out[name] = value
    return out


def _merge_sections(low: Mapping[str, Any], high: dict[str, Any]) -> None:
    """Put the settings by path of ``low`` under the keyword arguments ``high``."""
    high_flat = _layered_flat(high)
    for section in SECTIONS:
        merged = {p.partition(".")[2]: v for p, v in low.items() if p.startswith(section + ".")}
        merged.update(
            {p.partition(".")[2]: v for p, v in high_flat.items() if p.startswith(section + ".")}
        )
        if merged:
            high[section] = _SECTION_TYPES[section](**merged)
    for path, value in low.items():
        if "." not in path and path not in high:
            high[path] = value


def layered_from_env(
    env: Mapping[str, str], values: dict[str, Any], overrides: dict[str, Any]
) -> None:
    """Add the ``LAKE_MESH_*`` settings of ``env`` to MeshConfig keyword arguments.

    ``values`` (from ``CONSUL_*``) gains the environment's settings; ``overrides`` (code,
    or a file through :func:`mesh_from_file`) keeps precedence, section by field.
    ``overrides["sources"]`` (if any) is merged into ``values["sources"]``.

    Raises:
        InvalidSetting: naming the environment variable at fault.
    """
    env_flat: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in fields_for(GLOBAL):
        var = env_var(spec)
        text = env.get(var)
        if text is None or text == "":
            continue
        try:
            env_flat[spec.path] = parse_env_value(spec, text)
        except ConfigValidationError as exc:
            raise InvalidSetting(var, exc.reason) from None
        sources[spec.path] = f"env:{var}"
    given = dict(overrides.pop("sources", None) or {})
    code_paths = set(_layered_flat(overrides))
    _merge_sections(env_flat, overrides)
    sources = {p: s for p, s in sources.items() if p not in code_paths}
    sources.update(given)
    values["sources"] = sources


@dataclass(frozen=True)
class FileConfig:
    """A parsed local configuration file: all three levels plus connection settings.

    Attributes:
        path: the file.
        connection: MeshConfig connection keyword arguments from ``"consul"``.
        global_values: global settings by dotted path (bootstrap settings included).
        services: ServiceConfig by service name.
        endpoints: EndpointConfig by ``(service, endpoint id)``.
    """

    path: str
    connection: Mapping[str, Any] = field(default_factory=dict)
    global_values: Mapping[str, Any] = field(default_factory=dict)
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], EndpointConfig] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``file:<path>``, as provenance shows it."""
        return f"file:{self.path}"


def _read(path: Path, name: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigValidationError(f"cannot read: {exc.strerror or exc}", key=name) from None
    if path.suffix.lower() == ".toml":
        return _decode_toml(raw, name)
    return _decode(raw, name)


def _decode_toml(raw: bytes, name: str) -> Any:
    # tomllib is in the standard library from 3.11; below, tomli (a dependency there) is the
    # same parser under another name. Imported here: most configurations are JSON or KV.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised by CI's Python 3.10 run
        import tomli as tomllib
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigValidationError(f"malformed TOML: {exc}", key=name) from None


def _object(value: Any, name: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigValidationError(
            f"expected an object, got {type(value).__name__}", key=name, field=where
        )
    return value


def load_file(path: str | os.PathLike[str]) -> FileConfig:
    """Read and validate a local JSON (or ``.toml``) configuration file.

    Raises:
        ConfigValidationError: naming the file, the field (``services.web.retry.attempts``)
            and the reason; unknown keys get a did-you-mean.
    """
    import difflib

    name = os.fspath(path)
    doc = _object(_read(Path(name), name), name, "")
    for top in doc:
        if top not in _TOP_KEYS:
            close = difflib.get_close_matches(str(top), _TOP_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigValidationError(
                f"unknown section {top!r}{hint}; expected {', '.join(_TOP_KEYS)}",
                key=name,
                field=str(top),
            )
    connection = dict(_object(doc.get("consul", {}), name, "consul"))
    for conn_key in connection:
        if conn_key not in CONNECTION_FIELDS:
            close = difflib.get_close_matches(conn_key, CONNECTION_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigValidationError(
                f"unknown connection setting {conn_key!r}{hint}", key=name, field="consul"
            )
    global_values = parse_document(_object(doc.get("global", {}), name, "global"), GLOBAL, key=name)
    services: dict[str, ServiceConfig] = {}
    for svc, sdoc in _object(doc.get("services", {}), name, "services").items():
        flat = parse_document(_object(sdoc, name, f"services.{svc}"), SERVICE, key=name)
        services[svc] = from_flat(ServiceConfig, flat)
    endpoints: dict[tuple[str, str], EndpointConfig] = {}
    for svc, ids in _object(doc.get("endpoints", {}), name, "endpoints").items():
        for eid, edoc in _object(ids, name, f"endpoints.{svc}").items():
            where = f"endpoints.{svc}.{eid}"
            flat = parse_document(_object(edoc, name, where), ENDPOINT, key=name)
            endpoints[(svc, eid)] = from_flat(EndpointConfig, flat)
    return FileConfig(name, connection, global_values, services, endpoints)


def mesh_from_file(
    cls: type[MeshConfig],
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
) -> MeshConfig:
    """MeshConfig from a file, then the environment, then ``overrides`` (highest).

    Raises:
        ConfigValidationError: the file is invalid (naming it).
        InvalidSetting: an environment variable or argument is invalid.
    """
    env = os.environ if environ is None else environ
    loaded = load_file(path)
    code = dict(overrides)
    kwargs: dict[str, Any] = {}
    for key, value in loaded.connection.items():
        if key not in code and not any(env.get(v) for v in _CONNECTION_ENV.get(key, ())):
            kwargs[key] = value
    file_flat = {
        p: v for p, v in loaded.global_values.items() if not env.get(env_var(FIELDS_BY_PATH[p]))
    }
    code_paths = set(_layered_flat(code))
    _merge_sections(file_flat, code)
    kwargs.update(code)
    kwargs["sources"] = {p: loaded.source for p in file_flat if p not in code_paths}
    try:
        return cls.from_env(environ, **kwargs)
    except InvalidSetting as exc:
        if exc.setting in loaded.connection and exc.setting not in overrides:
            raise ConfigValidationError(
                exc.reason, key=loaded.path, field=f"consul.{exc.setting}"
            ) from None
        raise
