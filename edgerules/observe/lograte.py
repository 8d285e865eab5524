"""A warning that may repeat once per request (a full disk fails every cache store) logged at most once per
interval, with the number of repeats it stands for."""

from __future__ import annotations

import logging
import time


class RateLimitedWarning:
    """`warn(message)`: the first call logs; calls within `interval` seconds after it only count; the next
    one after the interval logs again with "(N more since the last one)"."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self.suppressed = 0
        self.total = 0
        self._last = float("-inf")

    def warn(self, message: str, *args: object) -> bool:
        """True when this call was logged."""
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            self.logger.warning(message + " (%d more since the last one)", *args, self.suppressed)
            self.suppressed = 0
        else:
            self.logger.warning(message, *args)
        return True


__all__ = ["RateLimitedWarning"]
