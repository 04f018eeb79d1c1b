// BullMQ under conveyor-bench's protocol (written into the scratch folder by
// `conveyor-bench queue`; run from there).
//
//   node bullmq.mjs enqueue <redis-url> <prefix> <jobs> <batch>
//       adds <jobs> no-op jobs with addBulk, <batch> per call, and prints
//       {"enqueue_ms": ...} (adding only);
//   node bullmq.mjs work <redis-url> <prefix> <concurrency>
//       prints "ready", then runs one Worker until it is killed. Completed
//       jobs are kept (BullMQ's default), as Conveyor keeps its done rows.
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const [mode, url, prefix, a, b] = process.argv.slice(2);
// BullMQ's workers need maxRetriesPerRequest: null on their connection.
const connection = new IORedis(url, { maxRetriesPerRequest: null });

if (mode === "enqueue") {
  const jobs = Number(a);
  const batch = Number(b);
  const queue = new Queue("bench", { connection, prefix });
  await queue.waitUntilReady();
  const started = process.hrtime.bigint();
  for (let next = 0; next < jobs; next += batch) {
    const specs = [];
    for (let n = next; n < Math.min(next + batch, jobs); n++) {
      specs.push({ name: "noop", data: { n } });
    }
    await queue.addBulk(specs);
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  await queue.close();
  await connection.quit();
  console.log(JSON.stringify({ enqueue_ms: ms }));
} else if (mode === "work") {
  const concurrency = Number(a);
  console.log("ready");
  const worker = new Worker("bench", async () => {}, { connection, prefix, concurrency });
  worker.on("error", (err) => console.error(err));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
