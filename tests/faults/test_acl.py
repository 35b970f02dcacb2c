"""ACLs enforced with default deny, against a real server and client agent.

The least-privilege token of a service ``orders`` that calls ``payments``:

* ``service "orders" { policy = "write" }``: register, update its TTL check, deregister;
* ``service "payments" { policy = "read" }`` and ``node_prefix "" { policy = "read" }``:
  discover payments (health endpoints filter out nodes the token cannot read);
* ``key_prefix "config/orders/" { policy = "read" }``: read its configuration.

Promises: that token does all of the above; each missing permission raises PermissionDenied
naming the operation; the token appears in no log line, ``repr``, ``str``, exception
message, ``args`` or cause chain. Observed on Consul 1.8.7: a *read* the token may not do is
not refused but filtered (an empty list, or a 404 for a KV key) - see the tests below.
"""

from __future__ import annotations

import logging
import pickle
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lake_mesh_consul import MeshConfig
from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul.errors import ConsulError, ConsulUnavailable, PermissionDenied
from lake_mesh_consul.testing.cluster import ConsulCluster

from ._loops import RecordProperty

POLICY_RULES = """
service "orders" { policy = "write" }
service "payments" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "config/orders/" { policy = "read" }
"""


@dataclass
class LeastPrivilege:
    token: str
    config: MeshConfig
    admin: ConsulClient


@pytest.fixture(scope="module")
def least_privilege(acl_cluster: ConsulCluster) -> Iterator[LeastPrivilege]:
    """A policy and token for ``orders``; ``payments`` registered and config keys written."""
    admin = ConsulClient(acl_cluster.mesh_config())
    suffix = uuid.uuid4().hex[:8]
    admin.request(
        "PUT",
        "/v1/acl/policy",
        json={"Name": f"orders-{suffix}", "Rules": POLICY_RULES},
        operation="create policy",
    )
    created = admin.request(
        "PUT",
        "/v1/acl/token",
        json={"Description": "orders", "Policies": [{"Name": f"orders-{suffix}"}]},
        operation="create token",
    ).json()
    token = created["SecretID"]
    admin.request(
        "PUT",
        "/v1/agent/service/register",
        json={"Name": "payments", "ID": "payments-1", "Port": 9200, "Address": "127.0.0.1"},
        operation="register payments",
    )
    admin.request(
        "PUT",
        "/v1/agent/service/register",
        json={"Name": "billing", "ID": "billing-1", "Port": 9300, "Address": "127.0.0.1"},
        operation="register billing",
    )
    admin.request("PUT", "/v1/kv/config/orders/timeout", data="2s", operation="write config")
    admin.request("PUT", "/v1/kv/config/billing/secret", data="x", operation="write config")
    try:
        yield LeastPrivilege(token, acl_cluster.mesh_config(token=token), admin)
    finally:
        admin.close()


def _register(client: ConsulClient, name: str) -> ConsulResponse:
    return client.request(
        "PUT",
        "/v1/agent/service/register",
        json={
            "Name": name,
            "ID": f"{name}-1",
            "Port": 9100,
            "Address": "127.0.0.1",
            "Check": {"CheckID": f"{name}-ttl", "TTL": "30s"},
        },
        operation=f"register service {name!r}",
    )


def _healthy(client: ConsulClient, name: str) -> list[Any]:
    answer = client.request(
        "GET", f"/v1/health/service/{name}", operation=f"discover service {name!r}"
    )
    result: list[Any] = answer.json() or []
    return result


def test_least_privilege_token_does_what_the_mesh_needs(least_privilege: LeastPrivilege) -> None:
    with ConsulClient(least_privilege.config) as client:
        _register(client, "orders")
        client.request(
            "PUT", "/v1/agent/check/pass/orders-ttl", operation="pass check 'orders-ttl'"
        )
        payments = _healthy(client, "payments")
        assert [e["Service"]["ID"] for e in payments] == ["payments-1"]
        # A blocking query (what a watch does) works with the same token.
        index = client.request("GET", "/v1/health/service/payments", operation="watch").index
        watched = client.request(
            "GET",
            "/v1/health/service/payments",
            params={"index": index},
            wait=0.2,
            operation="watch payments",
        )
        assert watched.index >= index
        value = client.request(
            "GET", "/v1/kv/config/orders/timeout", params={"raw": ""}, operation="read config"
        )
        assert value.body == b"2s"
        client.request(
            "PUT", "/v1/agent/service/deregister/orders-1", operation="deregister 'orders'"
        )


