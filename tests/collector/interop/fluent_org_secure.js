// Sends COUNT mona records to the collector with @fluent-org/logger over the Forward protocol's
// shared-key handshake and/or TLS, acks required. Exits 0 once every emit is acked, 3 when they are not
// all acked within TIMEOUT_MS (with a wrong key emit() never settles: errors only reach socketOn).
// usage: node fluent_org_secure.js PORT COUNT CONTEXT SHARED_KEY|- CA_FILE|- [TIMEOUT_MS]
const fs = require("fs");
const { FluentClient } = require("@fluent-org/logger");
const { sendRecords, exitWhenDone } = require("./send_records");

const [port, count, prefix, sharedKey, caFile, timeoutMs] = process.argv.slice(2);
const socket = { host: "127.0.0.1", port: Number(port), reconnect: { backoff: 1.5, delay: 100 } };
if (caFile !== "-") {
  socket.tls = { ca: fs.readFileSync(caFile) }; // under socket: a top-level tls would be ignored
}
const options = { socket, ack: { ackTimeout: 20000 } };
if (sharedKey !== "-") {
  options.security = { clientHostname: "node-interop-client", sharedKey };
}
const client = new FluentClient("mona.client", options);
client.socketOn("error", (err) => console.error("socket error:", err.message));

setTimeout(() => {
  console.error(`timed out: not every emit was acked within ${timeoutMs || 20000} ms`);
  process.exit(3);
}, Number(timeoutMs || 20000));

exitWhenDone(
  sendRecords(client, { count, prefix, arcClass: "node-secure", source: "node-secure", nanoseconds: 0 })
);
