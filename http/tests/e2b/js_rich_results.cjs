// npm `@e2b/code-interpreter` against Coppice: a matplotlib chart as `result.chart` and a
// DataFrame as `result.data` (see test_e2b_rich_results.py).
'use strict'
const assert = require('node:assert/strict')
const { Sandbox } = require('@e2b/code-interpreter')

async function main() {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    const plotted = await sbx.runCode(
      "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 4, 8], label='growth')\n" +
        "plt.xlabel('Day')\nplt.yscale('log')\nplt.title('Cells')\nplt.show()",
    )
    const chart = plotted.results[0].chart
    assert.ok(plotted.results[0].png, 'the png stays beside the chart')
    assert.equal(chart.type, 'line')
    assert.equal(chart.title, 'Cells')
    assert.equal(chart.x_label, 'Day')
    assert.equal(chart.y_scale, 'log')
    assert.deepEqual(chart.elements, [{ label: 'growth', points: [[1, 2], [2, 4], [3, 8]] }])
    const frame = await sbx.runCode("import pandas as pd\npd.DataFrame({'n': [1, 2], 's': ['a', 'b']})")
    assert.deepEqual(frame.results[0].data, { n: [1, 2], s: ['a', 'b'] })
    assert.ok(frame.results[0].formats().includes('data'))
  } finally {
    await sbx.kill()
  }
  console.log('js rich results: all ok')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
