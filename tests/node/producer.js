// A Node.js producer of ai_usage events, written the way the README's "Node.js producers"
// section says, so that every trap it lists is avoided:
//   node producer.js celery-node 1|2 <broker-url> < events.json
//   node producer.js celery-ts 2 <broker-url> < events.json
// Every event but the last two goes as one `ai_usage.record` message (keyword arguments, so
// applyAsync, never delay); the last two go together as one `ai_usage.record_batch`.
// Prints "sent N messages" and exits 0 once Redis has answered them all; a refused LPUSH is an
// unhandled rejection, so the process exits 1, never 0.
"use strict";

const QUEUE = "ai_usage"; // both libraries default to "celery", which nothing consumes

function readStdin() {
  return JSON.parse(require("fs").readFileSync(0, "utf8"));
}

function split(events) {
  const single = events.slice(0, -2);
  const batch = events.slice(-2);
  return { single, batch };
}

async function celeryNode(protocol, broker, events) {
  const celery = require("celery-node");
  // The backend is connected too by isReady(): name the broker, or it tries amqp://.
  const client = celery.createClient(broker, broker, QUEUE);
  client.conf.TASK_PROTOCOL = protocol;
  // sendTask publishes only once the connections are ready and does not return that promise:
  // without this await, disconnect() quits first and the process exits 0 having sent nothing.
  await client.isReady();
  const { single, batch } = split(events);
  const record = client.createTask("ai_usage.record");
  for (const event of single) {
    record.applyAsync([], event); // delay(...) would send the event as a positional argument
  }
  client.createTask("ai_usage.record_batch").applyAsync([batch]);
  // Each send is a promise chain this library keeps to itself: let every chain reach its
  // LPUSH before disconnect() queues QUIT, which ioredis then sends after them.
  await new Promise((resolve) => setImmediate(resolve));
  await client.disconnect(); // QUIT is answered after every LPUSH before it
  return single.length + 1;
}

async function celeryTs(broker, events) {
  const celery = require("celery-ts");
  // No result backend: with one, end() waits for results this worker never stores and hangs.
  const client = celery.createClient({ brokerUrl: broker });
  const send = (name, options) => {
    const result = client.createTask(name).applyAsync({ queue: QUEUE, ...options });
    // Without a backend the Result's promise rejects at once; unhandled, Node kills the
    // process before the LPUSH has been written. Nothing will ever be read from it.
    result.get().catch(() => {});
  };
  const { single, batch } = split(events);
  for (const event of single) {
    send("ai_usage.record", { args: [], kwargs: event });
  }
  send("ai_usage.record_batch", { args: [batch], kwargs: {} });
  await client.end(); // QUIT, not disconnect(): disconnect() drops commands not yet written
  return single.length + 1;
}

async function main() {
  const [library, protocol, broker] = process.argv.slice(2);
  const events = readStdin();
  const sent =
    library === "celery-node"
      ? await celeryNode(Number(protocol), broker, events)
      : await celeryTs(broker, events);
  console.log(`sent ${sent} messages`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
