"""Stopping a run from outside: SIGTERM behaves like Ctrl-C.

Schedulers (SLURM, Kubernetes, ``torchrun`` when a peer fails) stop a process with SIGTERM, whose
default action kills it on the spot - exactly like SIGKILL, so nothing tells the user what survived.
Inside :func:`terminate_as_interrupt`, SIGTERM instead raises :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so the run unwinds the way Ctrl-C unwinds it:

* every atomic write in progress removes its temporary file (the previous ``checkpoint.pt`` stays
  the last good one; see :mod:`robustdistill.fileio`), and no newer checkpoint is written - the run
  resumes from the last completed epoch, which replays bit for bit;
* :meth:`robustdistill.rundir.RunDir.guard` attaches what is intact and the command that resumes
  (an :class:`Interrupted` carrying a :class:`ResumePoint`);
* the CLI prints :meth:`Interrupted.message` as its one ``error:`` line and exits with
  :attr:`Interrupted.exit_code` (``128 + signal``: 143 for SIGTERM, 130 for Ctrl-C).

Python runs signal handlers between bytecodes of the main thread only, so the handler can be
installed there only (elsewhere :func:`terminate_as_interrupt` does nothing), and a process blocked
inside one long C call (a collective, a huge convolution) stops when that call returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Iterator


@dataclass(frozen=True)
class ResumePoint:
    """What an interrupted run left intact and how to continue it.

    Attributes:
        intact: e.g. ``"the checkpoint of epoch 2 in runs/x"``.
        command: e.g. ``"robustdistill distill --resume --out runs/x"``.
    """

    intact: str
    command: str


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or a termination signal.

    Args:
        signum: the signal that stopped the run.
        resume: what is intact and how to resume (``None``: not known where the run stopped).
    """

    def __init__(self, signum: int = signal.SIGINT, resume: ResumePoint | None = None) -> None:
        self.signum, self.resume = int(signum), resume
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT``, ..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell convention for a process stopped by a signal: ``128 + signal`` (SIGTERM: 143)."""
        return 128 + self.signum

    def message(self) -> str:
        """One line: what stopped the run, what is intact, how to resume."""
        what = "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else f"stopped by {self.signal_name}"
        if self.resume is None:
            return f"{what}; files already written are intact (resume a run with --resume)"
        return f"{what}; {self.resume.intact} is intact; resume with `{self.resume.command}`"


class Terminated(Interrupted):
    """Raised in the main thread when SIGTERM arrives inside :func:`terminate_as_interrupt`."""

    def __init__(self, signum: int = signal.SIGTERM, resume: ResumePoint | None = None) -> None:
        super().__init__(signum, resume)


def as_interrupted(exc: KeyboardInterrupt, resume: ResumePoint | None = None) -> Interrupted:
    """``exc`` as an :class:`Interrupted` (a bare Ctrl-C becomes one) that names ``resume``.

    An ``exc`` that already names a resume point is returned unchanged: the innermost
    :meth:`~robustdistill.rundir.RunDir.guard` knows best what is intact.
    """
    if isinstance(exc, Interrupted):
        if exc.resume is not None or resume is None:
            return exc
        return type(exc)(exc.signum, resume).with_traceback(exc.__traceback__)
    return Interrupted(signal.SIGINT, resume).with_traceback(exc.__traceback__)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status for ``exc``: 143 after SIGTERM, 130 after Ctrl-C."""
    return as_interrupted(exc).exit_code


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[bool]:
    """While the block runs, each of ``signals`` raises :class:`Terminated` in the main thread.

    Only the first signal raises; later ones are ignored until the block ends, so a second SIGTERM
    cannot cut short the clean-up (removing a temporary file, leaving the process group) that the
    first one started. The previous handlers are restored on exit.

    Yields:
        ``True`` if the handler is installed, ``False`` outside the main thread (nothing changes).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    fired = [False]

    def handler(signum: int, _frame: FrameType | None) -> None:
        if fired[0]:
            return
        fired[0] = True
        raise Terminated(signum)

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield True
    finally:
        for number, old in previous.items():
            # None: a handler installed from C, which Python cannot reinstall; the default is closest.
            signal.signal(number, old if old is not None else signal.SIG_DFL)


__all__ = ["Interrupted", "ResumePoint", "Terminated", "as_interrupted", "exit_code", "terminate_as_interrupt"]
