"""Runs a call in a forked child process and reports what it did, how long it took and how much
memory it added: a hostile input must be answered within SECONDS and under EXTRA_MB of peak
resident memory, and a call that runs past the time is killed (the test then fails instead of
hanging)."""
import os
import pickle
import signal
import time
import traceback

SECONDS = 10.0
EXTRA_MB = 1024


class Outcome:
    """What the call did: .error (the exception, or None), .value, .seconds, .extra_mb."""

    def __init__(self, error, value, seconds, extra_mb):
        self.error, self.value, self.seconds, self.extra_mb = error, value, seconds, extra_mb

    def __repr__(self):
        return "<Outcome %s in %.1f s, +%.0f MB>" % (self.error or self.value, self.seconds, self.extra_mb)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/self/status" % field)


def _child(fn, write_end):
    code = 0
    try:
        try:  # start the peak (VmHWM) from here: the parent's peak is not the child's
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        base = _status_kb("VmRSS")
        try:
            result = ("value", fn())
        except BaseException as e:  # noqa: BLE001 (reported to the parent)
            result = ("error", e)
        extra_mb = (_status_kb("VmHWM") - base) / 1024.0
        try:
            payload = pickle.dumps(result + (extra_mb,))
        except Exception:  # an unpicklable value or exception: its description instead
            kind, obj = result
            payload = pickle.dumps((kind, RuntimeError("%s: %s" % (type(obj).__name__, obj)), extra_mb)
                                   if kind == "error" else (kind, repr(obj), extra_mb))
        os.write(write_end, payload)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os.close(write_end)
        os._exit(code)


def run(fn, seconds=SECONDS, extra_mb=EXTRA_MB):
    """fn() in a child; asserts it ended within `seconds` and grew the peak RSS by under
    `extra_mb`; returns its Outcome (the exception it raised, or its value, which must pickle)."""
    read_end, write_end = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(fn, write_end)
    os.close(write_end)
    os.set_blocking(read_end, False)
    data = b""
    try:
        while True:
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                chunk = None
            if chunk:
                data += chunk
                continue
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                try:
                    while True:
                        chunk = os.read(read_end, 1 << 16)
                        if not chunk:
                            break
                        data += chunk
                except BlockingIOError:
                    pass
                break
            if time.monotonic() - start > seconds:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the call did not finish within %.0f s" % seconds)
            time.sleep(0.01)
    finally:
        os.close(read_end)
    elapsed = time.monotonic() - start
    if not data:
        raise AssertionError("the child process died without a result (killed for memory?)")
    kind, obj, extra = pickle.loads(data)
    outcome = Outcome(obj if kind == "error" else None, obj if kind == "value" else None, elapsed, extra)
    assert extra < extra_mb, "the call added %.0f MB of peak resident memory (limit %d MB)" % (extra, extra_mb)
    return outcome
