"""Shared test helpers (free ports, a real redis-server); the lead's conftest imports the fixtures."""
