// graphile-worker under conveyor-bench's protocol (written into the scratch
// folder by `conveyor-bench queue`; run from there).
//
//   node graphile.mjs enqueue <database-url> <jobs> <batch>
//       installs the schema, then adds <jobs> no-op jobs with addJobs,
//       <batch> per call, and prints {"enqueue_ms": ...} (adding only);
//   node graphile.mjs work <database-url> <concurrency>
//       prints "ready", then runs one worker until it is killed:
//       localQueue 500, completeJobBatchDelay 0, no per-job success log.
import { Logger, makeWorkerUtils, run } from "graphile-worker";

const [mode, url, a, b] = process.argv.slice(2);

// Warnings and errors only: an info line per job would measure the console.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(message);
});

if (mode === "enqueue") {
  const jobs = Number(a);
  const batch = Number(b);
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();
  const started = process.hrtime.bigint();
  for (let next = 0; next < jobs; next += batch) {
    const specs = [];
    for (let n = next; n < Math.min(next + batch, jobs); n++) {
      specs.push({ identifier: "noop", payload: { n } });
    }
    await utils.addJobs(specs);
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  await utils.release();
  console.log(JSON.stringify({ enqueue_ms: ms }));
} else if (mode === "work") {
  const concurrency = Number(a);
  console.log("ready");
  const runner = await run({
    logger,
    taskList: { noop: async () => {} },
    preset: {
      worker: {
        connectionString: url,
        concurrentJobs: concurrency,
        // graphile-worker's advice: 10 or concurrency + 2, whichever is larger.
        maxPoolSize: Math.max(10, concurrency + 2),
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
      },
    },
  });
  await runner.promise;
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
