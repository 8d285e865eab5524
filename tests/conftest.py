"""Shared fixtures: real origins, real mitmdump processes and a real redis-server (see tests/support/)."""

pytest_plugins = ["tests.support.origins", "tests.support.proxy", "tests.support.redis_server"]
