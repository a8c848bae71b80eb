import { describe, expect, it } from "vitest";
import { SseParser } from "./sse";

describe("SseParser", () => {
  it("parses named events with JSON data", () => {
    const events = new SseParser().push('event: token\ndata: {"text":"Hi"}\n\nevent: done\ndata: {}\n\n');
    expect(events).toEqual([{ event: "token", data: '{"text":"Hi"}' }, { event: "done", data: "{}" }]);
  });

  it("keeps an event split across chunks until it is complete", () => {
    const p = new SseParser();
    expect(p.push("event: tok")).toEqual([]);
    expect(p.push('en\ndata: {"a"')).toEqual([]);
    expect(p.push(":1}\n")).toEqual([]);
    expect(p.push("\n")).toEqual([{ event: "token", data: '{"a":1}' }]);
  });

  it("gives the same events whatever the chunk boundaries", () => {
    const stream = 'event: start\ndata: {"id":"r1"}\n\nevent: token\ndata: {"text":"a\\nb"}\r\n\r\nevent: done\ndata: {}\n\n';
    const whole = new SseParser().push(stream);
    for (let size = 1; size <= 7; size++) {
      const p = new SseParser();
      const events = [];
      for (let i = 0; i < stream.length; i += size) events.push(...p.push(stream.slice(i, i + size)));
      expect(events).toEqual(whole);
    }
    expect(whole.map((e) => e.event)).toEqual(["start", "token", "done"]);
  });

  it("handles CRLF split between chunks, lone CR, comments, unnamed events and multi-line data", () => {
    const p = new SseParser();
    expect(p.push(": keep-alive\r\n\r")).toEqual([]);
    expect(p.push("\ndata: a\rdata: b\r\n\r\n")).toEqual([{ event: "message", data: "a\nb" }]);
  });

  it("reads a field without a space after the colon, and ignores unknown fields and empty events", () => {
    expect(new SseParser().push("event:error\nid: 7\nretry: 10\ndata:{}\n\nevent: x\n\n")).toEqual(
      [{ event: "error", data: "{}" }]);
  });

  it("reads OpenAI-style data-only streams", () => {
    const events = new SseParser().push('data: {"x":1}\n\ndata: [DONE]\n\n');
    expect(events.map((e) => e.data)).toEqual(['{"x":1}', "[DONE]"]);
  });
});
