import { describe, expect, it, vi } from "vitest";
import { fakeFetch, json } from "../test/fakeApi";
import { ApiError, ApiUnreachable, apiFetch, errorFromResponse } from "./client";
import { getCluster, listModels } from "./endpoints";

describe("API client", () => {
  it("turns the API's JSON error into its message and status", async () => {
    const e = await errorFromResponse(json({ error: { message: "missing API key", type: "authentication_error" } }, 401));
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 401, message: "missing API key", type: "authentication_error" });
  });

  it("treats a 5xx without the API's error body (a proxy with no API behind it) as unreachable", async () => {
    expect(await errorFromResponse(new Response("", { status: 502 }))).toBeInstanceOf(ApiUnreachable);
    expect(await errorFromResponse(new Response("oops", { status: 400, statusText: "Bad Request" })))
      .toMatchObject({ status: 400, message: "HTTP 400 Bad Request" });
  });

  it("reads models and the cluster, tolerating missing lists", async () => {
    vi.stubGlobal("fetch", fakeFetch({
      "GET /v1/models": () => json({ object: "list", data: [{ id: "smol", ready: true }] }),
      "GET /api/cluster": () => json({ models: [] }),
    }));
    expect(await listModels()).toEqual([{ id: "smol", ready: true }]);
    expect(await getCluster()).toEqual({ nodes: [], models: [] });
  });

  it("rethrows aborts as they are", async () => {
    vi.stubGlobal("fetch", () => Promise.reject(new DOMException("aborted", "AbortError")));
    await expect(apiFetch("/v1/models")).rejects.toMatchObject({ name: "AbortError" });
  });
});
