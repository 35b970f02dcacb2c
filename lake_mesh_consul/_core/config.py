"""Configuration models: MeshConfig (global), ServiceConfig and EndpointConfig.

This module holds the connection part of :class:`MeshConfig`: how to reach Consul. It reads
the same environment variables as Consul's own CLI and Go API (``api/api.go``), in one place
(:meth:`MeshConfig.from_env`). An explicit argument always beats the environment; python-consul2
lets ``CONSUL_HTTP_TOKEN`` override an explicit token, and we deliberately do not.

The ACL token is held in a :class:`Secret`, which never shows its value in ``repr``/``str``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lake_mesh_consul._core.config_models import (
    BreakerSettings,
    DetectorSettings,
    EndpointConfig,
    RetrySettings,
    ServiceConfig,
    normalise_global,
)
from lake_mesh_consul._core.durations import parse_duration
from lake_mesh_consul.errors import InvalidSetting

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "ENV_VARS",
    "BreakerSettings",
    "DetectorSettings",
    "EndpointConfig",
    "MeshConfig",
    "RetrySettings",
    "Secret",
    "ServiceConfig",
    "check_token",
    "parse_address",
    "read_token_file",
]

#: The environment variables MeshConfig.from_env reads, as Consul's CLI names them.
ENV_VARS = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
    "CONSUL_NAMESPACE",
    "CONSUL_PARTITION",
    "CONSUL_DATACENTER",
)

#: Consul's default agent address.
DEFAULT_ADDRESS = "127.0.0.1:8500"
#: Longest connect or read timeout accepted (a day): beyond it sockets overflow, and no
#: non-blocking Consul answer is worth waiting for longer.
MAX_TIMEOUT = 86400.0

#: Largest answer read from the agent (``max_answer_bytes``): 64 MiB. A health answer costs
#: about 1.5-3 KB per instance (node, service and checks), so this holds over 20,000 instances
#: of one service, or a catalog of tens of thousands of services, while bounding what one
#: bad answer (a proxy's endless page, a wrong address) can cost the process.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-._]*[A-Za-z0-9])?\Z")


class Secret:
    """A string that never shows itself: ``repr`` and ``str`` print ``'***'``.

    Call :meth:`reveal` where the value is really needed (the HTTP header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # pickling must not be a way around the mask either
        raise TypeError("Secret values cannot be pickled")

    def __copy__(self) -> Secret:  # immutable: copies are the same value
        return self

    def __deepcopy__(self, memo: Any) -> Secret:
        return self


_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


def _parse_bool(name: str, value: str) -> bool:
    """Parse like Go's ``strconv.ParseBool`` (case-insensitive, plus yes/no/on/off)."""
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidSetting(name, f"expected true or false, got {value!r}")


def parse_address(value: str, *, setting: str = "address") -> tuple[str, str, int]:
    """Split a Consul address into ``(scheme, host, port)``.

    Accepts ``host:port``, ``host`` (port 8500), ``[v6]:port``, and the same with an
    ``http://`` or ``https://`` scheme. ``unix://`` sockets are not supported by requests.

    Raises:
        InvalidSetting: naming ``setting``, with the accepted forms.
    """
    text = value.strip()
    forms = "expected host:port, http://host:port or https://host:port"
    if not text:
        raise InvalidSetting(setting, f"is empty; {forms}")
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidSetting(setting, f"scheme {scheme!r} is not supported; {forms}")
        text = text.rstrip("/")
    if "@" in text:
        # user:password@host would put a credential into the message: never echo it.
        raise InvalidSetting(setting, f"credentials in the address are not supported; {forms}")
    if "/" in text or "?" in text or " " in text:
        raise InvalidSetting(setting, f"{value!r} is not an address; {forms}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise InvalidSetting(setting, f"unclosed '[' in {value!r}; {forms}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidSetting(setting, f"{host!r} is not an IPv6 address") from None
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise InvalidSetting(setting, f"{value!r} is not an address; {forms}")
    elif text.count(":") > 1:
        raise InvalidSetting(setting, f"IPv6 addresses need brackets, e.g. [::1]:8500; {forms}")
    else:
        host, _, port_text = text.partition(":")
        if not _HOST_RE.match(host):
            raise InvalidSetting(setting, f"{host!r} is not a host name or IP; {forms}")
    if port_text == "":
        port = 8500
    else:
        if not port_text.isdigit():
            raise InvalidSetting(setting, f"port {port_text!r} is not a number; {forms}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise InvalidSetting(setting, f"port {port} is outside 1..65535")
    return scheme, host, port


def _require_path(setting: str, value: str | None, *, directory: bool = False) -> str | None:
    if value is None or value == "":
        return None
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user" where that user does not exist
        raise InvalidSetting(setting, f"cannot expand the home directory in {value!r}") from None
    if directory and not path.is_dir():
        raise InvalidSetting(setting, f"directory {value!r} does not exist")
    if not directory and not path.is_file():
        raise InvalidSetting(setting, f"file {value!r} does not exist")
    return str(path)


#: Go's ``unicode.IsSpace`` (what ``strings.TrimSpace`` trims): Consul trims a token file so.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def check_token(setting: str, value: str) -> None:
    """Refuse a token that cannot travel in an HTTP header as Consul expects it.

    ACL tokens are printable ASCII (Consul's are UUIDs). Whitespace (a trailing newline from a
    secret mounted into an environment variable), control or non-ASCII characters (a pasted
    zero-width space) would make the HTTP library fail *during* a request, with the token in
    its message; so they are refused here, before any request.

    Raises:
        InvalidSetting: naming ``setting`` and the kind and position of the first bad
            character, never the value.
    """
    for position, char in enumerate(value, start=1):
        if "!" <= char <= "~":
            continue
        if char.isspace() or char in _GO_SPACE:
            kind = "whitespace"
        elif char.isascii():
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        raise InvalidSetting(
            setting,
            f"the ACL token contains {kind} (character {position} of {len(value)}); "
            "tokens are printable ASCII. Remove it, or put the token in a file and use "
            "CONSUL_HTTP_TOKEN_FILE / token_file, whose surrounding whitespace is trimmed",
        )


def read_token_file(path_text: str) -> Secret:
    """Read a token file as Consul does: the file's text with surrounding whitespace trimmed.

    Raises:
        InvalidSetting: naming ``token_file``: missing, unreadable, not UTF-8, empty, or a
            token :func:`check_token` refuses (never quoting the file's content).
    """
    path = _require_path("token_file", path_text)
    assert path is not None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidSetting("token_file", f"cannot read {path!r}: {exc.strerror}") from None
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # raised below, outside the handler: the error's .object holds the bytes
    if text is None:
        raise InvalidSetting("token_file", f"{path!r} is not UTF-8 text")
    text = text.strip(_GO_SPACE)
    if not text:
        raise InvalidSetting("token_file", f"{path!r} is empty")
    check_token("token_file", text)
    return Secret(text)


def _resolve_token(token: Any, token_file: str | None) -> Secret | None:
    """The token from the ``token`` argument (str or Secret), else from ``token_file``."""
    if isinstance(token, str):
        token = Secret(token) if token else None
    if isinstance(token, Secret):
        check_token("token", token.reveal())
        return token
    if token is not None:
        raise InvalidSetting("token", "expected a string")
    return read_token_file(token_file) if token_file else None


@dataclass(frozen=True)
class MeshConfig:
    """Global configuration: how to reach Consul, and mesh-wide defaults.

    Build it in code, or from the environment with :meth:`from_env` (same variables as
    Consul's CLI). Every setting is validated at construction; an invalid one raises
    :class:`~lake_mesh_consul.errors.InvalidSetting` naming it. The ACL token is kept in a
    :class:`Secret` and never appears in ``repr``, ``str``, logs or exceptions.

    Instances are immutable and thread-safe; derive variants with :meth:`replace`.

    Attributes:
        address: the agent's HTTP address, ``host:port`` (a scheme prefix sets ``scheme``).
        scheme: ``"http"`` or ``"https"``.
        datacenter: datacenter to query (``None``: the agent's own).
        token: ACL token (a ``str`` is wrapped in a :class:`Secret`).
        token_file: file to read the token from (ignored when ``token`` is given).
        ca_file: CA bundle to verify the agent's certificate.
        ca_path: directory of CA certificates.
        client_cert: client certificate (PEM) for agents that verify incoming connections.
        client_key: the client certificate's key (requires ``client_cert``).
        verify: whether to verify the agent's TLS certificate (default on).
        tls_server_name: the name to verify the agent's certificate against (SNI).
        namespace: Consul Enterprise namespace.
        partition: Consul Enterprise admin partition.
        connect_timeout: seconds to wait for a TCP connection to the agent.
        read_timeout: seconds to wait for a non-blocking answer.
        max_answer_bytes: largest answer read from the agent (default 64 MiB); a larger one
            fails with :class:`~lake_mesh_consul.errors.ConsulAnswerTooLarge`, unread.

    Mesh-wide defaults (the global level of configuration; ``None`` = built-in default,
    overridden per service and per endpoint, see :mod:`lake_mesh_consul._core.config_schema`):
    ``strategy``, ``breaker``, ``detector``, ``retry``, ``per_try_timeout``, ``deadline``,
    ``panic_threshold``, ``slow_start_window``, ``keep_warning``,
    ``deregister_critical_after``. Environment: ``LAKE_MESH_<PATH>``, e.g.
    ``LAKE_MESH_STRATEGY``, ``LAKE_MESH_BREAKER_CONSECUTIVE_FAILURES``.

    Bootstrap settings (how configuration itself is read; never from KV): ``watch_wait``
    (blocking-query wait, <= 10 min), ``watch_rate_limit`` (queries per second per watch),
    ``kv_prefix`` (KV folder of the configuration, default ``lake-mesh``). ``sources`` says
    where each setting read by :meth:`from_env` / :meth:`from_file` came from.

    Example:
        >>> MeshConfig(address="127.0.0.1:8500", token="s3cr3t")
        MeshConfig(address='127.0.0.1:8500', scheme='http', ..., token=Secret('***'), ...)
    """

    address: str = DEFAULT_ADDRESS
    scheme: Literal["http", "https"] = "http"
    datacenter: str | None = None
    token: Secret | None = field(default=None)
    token_file: str | None = None
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    namespace: str | None = None
    partition: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    # -- mesh-wide defaults: the global level (None = built-in default) --------------------
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
    # -- bootstrap: how configuration is read ----------------------------------------------
    watch_wait: float = 60.0
    watch_rate_limit: float = 10.0
    kv_prefix: str = "lake-mesh"
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        scheme_in_addr, host, port = parse_address(self.address, setting="address")
        host_text = f"[{host}]" if ":" in host else host
        set_(self, "address", f"{host_text}:{port}")
        scheme = scheme_in_addr or self.scheme
        if scheme not in ("http", "https"):
            raise InvalidSetting("scheme", f"expected 'http' or 'https', got {scheme!r}")
        set_(self, "scheme", scheme)
        set_(self, "token", _resolve_token(self.token, self.token_file))
        set_(self, "ca_file", _require_path("ca_file", self.ca_file))
        set_(self, "ca_path", _require_path("ca_path", self.ca_path, directory=True))
        set_(self, "client_cert", _require_path("client_cert", self.client_cert))
        set_(self, "client_key", _require_path("client_key", self.client_key))
        if self.client_key and not self.client_cert:
            raise InvalidSetting("client_key", "a client key needs client_cert as well")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = parse_duration(value)
                except ValueError as exc:
                    raise InvalidSetting(name, str(exc)) from None
                set_(self, name, value)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidSetting(name, f"must be a positive number of seconds, got {value!r}")
            if not value <= MAX_TIMEOUT:  # 1e300 or inf would overflow the socket's timeval
                raise InvalidSetting(name, f"must be at most {MAX_TIMEOUT:g}s, got {value!r:.40}")
        limit = self.max_answer_bytes
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1024 <= limit <= 2**40:
            raise InvalidSetting(
                "max_answer_bytes", f"must be a whole number of bytes in 1024..2**40, got {limit!r}"
            )
        if self.datacenter is not None and not self.datacenter.strip():
            raise InvalidSetting("datacenter", "is empty")
        normalise_global(self)  # mesh-wide defaults and bootstrap settings (config_schema)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MeshConfig:
        """Build from Consul's environment variables; keyword arguments win over them.

        Reads ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``,
        ``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_CACERT``, ``CONSUL_CAPATH``,
        ``CONSUL_CLIENT_CERT``, ``CONSUL_CLIENT_KEY``, ``CONSUL_TLS_SERVER_NAME``,
        ``CONSUL_NAMESPACE``, ``CONSUL_PARTITION`` (and ``CONSUL_DATACENTER``).

        Raises:
            InvalidSetting: naming the environment variable at fault.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        if (addr := get("CONSUL_HTTP_ADDR")) is not None:
            scheme, host, port = parse_address(addr, setting="CONSUL_HTTP_ADDR")
            host_text = f"[{host}]" if ":" in host else host
            values["address"] = f"{host_text}:{port}"
            if scheme:
                values["scheme"] = scheme
        if (ssl := get("CONSUL_HTTP_SSL")) is not None and _parse_bool("CONSUL_HTTP_SSL", ssl):
            values["scheme"] = "https"
        if (verify := get("CONSUL_HTTP_SSL_VERIFY")) is not None:
            values["verify"] = _parse_bool("CONSUL_HTTP_SSL_VERIFY", verify)
        simple = {
            "CONSUL_HTTP_TOKEN": "token",
            "CONSUL_CACERT": "ca_file",
            "CONSUL_CAPATH": "ca_path",
            "CONSUL_CLIENT_CERT": "client_cert",
            "CONSUL_CLIENT_KEY": "client_key",
            "CONSUL_TLS_SERVER_NAME": "tls_server_name",
            "CONSUL_NAMESPACE": "namespace",
            "CONSUL_PARTITION": "partition",
            "CONSUL_DATACENTER": "datacenter",
        }
        for var, name in simple.items():
            if (value := get(var)) is not None:
                values[name] = value
        if (token_file := get("CONSUL_HTTP_TOKEN_FILE")) is not None:
            values["token_file"] = token_file
            # As in Consul's Go API (NewClient), a token file beats CONSUL_HTTP_TOKEN.
            values.pop("token", None)
        # An explicit token or token file beats both environment variables.
        if "token" in overrides or "token_file" in overrides:
            values.pop("token", None)
            values.pop("token_file", None)
        # An explicit address brings its own scheme: drop the one CONSUL_HTTP_ADDR carried
        # (CONSUL_HTTP_SSL=true still means https, as in Consul's CLI).
        ssl_on = ssl is not None and _parse_bool("CONSUL_HTTP_SSL", ssl)
        if "address" in overrides and "scheme" not in overrides and not ssl_on:
            values.pop("scheme", None)
        from lake_mesh_consul._core.config_sources import layered_from_env

        layered_from_env(env, values, overrides)  # LAKE_MESH_* mesh-wide defaults
        values.update(overrides)
        env_names = {v: k for k, v in simple.items()}
        env_names.update(
            address="CONSUL_HTTP_ADDR",
            token_file="CONSUL_HTTP_TOKEN_FILE",  # noqa: S106 - a variable name
            verify="CONSUL_HTTP_SSL_VERIFY",
        )
        try:
            return cls(**values)
        except InvalidSetting as exc:
            if exc.setting in env_names and exc.setting not in overrides:
                raise InvalidSetting(env_names[exc.setting], exc.reason) from None
            raise

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> MeshConfig:
        """Build from a local JSON or TOML file, then the environment, then ``overrides``.

        Precedence (lowest first): built-in defaults < file < environment < arguments.
        See :func:`lake_mesh_consul._core.config_sources.load_file` for the file format.

        Raises:
            ConfigValidationError: the file is unreadable or invalid (naming file and field).
            InvalidSetting: an environment variable or argument is invalid.
        """
        from lake_mesh_consul._core.config_sources import mesh_from_file

        return mesh_from_file(cls, path, environ, overrides)

    def replace(self, **changes: Any) -> MeshConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    # -- derived ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` of the agent (never contains credentials)."""
        return f"{self.scheme}://{self.address}"

    @property
    def host(self) -> str:
        """The agent's host (IPv6 without brackets)."""
        return parse_address(self.address)[1]

    @property
    def port(self) -> int:
        """The agent's port."""
        return parse_address(self.address)[2]

    def __str__(self) -> str:
        return f"MeshConfig({self.base_url}, dc={self.datacenter or 'agent default'})"
