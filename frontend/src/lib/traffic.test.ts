import { describe, expect, it } from "vitest";
import { replica } from "../test/fakeApi";
import type { TrafficHistory } from "../types";
import { formatBytesRate, formatRtt, formatShare } from "./format";
import { busiestStage, linePath, meanOf, niceMax, recentPoints, slowestLink, stageLines } from "./traffic";

const HISTORY: TrafficHistory = {
  interval_s: 2,
  stages: [
    { node: "b", busy_share: [0.9, 0.2, 0.3] },
    { node: "gone", busy_share: [0, 0, 0] },
    { node: "a", busy_share: [0.1, 0.5, 0.6] },
  ],
  links: [
    { src: "coordinator", dst: "a", bytes_per_s: [10, 20, 30], rtt_ms: [null, 1, 2] },
    { src: "a", dst: "b", bytes_per_s: [5, 5, 5], rtt_ms: [9, null, null] },
  ],
};
const REPLICAS = [replica("a", 0, [0, 10]), replica("b", 1, [10, 20])];

describe("traffic", () => {
  it("orders stages as the pipeline does and names them", () => {
    expect(stageLines(HISTORY, REPLICAS).map((s) => s.label)).toEqual(["stage 1 · a", "stage 2 · b", "gone"]);
  });

  it("finds the busiest stage over the recent points only", () => {
    const lines = stageLines(HISTORY, REPLICAS);
    expect(busiestStage(lines, 2)).toEqual({ name: "stage 1 · a", value: 0.55 });
    expect(busiestStage(lines, 3)?.name).toBe("stage 2 · b");
    expect(busiestStage([{ node: "x", label: "x", busy_share: [0, 0] }], 2)).toBeNull(); // all idle
  });

  it("finds the slowest measured link, ignoring intervals without a round trip", () => {
    expect(slowestLink(HISTORY.links, 2)).toEqual({ name: "coordinator → a", value: 1.5 });
    expect(slowestLink(HISTORY.links, 3)).toEqual({ name: "a → b", value: 9 });
    expect(slowestLink([{ src: "x", dst: "y", bytes_per_s: [1], rtt_ms: [null] }], 3)).toBeNull();
  });

  it("averages known values and counts recent points by the interval", () => {
    expect(meanOf([1, null, 3])).toBe(2);
    expect(meanOf([null])).toBeNull();
    expect(recentPoints(2)).toBe(15);
    expect(recentPoints(0)).toBe(15);
    expect(recentPoints(60)).toBe(1);
  });

  it("rounds the y axis up to 1, 2 or 5 times a power of ten", () => {
    expect(niceMax([0.3, 1.7])).toBe(2);
    expect(niceMax([420, null])).toBe(500);
    expect(niceMax([1000])).toBe(1000);
    expect(niceMax([], 1)).toBe(1);
  });

  it("draws a series right-aligned, breaking the line where nothing was measured", () => {
    expect(linePath([0, 1], 3, 1, 100, 10)).toBe("M50.0,10.0 L100.0,0.0");
    expect(linePath([2, null, 0.5], 3, 1, 100, 10)).toBe("M0.0,0.0 M100.0,5.0"); // clamped to the top
    expect(linePath([], 3, 1, 100, 10)).toBe("");
  });

  it("formats rates, shares and round trips", () => {
    expect(formatBytesRate(850)).toBe("850 B/s");
    expect(formatBytesRate(12_345)).toBe("12.3 kB/s");
    expect(formatBytesRate(4_600_000)).toBe("4.6 MB/s");
    expect(formatShare(0.874)).toBe("87%");
    expect(formatRtt(0.423)).toBe("0.42 ms");
    expect(formatRtt(4.24)).toBe("4.2 ms");
    expect(formatRtt(null)).toBe("–");
  });
});
