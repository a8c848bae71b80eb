import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import App from "./App";
import { cluster, clusterModel, fakeFetch, json, sseResponse, sseText, THREE_STAGES } from "./test/fakeApi";
import type { Cluster } from "./types";

const MODELS = { data: [{ id: "smol", ready: true, max_model_len: 8192, num_stages: 3 }] };
const READY = cluster([clusterModel(THREE_STAGES)]);
const START = { id: "r1", model: "smol", promptTokens: 30, maxTokens: 64, nodeCount: 3,
                stages: THREE_STAGES.map((r) => ({ node: r.node, address: r.address, layers: r.layers })) };
const DONE = { text: "Paris is the capital.", processingTime: 900, queueTime: 0.3, timeToFirstToken: 210,
               tokensPerSecond: 12.5, nodeCount: 3, usage: { prompt_tokens: 30, completion_tokens: 5 },
               finish_reason: "stop", stages: START.stages.map((s, i) => ({ ...s, seconds: 0.1 * (i + 1) })) };

function stack(overrides: Record<string, Parameters<typeof fakeFetch>[0][string]> = {}, clusterState: () => Cluster = () => READY) {
  const f = vi.fn(fakeFetch({
    "GET /v1/models": () => json(MODELS),
    "GET /api/cluster": () => json(clusterState()),
    ...overrides,
  }));
  vi.stubGlobal("fetch", f);
  return f;
}

async function ask(text: string) {
  const box = await screen.findByLabelText("Prompt");
  await waitFor(() => expect((screen.getByLabelText("Model") as HTMLSelectElement).value).toBe("smol"));
  fireEvent.change(box, { target: { value: text } });
  fireEvent.keyDown(box, { key: "Enter", ctrlKey: true });
}

const current = () => within(screen.getByTestId("current-answer"));

