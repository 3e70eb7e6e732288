"""How a logger's run ends when the program does: at exit, in a forked child, on SIGTERM.

Open loggers are tracked here (weakly): at interpreter exit each is closed with the status
the program ended with, and a forked child gets fresh locks in each (see
:func:`_fresh_locks_in_child`). :class:`SigtermHook` ends or flushes a run on SIGTERM.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import weakref
from typing import Any, Protocol, Self

from stagewatch import records as R


class Run(Protocol):
    """What ending a run uses of its logger (:class:`~stagewatch.timing.logger.TimingLogger`)."""

    _lock: Any
    _io: Any
    _pid: int
    _signalled: bool
    _writer: Any  # its RecordWriter (None: disabled)

    def close(self, status: str = ..., error: BaseException | None = ...) -> None: ...
    def flush(self) -> None: ...
    def _finish(self, status: str, error: BaseException | None, block: bool) -> None: ...


_open_loggers: weakref.WeakSet[Run] = weakref.WeakSet()
_distributed = False  # a logger or watch_ddp ran in a process group: see _release_comm_threads
# how long the main thread gives up the GIL at exit: a worker thread waiting for it is
# served within one switch interval (5 ms); the margin is for a loaded machine
COMM_THREADS_GRACE_S = 0.1


def track(logger: Run) -> None:
    """Close ``logger`` at exit and renew its locks in a forked child, until :func:`untrack`."""
    _open_loggers.add(logger)
    if getattr(logger, "world_size", 1) > 1:
        distributed_at_exit()


def distributed_at_exit() -> None:
    """Let this process's collective threads finish before the interpreter tears down."""
    global _distributed
    _distributed = True


def _release_comm_threads() -> None:
    """At exit of a distributed process: destroy a gloo default group still up, then give
    the GIL away for a moment.

    A collective's worker thread (gloo's, NCCL's watchdog) drops its reference to the
    tensors of a finished collective after the caller has moved on; for a tensor with a
    Python object that takes the GIL. Taken after the interpreter began finalizing, the
    thread is ended inside a noexcept destructor and the process aborts ("terminate called
    without an active exception", pytorch/pytorch#179291): ~1 torchrun job in 8 on a
    2-core machine. Destroying the group joins gloo's threads, but only where nothing else
    holds it, and DDP's constructor imports torch._dynamo, which does; so the sleep is what
    makes the exit safe. Gloo's destroy is local (no collective); NCCL groups are the
    user's to destroy.
    """
    if not _distributed:
        return
    try:
        dist = sys.modules.get("torch.distributed")
        up = dist is not None and dist.is_available() and dist.is_initialized()
        if up and dist.get_backend() == "gloo":
            dist.destroy_process_group()
    except Exception:  # at exit: nothing to tell anyone
        pass
    time.sleep(COMM_THREADS_GRACE_S)


# registered before _close_all_at_exit, so it runs after it (atexit runs last-in first-out):
# closing a run may be a process's last collective
atexit.register(_release_comm_threads)


def untrack(logger: Run) -> None:
    _open_loggers.discard(logger)


def _flush_before_fork() -> None:
    # what the writer holds is written by the parent before the fork, not copied into
    # the child (which never writes the parent's files)
    for lg in list(_open_loggers):
        w = lg._writer
        if w is not None and lg._pid == os.getpid():
            try:
                w.flush_before_fork()
            except Exception:  # never break a fork
                pass


def _fresh_locks_in_child() -> None:
    # a fork (DataLoader workers) copies a lock held by another thread as held forever: a
    # region timed in the child would hang. The child's loggers get new locks, and (threads
    # do not survive a fork) a writer that processes on the caller's thread.
    for lg in list(_open_loggers):
        lg._lock = threading.Lock()
        lg._io = threading.RLock()
        if lg._writer is not None:
            lg._writer.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_flush_before_fork, after_in_child=_fresh_locks_in_child)


@atexit.register
def _close_all_at_exit() -> None:
    # sys.last_value is set when the program ends by an uncaught exception
    exc = getattr(sys, "last_value", None)
    pid = os.getpid()
    for lg in list(_open_loggers):
        if lg._pid != pid:
            continue  # a forked child exiting: the run belongs to the parent
        if lg._signalled or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            lg.close(R.STATUS_INTERRUPTED)
        elif isinstance(exc, BaseException):
            lg.close(R.STATUS_FAILED, exc)
        else:
            lg.close(R.STATUS_COMPLETED)


class ClosesOnExit:
    """``with logger:`` closes the run: completed, interrupted (Ctrl-C, ``sys.exit``) or
    failed with the exception."""

    def close(self, status: str = R.STATUS_COMPLETED, error: BaseException | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: Any, ev: BaseException | None, tb: Any) -> None:
        if ev is None:
            self.close(R.STATUS_COMPLETED)
        elif isinstance(ev, (KeyboardInterrupt, SystemExit)):
            self.close(R.STATUS_INTERRUPTED)
        else:
            self.close(R.STATUS_FAILED, ev)


class SigtermHook:
    """A logger's SIGTERM handler (docs/timing.md "Robustness").

    With Python's default action, SIGTERM ends the run ``interrupted`` (without waiting for
    the GPU), then the process dies by SIGTERM as before. With a handler installed earlier
    (e.g. the trainer's graceful stop), the logger flushes and calls it.
    """

    __slots__ = ("_lg", "_prev")

    def __init__(self, logger: Run, prev: Any = None) -> None:
        self._lg = logger
        self._prev = prev

    @classmethod
    def install(cls, logger: Run) -> SigtermHook | None:
        """Make a hook of ``logger`` the SIGTERM handler; None where it is not (not the main
        thread, SIGTERM ignored or owned by non-Python code)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            prev = signal.getsignal(signal.SIGTERM)
            if prev is signal.SIG_IGN or prev is None:
                return None  # ignored, or owned by non-Python code: leave it alone
            hook = cls(logger, prev)
            signal.signal(signal.SIGTERM, hook)
        except (ValueError, OSError, AttributeError):
            return None
        return hook

    def uninstall(self) -> None:
        """Put the earlier handler back, if this hook is still the handler."""
        try:
            if signal.getsignal(signal.SIGTERM) is self:
                signal.signal(signal.SIGTERM, self._prev)
        except (ValueError, OSError):
            pass

    def __call__(self, signum: int, frame: Any) -> None:
        lg = self._lg
        prev = self._prev
        if os.getpid() != lg._pid:  # inherited by a forked child: not our run to end
            if callable(prev):
                prev(signum, frame)
                return
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        w = lg._writer
        if w is not None and w.busy_here():
            # this thread was writing a batch: finish it first, or records would land out
            # of order (the handler runs as soon as the batch is done, still in this call)
            w.defer(lambda: self(signum, frame))
            return
        if callable(prev):
            # someone else (e.g. the trainer) decides what SIGTERM does: keep our data safe
            # and let them call close("interrupted") when they stop. If their handler raises
            # (sys.exit, KeyboardInterrupt), the run ends here: interrupted, also at exit.
            lg.flush()
            try:
                prev(signum, frame)
            except BaseException:
                lg._signalled = True
                raise
            return
        # default action: finish the log without waiting for the GPU, then die as before
        try:
            lg._finish(R.STATUS_INTERRUPTED, None, block=False)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
