"""Keras's progress bar: one line redrawn in place in a terminal and in Jupyter.

style 'keras3' (default): `3/3 ━━━━━━━━━━━━━━━━━━━━ 1s 250ms/step - accuracy: 0.6667 - loss: 0.6931`
style 'tf2': `3/3 [==============================] - 1s 250ms/step - loss: 0.6931 - accuracy: 0.6667`
(covidx.settings.progress_style selects it). verbose 1 redraws; verbose 2 prints the final line."""
from __future__ import annotations

import os
import sys
import time

from ._settings import settings


def _dynamic_display():
    return ((hasattr(sys.stdout, "isatty") and sys.stdout.isatty()) or "ipykernel" in sys.modules
            or "posix" in sys.modules or "PYCHARM_HOSTED" in os.environ)


def format_number(v):
    return "%.4f" % v if abs(v) > 1e-3 else "%.4e" % v


def format_time_per_step(t):
    if t >= 1 or t == 0:
        return " %.0fs/step" % t
    if t >= 1e-3:
        return " %.0fms/step" % (t * 1e3)
    return " %.0fus/step" % (t * 1e6)


def format_eta(eta):
    if eta > 3600:
        return "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
    if eta > 60:
        return "%d:%02d" % (eta // 60, eta % 60)
    return "%ds" % eta


class Progbar:
    def __init__(self, target, verbose=1, style=None, interval=0.05, stream=None):
        self.target, self.verbose, self.interval = target, verbose, interval
        self.style = style or settings.progress_style
        if self.style not in ("keras3", "tf2"):
            raise ValueError("progress style: expected 'keras3' or 'tf2', got %r" % (self.style,))
        self.stream = stream
        self.dynamic = _dynamic_display()
        self.start = time.time()
        self.time_at_step_1 = None
        self.last_draw = 0.0
        self.prev_width = 0
        self.drawn = False

    def _out(self):
        return self.stream or sys.stdout

    def _time_per_step(self, current, now):
        if current > 1 and self.time_at_step_1 is not None:
            return (now - self.time_at_step_1) / (current - 1)
        return (now - self.start) / max(current, 1)

    def update(self, current, values=(), finalize=None):
        """values: [(name, number)] in display order."""
        now = time.time()
        if current == 1 and self.time_at_step_1 is None:
            self.time_at_step_1 = now
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        metrics = "".join(" - %s: %s" % (name, format_number(v)) for name, v in values)
        t = self._time_per_step(current, now)
        if self.verbose == 1:
            if not finalize and self.drawn and now - self.last_draw < self.interval:
                return
            line = self._line(current, t, now, finalize) + metrics
            out = self._out()
            prefix = ("\b" * self.prev_width + "\r") if self.dynamic else ("\n" if self.drawn else "")
            pad = " " * max(0, self.prev_width - len(line))
            out.write(prefix + line + pad + ("\n" if finalize else ""))
            out.flush()
            self.prev_width = len(line)
            self.last_draw, self.drawn = now, True
        elif self.verbose == 2 and finalize:
            elapsed = now - self.start
            n = "%d/%d" % (current, self.target) if self.target else "%d" % current
            if self.style == "keras3":
                line = "%s - %.0fs -%s%s" % (n, elapsed, format_time_per_step(t), metrics)
            else:
                line = "%s - %.0fs%s -%s" % (n, elapsed, metrics, format_time_per_step(t))
            out = self._out()
            out.write(line + "\n")
            out.flush()

    def _line(self, current, t, now, finalize):
        target = self.target
        if self.style == "keras3":
            if target is None:
                head = "\x1b[1m%7d/Unknown\x1b[0m" % current
                bar = ""
            else:
                d = len(str(target))
                head = "\x1b[1m%*d/%d\x1b[0m" % (d, current, target)
                done = int(20 * current / target)
                bar = " " + ("\x1b[32m" + "━" * done + "\x1b[0m" if done else "") + ("\x1b[37m" + "━" * (20 - done) + "\x1b[0m" if done < 20 else "")
            if finalize:
                when = "%.0fs" % (now - self.start)
            else:
                when = format_eta(t * (target - current)) if target else ""
            return head + bar + " \x1b[1m" + when + "\x1b[0m" + format_time_per_step(t)
        # tf.keras 2.x
        if target is None:
            return "%7d/Unknown" % current
        d = len(str(target))
        pw = int(30 * current / target)
        bar = "%*d/%d [" % (d, current, target)
        if pw > 0:
            bar += "=" * (pw - 1) + ("=" if current >= target else ">")
        bar += "." * (30 - pw) + "]"
        if finalize:
            return bar + " - %.0fs" % (now - self.start) + format_time_per_step(t)
        return bar + " - ETA: " + format_eta(t * (target - current))
