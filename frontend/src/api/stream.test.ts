import { beforeEach, describe, expect, it, vi } from "vitest";
import { fakeFetch, json, sseResponse, sseText } from "../test/fakeApi";
import type { GenerationRequest } from "../types";
import { ApiError, ApiUnreachable } from "./client";
import { setApiKey } from "./keyStore";
import { streamAnswer } from "./stream";

const REQUEST: GenerationRequest = { text: "hi", model: "smol", max_tokens: 8, temperature: 0, top_p: 1, chat: true };
const START = { id: "r1", model: "smol", promptTokens: 30, maxTokens: 8, nodeCount: 3,
                stages: [{ node: "node1", address: "a:1", layers: [0, 13] }] };
const DONE = { text: "Hello there", processingTime: 900, queueTime: 0.4, timeToFirstToken: 210, tokensPerSecond: 12.5,
               nodeCount: 3, usage: { prompt_tokens: 30, completion_tokens: 3 }, finish_reason: "stop",
               stages: [{ node: "node1", address: "a:1", layers: [0, 13], seconds: 0.25 }] };

beforeEach(() => setApiKey(""));

describe("streamAnswer", () => {
  it("calls back for each event, token by token, and resolves with done (chunks split anywhere)", async () => {
    const text = sseText([["start", START], ["first_token", { timeToFirstToken: 210, queueTime: 0.4 }],
                          ["token", { text: "Hello", tokens: 1, elapsedMs: 220, tokensPerSecond: 0 }],
                          ["token", { text: " there", tokens: 3, elapsedMs: 400, tokensPerSecond: 11 }],
                          ["done", DONE]]);
    const chunks = text.match(/[\s\S]{1,13}/g)!;
    const seen: string[] = [];
    let body: unknown;
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": (init) => {
      body = JSON.parse(String(init?.body));
      return sseResponse(chunks);
    } }));
    const done = await streamAnswer(REQUEST, new AbortController().signal, {
      onStart: (e) => seen.push(`start ${e.nodeCount}`),
      onFirstToken: (e) => seen.push(`ttft ${e.timeToFirstToken}`),
      onToken: (e) => seen.push(`token ${e.text}`),
    });
    expect(seen).toEqual(["start 3", "ttft 210", "token Hello", "token  there"]);
    expect(done.stages[0].seconds).toBe(0.25);
    expect(body).toEqual(REQUEST);
  });

  it("raises the API's message from an SSE error event", async () => {
    const error = { error: { message: "node2 at 127.0.0.1:50052 (layers 13-25) is down", type: "service_unavailable",
                             param: null, code: 503 } };
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": () =>
      sseResponse([sseText([["start", START], ["error", error]])]) }));
    const failure = streamAnswer(REQUEST, new AbortController().signal);
    await expect(failure).rejects.toBeInstanceOf(ApiError);
    await expect(failure).rejects.toMatchObject({ status: 503, message: error.error.message });
  });

  it("raises the API's message from an error before the stream (JSON with a status)", async () => {
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": () =>
      json({ error: { message: "model 'nope' is not served", type: "not_found_error", code: 404 } }, 404) }));
    await expect(streamAnswer({ ...REQUEST, model: "nope" }, new AbortController().signal))
      .rejects.toMatchObject({ status: 404, message: "model 'nope' is not served" });
  });

  it("says the API cannot be reached when fetch fails", async () => {
    vi.stubGlobal("fetch", () => Promise.reject(new TypeError("Failed to fetch")));
    await expect(streamAnswer(REQUEST, new AbortController().signal)).rejects.toBeInstanceOf(ApiUnreachable);
  });

  it("fails when the stream ends without done", async () => {
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": () => sseResponse([sseText([["start", START]])]) }));
    await expect(streamAnswer(REQUEST, new AbortController().signal)).rejects.toThrow(/ended before/);
  });

  it("stops with an AbortError when aborted mid-stream, and the fetch saw the signal", async () => {
    const controller = new AbortController();
    let signal: AbortSignal | undefined;
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": (init) => {
      signal = init?.signal ?? undefined;
      return sseResponse([sseText([["start", START]])], { close: false, signal: signal });
    } }));
    const running = streamAnswer(REQUEST, controller.signal, { onStart: () => controller.abort() });
    await expect(running).rejects.toMatchObject({ name: "AbortError" });
    expect(signal?.aborted).toBe(true);
  });

  it("sends the stored API key as a Bearer token", async () => {
    setApiKey("s3cret");
    let auth: string | null = null;
    vi.stubGlobal("fetch", fakeFetch({ "POST /api/model/stream": (init) => {
      auth = new Headers(init?.headers).get("Authorization");
      return sseResponse([sseText([["done", DONE]])]);
    } }));
    await streamAnswer(REQUEST, new AbortController().signal);
    expect(auth).toBe("Bearer s3cret");
    expect(localStorage.getItem("shardline.apiKey")).toBe("s3cret");
  });
});
