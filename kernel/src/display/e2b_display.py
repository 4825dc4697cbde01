"""E2B's rich results for IPython kernels: charts, data and PIL images.

Run once per Python kernel at its start (ipykernel's `exec_lines`, through `runpy`, so none of
these names land in the user's namespace). It adds two display formatters and two PIL hooks:

- `e2b/chart`: a matplotlib figure described as E2B's code interpreter describes it (the shapes
  the SDK's `e2b_code_interpreter.charts` types parse): line, scatter, bar, pie,
  box-and-whisker, a "superchart" of several axes, or "unknown".
- `e2b/data`: a pandas DataFrame as `{column: [values]}`.
- `PIL.Image.Image.save(path)` and `.show()` display the image, so it becomes a png result.

Written for what Debian ships (matplotlib 3.6, pandas 1.5, Pillow 9) and needing nothing else:
E2B's own extractor (PyPI `e2b-charts`) needs numpy 2, matplotlib 3.10 and pydantic 2, which
would replace the template's whole scientific stack. Nothing here imports matplotlib, pandas or
PIL: the formatters are registered by type name and the PIL hooks when PIL is first imported,
so a kernel that never plots pays nothing at start.
"""

import datetime
import importlib.abc
import importlib.machinery
import math
import re
import sys

from IPython import get_ipython
from IPython.core.formatters import BaseFormatter, catch_format_error
from traitlets import ObjectName, Unicode

# ---------------------------------------------------------------------------------------------
# JSON: the kernel's message serializer refuses NaN and numpy types.


