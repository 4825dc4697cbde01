// npm `@e2b/code-interpreter` against Coppice (see test_e2b_code_interpreter.py: enabled once
// the agent serves /execute and /contexts).
'use strict'
const assert = require('node:assert/strict')
const { Sandbox } = require('@e2b/code-interpreter')

async function main() {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    await sbx.runCode('x = 41')
    assert.equal((await sbx.runCode('x + 1')).text, '42')
    const printed = await sbx.runCode('print(x)')
    assert.deepEqual(printed.logs.stdout, ['41\n'])
    const err = await sbx.runCode('1/0')
    assert.equal(err.error.name, 'ZeroDivisionError')
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
    await sbx.runCode('y = 5', { context: ctx })
    assert.equal((await sbx.runCode('y', { context: ctx })).text, '5')
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
    await sbx.removeCodeContext(ctx)
    // JavaScript on Deno's kernel, its state kept between calls.
    await sbx.runCode('const n = 20', { language: 'js' })
    assert.equal((await sbx.runCode('n + 1', { language: 'js' })).text, '21')
    assert.ok((await sbx.listCodeContexts()).some((c) => c.language === 'javascript'))
  } finally {
    await sbx.kill()
  }
  // A private sandbox: the SDK carries its traffic token to the code interpreter's port.
  const priv = await Sandbox.create({ timeoutMs: 60_000, network: { allowPublicTraffic: false } })
  try {
    assert.ok(priv.trafficAccessToken, 'a private sandbox has a traffic access token')
    assert.equal((await priv.runCode('6 * 7')).text, '42')
  } finally {
    await priv.kill()
  }
  console.log('js code interpreter: all ok')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
