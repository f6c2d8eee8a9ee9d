// Sends COUNT mona records to the collector with @fluent-org/logger (an independent Forward client):
// the given event mode, acks required, EventTime timestamps. Exits 0 once every emit is acked.
// usage: node fluent_org_send.js PORT COUNT MODE CONTEXT_PREFIX
const { FluentClient, EventTime } = require("@fluent-org/logger");

const [port, count, mode, prefix] = process.argv.slice(2);
const client = new FluentClient("mona.client", {
  socket: { host: "127.0.0.1", port: Number(port) },
  eventMode: mode,
  ack: { ackTimeout: 20000 },
});
client.socketOn("error", (err) => console.error("socket error:", err.message));

async function main() {
  const sends = [];
  for (let i = 0; i < Number(count); i++) {
    const record = {
      user_id: "node-user",
      context: i === 0 ? prefix : `${prefix}.step${i}`,
      message: i === 0 ? { MONA_ARC_CLASS: "node-class", score: i } : { score: i },
      export_timestamp: 1700000000 + i,
      record_id: `node-src:${i}`,
    };
    sends.push(client.emit("message", record, new EventTime(1700000000 + i, 123456789)));
  }
  await Promise.all(sends);
  await client.disconnect();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("failed:", err);
    process.exit(1);
  }
);