def _plain(value):
    """A JSON-safe copy: numpy scalars unwrapped, NaN/inf as null, dates as ISO text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar
        except (TypeError, ValueError):
            pass
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    try:
        if value != value:  # NaN, NaT
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        try:
            return value.isoformat()  # pandas.Timestamp, numpy.datetime64 through .item()
        except Exception:
            pass
    return str(value)


def _point(value):
    """A coordinate as E2B gives it: a date as ISO text, a category as its text, else a float."""
    if hasattr(value, "dtype") and str(value.dtype).startswith("datetime64"):
        return str(value.astype("datetime64[s]"))
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, str):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------------------------------
# Charts.

_UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")


def _text_or_none(text):
    return text if text else None


def _unit(label):
    """The unit written in an axis label: `Speed (m/s)` or `Speed [m/s]`."""
    match = _UNIT.search(label) if label else None
    return (match.group(1) or match.group(2)) if match else None


def _axis_converter(axis):
    getter = getattr(axis, "get_converter", None)
    return getter() if getter else axis.converter


def _is_date_axis(axis):
    from matplotlib import dates

    kinds = tuple(
        k
        for k in (
            getattr(dates, "_SwitchableDateConverter", None),
            dates.DateConverter,
            getattr(dates, "ConciseDateConverter", None),
        )
        if k is not None
    )
    return isinstance(_axis_converter(axis), kinds)


def _is_category_axis(axis):
    from matplotlib import category

    return isinstance(_axis_converter(axis), category.StrCategoryConverter)


def _tick_labels(axis, ticks):
    """The labels drawing would give the ticks, without drawing (an undrawn Text is empty)."""
    try:
        return [str(t) for t in axis.get_major_formatter().format_ticks(list(ticks))]
    except Exception:
        return [t.get_text() for t in axis.get_ticklabels()]


def _scale(axis, scale):
    if _is_date_axis(axis):
        return "datetime"
    if scale == "linear" and _is_category_axis(axis):
        return "categorical"
    return scale


def _ticks(axis, ticks):
    if _is_date_axis(axis):
        from matplotlib import dates

        return [dates.num2date(t).isoformat() for t in ticks]
    return [float(t) for t in ticks]


def _base(ax, kind):
    return {"type": kind, "title": _text_or_none(ax.get_title()), "elements": []}


def _base_2d(ax, kind, swap=False):
    chart = _base(ax, kind)
    x_label, y_label = _text_or_none(ax.get_xlabel()), _text_or_none(ax.get_ylabel())
    if swap:  # horizontal bars and boxes: E2B names the value axis y
        x_label, y_label = y_label, x_label
    chart.update(x_label=x_label, y_label=y_label, x_unit=_unit(x_label), y_unit=_unit(y_label))
    return chart


def _point_chart(ax, kind, series):
    chart = _base_2d(ax, kind)
    for name, axis, scale in (("x", ax.xaxis, ax.get_xscale()), ("y", ax.yaxis, ax.get_yscale())):
        ticks = list(axis.get_majorticklocs())
        chart[f"{name}_ticks"] = _ticks(axis, ticks)
        chart[f"{name}_tick_labels"] = _tick_labels(axis, ticks)
        chart[f"{name}_scale"] = _scale(axis, scale)
    chart["elements"] = [
        {"label": label, "points": [[_point(x), _point(y)] for x, y in points]}
        for label, points in series
    ]
    return chart


def _series_label(label, default_prefix):
    """matplotlib names unlabelled artists `_child<n>`; E2B shows them as `Line <n>`."""
    if label.startswith("_child") and label[6:].isdigit():
        return f"{default_prefix} {label[6:]}"
    return label


def _is_grid_line(line):
    """A two-point horizontal or vertical line: a grid or reference line, not data."""
    xs, ys = line.get_xdata(), line.get_ydata()
    return len(xs) == 2 and len(ys) == 2 and (xs[0] == xs[1] or ys[0] == ys[1])


def _line_chart(ax):
    series = [
        (
            _series_label(line.get_label(), "Line"),
            zip(line.get_xdata(orig=True), line.get_ydata(orig=True)),
        )
        for line in ax.get_lines()
        if not _is_grid_line(line)
    ]
    return _point_chart(ax, "line", series)


def _scatter_chart(ax):
    series = [(c.get_label(), c.get_offsets()) for c in ax.collections]
    chart = _point_chart(ax, "scatter", series)
    if _is_date_axis(ax.xaxis):  # offsets are date numbers
        from matplotlib import dates

        for element in chart["elements"]:
            element["points"] = [
                [dates.num2date(x).isoformat(), y] for x, y in element["points"]
            ]
    return chart


def _category_label(axis, position):
    """The text at a bar's or box's position on its category axis: the label of the tick there
    (a category, a boxplot's `labels=`), else the position itself."""
    ticks = list(axis.get_majorticklocs())
    for tick, label in zip(ticks, _tick_labels(axis, ticks)):
        if abs(float(tick) - position) < 1e-9:
            return label
    if _is_date_axis(axis):
        from matplotlib import dates

        return dates.num2date(position).isoformat()
    return f"{position:g}"


def _bar_chart(ax):
    from matplotlib.container import BarContainer

    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    horizontal = bool(containers) and all(c.orientation == "horizontal" for c in containers)
    chart = _base_2d(ax, "bar", swap=horizontal)
    for container in containers:
        group = container.get_label()
        if group.startswith("_container") and group[10:].isdigit():
            group = f"Group {group[10:]}"
        for rect in container:
            if horizontal:
                position, value = rect.get_y() + rect.get_height() / 2, rect.get_width()
                label = _category_label(ax.yaxis, position)
            else:
                position, value = rect.get_x() + rect.get_width() / 2, rect.get_height()
                label = _category_label(ax.xaxis, position)
            chart["elements"].append({"label": label, "group": group, "value": float(value)})
    return chart


def _pie_chart(ax):
    chart = _base(ax, "pie")
    chart["elements"] = [
        {
            "label": wedge.get_label(),
            "angle": round(abs(float(wedge.theta2) - float(wedge.theta1)), 6),
            "radius": float(wedge.r),
        }
        for wedge in ax.patches
    ]
    return chart


def _box_chart(ax):
    """Boxes from the box patches (`patch_artist=True`), the rest from the lines around them.

    Each box spans [position - w/2, position + w/2] on the category axis and [Q1, Q3] on the
    value axis; its median is a line across it, its whiskers run from Q1 down and Q3 up, its
    fliers are a marker-only line at its position.
    """
    boxes = []
    for patch in ax.patches:
        vertices = patch.get_path().vertices
        xs, ys = vertices[:, 0], vertices[:, 1]
        boxes.append((float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())))
    if not boxes:
        return _base_2d(ax, "box_and_whisker")
    heights = {round(b[3] - b[2], 9) for b in boxes}
    widths = {round(b[1] - b[0], 9) for b in boxes}
    horizontal = len(heights) == 1 and len(widths) > 1
    chart = _base_2d(ax, "box_and_whisker", swap=horizontal)
    category_axis = ax.yaxis if horizontal else ax.xaxis

    def value_span(box):  # (category low, category high, value low, value high)
        return (box[2], box[3], box[0], box[1]) if horizontal else box

    elements = []
    for box in boxes:
        c_lo, c_hi, q1, q3 = value_span(box)
        elements.append(
            {
                "label": _category_label(category_axis, (c_lo + c_hi) / 2),
                "min": q1,
                "first_quartile": q1,
                "median": (q1 + q3) / 2,
                "third_quartile": q3,
                "max": q3,
                "outliers": [],
            }
        )
    eps = 1e-9
    for line in ax.lines:
        xs = [float(v) for v in line.get_xdata()]
        ys = [float(v) for v in line.get_ydata()]
        cats, values = (ys, xs) if horizontal else (xs, ys)
        if not cats:
            continue
        for (c_lo, c_hi, q1, q3), element in zip(map(value_span, boxes), elements):
            if not all(c_lo - eps <= c <= c_hi + eps for c in cats):
                continue
            if line.get_linestyle() in ("None", "none", "", " "):  # fliers
                element["outliers"].extend(values)
            elif len(values) == 2 and values[0] == values[1] and q1 - eps <= values[0] <= q3 + eps:
                if len(set(cats)) == 2 and abs(cats[0] - cats[1]) >= (c_hi - c_lo) - eps:
                    element["median"] = values[0]  # spans the whole box: the median
            elif len(values) == 2 and abs(max(values) - q1) < eps:
                element["min"] = min(values)
            elif len(values) == 2 and abs(min(values) - q3) < eps:
                element["max"] = max(values)
            break
    chart["elements"] = elements
    return chart


