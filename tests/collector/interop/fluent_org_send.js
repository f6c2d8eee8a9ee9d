// Sends COUNT mona records to the collector with @fluent-org/logger (an independent Forward client):
// the given event mode, acks required, EventTime timestamps. Exits 0 once every emit is acked.
// usage: node fluent_org_send.js PORT COUNT MODE CONTEXT_PREFIX
const { FluentClient } = require("@fluent-org/logger");
const { sendRecords, exitWhenDone } = require("./send_records");

const [port, count, mode, prefix] = process.argv.slice(2);
const client = new FluentClient("mona.client", {
  socket: { host: "127.0.0.1", port: Number(port) },
  eventMode: mode,
  ack: { ackTimeout: 20000 },
});
client.socketOn("error", (err) => console.error("socket error:", err.message));

exitWhenDone(
  sendRecords(client, { count, prefix, arcClass: "node-class", source: "node-src", nanoseconds: 123456789 })
);
