// Incremental parser for server-sent events (text/event-stream): feed it text as it arrives, get back
// the complete events. Handles CRLF and CR line ends, comments, multi-line data and events split anywhere.

export interface SseEvent {
  event: string; // "message" when the stream names none
  data: string;
}

export class SseParser {
  private buffer = "";

  /** Adds a chunk of the stream; returns the events it completed. */
  push(chunk: string): SseEvent[] {
    this.buffer += chunk;
    const events: SseEvent[] = [];
    for (;;) {
      // a CR at the very end may be the first half of a CRLF: wait for the next chunk
      const normalized = this.buffer.replace(/\r\n|\r(?!$)/g, "\n");
      const end = normalized.indexOf("\n\n");
      if (end === -1) {
        this.buffer = normalized;
        return events;
      }
      const parsed = parseBlock(normalized.slice(0, end));
      this.buffer = normalized.slice(end + 2);
      if (parsed) events.push(parsed);
    }
  }
}

function parseBlock(block: string): SseEvent | null {
  let event = "message";
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue; // comments keep connections alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}
