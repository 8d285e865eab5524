"""Fault and load tests (`make test-resilience`); see docs/resilience.md."""
