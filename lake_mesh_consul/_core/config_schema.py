"""The configuration schema as data: every setting, its type, range, levels and default.

One table, :data:`FIELDS`, is the single source of truth for

* validation of JSON documents (Consul KV values, local files) and of code arguments;
* the did-you-mean offered for an unknown key (:func:`difflib.get_close_matches`);
* the built-in defaults that sit below the three levels;
* the ``LAKE_MESH_*`` environment variable of each global setting;
* the field reference in the README.

Settings are addressed by a dotted *path*: ``strategy``, ``breaker.consecutive_failures``.
A document is a JSON object; ``breaker``, ``detector`` and ``retry`` are nested objects.

Levels (most specific wins): ``endpoint`` > ``service`` > ``global`` > built-in default.
*Bootstrap* settings (``kv_prefix``, ``watch_wait``, ``watch_rate_limit``) are needed to
read KV at all, so they come from code, the environment or a local file, never from KV.

The parser never raises anything but
:class:`~lake_mesh_consul.errors.ConfigValidationError`, whatever bytes it is given
(``tests/unit/test_config_fuzz.py`` checks this with hypothesis).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from lake_mesh_consul._core.durations import format_duration, parse_duration
from lake_mesh_consul._core.names import META_MAX_VALUE_LENGTH, check_text, utf8_length
from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

__all__ = [
    "BOOTSTRAP",
    "ENDPOINT",
    "FIELDS",
    "FIELDS_BY_PATH",
    "GLOBAL",
    "LEVELS",
    "MAX_DOCUMENT_BYTES",
    "RETRY_KINDS",
    "SECTIONS",
    "SERVICE",
    "STRATEGY_NAMES",
    "FieldSpec",
    "Level",
    "check_value",
    "defaults",
    "env_var",
    "fields_for",
    "parse_document",
    "parse_env_value",
    "to_document",
    "to_json_value",
]

#: A configuration level, from least to most specific.
Level = Literal["global", "service", "endpoint"]
#: The three levels, least specific first.
LEVELS: tuple[Level, ...] = ("global", "service", "endpoint")
GLOBAL: Level = "global"  #: the mesh-wide level (MeshConfig, ``<prefix>/global``)
SERVICE: Level = "service"  #: per service (ServiceConfig, ``<prefix>/services/<name>``)
ENDPOINT: Level = "endpoint"  #: per endpoint (EndpointConfig, ``.../endpoints/<id>``)
#: Marks a global setting that KV cannot set (needed to reach KV in the first place).
BOOTSTRAP = "bootstrap"

#: Failure kinds a retry policy may retry (``_core/detector.py``'s ``OutcomeKind`` values).
RETRY_KINDS: tuple[str, ...] = (
    "connect_failure",
    "reset",
    "timeout",
    "gateway_error",
    "throttled",
    "server_error",
    "error",
)
#: What is retried by default (``_core/retry.py``'s ``DEFAULT_RETRY_ON``): transport
#: failures, gateway errors and 429; a plain 500 is usually a bug that will happen again.
DEFAULT_RETRY_KINDS: tuple[str, ...] = (
    "connect_failure",
    "reset",
    "timeout",
    "gateway_error",
    "throttled",
)

#: Load-balancing strategies known to the balancer (``_core/strategies.py``).
STRATEGY_NAMES: tuple[str, ...] = (
    "round_robin",
    "random",
    "weighted",
    "least_request",
    "peak_ewma",
    "ring_hash",
    "maglev",
    "nearest_first",
)

#: The nested objects of a document.
SECTIONS: tuple[str, ...] = ("breaker", "detector", "retry")

#: Largest document accepted (Consul's own KV value limit is 512 KiB).
MAX_DOCUMENT_BYTES = 512 * 1024

#: Longest list (tags, failover datacenters) and largest map (meta) accepted.
MAX_ITEMS = 64

Kind = Literal["duration", "int", "float", "bool", "choice", "str_list", "str_map", "prefix"]

# Each pattern ends in \Z: ``$`` also matches before a final newline ("dc1\n", "mesh\n").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_\-]{1,128}\Z")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*\Z")


@dataclass(frozen=True)
class FieldSpec:
    """One setting: where it may be set, what it accepts and its built-in default.

    Attributes:
        path: dotted path, e.g. ``"breaker.consecutive_failures"``.
        kind: the value type; durations accept ``"10s"``/``"1m30s"`` or seconds.
        levels: the levels that may set it.
        default: the built-in default (``None``: unset unless configured).
        doc: one line for the field reference.
        minimum / maximum: inclusive bounds; ``exclusive_min`` makes the minimum exclusive.
        choices: accepted values of a ``choice``.
        bootstrap: settable only from code, environment or a local file (not KV).
    """

    path: str
    kind: Kind
    levels: frozenset[Level]
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    choices: tuple[str, ...] = ()
    bootstrap: bool = False

    @property
    def section(self) -> str | None:
        """``"breaker"`` for ``breaker.consecutive_failures``; ``None`` for a top-level field."""
        head, dot, _ = self.path.partition(".")
        return head if dot else None

    @property
    def name(self) -> str:
        """The last component of the path."""
        return self.path.rpartition(".")[2]

    def range_text(self) -> str:
        """The accepted range in words, for messages and the field reference."""
        fmt: Callable[[float], str] = (
            format_duration if self.kind == "duration" else (lambda v: f"{v:g}")
        )
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = self.minimum
        hi = self.maximum
        if lo is not None and hi is not None:
            left = "(" if self.exclusive_min else "["
            return f"in {left}{fmt(lo)}, {fmt(hi)}]"
        if lo is not None:
            return f"{'>' if self.exclusive_min else '>='} {fmt(lo)}"
        if hi is not None:
            return f"<= {fmt(hi)}"
        return ""


_G = frozenset({GLOBAL})
_GS: frozenset[Level] = frozenset({GLOBAL, SERVICE})
_GSE: frozenset[Level] = frozenset({GLOBAL, SERVICE, ENDPOINT})
_S: frozenset[Level] = frozenset({SERVICE})
_E: frozenset[Level] = frozenset({ENDPOINT})
_HOUR = 3600.0
_DAY = 86400.0


def _close_matches(word: str, choices: Sequence[str], n: int, cutoff: float = 0.6) -> list[str]:
    """:func:`difflib.get_close_matches`, imported on first use: only error messages need it."""
    import difflib

    return difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)


def _f(path: str, kind: Kind, levels: frozenset[Level], default: Any, doc: str, **kw: Any) -> Any:
    return FieldSpec(path, kind, levels, default, doc, **kw)


#: Every setting of the three levels (the README's field reference is generated from this).
FIELDS: tuple[FieldSpec, ...] = (
    _f("strategy", "choice", _GS, "round_robin", "load-balancing strategy",
       choices=STRATEGY_NAMES),
    _f("per_try_timeout", "duration", _GSE, None,
       "timeout of one attempt (unset: whatever the deadline leaves)",
       minimum=0, exclusive_min=True, maximum=_HOUR),
    _f("deadline", "duration", _GS, 15.0, "overall deadline of a call, retries included",
       minimum=0, exclusive_min=True, maximum=_DAY),
    _f("panic_threshold", "float", _GS, 50.0,
       "percent of healthy endpoints below which every endpoint is used (Envoy panic mode)",
       minimum=0, maximum=100),
    _f("slow_start_window", "duration", _GS, 0.0,
       "ramp-up time of a new endpoint's share of traffic (0s: off)",
       minimum=0, maximum=_HOUR),
    _f("keep_warning", "bool", _GS, True, "keep instances whose checks are 'warning'"),
    _f("deregister_critical_after", "duration", _GS, None,
       "Consul deregisters our instance after this long critical",
       minimum=60, maximum=30 * _DAY),
    _f("tags", "str_list", _S, (), "only instances carrying every one of these tags"),
    _f("meta", "str_map", _S, MappingProxyType({}),
       "only instances whose service meta has these key/values"),
    _f("failover_datacenters", "str_list", _S, (),
       "datacenters to use, in order, when the local one has no healthy instance"),
    _f("weight", "int", _E, None, "weight override (replaces Consul's Weights.Passing)",
       minimum=1, maximum=65535),
    _f("drained", "bool", _E, False, "take no new requests; in-flight ones finish"),
    _f("disabled", "bool", _E, False, "never picked, not even in panic mode"),
    _f("breaker.consecutive_failures", "int", _GSE, 5,
       "consecutive failures that open the breaker", minimum=1, maximum=10000),
    _f("breaker.reset_timeout", "duration", _GSE, 30.0,
       "time the breaker stays open before a probe", minimum=0, exclusive_min=True,
       maximum=_HOUR),
    _f("breaker.half_open_max_calls", "int", _GSE, 1,
       "concurrent probes admitted while half-open", minimum=1, maximum=1000),
    _f("breaker.half_open_successes", "int", _GSE, 1,
       "successful probes that close a half-open breaker", minimum=1, maximum=1000),
    _f("breaker.failure_rate", "float", _GSE, 50.0,
       "failure percentage over the window that opens the breaker",
       minimum=0, exclusive_min=True, maximum=100),
    _f("breaker.window_size", "int", _GSE, 100, "calls in the failure-rate window",
       minimum=1, maximum=1_000_000),
    _f("breaker.minimum_calls", "int", _GSE, 100,
       "calls the window needs before failure_rate applies", minimum=1, maximum=1_000_000),
    _f("detector.consecutive_failures", "int", _GS, 5,
       "consecutive failures that eject an endpoint", minimum=1, maximum=10000),
    _f("detector.failure_rate", "float", _GS, 50.0,
       "failure percentage over the window that ejects an endpoint",
       minimum=0, exclusive_min=True, maximum=100),
    _f("detector.window_size", "int", _GS, 100, "calls in the failure-rate window",
       minimum=1, maximum=1_000_000),
    _f("detector.min_requests", "int", _GS, 100,
       "calls the window needs before failure_rate applies", minimum=1, maximum=1_000_000),
    _f("detector.interval", "duration", _GS, 10.0, "outlier analysis interval",
       minimum=0, exclusive_min=True, maximum=_HOUR),
    _f("detector.base_ejection_time", "duration", _GS, 30.0,
       "first ejection time (multiplied by the number of ejections)",
       minimum=0, exclusive_min=True, maximum=_HOUR),
    _f("detector.max_ejection_time", "duration", _GS, 300.0, "longest single ejection",
       minimum=0, exclusive_min=True, maximum=_DAY),
    _f("detector.max_ejection_percent", "float", _GS, 10.0,
       "most endpoints ejected at once, in percent", minimum=0, maximum=100),
    _f("retry.attempts", "int", _GS, 3, "attempts in all, the first included",
       minimum=1, maximum=100),
    _f("retry.backoff_base", "duration", _GS, 0.025, "first backoff (exponential, jittered)",
       minimum=0, exclusive_min=True, maximum=_HOUR),
    _f("retry.backoff_max", "duration", _GS, 0.25, "longest backoff",
       minimum=0, exclusive_min=True, maximum=_HOUR),
    _f("retry.retry_on", "str_list", _GS, DEFAULT_RETRY_KINDS,
       "failure kinds retried (idempotent calls; connect_failure for any call)",
       choices=RETRY_KINDS),
    _f("retry.budget_ratio", "float", _GS, 0.2,
       "retries allowed as a fraction of requests (retry budget)", minimum=0, maximum=1),
    _f("retry.budget_min_per_second", "int", _GS, 10,
       "retries per second always allowed", minimum=0, maximum=1_000_000),
    _f("watch_wait", "duration", _G, 60.0, "blocking-query wait of every watch",
       minimum=0, exclusive_min=True, maximum=600, bootstrap=True),
    _f("watch_rate_limit", "float", _G, 10.0,
       "most blocking queries per second per watch", minimum=0, exclusive_min=True,
       maximum=10_000, bootstrap=True),
    _f("kv_prefix", "prefix", _G, "lake-mesh", "KV folder holding the configuration",
       bootstrap=True),
)  # fmt: skip

#: FIELDS by path.
FIELDS_BY_PATH: Mapping[str, FieldSpec] = MappingProxyType({f.path: f for f in FIELDS})

_SECTION_SET = frozenset(SECTIONS)


def fields_for(level: Level, *, kv: bool = False) -> tuple[FieldSpec, ...]:
    """The settings ``level`` may set (without bootstrap settings when ``kv``)."""
    return tuple(f for f in FIELDS if level in f.levels and not (kv and f.bootstrap))


def defaults(level: Level | None = None) -> dict[str, Any]:
    """Built-in defaults by path (of the settings of ``level``, or of all)."""
    return {f.path: f.default for f in FIELDS if level is None or level in f.levels}


def env_var(spec: FieldSpec) -> str:
    """The environment variable of a global setting: ``LAKE_MESH_BREAKER_FAILURE_THRESHOLD``."""
    return "LAKE_MESH_" + spec.path.replace(".", "_").upper()


# --- values ------------------------------------------------------------------------------------


def _fail(reason: str, spec: FieldSpec, key: str | None) -> ConfigValidationError:
    return ConfigValidationError(reason, key=key, field=spec.path)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_range(spec: FieldSpec, number: float, key: str | None) -> None:
    low_bad = spec.minimum is not None and (
        number <= spec.minimum if spec.exclusive_min else number < spec.minimum
    )
    high_bad = spec.maximum is not None and number > spec.maximum
    if low_bad or high_bad:
        shown = format_duration(number) if spec.kind == "duration" else f"{number:g}"
        raise _fail(f"{shown} is out of range: must be {spec.range_text()}", spec, key)


def _no_control(spec: FieldSpec, text: str, key: str | None) -> None:
    """Refuse a control character or unpaired surrogate (what Consul's tags and meta hold)."""
    try:
        check_text(text, spec.path)
    except InvalidSetting as exc:
        raise _fail(f"{_describe(text)} {exc.reason}", spec, key) from None


def _string_list(spec: FieldSpec, value: Any, key: str | None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _fail(f"expected a list of strings, got {_describe(value)}", spec, key)
    if len(value) > MAX_ITEMS:
        raise _fail(f"at most {MAX_ITEMS} items, got {len(value)}", spec, key)
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise _fail(f"expected non-empty strings, got {_describe(item)}", spec, key)
        _no_control(spec, item, key)
        if spec.path == "failover_datacenters" and not _NAME_RE.match(item):
            raise _fail(f"{item!r} is not a datacenter name", spec, key)
        if spec.choices and item not in spec.choices:
            close = _close_matches(item, spec.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(
                f"unknown value {item!r}{hint}; expected some of {', '.join(spec.choices)}",
                spec,
                key,
            )
        if item in out:
            raise _fail(f"{item!r} is listed twice", spec, key)
        out.append(item)
    return tuple(out)


def _string_map(spec: FieldSpec, value: Any, key: str | None) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(f"expected an object of strings, got {_describe(value)}", spec, key)
    if len(value) > MAX_ITEMS:
        raise _fail(f"at most {MAX_ITEMS} entries, got {len(value)}", spec, key)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _META_KEY_RE.match(k):
            raise _fail(
                f"meta key {_describe(k)} must be 1-128 letters, digits, '_' or '-'", spec, key
            )
        if not isinstance(v, str) or utf8_length(v) > META_MAX_VALUE_LENGTH:
            raise _fail(
                f"meta {k!r} must be a string of at most {META_MAX_VALUE_LENGTH} bytes of UTF-8 "
                "(Consul counts bytes)",
                spec,
                key,
            )
        _no_control(spec, v, key)
        out[k] = v
    return MappingProxyType(out)


def check_value(spec: FieldSpec, value: Any, *, key: str | None = None) -> Any:
    """Validate and normalise one value of ``spec`` (durations become seconds).

    Returns:
        the normalised value: ``float`` seconds for durations, ``tuple`` for lists, a
        read-only mapping for maps.

    Raises:
        ConfigValidationError: naming ``key`` and the field, with the reason.
    """
    kind = spec.kind
    try:
        if kind == "duration":
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise _fail(
                    f"expected a duration such as '10s' or '1m30s', got {_describe(value)}",
                    spec,
                    key,
                )
            seconds = parse_duration(value)
            _check_range(spec, seconds, key)
            return seconds
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail(f"expected an integer, got {_describe(value)}", spec, key)
            _check_range(spec, value, key)
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _fail(f"expected a number, got {_describe(value)}", spec, key)
            number = float(value)
            if not math.isfinite(number):
                raise _fail(f"expected a finite number, got {_describe(value)}", spec, key)
            _check_range(spec, number, key)
            return number
        if kind == "bool":
            if not isinstance(value, bool):
                raise _fail(f"expected true or false, got {_describe(value)}", spec, key)
            return value
        if kind == "choice":
            if not isinstance(value, str):
                raise _fail(f"expected a string, got {_describe(value)}", spec, key)
            if value not in spec.choices:
                close = _close_matches(value, spec.choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise _fail(
                    f"unknown value {_describe(value)}{hint}; expected {spec.range_text()}",
                    spec,
                    key,
                )
            return value
        if kind == "str_list":
            return _string_list(spec, value, key)
        if kind == "str_map":
            return _string_map(spec, value, key)
        if kind == "prefix":
            if not isinstance(value, str) or not _PREFIX_RE.match(value.strip("/")):
                raise _fail(
                    f"expected a KV folder such as 'lake-mesh' or 'team/mesh', got "
                    f"{_describe(value)}",
                    spec,
                    key,
                )
            return value.strip("/")
    except ConfigValidationError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(str(exc), spec, key) from None
    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover - the table is closed


def parse_env_value(spec: FieldSpec, text: str) -> Any:
    """Convert an environment variable's text for ``spec`` (lists comma-separated).

    Raises:
        ConfigValidationError: naming the field.
    """
    value: Any = text
    if spec.kind == "int":
        try:
            value = int(text.strip())
        except ValueError:
            value = text
    elif spec.kind == "float":
        try:
            value = float(text.strip())
        except ValueError:
            value = text
    elif spec.kind == "bool":
        low = text.strip().lower()
        value = {"1": True, "true": True, "yes": True, "on": True}.get(low, value)
        value = {"0": False, "false": False, "no": False, "off": False}.get(low, value)
    elif spec.kind == "str_list":
        value = [part.strip() for part in text.split(",") if part.strip()]
    elif spec.kind == "str_map":
        pairs = [part.partition("=") for part in text.split(",") if part.strip()]
        value = {k.strip(): v.strip() for k, _, v in pairs}
    return check_value(spec, value)


# --- documents ---------------------------------------------------------------------------------


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = _close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(name: str, path: str, level: Level, kv: bool, key: str | None) -> None:
    """Raise the best message for a key that ``level`` does not accept."""
    allowed = fields_for(level, kv=kv)
    spec = FIELDS_BY_PATH.get(path)
    if spec is not None and spec.bootstrap and kv:
        raise ConfigValidationError(
            "is a bootstrap setting: set it in code, the environment "
            f"({env_var(spec)}) or a local file, not in KV",
            key=key,
            field=path,
        )
    if spec is not None:
        where = " or ".join(lv for lv in LEVELS if lv in spec.levels)
        raise ConfigValidationError(
            f"cannot be set at the {level} level (only at the {where} level)", key=key, field=path
        )
    section, dot, _ = path.partition(".")
    if dot:
        names = [f.name for f in allowed if f.section == section]
    else:
        names = [f.path for f in allowed if f.section is None]
        names += [s for s in SECTIONS if any(f.section == s for f in allowed)]
    raise ConfigValidationError(
        f"unknown setting {name!r}{_did_you_mean(name, names)}", key=key, field=path
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a configuration document")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"duplicate key {name!r}")
        out[name] = value
    return out


def _decode(data: bytes | str, key: str | None) -> Any:
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise ConfigValidationError(
                f"document of {len(raw)} bytes exceeds {MAX_DOCUMENT_BYTES}", key=key
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigValidationError(
                f"not UTF-8 text (byte {exc.start}); a JSON document is expected", key=key
            ) from None
    else:
        text = data
        if len(text) > MAX_DOCUMENT_BYTES:
            raise ConfigValidationError(
                f"document of {len(text)} characters exceeds {MAX_DOCUMENT_BYTES}", key=key
            )
    if not text.strip():
        raise ConfigValidationError("empty document; expected a JSON object", key=key)
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigValidationError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", key=key
        ) from None
    except (ValueError, RecursionError) as exc:
        # Too deep, an integer beyond Python's digit limit, NaN, or a duplicate key.
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigValidationError(f"malformed JSON: {reason}", key=key) from None


def parse_document(
    data: bytes | str | Mapping[str, Any],
    level: Level,
    *,
    key: str | None = None,
    kv: bool = False,
) -> dict[str, Any]:
    """Parse and validate one configuration document of ``level``.

    Args:
        data: JSON text (``bytes`` must be UTF-8) or an already decoded mapping.
        level: the level the document configures.
        key: the KV key or file it came from, for messages.
        kv: the document comes from KV (bootstrap settings are refused).

    Returns:
        the settings it sets, by dotted path, normalised (durations in seconds).

    Raises:
        ConfigValidationError: naming ``key``, the field and the reason; nothing else, for
            any input at all.
    """
    doc = data if isinstance(data, Mapping) else _decode(data, key)
    if not isinstance(doc, Mapping):
        raise ConfigValidationError(
            f"expected a JSON object, got {type(doc).__name__.replace('dict', 'object')}",
            key=key,
        )
    allowed = {f.path: f for f in fields_for(level, kv=kv)}
    out: dict[str, Any] = {}
    for name, value in doc.items():
        if not isinstance(name, str):
            raise ConfigValidationError(f"key {_describe(name)} is not a string", key=key)
        if name in _SECTION_SET and any(p.startswith(name + ".") for p in allowed):
            if not isinstance(value, Mapping):
                raise ConfigValidationError(
                    f"expected an object, got {_describe(value)}", key=key, field=name
                )
            for sub, subvalue in value.items():
                path = f"{name}.{sub}"
                if not isinstance(sub, str) or path not in allowed:
                    _unknown(str(sub), path, level, kv, key)
                out[path] = check_value(allowed[path], subvalue, key=key)
            continue
        if name not in allowed:
            _unknown(name, name, level, kv, key)
        out[name] = check_value(allowed[name], value, key=key)
    check_consistency(out, key=key)
    return out


def check_consistency(values: Mapping[str, Any], *, key: str | None = None) -> None:
    """Cross-field rules inside one document (``backoff_max >= backoff_base``...).

    Raises:
        ConfigValidationError: naming the later field of the pair.
    """
    pairs = (
        ("retry.backoff_base", "retry.backoff_max"),
        ("detector.base_ejection_time", "detector.max_ejection_time"),
        ("per_try_timeout", "deadline"),
    )
    for low, high in pairs:
        lo, hi = values.get(low), values.get(high)
        if lo is not None and hi is not None and hi < lo:
            raise ConfigValidationError(
                f"{format_duration(hi)} is shorter than {low} ({format_duration(lo)})",
                key=key,
                field=high,
            )


def to_json_value(spec: FieldSpec, value: Any) -> Any:
    """A normalised value as JSON would hold it (durations as ``"1m30s"``)."""
    if value is None:
        return None
    if spec.kind == "duration":
        return format_duration(value)
    if spec.kind == "str_list":
        return list(value)
    if spec.kind == "str_map":
        return dict(value)
    return value


def to_document(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings by path as a nested JSON-ready document (the inverse of parse_document)."""
    doc: dict[str, Any] = {}
    for path, value in values.items():
        spec = FIELDS_BY_PATH[path]
        shown = to_json_value(spec, value)
        if spec.section is None:
            doc[path] = shown
        else:
            doc.setdefault(spec.section, {})[spec.name] = shown
    return doc
