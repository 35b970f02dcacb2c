"""``lake-mesh config``: read, validate, write and watch the configuration in Consul KV.

::

    lake-mesh config get [--service S] [--endpoint ID] [--effective] [--json]
    lake-mesh config set KEY FILE|- [--cas INDEX] [--dry-run] [--json]
    lake-mesh config validate FILE|- [--key KEY | --level LEVEL] [--json]
    lake-mesh config watch [--service S] [--count N] [--json]
    lake-mesh config delete KEY [--cas INDEX] [--dry-run] [--json]

``KEY`` is a KV key of the layout (``lake-mesh/services/web``) or the same without the
prefix (``services/web``, ``global``). The prefix is ``LAKE_MESH_KV_PREFIX`` or
``--prefix``. Exit codes: 0 ok, 1 failure (invalid document, CAS conflict, Consul
unreachable), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from lake_mesh_consul.cli._output import (
    EXIT_OK,
    EXIT_USAGE,
    Output,
    add_connection_args,
    config_from_args,
    modify_index,
    non_negative_int,
)

__all__ = ["register"]

_LEVELS = ("global", "service", "endpoint")


def register(subparsers: Any) -> None:
    """Add the ``config`` command group."""
    parser = subparsers.add_parser(
        "config", help="read, validate, write and watch mesh configuration in Consul KV"
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    sub.required = True

    get = sub.add_parser("get", help="show a level's document or the effective settings")
    get.add_argument("--service", help="the service (default: the global level)")
    get.add_argument("--endpoint", help="an endpoint id of --service")
    get.add_argument(
        "--effective", action="store_true", help="merged settings with their level and source"
    )
    _common(get)
    get.set_defaults(func=run_get)

    put = sub.add_parser("set", help="validate a JSON document and write it (check-and-set)")
    put.add_argument("key", metavar="KEY")
    put.add_argument("file", metavar="FILE", help="the JSON document, or - for stdin")
    put.add_argument(
        "--cas", type=modify_index, metavar="INDEX", help="expected ModifyIndex (0: new)"
    )
    put.add_argument("--dry-run", action="store_true", help="show the effect, write nothing")
    _common(put)
    put.set_defaults(func=run_set)

    val = sub.add_parser("validate", help="validate a document or a local config file")
    val.add_argument("file", metavar="FILE", help="the JSON document, or - for stdin")
    group = val.add_mutually_exclusive_group()
    group.add_argument("--key", help="validate for this key's level")
    group.add_argument("--level", choices=_LEVELS, help="validate for this level")
    val.add_argument("--prefix", help="KV prefix (default: LAKE_MESH_KV_PREFIX or lake-mesh)")
    val.add_argument("--json", action="store_true", help="print JSON")
    val.set_defaults(func=run_validate)

    watch = sub.add_parser("watch", help="print each change as it is applied")
    watch.add_argument("--service", help="only changes of this service's settings")
    watch.add_argument(
        "--count",
        type=non_negative_int,
        metavar="N",
        help="exit after this many changes (0: print the configuration and exit)",
    )
    _common(watch)
    watch.set_defaults(func=run_watch)

    delete = sub.add_parser("delete", help="delete a key (settings fall back a level)")
    delete.add_argument("key", metavar="KEY")
    delete.add_argument("--cas", type=modify_index, metavar="INDEX", help="expected ModifyIndex")
    delete.add_argument("--dry-run", action="store_true", help="show the effect, delete nothing")
    _common(delete)
    delete.set_defaults(func=run_delete)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", help="KV prefix (default: LAKE_MESH_KV_PREFIX or lake-mesh)")
    add_connection_args(parser)


def _store(args: argparse.Namespace) -> Any:
    from lake_mesh_consul._consul.kvconfig import ConfigStore

    config = config_from_args(args)
    if getattr(args, "prefix", None):
        config = config.replace(kv_prefix=args.prefix)
    return ConfigStore(config)


def _key(store: Any, key: str) -> str:
    return _checked_key(store.layout, key)


def _checked_key(layout: Any, key: str) -> str:
    """The full KV key for ``key``, refused unless a level of the layout with valid names.

    ``services/bad name!`` is refused before anything is sent: no other command (nor the
    mesh) would ever read a key whose service name or endpoint id Consul cannot hold.

    Raises:
        ConfigValidationError: the key is outside the layout, or names an invalid service
            or endpoint id (exit 1, one line).
    """
    folder: str = layout.folder
    full = key if key.startswith(folder) else folder + key.lstrip("/")
    _level, service, endpoint = layout.require(full)
    _check_names(service, endpoint, key=full)
    return full


def _check_names(service: str | None, endpoint: str | None, *, key: str | None = None) -> None:
    """Refuse a service name or endpoint id that Consul cannot hold (before any request).

    Raises:
        ConfigValidationError: naming the key (when given) and the part at fault.
    """
    from lake_mesh_consul._core.names import check_service_id, check_service_name
    from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

    try:
        if service is not None:
            check_service_name(service, "service")
        if endpoint is not None:
            check_service_id(endpoint, "endpoint")
    except InvalidSetting as exc:
        raise ConfigValidationError(f"{exc.setting}: {exc.reason}", key=key) from None


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _effective_lines(out: Output, eff: Any) -> None:
    rows = [
        (path, _show(item["value"]), item["level"], item["source"])
        for path, item in eff.to_dict().items()
    ]
    out.table(["SETTING", "VALUE", "LEVEL", "SOURCE"], rows)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    return str(value)


def run_get(args: argparse.Namespace, out: Output) -> int:
    """Show a level's stored document, or (``--effective``) the merged settings."""
    from lake_mesh_consul.errors import ConfigValidationError

    if args.endpoint and not args.service:
        out.info("Error: --endpoint needs --service")
        return EXIT_USAGE
    _check_names(args.service, args.endpoint)
    with closing(_store(args)) as store:
        snapshot = store.refresh()
        if args.effective:
            eff = snapshot.effective(args.service or "", args.endpoint)
            if out.json_mode:
                out.json(
                    {
                        "service": args.service,
                        "endpoint": args.endpoint,
                        "index": snapshot.index,
                        "settings": eff.to_dict(),
                    }
                )
            else:
                _effective_lines(out, eff)
            return EXIT_OK
        layout = store.layout
        if args.endpoint:
            key = layout.endpoint_key(args.service, args.endpoint)
        elif args.service:
            key = layout.service_key(args.service)
        else:
            key = layout.global_key()
        entry = store.read(key)
        problem = None
        document: Any = None
        if entry is not None:
            try:
                document = json.loads(entry.value)
            except ValueError:
                document = entry.value.decode("utf-8", "replace")
            try:
                store.validate(key, entry.value)
            except ConfigValidationError as exc:
                problem = str(exc)
        if out.json_mode:
            out.json(
                {
                    "key": key,
                    "exists": entry is not None,
                    "modify_index": entry.modify_index if entry else None,
                    "document": document,
                    "valid": problem is None,
                    "error": problem,
                }
            )
            return EXIT_OK
        if entry is None:
            out.line(f"{key}: not set (falls back to the next level)")
            return EXIT_OK
        out.line(f"# {key} (ModifyIndex {entry.modify_index})")
        if problem:
            out.line(f"# INVALID, not in force: {problem}")
        text = document if isinstance(document, str) else json.dumps(document, indent=2)
        out.line(text)
    return EXIT_OK


