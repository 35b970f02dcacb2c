"""Configuration from Consul KV: reload latency and the idle cost of a config watch.

* ``config.reload.p50/p90[/p99]`` (p99 from 200 writes: the full run): from just before
  the KV write (``ConfigStore.set``, a check-and-set PUT) to the listener callback that
  sees the new config in force, default watch settings (rate limit 10/s, burst 2), writes
  spaced 120 ms apart so the rate limit does not queue them.
* ``config.watch.idle_requests_per_minute``: HTTP requests a ConfigStore's watch sends while
  nothing changes, measured over a window with a short ``watch_wait`` and reported per
  minute at that wait (one request per ``watch_wait``: 1/min at the default 60 s).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

from _common import Context, Row, percentile_rows


def _address(ctx: Context) -> str:
    helper = getattr(ctx, "consul_address", None)
    if helper is not None:
        return str(helper())
    from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary

    binary = find_consul_binary()
    if binary is None:
        raise RuntimeError("no consul binary")
    agent = DevAgent(binary)
    agent.start()
    ctx.on_close(agent.close)
    return agent.address


def run(ctx: Context) -> Iterator[Row]:
    from lake_mesh_consul._consul.kvconfig import ConfigChange, ConfigStore
    from lake_mesh_consul._core.config import MeshConfig

    address = _address(ctx)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    config = MeshConfig(address=address, kv_prefix=prefix)
    writes = 20 if ctx.quick else 200
    names = ["maglev", "random", "least_request", "round_robin"]
    latencies: list[float] = []
    seen: dict[str, float] = {}
    cond = threading.Condition()

    def on_change(change: ConfigChange) -> None:
        strategy = change.current.effective("web").strategy
        with cond:
            seen[strategy] = time.perf_counter()
            cond.notify_all()

    with ConfigStore(config) as store:
        store.subscribe(on_change, service="web")
        key = store.layout.service_key("web")
        for i in range(writes):
            name = names[i % len(names)]
            with cond:
                seen.pop(name, None)
            sent = time.perf_counter()
            store.set(key, {"strategy": name})
            with cond:
                if not cond.wait_for(lambda n=name: n in seen, timeout=5.0):
                    raise RuntimeError(f"write {i} never became live")
                latencies.append(seen[name] - sent)
            time.sleep(0.12)
    yield from percentile_rows(
        "config.reload",
        latencies,
        None,
        "ms",
        scale=1e3,
        measures="KV write (check-and-set PUT) to the listener seeing the new config in force",
    )

    wait = 2.0 if ctx.quick else 5.0
    window = 3.0 if ctx.quick else 15.0
    idle = config.replace(kv_prefix=prefix + "-idle", watch_wait=wait)
    with ConfigStore(idle) as store:
        watch = store.watch
        assert watch is not None
        time.sleep(0.5)  # past the first read
        before = watch.requests
        time.sleep(window)
        sent = watch.requests - before
    yield Row(
        "config.watch.idle_requests_per_minute",
        sent * 60.0 / window,
        "req/min",
        extra={"window_s": window, "requests": sent, "watch_wait_s": wait},
    )
