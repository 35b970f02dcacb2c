from lake_mesh_consul._consul.client import ConsulClient


def test_agent_has_leader(mesh_config):
    with ConsulClient(mesh_config) as client:
        assert client.leader()
