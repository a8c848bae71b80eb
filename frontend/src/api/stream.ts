// One streamed answer from POST /api/model/stream (server-sent events: start, first_token, token, done,
// error). Aborting the signal closes the connection, and the server then stops the generation and frees its
// KV cache on every node.
import type { DoneEvent, FirstTokenEvent, GenerationRequest, StartEvent, TokenEvent } from "../types";
import { ApiError, apiFetch, errorMessageOf } from "./client";
import { SseParser, type SseEvent } from "./sse";

export interface StreamHandlers {
  onStart?(e: StartEvent): void;
  onFirstToken?(e: FirstTokenEvent): void;
  onToken?(e: TokenEvent): void;
}

/** What one SSE event means for the answer: handled, finished (done), or failed (error). */
export function interpret(event: SseEvent, on: StreamHandlers): DoneEvent | null {
  let data: unknown;
  try {
    data = JSON.parse(event.data);
  } catch {
    throw new ApiError(502, `the answer stream sent an event that is not JSON: ${event.data.slice(0, 80)}`);
  }
  switch (event.event) {
    case "start":
      on.onStart?.(data as StartEvent);
      return null;
    case "first_token":
      on.onFirstToken?.(data as FirstTokenEvent);
      return null;
    case "token":
      on.onToken?.(data as TokenEvent);
      return null;
    case "done":
      return data as DoneEvent;
    case "error": {
      const known = errorMessageOf(data);
      const code = (data as { error?: { code?: unknown } }).error?.code;
      throw new ApiError(typeof code === "number" ? code : 500, known?.message ?? "the generation failed",
                         known?.type ?? "");
    }
    default:
      return null; // events this UI does not know are skipped
  }
}

/** Streams one answer; resolves with the `done` event. Rejects with ApiError (the API's message), ApiUnreachable,
 *  or an AbortError once ``signal`` is aborted. */
export async function streamAnswer(request: GenerationRequest, signal: AbortSignal,
                                   on: StreamHandlers = {}): Promise<DoneEvent> {
  const response = await apiFetch("/api/model/stream", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(request),
    signal,
  });
  if (!response.body) throw new ApiError(502, "the API answered without a stream");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new ApiError(502, "the answer stream ended before the answer was complete");
      for (const event of parser.push(decoder.decode(value, { stream: true }))) {
        const finished = interpret(event, on);
        if (finished) return finished;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // closes the connection if we stopped reading early
  }
}
