// Test doubles for the API: JSON answers, SSE streams fed chunk by chunk, and a fetch that routes by path.
import type { Cluster, ClusterModel, Replica } from "../types";

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export function sseText(events: [string, unknown][]): string {
  return events.map(([event, data]) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`).join("");
}

/** An SSE response whose body arrives in the given chunks; it stays open after them unless ``close``. Aborting
 *  ``signal`` errors the body with an AbortError, as fetch does. */
export function sseResponse(chunks: string[], { close = true, signal }: { close?: boolean; signal?: AbortSignal } = {}
): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const c of chunks) controller.enqueue(encoder.encode(c));
      if (close) controller.close();
      signal?.addEventListener("abort", () => controller.error(new DOMException("aborted", "AbortError")));
    },
  });
  return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
}

export function replica(node: string, stage: number, layers: [number, number], extra: Partial<Replica> = {}): Replica {
  return {
    node, stage, layers, address: `127.0.0.1:${50051 + stage}`, state: "ready", kv_used_tokens: 0,
    kv_capacity_tokens: 16384, last_error: "", micro_batches: 0, ...extra,
  };
}

export function clusterModel(replicas: Replica[], extra: Partial<ClusterModel> = {}): ClusterModel {
  return {
    name: "smol", state: "serving", ready: true, unavailable_reason: "", num_stages: 3, running: 0, waiting: 0,
    failovers: 0, replicas, ...extra,
  };
}

export const THREE_STAGES = [replica("node1", 0, [0, 13]), replica("node2", 1, [13, 25]), replica("node3", 2, [25, 30])];

export function cluster(models: ClusterModel[]): Cluster {
  return { nodes: [], models };
}

type Handler = (init: RequestInit | undefined, url: string) => Response | Promise<Response>;

/** A fetch double: ``routes`` maps "METHOD /path" to a handler; unknown routes answer the API's JSON 404. */
export function fakeFetch(routes: Record<string, Handler>) {
  return async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const path = new URL(url, "http://localhost").pathname;
    const handler = routes[`${init?.method ?? "GET"} ${path}`];
    if (!handler) return json({ error: { message: `no route ${path}`, type: "not_found_error", code: 404 } }, 404);
    return handler(init, url);
  };
}