def _kind(ax):
    """E2B's classification: by the kinds of artists on the axes (text aside)."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch, Rectangle, Wedge
    from matplotlib.text import Text

    objects = [o for o in ax._children if not isinstance(o, Text)]
    if all(isinstance(o, Line2D) for o in objects):
        return "line"
    if all(isinstance(o, (PathPatch, Line2D)) for o in objects):
        return "box_and_whisker"
    objects = [o for o in objects if not (isinstance(o, Line2D) and _is_grid_line(o))]
    for kind, types in (("scatter", PathCollection), ("pie", Wedge), ("bar", Rectangle)):
        if all(isinstance(o, types) for o in objects):
            return kind
    return "unknown"


_BUILDERS = {
    "line": _line_chart,
    "scatter": _scatter_chart,
    "bar": _bar_chart,
    "pie": _pie_chart,
    "box_and_whisker": _box_chart,
}


def _axes_chart(ax):
    kind = _kind(ax)
    builder = _BUILDERS.get(kind)
    return builder(ax) if builder else _base(ax, kind)


def figure_chart(figure):
    """A figure's chart, or None for a figure without data."""
    axes = figure.get_axes()
    if not any(ax.has_data() for ax in axes):
        return None
    if len(axes) > 1:
        suptitle = getattr(figure, "_suptitle", None)
        title = suptitle.get_text() if suptitle is not None else None
        chart = {"type": "superchart", "title": _text_or_none(title), "elements": []}
        chart["elements"] = [_axes_chart(ax) for ax in axes]
    else:
        chart = _axes_chart(axes[0])
    return _plain(chart)


def dataframe_data(frame):
    return _plain(frame.to_dict(orient="list"))


class _JsonFormatter(BaseFormatter):
    """A formatter whose printers return a dict (sent as JSON in the display bundle)."""

    _return_type = (dict,)


class ChartFormatter(_JsonFormatter):
    """Figures are matched here rather than registered: turning the inline backend on
    (`select_figure_formats`, on the first pyplot import) pops `Figure` from every formatter."""

    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")

    @catch_format_error
    def __call__(self, obj):
        figure = sys.modules.get("matplotlib.figure")
        if self.enabled and figure is not None and isinstance(obj, figure.Figure):
            return figure_chart(obj)
        return super().__call__(obj)


class DataFormatter(_JsonFormatter):
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")


# ---------------------------------------------------------------------------------------------
# PIL: displaying images saved to a path or shown (there is no screen to show them on).


def _hook_pil(image_module):
    from IPython.display import display

    original_save = image_module.Image.save

    def save(self, fp, format=None, **params):
        if isinstance(fp, (str, bytes)) or hasattr(fp, "__fspath__"):
            display(self)
        return original_save(self, fp, format, **params)

    save.__doc__ = original_save.__doc__
    image_module.Image.save = save

    def show(self, title=None):
        display(self)

    image_module.Image.show = show


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls a hook on a module right after it is first imported, without importing it."""

    def __init__(self, name, hook):
        self.name, self.hook = name, hook

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the module is being imported now
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module, hook = spec.loader.exec_module, self.hook

        def exec_then_hook(module):
            exec_module(module)
            hook(module)

        spec.loader.exec_module = exec_then_hook
        return spec


def install(shell):
    formatters = shell.display_formatter.formatters
    chart = ChartFormatter(parent=shell.display_formatter)
    data = DataFormatter(parent=shell.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", dataframe_data)
    formatters[chart.format_type] = chart
    formatters[data.format_type] = data
    if "PIL.Image" in sys.modules:
        _hook_pil(sys.modules["PIL.Image"])
    else:
        sys.meta_path.insert(0, _AfterImport("PIL.Image", _hook_pil))


if get_ipython() is not None:
    install(get_ipython())
