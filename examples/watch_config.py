"""Watch the mesh's configuration in Consul KV and see a change applied live.

Run a local agent first (``lake-mesh agent up``, then export CONSUL_HTTP_ADDR), then::

    python examples/watch_config.py

The mesh reads ``<prefix>/global``, ``<prefix>/services/<name>`` and
``<prefix>/services/<name>/endpoints/<id>`` from KV (JSON documents) and watches them. Here
we subscribe to changes, write a new strategy for a service (as an operator would with
``lake-mesh config set``), and watch the balancer pick it up without a restart; then we
write an invalid document and see it rejected while the last good one stays in force.
"""

from __future__ import annotations

import os
import threading

from lake_mesh_consul import MeshConfig
from lake_mesh_consul.mesh import Mesh


def main() -> None:
    prefix = f"example-config-{os.getpid()}"  # a private KV folder for the example
    config = MeshConfig.from_env(kv_prefix=prefix)
    with Mesh(config) as mesh:
        store = mesh.store
        balancer = mesh.balancer("example-orders")
        # Subscribed after the mesh's own listener (made with the balancer above), so by the
        # time `changed` is set the running balancer has already applied the change.
        changed = threading.Event()
        store.subscribe(lambda change: changed.set(), service="example-orders")
        store.on_event(lambda event: print(f"  config event: {event.kind} {event.key or ''}"))
        print(
            "strategy before:",
            balancer.strategy,
            "from",
            mesh.effective("example-orders").provenance["strategy"].source,
        )

        key = store.layout.service_key("example-orders")
        store.set(key, {"strategy": "least_request", "breaker": {"consecutive_failures": 3}})
        changed.wait(10)
        print(
            "strategy after: ",
            balancer.strategy,
            "from",
            mesh.effective("example-orders").provenance["strategy"].source,
        )

        changed.clear()
        store.client.request("PUT", f"/v1/kv/{key}", operation="write", data=b'{"strategy": 1}')
        changed.wait(2)  # no change is announced: the bad write is rejected
        print("after a bad write:", balancer.strategy, "(the last good config stays)")
        store.client.request(
            "DELETE", f"/v1/kv/{prefix}/", operation="clean up", params={"recurse": ""}
        )


if __name__ == "__main__":
    main()
