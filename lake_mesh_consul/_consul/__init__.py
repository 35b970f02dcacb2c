"""The adapter layer: the only code that imports python-consul2 or knows Consul's HTTP API.

It builds the client from :class:`~lake_mesh_consul.MeshConfig`, maps every foreign error
to :mod:`lake_mesh_consul.errors` at the boundary, and implements registration, health,
discovery and KV configuration on top of the core's ports.
"""
