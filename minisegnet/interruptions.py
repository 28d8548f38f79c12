"""Ctrl-C and SIGTERM during a training run: finish the step, save it, say how to resume.

Ctrl-C sends SIGINT; ``docker stop``, ``timeout`` and schedulers send SIGTERM.  While a run trains, both signals only raise a flag; the step under way finishes, ``last.npz`` is
written at that step (atomically, as every checkpoint), and :class:`TrainingInterrupted` says
which command resumes (``minisegnet train --resume DIR``; the command line exits 130 or 143).
A save under way when the signal comes is finished, not broken off.  What does not change
the run's state -- an evaluation, the figure, the BatchNorm recomputation, decoding the data
-- stops at once instead (an evaluation interrupted so is redone by the resumed run).  A
second signal stops at once whatever runs, without saving: a save it breaks off is discarded
and the previous ``last.npz`` kept.  A signal that was *ignored* when the run started (a
background job of a shell, ``nohup``) stays ignored.

:class:`SignalGuard` is the mechanism (``with guard:`` installs the handlers for one run,
``with guard.at_once():`` marks a phase that may stop at once, ``guard.check()`` is called
where the run's state is whole, after a step); :class:`TrainingInterrupted` is what the
caller sees.

A signal's exception can be raised inside somebody else's cleanup (``zipfile`` closing the
archive ``np.savez`` was writing, for one) and be replaced there by that code's own error.
So the guard remembers what it raised (:meth:`SignalGuard.raised`), and the run asks it, not
only the exception that reached it, why it stopped.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import threading

from .run_folder import LAST

__all__ = ["HANDLED_SIGNALS", "TrainingInterrupted", "SignalGuard", "Stop", "Abort"]

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on SIGINT or SIGTERM; ``str(exc)`` says what was saved and the command that resumes.

    ``signum``; ``step`` (the run's step, None before training started); ``saved_step`` (the step
    ``last.npz`` holds, None: none); ``exit_status`` (128 + signum: 130, 143); ``resume_command``.
    A ``KeyboardInterrupt``, so ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int, step: int | None, saved_step: int | None, out_dir, forced: bool = False):
        self.signum, self.step, self.saved_step, self.out_dir, self.forced = signum, step, saved_step, out_dir, forced
        super().__init__(self.message)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def resume_command(self) -> str | None:
        if self.saved_step is None:
            return None
        return f"minisegnet train --resume {shlex.quote(str(self.out_dir))}"

    @property
    def message(self) -> str:
        if self.step is None:
            return f"interrupted by {self.signal_name} before training started; nothing to resume"
        last = f"{self.out_dir}/{LAST}"
        if self.saved_step is None:
            saved = "no checkpoint was written"
        elif self.forced:
            saved = f"stopped at once (a second signal): {last} holds step {self.saved_step}"
        elif self.saved_step == self.step:
            saved = f"{last} saved at step {self.step}"
        else:
            saved = f"{last} holds step {self.saved_step}"
        where = f"interrupted by {self.signal_name} at step {self.step}; {saved}"
        return where + (f"; resume with: {self.resume_command}" if self.resume_command else "")


class Stop(BaseException):
    """A first signal (in a phase that stops at once, or seen at the end of a step)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Abort(Stop):
    """A second signal: stop at once, save nothing more."""


class SignalGuard:
    """SIGINT and SIGTERM during one phase of a run (see the module docstring).

    ``with signals:`` installs the handlers (main thread only; a signal that was ignored stays
    ignored) and restores the previous ones after.  A first signal only sets ``received``,
    except inside ``with signals.at_once():``, where it raises :class:`Stop`; a second one
    raises :class:`Abort` wherever the program is.  ``raised`` is the last :class:`Stop` a
    handler raised (None: none), for when another exception replaced it on its way up.
    """

    def __init__(self):
        self.received: int | None = None
        self.raised: Stop | None = None
        self._at_once = False
        self._previous = {}

    def __enter__(self):
        self.received = None
        self.raised = None
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED_SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # ignored by whoever started us (nohup, a background job): it stays ignored
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            self.raised = Abort(signum)
            raise self.raised
        self.received = signum
        if self._at_once:
            self.raised = Stop(signum)
            raise self.raised

    def stop_behind(self, exc: BaseException) -> Stop | None:
        """The :class:`Stop` that ``exc`` is, or that it replaced on its way up (None: no signal caused it)."""
        return exc if isinstance(exc, Stop) else self.raised

    @contextlib.contextmanager
    def at_once(self):
        """A phase that changes nothing a checkpoint holds: a first signal stops it at once."""
        if self.received is not None:
            raise Stop(self.received)
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def check(self) -> None:
        """Raise :class:`Stop` if a signal came (called where the run's state is whole: after a step)."""
        if self.received is not None:
            raise Stop(self.received)
