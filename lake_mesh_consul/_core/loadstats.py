"""Per-endpoint request state: outstanding requests and a peak-EWMA of round-trip time.

The state is keyed by endpoint identity (:attr:`ServiceEndpoint.key`) in a
:class:`StatsRegistry`, so it survives discovery snapshots (an endpoint whose health
changed is the same endpoint) and strategy swaps (the registry belongs to the balancer).

Peak EWMA follows Finagle's ``PeakEwma`` and Linkerd's ``tower::load::PeakEwma``:

* an observation larger than the current estimate replaces it (the estimate is "peak"
  sensitive: one slow answer makes an instance expensive at once);
* a smaller one is blended in with weight ``1 - exp(-dt / decay)``, where ``dt`` is the
  time since the previous observation (observations are unevenly spaced, see Eckner,
  "Algorithms for unevenly spaced time series");
* between observations the estimate decays towards zero with the same time constant, so an
  instance that was avoided because it was slow is probed again after a while and traffic
  comes back if it recovered;
* an instance never observed starts at ``default_rtt`` (Linkerd: 30 ms) rather than at
  zero, so a new instance is not flooded before its first answer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

from lake_mesh_consul._core.endpoint import ServiceEndpoint

#: An endpoint's identity, :attr:`ServiceEndpoint.key`: ``(datacenter, node, id)``.
EndpointKey = tuple[str, str, str]

__all__ = ["DEFAULT_DECAY", "DEFAULT_RTT", "EndpointKey", "EndpointStats", "StatsRegistry"]

#: Finagle's and Linkerd's peak-EWMA decay time constant, in seconds.
DEFAULT_DECAY = 10.0
#: Round-trip time assumed for an instance never observed (Linkerd's default), in seconds.
DEFAULT_RTT = 0.030

_exp = math.exp


class EndpointStats:
    """Outstanding requests and peak-EWMA latency of one endpoint.

    Attributes (read them freely; write them only through the methods):
        key: the endpoint identity ``(datacenter, node, id)``.
        outstanding: requests started and not yet finished.
        rtt: the peak-EWMA estimate in seconds, as of ``stamp``.
        stamp: monotonic time of the last observation (or of creation).
        requests: finished requests.
        failures: finished requests that failed.

    Thread-safety: :meth:`begin` and :meth:`end` take a small per-endpoint lock so that the
    counters are exact under concurrency; reading any attribute takes no lock (a pick reads
    ``outstanding``, ``rtt`` and ``stamp`` without locking and tolerates a torn view).
    """

    __slots__ = ("_lock", "decay", "failures", "key", "outstanding", "requests", "rtt", "stamp")

    def __init__(
        self,
        key: EndpointKey,
        *,
        now: float,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
    ) -> None:
        self.key = key
        self.outstanding = 0
        self.rtt = default_rtt
        self.stamp = now
        self.requests = 0
        self.failures = 0
        self.decay = decay
        self._lock = threading.Lock()

    def latency(self, now: float) -> float:
        """The peak-EWMA estimate decayed to ``now`` (seconds); does not modify state."""
        elapsed = now - self.stamp
        if elapsed <= 0.0:
            return self.rtt
        return self.rtt * _exp(-elapsed / self.decay)

    def begin(self) -> None:
        """Count one more outstanding request."""
        with self._lock:
            self.outstanding += 1

    def end(self, now: float, rtt: float | None, *, success: bool = True) -> None:
        """Finish one request; fold ``rtt`` (seconds) into the estimate unless ``None``.

        ``rtt`` is ``None`` for a request that was cancelled by the caller: it says nothing
        about the endpoint, so it only stops counting as outstanding.
        """
        with self._lock:
            self.outstanding -= 1
            if rtt is None:
                return
            self.requests += 1
            if not success:
                self.failures += 1
            rtt = max(rtt, 0.0)
            if rtt > self.rtt:
                self.rtt = rtt  # a peak replaces the estimate at once
            else:
                # Weight the sample by the time since the previous one (tower's update()).
                weight = _exp(-max(now - self.stamp, 0.0) / self.decay)
                self.rtt = self.rtt * weight + rtt * (1.0 - weight)
            self.stamp = max(now, self.stamp)

    def __repr__(self) -> str:
        return (
            f"EndpointStats(key={self.key!r}, outstanding={self.outstanding}, "
            f"rtt={self.rtt * 1000:.3g}ms)"
        )


class StatsRegistry:
    """The :class:`EndpointStats` of every known endpoint, keyed by endpoint identity.

    A :class:`~lake_mesh_consul._core.balancer.LoadBalancer` owns one and hands it to its
    strategy, so outstanding counts and latency estimates outlive snapshots and strategy
    swaps. A built-in strategy used on its own creates a private one.

    Args:
        clock: anything with ``monotonic()``; new stats are stamped with it.
        default_rtt: the latency estimate of an endpoint never observed (seconds).
        decay: the peak-EWMA time constant (seconds).

    Thread-safety: :meth:`get` never locks for an existing endpoint; creation, :meth:`retain`
    and :meth:`configure` serialise on one lock.

    Example:
        >>> from lake_mesh_consul._core.clock import SYSTEM_CLOCK
        >>> registry = StatsRegistry(SYSTEM_CLOCK)
        >>> e = ServiceEndpoint.create("web-1", "10.0.0.1", 80)
        >>> registry.get(e).outstanding
        0
    """

    def __init__(
        self,
        clock: object,
        *,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
    ) -> None:
        monotonic = getattr(clock, "monotonic", None)
        if not callable(monotonic):
            raise TypeError("clock must have a monotonic() method")
        self._monotonic = monotonic
        self._by_key: dict[EndpointKey, EndpointStats] = {}
        self._lock = threading.Lock()
        self.default_rtt = default_rtt
        self.decay = decay
        self._check(default_rtt, decay)

    @staticmethod
    def _check(default_rtt: float, decay: float) -> None:
        if not decay > 0:
            raise ValueError(f"decay must be > 0 seconds, got {decay!r}")
        if not default_rtt >= 0:
            raise ValueError(f"default_rtt must be >= 0 seconds, got {default_rtt!r}")

    def configure(self, *, default_rtt: float, decay: float) -> None:
        """Change the peak-EWMA parameters for every endpoint, keeping their estimates."""
        self._check(default_rtt, decay)
        with self._lock:
            self.default_rtt = default_rtt
            self.decay = decay
            for stats in self._by_key.values():
                stats.decay = decay

    def get(self, endpoint: ServiceEndpoint) -> EndpointStats:
        """The stats of ``endpoint``, created on first use."""
        stats = self._by_key.get(endpoint.key)
        if stats is not None:
            return stats
        with self._lock:
            stats = self._by_key.get(endpoint.key)
            if stats is None:
                stats = EndpointStats(
                    endpoint.key,
                    now=float(self._monotonic()),
                    default_rtt=self.default_rtt,
                    decay=self.decay,
                )
                self._by_key[endpoint.key] = stats
            return stats

    def get_many(
        self, endpoints: Sequence[ServiceEndpoint], keys: Sequence[EndpointKey]
    ) -> list[EndpointStats]:
        """:meth:`get` for each endpoint, given its key (``keys[i]`` is ``endpoints[i].key``)."""
        found: list[EndpointStats | None] = list(map(self._by_key.get, keys))
        if None in found:
            for i, stats in enumerate(found):
                if stats is None:
                    found[i] = self.get(endpoints[i])
        return found  # type: ignore[return-value]  # no None left

    def forget(self, keys: Iterable[EndpointKey]) -> None:
        """Forget the endpoints with these keys (they left the service); see :meth:`retain`."""
        with self._lock:
            by_key = dict(self._by_key)
            for key in keys:
                by_key.pop(key, None)
            self._by_key = by_key

    def peek(self, key: EndpointKey) -> EndpointStats | None:
        """The stats for ``key`` if known, without creating them."""
        return self._by_key.get(key)

    def retain(self, keys: Iterable[EndpointKey]) -> None:
        """Forget every endpoint whose key is not in ``keys`` (it left the service).

        A request in flight to a forgotten endpoint still holds its stats object and
        finishes normally; if the endpoint comes back it starts afresh (and slow-starts).
        """
        keep = set(keys)
        with self._lock:
            if keep.issuperset(self._by_key):  # nobody left (the usual case): C-level check
                return
            self._by_key = {k: v for k, v in self._by_key.items() if k in keep}

    def __len__(self) -> int:
        return len(self._by_key)