@pytest.mark.parametrize(
    ("operation", "method", "path", "body"),
    [
        ("register service 'billing'", "PUT", "/v1/agent/service/register", "billing"),
        ("deregister service 'billing-1'", "PUT", "/v1/agent/service/deregister/billing-1", None),
        ("write key 'config/orders/timeout'", "PUT", "/v1/kv/config/orders/timeout", "5s"),
        ("read key 'config/billing/secret'", "GET", "/v1/kv/config/billing/secret", None),
        ("read agent self", "GET", "/v1/agent/self", None),
        ("create a token", "PUT", "/v1/acl/token", {"Policies": []}),
    ],
)
def test_each_missing_permission_is_permission_denied_naming_the_operation(
    least_privilege: LeastPrivilege,
    record_property: RecordProperty,
    operation: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    with ConsulClient(least_privilege.config) as client:
        kwargs: dict[str, Any] = {}
        if path.endswith("/register"):
            kwargs["json"] = {"Name": body, "ID": f"{body}-2", "Port": 1}
        elif isinstance(body, dict):
            kwargs["json"] = body
        elif body is not None:
            kwargs["data"] = body
        with pytest.raises(PermissionDenied) as caught:
            client.request(method, path, operation=operation, **kwargs)
    error = caught.value
    print(f"\n[{operation}] {error}")
    record_property("message", str(error))
    assert error.operation == operation
    assert operation in str(error)
    assert least_privilege.token not in str(error)


def test_python_consul2_path_maps_403_too(least_privilege: LeastPrivilege) -> None:
    with ConsulClient(least_privilege.config) as client, pytest.raises(PermissionDenied) as caught:
        client.call(
            "read key 'config/billing/secret'", client.consul.kv.get, "config/billing/secret"
        )
    assert "config/billing/secret" in str(caught.value)


def test_reads_without_permission_are_filtered_not_refused(
    least_privilege: LeastPrivilege, record_property: RecordProperty
) -> None:
    """Consul 1.8.7 filters what a token may not read instead of answering 403.

    A discovery of a service the token cannot read looks like a service with no instances,
    and a KV listing skips the keys it cannot read. Nothing in the answer tells the two
    apart (``X-Consul-Results-Filtered-By-ACLs`` only came with Consul 1.11), so the
    library cannot raise PermissionDenied for them: a missing ``service:read`` shows up as
    NoEndpointsAvailable. Admins see the instance; the token sees none.
    """
    with ConsulClient(least_privilege.config) as client:
        assert _healthy(client, "billing") == []
        listed = client.request(
            "GET", "/v1/kv/config/", params={"keys": ""}, operation="list config", allow_404=True
        )
    assert [e["Service"]["ID"] for e in _healthy(least_privilege.admin, "billing")] == ["billing-1"]
    keys = listed.json() or []
    print(f"\n[filtered] billing instances seen: 0 (admin: 1); config keys listed: {keys}")
    record_property("listed_keys", keys)
    assert "config/billing/secret" not in keys


def _texts(error: BaseException) -> Iterator[str]:
    """Every string a caller or a log handler could get out of an error and its chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(a) for a in current.args)
        yield from (repr(v) for v in vars(current).values())
        todo += [current.__cause__, current.__context__]
    yield "".join(traceback.format_exception(error))


def test_the_token_never_shows(
    least_privilege: LeastPrivilege, caplog: pytest.LogCaptureFixture
) -> None:
    token = least_privilege.token
    caplog.set_level(logging.DEBUG)
    errors: list[ConsulError] = []
    config = least_privilege.config
    with ConsulClient(config) as client:
        for attempt in (
            lambda: _register(client, "billing"),
            lambda: client.request("GET", "/v1/kv/config/billing/secret", operation="read key"),
            lambda: client.call("read key", client.consul.kv.get, "config/billing/secret"),
            lambda: client.call("read agent", client.consul.agent.self),
        ):
            with pytest.raises(ConsulError) as caught:
                attempt()
            errors.append(caught.value)
        _register(client, "orders")  # successes log too
        texts = [repr(config), str(config), repr(client), repr(config.token), str(config.token)]
    dead = config.replace(address="127.0.0.1:1", connect_timeout=0.5)
    with ConsulClient(dead) as client, pytest.raises(ConsulUnavailable) as unreachable:
        client.leader()
    errors.append(unreachable.value)
    for error in errors:
        texts.extend(_texts(error))
    records = [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    print(f"\n[token hygiene] {len(texts)} strings from {len(errors)} errors, {len(records)} logs")
    assert token not in "\n".join(texts)
    assert token not in "\n".join(records)
    assert token not in caplog.text
    with pytest.raises(TypeError):
        pickle.dumps(config.token)
