"""Atomic file writes: every file covidx saves is written to a new temporary file in the target's
folder, then renamed over the target, so a reader never sees half a file.

The temporary file is created with O_EXCL under an unpredictable name (tempfile.mkstemp), so a
link planted where the file will be written is never followed; it is removed on any error, on
Ctrl-C (KeyboardInterrupt), and on SIGTERM and SIGHUP: while a save runs in the main thread and
those signals have their default action, a handler removes the temporary files first and then
lets the signal end the process as it would have."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading

TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_pending = set()  # temporary files being written
_lock = threading.Lock()


def _umask():
    """The process's umask, read without changing it where Linux says it (os.umask both sets and
    reads, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode():
    """The permissions open() gives a new file (0666 less the umask), for files made by mkstemp."""
    return 0o666 & ~_umask()


def _remove_pending():
    with _lock:
        paths = list(_pending)
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _on_termination(signum, frame):
    _remove_pending()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # now with the default action: the process ends as the signal says


@contextlib.contextmanager
def _cleanup_on_termination():
    """Installs _on_termination for the signals still at their default action (main thread only:
    Python lets no other thread set handlers; a handler the program set itself is left alone)."""
    installed = []
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATION_SIGNALS:
            try:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, _on_termination)
                    installed.append(signum)
            except (ValueError, OSError):
                pass
    try:
        yield
    finally:
        for signum in installed:
            if signal.getsignal(signum) is _on_termination:
                signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def replacing(path):
    """with replacing(path) as (tmp, fd): write the file through the descriptor fd, or by the
    name tmp (a new, empty file of this process, with the permissions open() would give it); when
    the block ends without error the file is renamed to path, else removed. fd is closed after the
    block: the block must not close it (os.fdopen(fd, "wb", closefd=False))."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    with _cleanup_on_termination():
        # (the name's start, for whoever finds one; 40 characters fit NAME_MAX even at 4 bytes each)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path)[:40], suffix=".tmp", dir=folder)
        with _lock:
            _pending.add(tmp)
        try:
            os.fchmod(fd, new_file_mode())  # mkstemp makes it 0600; a saved model is as readable as open() makes it
            yield tmp, fd
            os.close(fd)
            fd = None
            os.replace(tmp, path)
        finally:
            if fd is not None:
                os.close(fd)
            with _lock:
                _pending.discard(tmp)
            if os.path.lexists(tmp):
                os.unlink(tmp)


def write_file(path, write):
    """Runs write(temporary name) and renames the result to path (see replacing); returns path."""
    with replacing(path) as (tmp, _):
        write(tmp)
    return os.fspath(path)
