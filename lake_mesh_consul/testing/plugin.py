"""The pytest plugin: fixtures backed by a real Consul agent (filled in by the foundation)."""
