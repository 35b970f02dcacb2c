"""The fault suite: scenarios against real Consul processes (see conftest.py)."""