def _write_report(out: Output, result: Any, verb: str) -> None:
    key = result.keys[0]
    if out.json_mode:
        payload: dict[str, Any] = {"keys": list(result.keys), "written": result.written}
        if result.effective is not None:
            payload["effective"] = result.effective.to_dict()
        out.json(payload)
        return
    if result.written:
        out.line(f"{verb} {key}")
    else:
        out.line(f"dry run: {key} would be {verb}; effective result:")
        if result.effective is not None:
            _effective_lines(out, result.effective)
        else:
            _effective_lines(out, result.preview.effective(""))


def run_set(args: argparse.Namespace, out: Output) -> int:
    """Validate a document, then write it with check-and-set."""
    body = _read_input(args.file)
    with closing(_store(args)) as store:
        key = _key(store, args.key)
        result = store.set(key, body, expected_index=args.cas, dry_run=args.dry_run)
        _write_report(out, result, "written")
    return EXIT_OK


def run_delete(args: argparse.Namespace, out: Output) -> int:
    """Delete a key with check-and-set."""
    with closing(_store(args)) as store:
        key = _key(store, args.key)
        result = store.delete(key, expected_index=args.cas, dry_run=args.dry_run)
        _write_report(out, result, "deleted")
    return EXIT_OK


def run_validate(args: argparse.Namespace, out: Output) -> int:
    """Validate a document for a level (or a whole local config file); no Consul needed."""
    import os

    from lake_mesh_consul._consul.kvconfig import KVLayout
    from lake_mesh_consul._core.config_schema import parse_document, to_document
    from lake_mesh_consul._core.config_sources import load_file

    body = _read_input(args.file)
    prefix = args.prefix or os.environ.get("LAKE_MESH_KV_PREFIX") or "lake-mesh"
    name = "<stdin>" if args.file == "-" else args.file
    if args.key:
        key = _checked_key(KVLayout(prefix), args.key)
        level = KVLayout(prefix).require(key)[0]
        values = parse_document(body, level, key=key, kv=True)
        result: dict[str, Any] = {"valid": True, "level": level, "settings": to_document(values)}
    elif args.level:
        values = parse_document(body, args.level, key=name, kv=True)
        result = {"valid": True, "level": args.level, "settings": to_document(values)}
    elif args.file != "-" and _looks_like_file(body):
        loaded = load_file(args.file)
        result = {
            "valid": True,
            "level": "file",
            "services": sorted(loaded.services),
            "endpoints": sorted(f"{s}/{e}" for s, e in loaded.endpoints),
        }
    else:
        values = parse_document(body, "service", key=name, kv=True)
        result = {"valid": True, "level": "service", "settings": to_document(values)}
    if out.json_mode:
        out.json(result)
    else:
        out.line(f"valid ({result['level']} level)")
        if "settings" in result:
            out.line(json.dumps(result["settings"], indent=2, sort_keys=True))
    return EXIT_OK


