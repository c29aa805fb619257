"""model.summary(): Keras 3's table (layer and type, output shape, parameters, inbound layers) and
its totals, with Keras's parameter counts and sizes."""
from __future__ import annotations

import shutil
import textwrap

from .layer_table import format_shape


def readable_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return "%.2f %s" % (n, unit)
        n /= 1024.0
    return "%.2f TB" % n


def _wrap(text, width):
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]


def _table(rows, widths, aligns):
    """Rows of cells in a heavy-header box, a rule between rows."""
    def border(left, mid, right, fill):
        return left + mid.join(fill * w for w in widths) + right

    def line(cells, bar):
        wrapped = [_wrap(c, w - 2) for c, w in zip(cells, widths)]
        height = max(len(w) for w in wrapped)
        out = []
        for i in range(height):
            parts = []
            for lines, w, a in zip(wrapped, widths, aligns):
                t = lines[i] if i < len(lines) else ""
                parts.append(" " + (t.rjust(w - 2) if a == "r" else t.ljust(w - 2)) + " ")
            out.append(bar + bar.join(parts) + bar)
        return out

    out = [border("┏", "┳", "┓", "━")]
    out += line(rows[0], "┃")
    out.append(border("┡", "╇", "┩", "━"))
    for i, r in enumerate(rows[1:]):
        if i:
            out.append(border("├", "┼", "┤", "─"))
        out += line(r, "│")
    out.append(border("└", "┴", "┘", "─"))
    return out


def print_summary(model, line_length=None, positions=None, print_fn=None, show_trainable=False):
    print_fn = print_fn or print
    if line_length is None:
        line_length = min(108, shutil.get_terminal_size((80, 24)).columns - 4)
    positions = positions or [0.3, 0.56, 0.74, 1.0]
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    widths = [b - a for a, b in zip([0] + positions[:-1], positions)]
    widths = [max(w, 6) for w in widths]
    header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
    aligns = ["l", "l", "r", "l"]
    if show_trainable:
        header.append("Trainable")
        aligns.append("l")
        widths.append(11)
    rows = [header]
    trainable = non_trainable = 0
    for layer in model.layers:
        params = layer.count_params()
        if layer.trainable:
            trainable += layer._trainable_params
            non_trainable += layer._non_trainable_params
        else:
            non_trainable += params
        inbound = ", ".join("%s[0][0]" % n for n in layer.inbound) or "-"
        row = ["%s (%s)" % (layer.name, layer.class_name), format_shape(layer.output_shape), "{:,}".format(params),
               inbound]
        if show_trainable:
            row.append("Y" if layer.trainable else "N")
        rows.append(row)
    print_fn('Model: "%s"' % model.name)
    for text in _table(rows, widths, aligns):
        print_fn(text)
    total = trainable + non_trainable
    print_fn(" Total params: {:,} ({})".format(total, readable_bytes(4 * total)))
    print_fn(" Trainable params: {:,} ({})".format(trainable, readable_bytes(4 * trainable)))
    print_fn(" Non-trainable params: {:,} ({})".format(non_trainable, readable_bytes(4 * non_trainable)))
