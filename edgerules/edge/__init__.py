"""The running proxy: the mitmproxy adapters, the runtime, the origin client, probes, admin."""
