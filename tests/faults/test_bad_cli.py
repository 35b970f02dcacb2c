"""Invalid arguments for every ``lake-mesh`` subcommand, run as real processes.

Promise (README, "The command line"): bad usage exits 2, a failure the user can fix exits 1,
either with one line on stderr (argparse's usage block aside) and never a traceback or an
"internal error ... please report this". The list of subcommands comes from
``build_parser()``; every leaf command gets at least one subprocess run (an unknown flag),
and a table of bad values covers missing arguments, ports, durations, timeouts, addresses,
files and JSON documents. Commands that talk to Consul are pointed at the session's real
agent (``CONSUL_HTTP_ADDR``), so a bad value that is not validated shows up as a success.

Commands with side effects on this machine (``agent up|down|provision``, ``demo``) are only
given arguments that argparse or the command's own checks refuse before anything starts;
``demo --duration inf`` is checked in-process with the demo itself replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lake_mesh_consul.cli import build_parser, main
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

from ._loops import RecordProperty

#: The console script next to this interpreter (``.venv/bin/lake-mesh``), else the same
#: entry point run by this interpreter.
_SCRIPT = Path(sys.executable).with_name("lake-mesh")
LAKE_MESH = (
    [str(_SCRIPT)]
    if _SCRIPT.is_file()
    else [sys.executable, "-c", "from lake_mesh_consul.cli import _entry; _entry()"]
)
#: Seconds any one CLI run may take (the slowest bad value waits for a 2 s discovery).
RUN_TIMEOUT = 20.0


def _leaves(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every runnable command path (``("config", "set")``...), from the parser itself."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*prefix, name))


LEAVES = sorted(_leaves(build_parser()))


@dataclass
class Run:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def message_lines(self) -> list[str]:
        """stderr without argparse's usage block (``usage:`` and its indented lines)."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("usage:") and not line.startswith(" ")
        ]


@pytest.fixture(scope="module")
def cli_env(consul_agent: ConsulAgentHandle) -> dict[str, str]:
    """The environment of every run: the session's agent, no token, a private KV prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "LAKE_MESH_"))}
    env["CONSUL_HTTP_ADDR"] = consul_agent.address
    env["LAKE_MESH_KV_PREFIX"] = f"cli-{uuid.uuid4().hex[:8]}"
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Bad input files: malformed JSON, a list, binary, an unknown field, a directory."""
    base = tmp_path_factory.mktemp("cli-files")
    docs = {
        "malformed": b"{not json",
        "list": b"[1, 2]",
        "binary": b"\xff\xfe\x00garbage",
        "unknown": json.dumps({"strategy": "round_robin", "bogus": 1}).encode(),
        "badrange": json.dumps({"panic_threshold": 250}).encode(),
        "empty": b"",
    }
    paths = {}
    for name, body in docs.items():
        path = base / f"{name}.json"
        path.write_bytes(body)
        paths[name] = str(path)
    paths["dir"] = str(base)
    paths["missing"] = str(base / "no-such.json")
    return paths


