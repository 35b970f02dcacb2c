"""Converters from configuration settings to the policy objects of the other core parts.

Each function takes settings by dotted path (an effective mapping, or
``ServiceConfig.resolved()``) and builds the frozen policy dataclass of the breaking issue.
The policy modules are imported here, inside the functions, so that importing the config
models never imports pybreaker or tenacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["breaker_policy", "detector_policy", "retry_policy"]


def breaker_policy(values: Mapping[str, Any]) -> Any:
    """A :class:`~lake_mesh_consul._core.breaker.BreakerPolicy` from ``breaker.*`` settings."""
    from lake_mesh_consul._core.breaker import BreakerPolicy, WindowPolicy

    window = WindowPolicy(
        size=int(values["breaker.window_size"]),
        minimum_calls=int(values["breaker.minimum_calls"]),
        failure_rate_threshold=float(values["breaker.failure_rate"]),
    )
    return BreakerPolicy(
        consecutive_failures=int(values["breaker.consecutive_failures"]),
        reset_timeout=float(values["breaker.reset_timeout"]),
        half_open_max_calls=int(values["breaker.half_open_max_calls"]),
        half_open_successes=int(values["breaker.half_open_successes"]),
        window=window,
    )


def detector_policy(values: Mapping[str, Any]) -> Any:
    """The outlier-detection policy of :mod:`lake_mesh_consul._core.detector`."""
    raise NotImplementedError("detector policy converter: waiting for _core/detector.py")


def retry_policy(values: Mapping[str, Any]) -> Any:
    """The :class:`RetryPolicy` of :mod:`lake_mesh_consul._core.retry`."""
    raise NotImplementedError("retry policy converter: waiting for _core/retry.py")
