"""edgerules: a declarative rules engine that runs inside mitmproxy."""

__version__ = "0.1.0"