def _run(argv: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [*LAKE_MESH, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def _assert_clean(run: Run, expected: int | tuple[int, ...]) -> None:
    """Exit code as expected, one message line, no traceback, no internal error."""
    codes = expected if isinstance(expected, tuple) else (expected,)
    where = f"lake-mesh {' '.join(run.argv)} -> {run.code}; stderr={run.stderr!r}"
    assert "Traceback" not in run.stderr, where
    assert "internal error" not in run.stderr, where
    assert run.code in codes, where
    lines = run.message_lines()
    assert len(lines) == 1, where
    if run.code == 1:
        assert lines[0].startswith("Error: "), where


def _fill(argv: list[str], files: dict[str, str]) -> list[str]:
    return [files[a[1:]] if a.startswith("@") and a[1:] in files else a for a in argv]


# --- every subcommand: an unknown flag, and its required arguments missing -------------------


def test_the_command_list_is_what_the_tables_cover() -> None:
    """A new subcommand must be added to the tables below (so it gets bad input too)."""
    assert set(LEAVES) == set(MINIMAL), sorted(set(LEAVES) ^ set(MINIMAL))


#: For each command: arguments that satisfy argparse (so that one bad flag is the only error).
MINIMAL: dict[tuple[str, ...], list[str]] = {
    ("agent", "down"): [],
    ("agent", "provision"): [],
    ("agent", "status"): [],
    ("agent", "up"): [],
    ("call",): ["svc", "/"],
    ("checks",): ["svc"],
    ("config", "delete"): ["lake-mesh/services/svc"],
    ("config", "get"): [],
    ("config", "set"): ["lake-mesh/services/svc", "@unknown"],
    ("config", "validate"): ["@unknown"],
    ("config", "watch"): [],
    ("demo",): [],
    ("deregister",): ["svc-1"],
    ("doctor",): [],
    ("endpoints",): ["svc"],
    ("explain",): ["svc"],
    ("maint",): ["svc-1", "on"],
    ("register",): ["svc", "--port", "8080"],
    ("status",): [],
    ("version",): [],
    ("watch",): ["svc"],
}

#: Commands that need positional or required arguments, and what argparse names.
REQUIRED: dict[tuple[str, ...], str] = {
    ("call",): "SERVICE, PATH",
    ("checks",): "NAME",
    ("config", "delete"): "KEY",
    ("config", "set"): "KEY, FILE",
    ("config", "validate"): "FILE",
    ("deregister",): "ID",
    ("endpoints",): "NAME",
    ("explain",): "SERVICE",
    ("maint",): "ID, state",
    ("register",): "NAME, --port",
    ("watch",): "NAME",
}


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_unknown_flag_is_a_usage_error(
    command: tuple[str, ...], cli_env: dict[str, str], files: dict[str, str]
) -> None:
    run = _run([*command, *_fill(MINIMAL[command], files), "--no-such-flag"], cli_env)
    _assert_clean(run, 2)
    assert "unrecognized arguments: --no-such-flag" in run.stderr


@pytest.mark.parametrize("command", sorted(REQUIRED), ids=" ".join)
def test_missing_required_arguments_is_a_usage_error(
    command: tuple[str, ...], cli_env: dict[str, str]
) -> None:
    run = _run(list(command), cli_env)
    _assert_clean(run, 2)
    assert f"the following arguments are required: {REQUIRED[command]}" in run.stderr


@pytest.mark.parametrize("group", ["", "agent", "config"])
def test_missing_subcommand_is_a_usage_error(group: str, cli_env: dict[str, str]) -> None:
    run = _run([group] if group else [], cli_env)
    _assert_clean(run, 2)
    assert "the following arguments are required" in run.stderr


# --- bad values ------------------------------------------------------------------------------

# (argv, expected exit). "@name" is replaced by the path of that bad file.
BAD_VALUES: list[tuple[str, int]] = [
    # ports
    ("agent up --port 99999", 2),
    ("agent up --port 0", 2),
    ("agent up --port abc", 2),
    ("agent up --mode nope", 2),
    ("register svc --port abc", 2),
    ("register svc --port 0", 1),
    ("register svc --port 99999", 1),
    ("register svc --port -1", 1),
    ("register svc --port 80 --tcp-check host:99999", 1),
    ("register svc --port 80 --tcp-check nohost", 1),
    # durations
    ("register svc --port 80 --ttl forever", 1),
    ("register svc --port 80 --ttl 0s", 1),
    ("register svc --port 80 --interval=-1s --http-check http://127.0.0.1:1/", 1),
    ("register svc --port 80 --interval=0s --http-check http://127.0.0.1:1/", 1),
    ("register svc --port 80 --deregister-after 5s --ttl 10s", 1),
    ("register svc --port 80 --deregister-after 5m", 1),
    ("demo --duration abc", 2),
    ("demo --duration 0", 2),
    ("demo --duration nan", 2),
    ("demo --rate 0", 2),
    ("demo --rate 5000", 2),
    ("endpoints svc --timeout abc", 2),
    ("endpoints svc --timeout -1", 2),
    ("endpoints svc --timeout inf", 2),
    ("endpoints svc --timeout 0s", 2),
    ("watch svc --count -1", 2),
    ("call svc / --timeout nan", 2),
    ("explain svc --discovery-timeout inf", 2),
    ("config watch --count -2", 2),
    ("config set lake-mesh/services/svc @unknown --cas -1", 2),
    ("demo --duration 1e400", 2),
    ("demo --rate nan", 2),
    ("call svc / --timeout abc", 2),
    ("status --discovery-timeout abc", 2),
    ("watch svc --count 0", 2),
    ("watch svc --count abc", 2),
    ("config watch --count abc", 2),
    # names, ids, meta, headers, choices
    ("register bad/name --port 80", 1),
    ("register svc --port 80 --id a/b", 1),
    ("register svc --port 80 --meta novalue", 1),
    ("register svc --port 80 --meta =v", 1),
    ("register svc --port 80 --http-check not-a-url", 1),
    ("register svc --port 80 --address", 2),
    ("maint svc-1 maybe", 2),
    ("maint no-such-instance on", 1),
    ("call svc / -H nocolon", 2),
    ("call svc / --strategy nope", 1),
    ("call svc / --data @@missing", 1),
    ("config get --endpoint x", 2),
    ("config validate @malformed --level nope", 2),
    ("config validate @malformed --key lake-mesh/x/y", 1),
    ("config delete lake-mesh/services/not-there", 1),
    ("config delete lake-mesh/services/svc --cas zz", 2),
    ("config set lake-mesh/services/svc @unknown --cas abc", 2),
    # addresses
    ("doctor --http-addr 127.0.0.1:99999", 1),
    ("doctor --http-addr ::::", 1),
    ("doctor --http-addr http://[::1", 1),
    ("doctor --http-addr ftp://127.0.0.1:8500", 1),
    ("doctor --token-file /no/such/token", 1),
    ("doctor --ca-file /no/such/ca.pem", 1),
    ("endpoints svc --http-addr 127.0.0.1:99999", 1),
    ("checks svc --http-addr 127.0.0.1:65536", 1),
    ("checks bad/name", 1),
    ("config get --http-addr [::1", 1),
    # JSON files
    ("config set lake-mesh/services/svc @malformed", 1),
    ("config set lake-mesh/services/svc @list", 1),
    ("config set lake-mesh/services/svc @binary", 1),
    ("config set lake-mesh/services/svc @unknown", 1),
    ("config set lake-mesh/services/svc @badrange", 1),
    ("config set lake-mesh/services/svc @empty", 1),
    ("config set lake-mesh/services/svc @missing", 1),
    ("config set lake-mesh/services/svc @dir", 1),
    ("config set not/a/key @unknown", 1),
    ("config set lake-mesh/services/ @unknown", 1),
    ("config validate @malformed", 1),
    ("config validate @binary", 1),
    ("config validate @missing", 1),
    ("config validate @list --level endpoint", 1),
    ("config validate @badrange --level global", 1),
]


def _argv(spec: str, files: dict[str, str]) -> list[str]:
    argv = []
    for word in spec.split(" "):
        if word.startswith("@@"):
            argv.append("@" + files[word[2:]])  # call --data @FILE
        elif word.startswith("@"):
            argv.append(files[word[1:]])
        else:
            argv.append(word)
    return argv


@pytest.mark.parametrize(("spec", "expected"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_bad_value_is_one_clear_line(
    spec: str,
    expected: int,
    cli_env: dict[str, str],
    files: dict[str, str],
    record_property: RecordProperty,
) -> None:
    run = _run(_argv(spec, files), cli_env)
    line = run.message_lines()[-1] if run.message_lines() else ""
    print(f"\n[lake-mesh {spec}] exit {run.code} in {run.seconds:.2f}s: {line}")
    record_property("exit", run.code)
    record_property("stderr", line)
    _assert_clean(run, expected)


# Bad values that were not refused cleanly (each was a bug, fixed; kept as regression tests).
FORMER_BUGS: list[tuple[str, str]] = [
    (
        "endpoints bad/name --timeout 2",
        "cli/cmd_discovery.py: an invalid service name reaches ServiceDiscovery, whose "
        "ValueError is printed as 'internal error (ValueError) ... please report this'",
    ),
    (
        "watch bad/name --timeout 2 --count 1",
        "cli/cmd_discovery.py: invalid service name -> 'internal error (ValueError)'",
    ),
    (
        "explain bad/name --discovery-timeout 2",
        "cli/cmd_mesh.py: invalid service name -> 'internal error (ValueError)' "
        "(Mesh._service raises ValueError, not a MeshError)",
    ),
    (
        "status bad/name --discovery-timeout 2",
        "cli/cmd_mesh.py: invalid service name -> 'internal error (ValueError)'",
    ),
    (
        "endpoints svc --timeout inf --http-addr 127.0.0.1:1",
        "cli/cmd_discovery.py: --timeout inf is not refused; it ends in "
        "'internal error (OverflowError): timestamp out of range for platform time_t'",
    ),
    (
        "endpoints svc --timeout nan",
        "cli/cmd_discovery.py: --timeout nan is accepted (exit 0) instead of a usage error",
    ),
    (
        "register svc --port 80 --address a=b",
        "_core/registration.py: ServiceMetadata.address accepts strings that are neither a "
        "host name nor an IP ('a=b', '::::'); the CLI registers them (exit 0)",
    ),
    (
        "register svc --port 80 --address ::::",
        "_core/registration.py: as above, '::::' (registered as svc-localhost-80)",
    ),
]
#: What a former bug registered when it came back (so the run cleans up after itself).
_REGISTERED_BY = {"a=b": "svc-a-b-80", "::::": "svc-localhost-80"}


@pytest.mark.parametrize("spec", [s for s, _ in FORMER_BUGS])
def test_bad_value_former_bugs(spec: str, cli_env: dict[str, str], files: dict[str, str]) -> None:
    run = _run(_argv(spec, files), cli_env)
    print(f"\n[lake-mesh {spec}] exit {run.code}: {run.stderr.strip()[:200]!r}")
    if run.code == 0 and spec.startswith("register"):
        _run(["deregister", _REGISTERED_BY[spec.rsplit(maxsplit=1)[-1]]], cli_env)
    _assert_clean(run, (1, 2))


@pytest.mark.parametrize(
    "spec",
    [
        "endpoints bad/name --timeout 2",
        "explain bad/name --discovery-timeout 2",
        "register bad/name --port 80",
    ],
)
def test_invalid_service_name_names_the_rule(spec: str, cli_env: dict[str, str]) -> None:
    """One rule for every command: exit 1, and the line says what a service name may hold."""
    run = _run(spec.split(), cli_env)
    _assert_clean(run, 1)
    line = run.message_lines()[0]
    assert "'bad/name' is not a valid service name" in line, line
    assert "letters, digits, '-', '_' and '.'" in line, line


@pytest.mark.parametrize(
    ("spec", "flag"),
    [
        ("endpoints svc --timeout inf", "--timeout"),
        ("watch svc --count 0", "--count"),
        ("status --discovery-timeout nan", "--discovery-timeout"),
        ("config watch --count -1", "--count"),
        ("demo --rate 5000", "--rate"),
        ("agent up --port 0", "--port"),
    ],
)
def test_bad_number_is_a_usage_error_naming_the_flag(
    spec: str, flag: str, cli_env: dict[str, str]
) -> None:
    """Every numeric flag is checked by one set of argparse types: exit 2, the flag named."""
    run = _run(spec.split(), cli_env)
    _assert_clean(run, 2)
    assert f"argument {flag}: expected " in run.message_lines()[0], run.stderr


def test_call_nan_timeout(cli_env: dict[str, str]) -> None:
    """Was a bug: `call --timeout nan` reached requests ('internal error (ValueError)')."""
    name = f"nan-{uuid.uuid4().hex[:8]}"
    registered = _run(["register", name, "--port", "9", "--address", "127.0.0.1"], cli_env)
    assert registered.code == 0, registered.stderr
    try:
        run = _run(["call", name, "/", "--timeout", "nan"], cli_env)
        print(f"\n[lake-mesh call {name} / --timeout nan] exit {run.code}: {run.stderr.strip()!r}")
        _assert_clean(run, (1, 2))
        # A clean refusal names the flag; a connection error to port 9 would not.
        assert "timeout" in run.stderr.lower()
    finally:
        _run(["deregister", f"{name}-127.0.0.1-9"], cli_env)


def test_config_watch_negative_count(cli_env: dict[str, str]) -> None:
    """Was a bug: `config watch --count -1` was accepted, then blocked until a change."""
    try:
        run = _run(["config", "watch", "--count", "-1"], cli_env, timeout=4.0)
    except subprocess.TimeoutExpired:
        pytest.fail("`config watch --count -1` did not exit within 4 s")
    _assert_clean(run, 2)


def test_demo_infinite_duration_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was a bug: `demo --duration inf` passed the check (inf > 0) and ran forever."""
    from lake_mesh_consul import _demo

    def must_not_run(**kwargs: object) -> None:
        raise AssertionError(f"the demo was started with {kwargs.get('duration')!r}")

    monkeypatch.setattr(_demo, "run_demo", must_not_run)
    code = main(["demo", "--duration", "inf"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
