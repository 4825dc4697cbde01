"""E2B's rich results through the unmodified code-interpreter SDKs: matplotlib charts as
`result.chart` (parsed by the SDK's own `e2b_code_interpreter.charts` types), DataFrames as
`result.data`, PIL images saved or shown as png results, and MCP run_code's structured chart.

scripts/test.sh runs it.

By hand (root): flock /tmp/coppice-host.lock python3 -m pytest -q http/tests/e2b/test_e2b_rich_results.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import run_node
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    Chart,
    ChartType,
    LineChart,
    PieChart,
    ScaleType,
    ScatterChart,
    SuperChart,
)

JS_TEST = Path(__file__).resolve().parent / "js_rich_results.cjs"


@pytest.fixture(scope="module")
def sbx(daemon):
    s = Sandbox.create(timeout=300)
    yield s
    s.kill()


def chart_of(sbx, code):
    ex = sbx.run_code(code)
    assert ex.error is None, ex.error
    charts = [r for r in ex.results if r.chart is not None]
    assert len(charts) == 1, ex.results
    assert charts[0].png, "the png stays beside the chart"
    return charts[0].chart


def test_bar_chart(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure(figsize=(10, 6))
plt.bar(['Author A', 'Author B', 'Author C', 'Author D'], [100, 200, 300, 400])
plt.bar(['Author A', 'Author B', 'Author C', 'Author D'], [10, 20, 30, 40], label='Reprints')
plt.xlabel('Authors')
plt.ylabel('Books sold [thousands]')
plt.title('Book Sales by Authors')
plt.show()
""")
    assert isinstance(chart, BarChart) and chart.type == ChartType.BAR
    assert chart.title == "Book Sales by Authors"
    assert (chart.x_label, chart.y_label) == ("Authors", "Books sold [thousands]")
    assert (chart.x_unit, chart.y_unit) == (None, "thousands")
    assert [(b.label, b.group, b.value) for b in chart.elements] == [
        ("Author A", "Group 0", 100), ("Author B", "Group 0", 200),
        ("Author C", "Group 0", 300), ("Author D", "Group 0", 400),
        ("Author A", "Reprints", 10), ("Author B", "Reprints", 20),
        ("Author C", "Reprints", 30), ("Author D", "Reprints", 40),
    ]


def test_horizontal_bar_chart_names_the_value_axis_y(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure()
plt.barh(['north', 'south'], [3, 5])
plt.xlabel('Stores')
plt.show()
""")
    assert isinstance(chart, BarChart)
    assert (chart.x_label, chart.y_label) == (None, "Stores")
    assert [(b.label, b.value) for b in chart.elements] == [("north", 3), ("south", 5)]


def test_line_chart(sbx):
    chart = chart_of(sbx, """
import numpy as np
import matplotlib.pyplot as plt
x = np.linspace(0, 2, 5)
plt.figure()
plt.plot(x, x * 2, label='double')
plt.plot(x, x * 3)
plt.xlabel('Time (s)')
plt.ylabel('Distance (m)')
plt.title('Runs')
plt.show()
""")
    assert isinstance(chart, LineChart) and chart.type == ChartType.LINE
    assert chart.title == "Runs"
    assert (chart.x_unit, chart.y_unit) == ("s", "m")
    assert chart.x_scale == ScaleType.LINEAR and chart.y_scale == ScaleType.LINEAR
    assert [e.label for e in chart.elements] == ["double", "Line 1"]
    assert chart.elements[0].points == [(0.0, 0.0), (0.5, 1.0), (1.0, 2.0), (1.5, 3.0), (2.0, 4.0)]
    assert chart.elements[1].points[-1] == (2.0, 6.0)
    assert all(isinstance(t, float) for t in chart.x_ticks)
    assert len(chart.x_tick_labels) == len(chart.x_ticks) and "1.00" in chart.x_tick_labels


def test_scales(sbx):
    dated = chart_of(sbx, """
import datetime
import matplotlib.pyplot as plt
plt.figure()
plt.plot([datetime.date(2023, 9, 1) + datetime.timedelta(days=i) for i in range(4)], [1, 4, 2, 3])
plt.show()
""")
    assert isinstance(dated, LineChart)
    assert dated.x_scale == ScaleType.DATETIME and dated.y_scale == ScaleType.LINEAR
    assert dated.elements[0].points[0] == ("2023-09-01", 1.0)
    assert all(t.startswith("2023-09-0") for t in dated.x_ticks)

    categorical = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure()
plt.plot([1, 2, 3, 4, 5], ['A', 'B', 'C', 'D', 'E'])
plt.show()
""")
    assert categorical.x_scale == ScaleType.LINEAR and categorical.y_scale == ScaleType.CATEGORICAL
    assert categorical.y_tick_labels == ["A", "B", "C", "D", "E"]
    assert categorical.elements[0].points[1] == (2.0, "B")

    logged = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure()
plt.plot([1, 10, 100, 1000], [1, 2, 3, 4])
plt.xscale('log')
plt.yscale('symlog')
plt.show()
""")
    assert logged.x_scale == ScaleType.LOG and logged.y_scale == ScaleType.SYMLOG


def test_scatter_chart(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure()
plt.scatter([1, 2, 3], [4, 5, 6], label='Dataset 1')
plt.scatter([7, 8], [9, 10], label='Dataset 2')
plt.xlabel('A')
plt.show()
""")
    assert isinstance(chart, ScatterChart) and chart.type == ChartType.SCATTER
    assert [e.label for e in chart.elements] == ["Dataset 1", "Dataset 2"]
    assert chart.elements[0].points == [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]
    assert chart.elements[1].points == [(7.0, 9.0), (8.0, 10.0)]
    assert chart.x_label == "A" and chart.y_label is None


