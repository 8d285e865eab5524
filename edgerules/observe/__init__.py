"""Metrics, their Prometheus exposition, the hourly rollups' report, rate-limited logging."""
