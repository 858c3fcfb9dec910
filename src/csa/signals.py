"""Stopping a training run by signal: the first SIGINT / SIGTERM asks for a clean stop, a second one abandons."""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional


class StopFlag:
    """SIGINT / SIGTERM handling: the first signal asks the loop to stop after the current step
    (and save); a second one abandons the step at once (KeyboardInterrupt, nothing saved)."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
