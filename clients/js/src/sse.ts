/** One Server-Sent Events message. */
export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

/**
 * Turns chunks of an event-stream body into messages, whatever the chunk
 * boundaries (a UTF-8 character or a line may be split anywhere).
 */
export class SseParser {
  private decoder = new TextDecoder();
  private buffer = "";
  private id: string | undefined;
  private event = "";
  private data: string[] = [];

  /** Feeds body bytes; calls `onMessage` for each complete message. */
  feed(chunk: Uint8Array, onMessage: (message: SseMessage) => void): void {
    this.buffer += this.decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, end);
      const eol = this.buffer.startsWith("\r\n", end) ? 2 : 1;
      // A lone \r at the end may be half of \r\n: wait for more.
      if (eol === 1 && this.buffer[end] === "\r" && end === this.buffer.length - 1) break;
      this.buffer = this.buffer.slice(end + eol);
      this.line(line, onMessage);
    }
  }

  private line(line: string, onMessage: (message: SseMessage) => void): void {
    if (line === "") {
      if (this.data.length > 0) {
        onMessage({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      }
      this.event = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}