describe("App", () => {
  it("streams an answer and fills in its figures, then lists it among earlier answers", async () => {
    let release: (() => void) | undefined;
    stack({ "POST /api/model/stream": () => {
      const first = sseText([["start", START], ["first_token", { timeToFirstToken: 210, queueTime: 0.3 }],
                             ["token", { text: "Paris", tokens: 1, elapsedMs: 230, tokensPerSecond: 0 }]]);
      const body = new ReadableStream<Uint8Array>({ start(c) {
        c.enqueue(new TextEncoder().encode(first));
        release = () => { c.enqueue(new TextEncoder().encode(sseText([
          ["token", { text: " is the capital.", tokens: 5, elapsedMs: 600, tokensPerSecond: 11 }], ["done", DONE]]))); c.close(); };
      } });
      return new Response(body);
    } });
    render(<App pollMs={20} />);
    await ask("What is the capital of France?");
    await waitFor(() => expect(current().getByTestId("answer-text").textContent).toBe("Paris▍"));
    expect(current().getByTestId("answer").getAttribute("data-status")).toBe("streaming");
    expect(current().getByTestId("ttft").textContent).toBe("210 ms");
    expect(current().getByTestId("node-count").textContent).toBe("3");
    expect(screen.getByRole("button", { name: "Cancel" })).toBeTruthy();
    release!();
    await waitFor(() => expect(current().getByTestId("answer").getAttribute("data-status")).toBe("done"));
    expect(current().getByTestId("answer-text").textContent).toBe("Paris is the capital.");
    expect(current().getByTestId("tps").textContent).toBe("12.5");
    expect(current().getByTestId("total").textContent).toBe("900 ms");
    expect(within(current().getByTestId("stage-times")).getAllByRole("row")).toHaveLength(4);

    await ask("And of Spain?");
    await waitFor(() => expect(screen.getByTestId("history").textContent).toContain("What is the capital of France?"));
  });

  it("Cancel aborts the request (the server then stops generating)", async () => {
    let signal: AbortSignal | undefined;
    stack({ "POST /api/model/stream": (init) => {
      signal = init?.signal ?? undefined;
      return sseResponse([sseText([["start", START], ["token", { text: "Once", tokens: 1, elapsedMs: 1, tokensPerSecond: 0 }]])],
                         { close: false, signal });
    } });
    render(<App pollMs={20} />);
    await ask("Tell me a long story.");
    await waitFor(() => expect(current().getByTestId("answer-text").textContent).toContain("Once"));
    fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    await waitFor(() => expect(current().getByTestId("answer").getAttribute("data-status")).toBe("cancelled"));
    expect(signal?.aborted).toBe(true);
    expect(current().getByTestId("answer-text").textContent).toBe("Once");
    expect(screen.queryByRole("button", { name: "Cancel" })).toBeNull();
  });

  it("shows the API's error message (before and during the stream)", async () => {
    let calls = 0;
    stack({ "POST /api/model/stream": () => ++calls === 1
      ? json({ error: { message: "the prompt (9000 tokens) is longer than the context (8192)", code: 400 } }, 400)
      : sseResponse([sseText([["start", START], ["error", { error: { message: "node2 is down", code: 503 } }]])]) });
    render(<App pollMs={20} />);
    await ask("x");
    expect((await current().findByRole("alert")).textContent).toContain("longer than the context");
    await ask("y");
    await waitFor(() => expect(current().getByRole("alert").textContent).toBe("node2 is down (HTTP 503)"));
  });

  it("says when the API is down, and recovers when it is back", async () => {
    let up = false;
    const f = fakeFetch({ "GET /v1/models": () => json(MODELS), "GET /api/cluster": () => json(READY) });
    vi.stubGlobal("fetch", (input: RequestInfo | URL, init?: RequestInit) =>
      up ? f(input, init) : Promise.reject(new TypeError("Failed to fetch")));
    render(<App pollMs={20} />);
    expect((await screen.findByTestId("api-down")).textContent).toMatch(/API down: The Shardline API cannot be reached/);
    expect(screen.getByTestId("connection").textContent).toBe("offline");
    up = true;
    await waitFor(() => expect(screen.queryByTestId("api-down")).toBeNull());
    expect(await screen.findAllByTestId("node")).toHaveLength(3);
    expect(screen.getByTestId("connection").textContent).toBe("live");
  });

  it("shows a loading model as loading, with the cluster's reason", async () => {
    stack({ "GET /v1/models": () => json({ data: [{ id: "smol", ready: false }] }) },
          () => cluster([clusterModel(THREE_STAGES.map((r) => ({ ...r, state: "loading" })),
                                      { state: "loading", ready: false, unavailable_reason: "node3 is loading its shard" })]));
    render(<App pollMs={20} />);
    expect((await screen.findByTestId("model-unavailable")).textContent).toBe("smol is loading. node3 is loading its shard");
    await waitFor(() => expect(screen.getByRole("option").textContent).toBe("smol (loading…)"));
    expect(screen.getAllByTestId("node").map((n) => n.getAttribute("data-state"))).toEqual(["loading", "loading", "loading"]);
  });

  it("pulses the nodes whose micro-batch count grew between polls", async () => {
    let batches = 0;
    stack({}, () => cluster([clusterModel(THREE_STAGES.map((r, i) => ({ ...r, micro_batches: i === 1 ? (batches += 1) : 7 })))]));
    render(<App pollMs={20} />);
    await waitFor(() => expect(screen.getAllByTestId("activity").map((a) => a.getAttribute("data-active")))
      .toEqual(["false", "true", "false"]));
  });

  it("asks for an API key on 401 and sends it once saved", async () => {
    const f = stack();
    const guarded = fakeFetch({ "GET /v1/models": () => json(MODELS), "GET /api/cluster": () => json(READY) });
    f.mockImplementation(async (input, init) => new Headers(init?.headers).get("Authorization") === "Bearer k1"
      ? guarded(input, init)
      : json({ error: { message: "missing API key", type: "authentication_error", code: 401 } }, 401));
    render(<App pollMs={20} />);
    expect((await screen.findByTestId("api-down")).textContent).toContain("API key needed: missing API key");
    fireEvent.change(screen.getByLabelText("API key"), { target: { value: "k1" } });
    fireEvent.click(screen.getByRole("button", { name: "Save" }));
    await waitFor(() => expect(screen.queryByTestId("api-down")).toBeNull());
    expect(localStorage.getItem("shardline.apiKey")).toBe("k1");
  });

  it("sends each message with the conversation before it, and starts over on New conversation", async () => {
    const bodies: Record<string, unknown>[] = [];
    let n = 0;
    stack({ "POST /api/model/stream": (init) => {
      bodies.push(JSON.parse(String(init?.body)));
      n += 1;
      const done = { ...DONE, text: `answer ${n}`, usage: { prompt_tokens: 30 * n, completion_tokens: 2, cached_tokens: n > 1 ? 16 : 0 } };
      return sseResponse([sseText([["start", START], ["token", { text: `answer ${n}`, tokens: 2, elapsedMs: 5, tokensPerSecond: 0 }],
                                   ["done", done]])]);
    } });
    render(<App pollMs={20} />);
    await ask("first question");
    await waitFor(() => expect(current().getByTestId("answer").getAttribute("data-status")).toBe("done"));
    expect(bodies[0].history).toBeUndefined();
    await ask("second question");
    await waitFor(() => expect(current().getByTestId("answer-text").textContent).toBe("answer 2"));
    await waitFor(() => expect(current().getByTestId("answer").getAttribute("data-status")).toBe("done"));
    expect(bodies[1].history).toEqual([{ role: "user", content: "first question" }, { role: "assistant", content: "answer 1" }]);
    expect(current().getByTestId("cached").textContent).toBe("16 of 60");
    expect(current().getAllByTestId("turn")).toHaveLength(1);
    fireEvent.click(screen.getByRole("button", { name: "New conversation" }));
    expect(current().queryAllByTestId("turn")).toHaveLength(0);
    await ask("third question");
    await waitFor(() => expect(bodies).toHaveLength(3));
    expect(bodies[2].history).toBeUndefined();
  });

  it("asks for token logprobs and shows each token with its probability", async () => {
    const tokens = [{ token: "Paris", logprob: -0.1, top_logprobs: [{ token: "Paris", logprob: -0.1 }, { token: "Lyon", logprob: -2.5 }] },
                    { token: ".", logprob: -0.01, top_logprobs: [] }];
    let body: Record<string, unknown> = {};
    stack({ "POST /api/model/stream": (init) => {
      body = JSON.parse(String(init?.body));
      return sseResponse([sseText([["start", START], ["token", { text: "Paris.", tokens: 2, elapsedMs: 5, tokensPerSecond: 0, logprobs: tokens }],
                                   ["done", { ...DONE, text: "Paris.", logprobs: tokens }]])]);
    } });
    render(<App pollMs={20} />);
    fireEvent.click(await screen.findByLabelText("Token logprobs"));
    await ask("Capital of France?");
    await waitFor(() => expect(current().getAllByTestId("token")).toHaveLength(2));
    expect(body.logprobs).toBe(true);
    expect(body.top_logprobs).toBe(5);
    const first = current().getAllByTestId("token")[0];
    expect(first.textContent).toBe("Paris");
    expect(first.getAttribute("title")).toBe('"Paris": logprob -0.100 (90.5%); most likely: "Paris" 90.5%, "Lyon" 8.2%');
  });

  it("sends a JSON schema for structured output, and says when the schema is not JSON", async () => {
    let body: Record<string, unknown> = {};
    stack({ "POST /api/model/stream": (init) => {
      body = JSON.parse(String(init?.body));
      return sseResponse([sseText([["start", START], ["done", { ...DONE, text: '{"city": "Paris"}' }]])]);
    } });
    render(<App pollMs={20} />);
    fireEvent.change(await screen.findByLabelText("JSON schema"), { target: { value: "{not json" } });
    fireEvent.change(screen.getByLabelText("Prompt"), { target: { value: "Where?" } });
    await waitFor(() => expect(screen.getByTestId("send-hint").textContent).toMatch(/^The JSON schema is not valid JSON/));
    expect(screen.getByRole("button", { name: "Send" })).toHaveProperty("disabled", true);
    fireEvent.change(screen.getByLabelText("JSON schema"), { target: { value: '{"type": "object"}' } });
    await ask("Where?");
    await waitFor(() => expect(body.json_schema).toEqual({ type: "object" }));
  });

  it("previews a placement from the nodes' profiles without loading anything", async () => {
    const plan = (nodes: [string, number, number][], tps: number) => ({
      stages: nodes.map(([node, a, b]) => ({ node, address: "x", layers: [a, b], memory_bytes: 200 * 2 ** 20, step_ms: 9.5 })),
      single_stream_tps: tps, aggregate_tps: { "8": 80, "32": 120 } });
    let asked: { url: string; body: Record<string, unknown> } | null = null;
    stack({ "POST /api/models": (init, url) => {
      asked = { url: String(url), body: JSON.parse(String(init?.body)) };
      return json({ model: "smol-preview", method: "speed", expected_concurrency: 1, speedup: 1.64,
                    plan: plan([["node1", 0, 30]], 30.1), capacity_split: plan([["node1", 0, 13], ["node2", 13, 25], ["node3", 25, 30]], 14.5),
                    left_out: [{ node: "node2", reason: "with it 37.1 ms per token, without it 33.2 ms" }] });
    } });
    render(<App pollMs={20} />);
    await waitFor(() => expect((screen.getByLabelText("Model") as HTMLSelectElement).value).toBe("smol"));
    fireEvent.click(screen.getByText("Placement preview"));
    fireEvent.click(screen.getByRole("button", { name: "Preview placement" }));
    expect((await screen.findByTestId("preview-speedup")).textContent).toBe("1.64x");
    expect(asked!.url).toContain("dry_run=true");
    expect(asked!.body).toEqual({ name: "smol-preview", source: "smol", expected_concurrency: 1 });
    expect(within(screen.getByTestId("plan-plan")).getAllByRole("row")).toHaveLength(2);
    expect(within(screen.getByTestId("plan-capacity")).getAllByRole("row")).toHaveLength(4);
    expect(screen.getByTestId("left-out").textContent).toContain("node2 left out: with it 37.1 ms");
  });

  it("re-places the model shown and says where it went, or why it stays", async () => {
    let asked: { url: string; body: Record<string, unknown> } | null = null;
    let changed = false;
    const layout = (nodes: string[]) => nodes.map((n, i) => ({ nodes: [n], layers: [i * 10, i * 10 + 10] }));
    stack({ "POST /api/models/smol/rebalance": (init, url) => {
      asked = { url: String(url), body: JSON.parse(String(init?.body)) };
      return json({ model: "smol", changed, reason: changed ? "" : "it is already on the plan the coordinator would make now",
                    trigger: "asked for", before: layout(["node1", "node2", "node3"]),
                    after: changed ? [{ nodes: ["node1"], layers: [0, 30] }] : layout(["node1", "node2", "node3"]),
                    predicted_tps_before: 14.5, predicted_tps_after: changed ? 30.1 : 14.5, expected_concurrency: 1,
                    moved_requests: changed ? 2 : 0, seconds: changed ? 3.2 : 0, generation: changed ? 2 : 1 });
    } });
    render(<App pollMs={20} />);
    await screen.findAllByTestId("node");
    fireEvent.click(screen.getByRole("button", { name: "Re-place now" }));
    expect((await screen.findByTestId("rebalance-result")).textContent).toContain("smol stays on node1 layers 0–9");
    expect(asked!.body).toEqual({ force: false });
    changed = true;
    fireEvent.click(screen.getByLabelText("even if not faster"));
    fireEvent.click(screen.getByRole("button", { name: "Re-place now" }));
    await waitFor(() => expect(screen.getByTestId("rebalance-result").getAttribute("data-changed")).toBe("true"));
    expect(screen.getByTestId("rebalance-result").textContent).toContain("2 running request(s) moved in 3.2 s");
    expect(asked!.body).toEqual({ force: true });
  });

  it("keeps Send disabled with a hint while the prompt is empty", async () => {
    stack();
    render(<App pollMs={20} />);
    await screen.findAllByTestId("node");
    expect(screen.getByRole("button", { name: "Send" })).toHaveProperty("disabled", true);
    expect(screen.getByTestId("empty-hint").textContent).toBe("Type a prompt to send.");
  });
});
