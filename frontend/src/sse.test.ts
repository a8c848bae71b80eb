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

  it("handles CRLF, comments, unnamed events and multi-line data", () => {
    const events = new SseParser().push(": keep-alive\r\n\r\ndata: a\r\ndata: b\r\n\r\n");
    expect(events).toEqual([{ event: "message", data: "a\nb" }]);
  });

  it("reads OpenAI-style data-only streams", () => {
    const events = new SseParser().push('data: {"x":1}\n\ndata: [DONE]\n\n');
    expect(events.map((e) => e.data)).toEqual(['{"x":1}', "[DONE]"]);
  });
});