def test_pie_chart(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
plt.figure()
plt.pie([1, 3], labels=['Cats', 'Dogs'], radius=1.5)
plt.title('Pets')
plt.show()
""")
    assert isinstance(chart, PieChart) and chart.title == "Pets"
    assert [(e.label, e.angle, e.radius) for e in chart.elements] == [
        ("Cats", 90.0, 1.5), ("Dogs", 270.0, 1.5),
    ]


def test_box_and_whisker_chart(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.boxplot([[1, 2, 3, 4, 5], [2, 4, 6, 8, 10, 40]], labels=['Class A', 'Class B'],
           patch_artist=True)
ax.set_title('Scores')
ax.set_xlabel('Class')
ax.set_ylabel('Score')
plt.show()
""")
    assert isinstance(chart, BoxAndWhiskerChart) and chart.type == ChartType.BOX_AND_WHISKER
    assert (chart.title, chart.x_label, chart.y_label) == ("Scores", "Class", "Score")
    a, b = chart.elements
    assert (a.label, a.min, a.first_quartile, a.median, a.third_quartile, a.max, a.outliers) == (
        "Class A", 1.0, 2.0, 3.0, 4.0, 5.0, [])
    assert (b.label, b.min, b.median, b.max, b.outliers) == ("Class B", 2.0, 7.0, 10.0, [40.0])
    assert b.first_quartile == 4.5 and b.third_quartile == 9.5


def test_superchart_and_unknown(sbx):
    chart = chart_of(sbx, """
import matplotlib.pyplot as plt
fig, (left, right) = plt.subplots(1, 2)
fig.suptitle('Overview')
left.plot([1, 2], [3, 4])
right.pie([1, 1], labels=['x', 'y'])
plt.show()
""")
    assert isinstance(chart, SuperChart) and chart.title == "Overview"
    assert [type(c) for c in chart.elements] == [LineChart, PieChart]

    unknown = chart_of(sbx, """
import numpy as np
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.imshow(np.zeros((3, 3)))
ax.plot([0, 2], [0, 1])
ax.set_title('Mixed')
plt.show()
""")
    assert type(unknown) is Chart and unknown.type == ChartType.UNKNOWN
    assert unknown.title == "Mixed" and unknown.elements == []


def test_blank_figure_has_no_chart(sbx):
    ex = sbx.run_code("import matplotlib.pyplot as plt\nplt.figure()\nplt.show()")
    assert all(r.chart is None for r in ex.results)


def test_dataframe_data(sbx):
    ex = sbx.run_code("""
import numpy as np, pandas as pd
pd.DataFrame({'a': [1, 2, 3], 'b': [0.5, np.nan, 2.5], 'when': pd.to_datetime(['2024-01-01', None, '2024-01-03'])})
""")
    result = ex.results[0]
    assert result.is_main_result
    assert result.data == {
        "a": [1, 2, 3],
        "b": [0.5, None, 2.5],
        "when": ["2024-01-01T00:00:00", None, "2024-01-03T00:00:00"],
    }
    assert "<table" in result.html and result.text
    assert {"text", "html", "data"} <= set(result.formats())


def test_pil_images_become_png_results(sbx):
    make = """
import numpy
from PIL import Image
image = Image.fromarray((numpy.random.rand(16, 16, 3) * 255).astype('uint8')).convert('RGBA')
"""
    saved = sbx.run_code(make + "image.save('/tmp/saved.png')\nprint('Image saved.')")
    assert saved.error is None and saved.logs.stdout == ["Image saved.\n"]
    assert saved.results and saved.results[0].png
    assert sbx.files.read("/tmp/saved.png", format="bytes")[:4] == b"\x89PNG", "still saved"
    shown = sbx.run_code(make + "image.show()")
    assert shown.results and shown.results[0].png
    last = sbx.run_code(make + "image")
    assert last.results[0].png and last.results[0].is_main_result
    # Saving to a file object displays nothing, as in E2B.
    buffer = sbx.run_code(make + "import io\nimage.save(io.BytesIO(), format='PNG')")
    assert buffer.results == []


def test_display_helpers_stay_out_of_the_namespace(sbx):
    ex = sbx.run_code("sorted(k for k in globals() if not k.startswith('_'))")
    names = eval(ex.text)
    assert not [n for n in names if "chart" in n.lower() or "install" in n or "e2b" in n], names
    assert sbx.run_code("1 + 1").results[0].text == "2"


def test_async_chart_and_data(daemon):
    async def main():
        s = await AsyncSandbox.create(timeout=120)
        try:
            ex = await s.run_code(
                "import matplotlib.pyplot as plt\nplt.bar(['x', 'y'], [1, 2])\nplt.show()")
            chart = ex.results[0].chart
            assert isinstance(chart, BarChart)
            assert [(b.label, b.value) for b in chart.elements] == [("x", 1), ("y", 2)]
            frame = await s.run_code("import pandas as pd\npd.DataFrame({'k': ['a', 'b']})")
            assert frame.results[0].data == {"k": ["a", "b"]}
        finally:
            await s.kill()

    asyncio.run(main())


def test_js_sdk_chart_and_data(daemon):
    run_node(JS_TEST, "js rich results: all ok")
