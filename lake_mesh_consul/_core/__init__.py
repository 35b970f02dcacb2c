"""The Consul-free core: values, strategies, breakers, detectors, config models.

Nothing in this package performs I/O or imports python-consul2; time, sleep and randomness
are injected. The adapter in :mod:`lake_mesh_consul._consul` is the only place that talks
to Consul.
"""
