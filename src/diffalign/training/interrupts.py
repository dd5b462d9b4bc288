"""Ctrl-C and SIGTERM during training: the first asks the loop to save a checkpoint at its next safe point
(after an optimizer step) and stop; a second one stops at once (checkpoints are written atomically, so
that loses at most the steps since the last one).

Batch schedulers send SIGTERM some time before they kill a job, so a run stopped that way continues with
`train.resume=latest` from the step it reached.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(SystemExit):
    """The run saved a checkpoint and stopped on a signal; its exit code is the shell's for that signal
    (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.message = signum, message


class InterruptGuard:
    """While entered (in the main thread), SIGINT and SIGTERM set `signum` instead of stopping the process; a
    second one raises KeyboardInterrupt. The previous handlers come back on exit. Outside the main thread
    (where Python cannot take signals) it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked this process to stop."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
        self.signum = signum
        name = signal.Signals(signum).name
        notice = f"\n{name}: saving a checkpoint after this step, then stopping (Ctrl-C again: at once)\n"
        try:
            os.write(2, notice.encode())  # not print: the handler may run in the middle of a buffered write to stderr
        except OSError:
            pass

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()


def stopped(
    signum: int | None, step: int, checkpoint: Path | None, config: Path, processes: int
) -> TrainingInterrupted:
    """The exit of a run stopped by `signum` (None: a process that did not receive it, but stops with the others)
    at `step` with its state in `checkpoint`; its message says how to continue (the run's resolved config,
    `config`, with train.resume=latest)."""
    signum = signum or signal.SIGINT
    command = f"diffalign train {config} train.resume=latest"
    if processes > 1:
        command = f"the same launch command with train.resume=latest (the run's settings: {config})"
    name = signal.Signals(signum).name
    message = f"interrupted ({name}) at step {step}: saved {checkpoint}; continue with: {command}"
    return TrainingInterrupted(signum, message)
