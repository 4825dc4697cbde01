// The unmodified npm `e2b` SDK (pinned in http/tests/e2b/clients/package.json) against a
// Coppice daemon. Run by test_e2b_sdk.py::test_js_sdk with E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY set, NODE_PATH at the installed clients, under Node 22. Prints "js e2b sdk: all
// ok" at the end; any failure exits non-zero.
'use strict'
const assert = require('node:assert/strict')
const { Sandbox, CommandExitError, TimeoutError, NotFoundError, FileType } = require('e2b')

async function step(name, fn) {
  const t0 = Date.now()
  await fn()
  console.log(`ok   ${name} (${Date.now() - t0} ms)`)
}

async function main() {
  const tag = 'js' + Math.random().toString(36).slice(2, 8)
  const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { tag }, envs: { WIDE: 'js' } })
  try {
    await step('commands.run with env, cwd, user', async () => {
      const r = await sbx.commands.run('echo $WIDE $X; pwd; id -un', { envs: { X: 'y' }, cwd: '/tmp' })
      assert.equal(r.stdout, 'js y\n/tmp\nuser\n')
      assert.equal((await sbx.commands.run('id -un', { user: 'root' })).stdout, 'root\n')
    })
    await step('non-zero exit and timeout', async () => {
      await assert.rejects(sbx.commands.run('exit 4'), (e) => e instanceof CommandExitError && e.exitCode === 4)
      await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1000 }), (e) => e instanceof TimeoutError)
    })
    await step('background, stdin, list, connect, kill', async () => {
      const h = await sbx.commands.run('read l; echo got:$l', { background: true, stdin: true })
      await sbx.commands.sendStdin(h.pid, 'hi\n')
      assert.equal((await h.wait()).stdout, 'got:hi\n')
      const long = await sbx.commands.run('sleep 600', { background: true })
      const other = await Sandbox.connect(sbx.sandboxId)
      assert.ok((await other.commands.list()).some((p) => p.pid === long.pid))
      assert.equal(await other.commands.kill(long.pid), true)
      assert.equal(await other.commands.kill(999999), false)
    })
    await step('pty create, input, resize, output', async () => {
      let out = ''
      const dec = new TextDecoder()
      const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d) } })
      await sbx.pty.sendInput(h.pid, new TextEncoder().encode('stty size\n'))
      // Resize only after the first `stty size` answered, so each sees its own size.
      for (let i = 0; i < 100 && !/24 80/.test(out); i++) await new Promise((r) => setTimeout(r, 50))
      await sbx.pty.resize(h.pid, { cols: 100, rows: 40 })
      await sbx.pty.sendInput(h.pid, new TextEncoder().encode('stty size; exit\n'))
      await h.wait()
      assert.match(out, /24 80/)
      assert.match(out, /40 100/)
    })
    await step('files', async () => {
      await sbx.files.write('/home/user/a.txt', 'hello js')
      assert.equal(await sbx.files.read('a.txt'), 'hello js')
      const bytes = new Uint8Array(1024).map((_, i) => i % 256)
      await sbx.files.write('b.bin', bytes)
      assert.deepEqual(await sbx.files.read('b.bin', { format: 'bytes' }), bytes)
      assert.equal(await sbx.files.makeDir('jd/sub'), true)
      const entries = await sbx.files.list('jd')
      assert.deepEqual(entries.map((e) => e.name), ['sub'])
      assert.equal(entries[0].type, FileType.DIR)
      await sbx.files.rename('a.txt', 'c.txt')
      assert.equal(await sbx.files.exists('a.txt'), false)
      await sbx.files.remove('c.txt')
      assert.equal(await sbx.files.exists('c.txt'), false)
      await assert.rejects(sbx.files.read('missing.txt'), (e) => e instanceof NotFoundError)
    })
    await step('watchDir streams events', async () => {
      await sbx.files.makeDir('jw')
      const seen = []
      const w = await sbx.files.watchDir('jw', (e) => seen.push(e.name))
      await sbx.files.write('jw/n.txt', '1')
      for (let i = 0; i < 50 && !seen.includes('n.txt'); i++) await new Promise((r) => setTimeout(r, 100))
      await w.stop()
      assert.ok(seen.includes('n.txt'), JSON.stringify(seen))
    })
    await step('watchDir recursive: envd events in nested directories', async () => {
      await sbx.files.makeDir('jr/a')
      const seen = new Set()
      const w = await sbx.files.watchDir('jr', (e) => seen.add(`${e.name} ${e.type}`), { recursive: true })
      const expect = async (want) => {
        for (let i = 0; i < 100 && !want.every((x) => seen.has(x)); i++) await new Promise((r) => setTimeout(r, 50))
        assert.ok(want.every((x) => seen.has(x)), `${JSON.stringify(want)} in ${JSON.stringify([...seen])}`)
      }
      await sbx.files.makeDir('jr/a/b')
      await expect(['a/b create', 'a/b chmod'])
      await sbx.files.write('jr/a/b/f.txt', 'data')
      await expect(['a/b/f.txt create', 'a/b/f.txt chmod', 'a/b/f.txt write'])
      await sbx.files.rename('jr/a/b/f.txt', 'jr/a/g.txt')
      await expect(['a/b/f.txt rename', 'a/g.txt create'])
      await sbx.files.remove('jr/a/g.txt')
      await expect(['a/g.txt remove'])
      await w.stop()
    })
    await step('lifecycle: info, list, timeout, pause/connect, metrics', async () => {
      const info = await sbx.getInfo()
      assert.equal(info.sandboxId, sbx.sandboxId)
      assert.equal(info.state, 'running')
      const page = await Sandbox.list({ query: { metadata: { tag } } }).nextItems()
      assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
      await sbx.setTimeout(300_000)
      await sbx.files.write('kept.txt', 'kept')
      assert.equal(await sbx.pause(), true)
      assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'paused')
      const back = await Sandbox.connect(sbx.sandboxId)
      assert.equal(await back.files.read('kept.txt'), 'kept')
      const m = await sbx.getMetrics()
      assert.ok(m.length === 1 && m[0].memUsed > 0)
    })
    await step('pause keepMemory false: files kept, processes boot afresh', async () => {
      const h = await sbx.commands.run('sleep 600', { background: true })
      assert.equal(await sbx.pause({ keepMemory: false }), true)
      const back = await Sandbox.connect(sbx.sandboxId)
      assert.equal(await back.files.read('kept.txt'), 'kept')
      const pids = (await back.commands.list()).map((p) => p.pid)
      assert.ok(!pids.includes(h.pid), JSON.stringify(pids))
    })
  } finally {
    await sbx.kill()
  }
  await step('killed sandbox is not found', async () => {
    await assert.rejects(Sandbox.connect(sbx.sandboxId))
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  })
  console.log('js e2b sdk: all ok')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
