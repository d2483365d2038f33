// @platformatic/job-queue adapter of benchmarks/compare.py: the same line protocol as
// benchmarks/_compare_common.py (worker and client roles), run with Node 22.
//
//   node runner.mjs worker --url URL --queue Q --concurrency C
//   node runner.mjs client --url URL
//
// The harness copies this file next to the node_modules it installed (ESM resolves packages
// from the script's directory).
import { createInterface } from 'node:readline'
import { performance } from 'node:perf_hooks'
import { Queue, RedisStorage } from '@platformatic/job-queue'

const PAYLOAD = { x: 1 }

function parseArgs (argv) {
  const out = { role: argv[0], url: '', queue: 'bench', concurrency: 10 }
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    out[key] = key === 'concurrency' ? Number(argv[i + 1]) : argv[i + 1]
  }
  return out
}

function emit (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
async function readCommand () {
  const { value, done } = await lines.next()
  return done ? { cmd: 'exit' } : JSON.parse(value)
}

function makeQueue (url, name, extra = {}) {
  const storage = new RedisStorage({ url, keyPrefix: `${name}:` })
  return new Queue({ storage, ...extra })
}

async function runParallel (n, inflight, one) {
  if (inflight <= 1) {
    for (let i = 0; i < n; i++) await one(i)
    return
  }
  let next = 0
  const lane = async () => {
    while (next < n) {
      const i = next++
      await one(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(inflight, n) }, lane))
}

async function serveWorker (args) {
  let count = 0
  let target = 0
  let reached
  const done = new Promise((resolve) => { reached = resolve })
  const queue = makeQueue(args.url, args.queue, { concurrency: args.concurrency })
  await queue.start() // connects; without a handler nothing is consumed yet
  emit({ ready: true })
  const command = await readCommand()
  if (command.cmd !== 'go') return
  target = command.jobs
  const start = performance.now()
  queue.execute(async () => { // starts the consumer
    count++
    if (count === target) reached()
    // 0.5 fails a job whose handler returns undefined, and enqueueAndWait never resolves
    // a null result; the smallest value that works is returned instead.
    return true
  })
  if (target) {
    await done
    emit({ done: (performance.now() - start) / 1000, count })
  }
  await readCommand()
  await queue.stop()
  emit({ stopped: true, count })
}

async function serveClient (args) {
  const queues = new Map()
  const get = async (name) => {
    let queue = queues.get(name)
    if (!queue) {
      queue = makeQueue(args.url, name)
      await queue.start()
      queues.set(name, queue)
    }
    return queue
  }
  emit({ ready: true })
  try {
    while (true) {
      const command = await readCommand()
      if (command.cmd === 'enqueue') {
        const queue = await get(command.queue)
        const start = performance.now()
        await runParallel(command.jobs, command.inflight, (i) =>
          queue.enqueue(`${command.prefix}${i}`, PAYLOAD))
        emit({ seconds: (performance.now() - start) / 1000 })
      } else if (command.cmd === 'request') {
        const queue = await get(command.queue)
        const timeout = (command.timeout ?? 10) * 1000
        for (let i = 0; i < Math.min(command.callers, 20); i++) {
          await queue.enqueueAndWait(`${command.prefix}warm-${i}`, PAYLOAD, { timeout })
        }
        const latencies = []
        let errors = 0
        const deadline = performance.now() + command.budget * 1000
        const start = performance.now()
        await runParallel(command.requests, command.callers, async (i) => {
          if (performance.now() > deadline) return
          const began = performance.now()
          try {
            await queue.enqueueAndWait(`${command.prefix}${i}`, PAYLOAD, { timeout })
            latencies.push((performance.now() - began) / 1000)
          } catch {
            errors++
          }
        })
        emit({ latencies, seconds: (performance.now() - start) / 1000, errors })
      } else {
        break
      }
    }
  } finally {
    for (const queue of queues.values()) await queue.stop()
  }
}

const args = parseArgs(process.argv.slice(2))
const serve = args.role === 'worker' ? serveWorker : serveClient
serve(args).then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
  process.exit(1)
})
