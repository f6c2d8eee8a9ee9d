// The records both interop scripts send: COUNT mona records in one ARC (the first carries its
// class), each with an EventTime. Resolves once every emit was acked, then disconnects.
const { EventTime } = require("@fluent-org/logger");

async function sendRecords(client, { count, prefix, arcClass, source, nanoseconds }) {
  const sends = [];
  for (let i = 0; i < Number(count); i++) {
    const record = {
      user_id: "node-user",
      context: i === 0 ? prefix : `${prefix}.step${i}`,
      message: i === 0 ? { MONA_ARC_CLASS: arcClass, score: i } : { score: i },
      export_timestamp: 1700000000 + i,
      record_id: `${source}:${i}`,
    };
    sends.push(client.emit("message", record, new EventTime(1700000000 + i, nanoseconds)));
  }
  await Promise.all(sends);
  await client.disconnect();
}

function exitWhenDone(promise) {
  promise.then(
    () => process.exit(0),
    (err) => {
      console.error("failed:", err);
      process.exit(1);
    }
  );
}

module.exports = { sendRecords, exitWhenDone };
