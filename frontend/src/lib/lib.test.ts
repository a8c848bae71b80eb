import { describe, expect, it } from "vitest";
import { clusterModel, cluster, replica } from "../test/fakeApi";
import { activeSince, batchCounts, replicaKey } from "./activity";
import { formatLayers, formatMs, formatRate, kvPercent } from "./format";
import { chooseModel, DEFAULT_VALUES, validate } from "./params";
import { stagesOf } from "./pipeline";

describe("activity", () => {
  it("marks shards whose micro-batch count grew since the last poll, and none on the first poll", () => {
    const first = batchCounts(cluster([clusterModel([replica("a", 0, [0, 1], { micro_batches: 5 }),
                                                     replica("b", 1, [1, 2], { micro_batches: 5 })])]));
    const second = batchCounts(cluster([clusterModel([replica("a", 0, [0, 1], { micro_batches: 9 }),
                                                      replica("b", 1, [1, 2], { micro_batches: 5 })])]));
    expect(activeSince(new Map(), first).size).toBe(0);
    expect([...activeSince(first, second)]).toEqual([replicaKey("smol", "a", 0)]);
  });

  it("ignores replicas without micro_batches (an API without the field)", () => {
    const r = replica("a", 0, [0, 1]);
    delete r.micro_batches;
    const counts = batchCounts(cluster([clusterModel([r])]));
    expect(counts.size).toBe(0);
    expect(activeSince(counts, counts).size).toBe(0);
  });
});

describe("format", () => {
  it("reads as people count", () => {
    expect(formatLayers([0, 13])).toBe("layers 0–12");
    expect(formatLayers([7, 8])).toBe("layer 7");
    expect(formatMs(210.4)).toBe("210 ms");
    expect(formatMs(12_345)).toBe("12.3 s");
    expect(formatMs(undefined)).toBe("–");
    expect(formatRate(12.34)).toBe("12.3");
    expect(kvPercent(50, 200)).toBe(25);
    expect(kvPercent(5, 0)).toBe(0);
  });
});

describe("validate", () => {
  const ok = { ...DEFAULT_VALUES, text: "hi", model: "smol" };
  it("makes the request from valid values", () => {
    expect(validate({ ...ok, maxTokens: "64", temperature: "0.7", topP: "0.9", chat: false })).toEqual({
      ok: true, request: { text: "hi", model: "smol", max_tokens: 64, temperature: 0.7, top_p: 0.9, chat: false } });
  });
  it("says what is wrong, first the empty prompt", () => {
    expect(validate({ ...ok, text: "  \n" })).toEqual({ ok: false, problem: "Type a prompt to send." });
    expect(validate({ ...ok, model: "" })).toMatchObject({ ok: false });
    expect(validate({ ...ok, maxTokens: "" })).toMatchObject({ ok: false, problem: expect.stringMatching(/Max tokens/) });
    expect(validate({ ...ok, maxTokens: "1.5" })).toMatchObject({ ok: false });
    expect(validate({ ...ok, temperature: "3" })).toMatchObject({ ok: false, problem: expect.stringMatching(/Temperature/) });
    expect(validate({ ...ok, topP: "0" })).toMatchObject({ ok: false, problem: expect.stringMatching(/Top-p/) });
  });
});

describe("stagesOf", () => {
  it("groups replicas by stage, in layer order", () => {
    const stages = stagesOf([replica("c", 1, [13, 30]), replica("a", 0, [0, 13]), replica("b", 0, [0, 13])]);
    expect(stages.map((s) => [s.layers, s.replicas.map((r) => r.node)])).toEqual([[[0, 13], ["a", "b"]], [[13, 30], ["c"]]]);
  });
});

describe("chooseModel", () => {
  const models = [{ id: "a", ready: false }, { id: "b", ready: true }];
  it("keeps a served choice, else takes the first ready model", () => {
    expect(chooseModel(models, "a")).toBe("a");
    expect(chooseModel(models, "")).toBe("b");
    expect(chooseModel(models, "gone")).toBe("b");
    expect(chooseModel([{ id: "a", ready: false }], "")).toBe("a");
    expect(chooseModel(null, "x")).toBe("x");
  });
});