def _looks_like_file(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and bool(doc)
        and set(doc) <= {"consul", "global", "services", "endpoints"}
    )


def run_watch(args: argparse.Namespace, out: Output) -> int:
    """Print the configuration, then each change (JSON lines with ``--json``)."""
    _check_names(args.service, None)
    store = _store(args)
    done = threading.Event()
    seen = [0]

    def show(snapshot: Any, keys: tuple[str, ...]) -> None:
        if args.service:
            payload: dict[str, Any] = {
                "service": args.service,
                "changed_keys": list(keys),
                "settings": snapshot.effective(args.service).to_dict(),
            }
        else:
            payload = {
                "changed_keys": list(keys),
                "services": snapshot.services(),
                "global": snapshot.effective("").to_dict(),
            }
        payload["index"] = snapshot.index
        if out.json_mode:
            out.json(payload)
        else:
            out.line(f"# index {snapshot.index}; changed: {', '.join(keys) or '(start)'}")
            if args.service:
                _effective_lines(out, snapshot.effective(args.service))
            else:
                out.line(json.dumps(payload["global"], sort_keys=True))

    closed: list[BrokenPipeError] = []

    def on_change(change: Any) -> None:  # on the store's watch thread
        try:
            show(change.current, change.changed_keys)
        except BrokenPipeError as exc:  # `| head` closed stdout: end, from the main thread
            closed.append(exc)
            done.set()
            return
        seen[0] += 1
        if args.count is not None and seen[0] >= args.count:
            done.set()

    def on_event(event: Any) -> None:
        if event.kind == "rejected":
            out.info(f"rejected {event.key}: {event.reason} (field {event.field})")

    with store:
        show(store.snapshot, ())
        store.subscribe(on_change, service=args.service)
        store.on_event(on_event)
        if args.count == 0:
            return EXIT_OK
        while not done.wait(0.5):
            pass
    if closed:
        raise closed[0]  # cli.main: a quiet end with the closed-pipe status
    return EXIT_OK
