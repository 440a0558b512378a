// A Broker webhook receiver: verifies each request's signature with the
// official Standard Webhooks library, skips messages it has handled already
// (retries carry the same webhook-id), and prints one JSON line per event.
//
//   WEBHOOK_SECRET=whsec_… PORT=4000 node receiver.mjs
import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error("WEBHOOK_SECRET is required (the secret Broker answered when the webhook was added)");
  process.exit(1);
}
const webhook = new Webhook(secret);
// A real app keeps this in its database, with what it did for the event.
const handled = new Set();

const server = createServer((request, response) => {
  const chunks = [];
  let size = 0;
  request.on("data", (chunk) => {
    size += chunk.length;
    if (size <= 1 << 20) chunks.push(chunk);
  });
  request.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    let message;
    try {
      // Throws unless the signature is valid and the timestamp recent.
      message = webhook.verify(body, request.headers);
    } catch (error) {
      response.writeHead(400).end(String(error.message ?? error));
      return;
    }
    const id = request.headers["webhook-id"];
    if (!handled.has(id)) {
      handled.add(id);
      const { event, collection_id, data } = message.data;
      console.log(JSON.stringify({ id, type: message.type, event, collection_id, data }));
    }
    response.writeHead(204).end();
  });
});

server.listen(Number(process.env.PORT ?? 4000), process.env.HOST ?? "127.0.0.1", () => {
  console.error(`listening on http://${server.address().address}:${server.address().port}`);
});
