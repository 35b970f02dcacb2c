"""Converters from configuration settings to the policy objects of the other core parts.

Each function takes settings by dotted path (an effective mapping, or
``ServiceConfig.resolved()``) and builds the frozen policy dataclass
(:mod:`lake_mesh_consul.policies`).
The policy modules are imported here, inside the functions, so that importing the config
models never imports pybreaker or tenacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "apply_to_balancer",
    "balancer_settings",
    "breaker_policy",
    "detector_policy",
    "retry_budget",
    "retry_policy",
]


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
    """A :class:`~lake_mesh_consul._core.detector.DetectorPolicy` from ``detector.*``.

    The endpoint's breaker (``breaker.*``) is attached as the detector's per-endpoint
    breaker policy.
    """
    from lake_mesh_consul._core.breaker import WindowPolicy
    from lake_mesh_consul._core.detector import DetectorPolicy, EjectionPolicy

    return DetectorPolicy(
        consecutive_failures=int(values["detector.consecutive_failures"]),
        window=WindowPolicy(
            size=int(values["detector.window_size"]),
            minimum_calls=min(
                int(values["detector.min_requests"]), int(values["detector.window_size"])
            ),
            failure_rate_threshold=float(values["detector.failure_rate"]),
        ),
        interval=float(values["detector.interval"]),
        ejection=EjectionPolicy(
            base_ejection_time=float(values["detector.base_ejection_time"]),
            max_ejection_time=max(
                float(values["detector.max_ejection_time"]),
                float(values["detector.base_ejection_time"]),
            ),
            max_ejection_percent=float(values["detector.max_ejection_percent"]),
        ),
        breaker=breaker_policy(values),
    )


def retry_policy(values: Mapping[str, Any]) -> Any:
    """A :class:`~lake_mesh_consul._core.retry.RetryPolicy` from ``retry.*``, timeouts."""
    from lake_mesh_consul._core.detector import OutcomeKind
    from lake_mesh_consul._core.retry import RetryPolicy

    base = float(values["retry.backoff_base"])
    per_try = values.get("per_try_timeout")
    return RetryPolicy(
        attempts=int(values["retry.attempts"]),
        per_try_timeout=None if per_try is None else float(per_try),
        deadline=float(values["deadline"]),
        backoff_base=base,
        backoff_max=max(base, float(values["retry.backoff_max"])),
        retry_on=frozenset(OutcomeKind(kind) for kind in values["retry.retry_on"]),
    )


def retry_budget(values: Mapping[str, Any], **kwargs: Any) -> Any:
    """A :class:`~lake_mesh_consul._core.retry.RetryBudget` from ``retry.budget_*``.

    ``kwargs`` go to the budget (``clock``, ``ttl``).
    """
    from lake_mesh_consul._core.retry import RetryBudget

    return RetryBudget(
        min_retries_per_sec=int(values["retry.budget_min_per_second"]),
        percent_can_retry=float(values["retry.budget_ratio"]),
        **kwargs,
    )


def balancer_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :class:`~lake_mesh_consul._core.balancer.LoadBalancer`.

    ``panic_threshold`` is a percentage in configuration (Envoy's unit) and a fraction in
    [0, 1] for the balancer.
    """
    return {
        "strategy": str(values["strategy"]),
        "panic_threshold": float(values["panic_threshold"]) / 100.0,
        "slow_start_window": float(values["slow_start_window"]),
    }


def apply_to_balancer(
    balancer: Any, values: Mapping[str, Any], previous: Mapping[str, Any] | None = None
) -> None:
    """Apply effective settings to a running LoadBalancer, keeping its state.

    The strategy is swapped with ``set_strategy`` (outstanding counts and latency
    estimates survive a swap) unless ``previous`` shows the same strategy name; panic
    threshold and slow-start window are plain attributes read on each pick.

    Raises:
        InvalidSetting: the balancer refused the strategy.
    """
    settings = balancer_settings(values)
    if previous is None or previous.get("strategy") != settings["strategy"]:
        balancer.set_strategy(settings["strategy"])
    balancer.panic_threshold = settings["panic_threshold"]
    balancer.slow_start_window = settings["slow_start_window"]
