// Calls to the Shardline API: models, cluster state, and a streamed answer (POST /api/model/stream).
import { SseParser } from "./sse";
import type { Cluster, DoneEvent, GenerationParams, ModelCard, StartEvent, TokenEvent } from "./types";

const KEY_STORAGE = "shardline.apiKey";

export class ApiError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

/** The API could not be reached at all (not an HTTP error). */
export class ApiUnreachable extends Error {}

export function apiKey(): string {
  return localStorage.getItem(KEY_STORAGE) ?? "";
}

export function setApiKey(key: string): void {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

async function call(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiUnreachable("The Shardline API cannot be reached. Is it running (make up)?");
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

/** The API's message from an error response ({"error": {"message"}}), or the status text. */
export async function errorMessage(response: Response): Promise<string> {
  try {
    const body = await response.json();
    return body?.error?.message ?? `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

export async function listModels(): Promise<ModelCard[]> {
  return (await (await call("/v1/models")).json()).data;
}

export async function getCluster(): Promise<Cluster> {
  return (await call("/api/cluster")).json();
}

export interface StreamHandlers {
  onStart(e: StartEvent): void;
  onFirstToken(e: { timeToFirstToken: number; queueTime: number }): void;
  onToken(e: TokenEvent): void;
  onDone(e: DoneEvent): void;
}

/** Streams one answer; resolves when the stream ends. Aborting ``signal`` cancels generation on the server. */
export async function streamAnswer(params: GenerationParams, signal: AbortSignal, on: StreamHandlers): Promise<void> {
  const response = await call("/api/model/stream", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(params),
    signal,
  });
  if (!response.body) throw new ApiError(response.status, "the API sent no stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const event of parser.push(value)) {
      const data = JSON.parse(event.data);
      if (event.event === "start") on.onStart(data);
      else if (event.event === "first_token") on.onFirstToken(data);
      else if (event.event === "token") on.onToken(data);
      else if (event.event === "done") on.onDone(data);
      else if (event.event === "error") throw new ApiError(data?.error?.code ?? 500, data?.error?.message ?? "error");
    }
  }
}
