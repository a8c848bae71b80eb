import { render, screen, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { clusterModel, THREE_STAGES } from "../test/fakeApi";
import type { TrafficHistory } from "../types";
import { PipelineView } from "./PipelineView";
import { TrafficCharts } from "./TrafficCharts";

const HISTORY: TrafficHistory = {
  interval_s: 2,
  stages: [
    { node: "node1", busy_share: [0.2, 0.3] },
    { node: "node2", busy_share: [0.9, 0.8] },
    { node: "node3", busy_share: [0.1, 0.1] },
  ],
  links: [
    { src: "node1", dst: "node2", bytes_per_s: [1000, 2000], rtt_ms: [0.5, 0.7] },
    { src: "node2", dst: "node3", bytes_per_s: [1000, 1500], rtt_ms: [12, null] },
    { src: "node3", dst: "coordinator", bytes_per_s: [8, 8], rtt_ms: [null, null] },
  ],
};

function series(testId: string): string[] {
  return within(screen.getByTestId(testId)).getAllByTestId("chart-series").map((li) => li.textContent ?? "");
}

describe("TrafficCharts", () => {
  it("names the busiest stage and the slowest link in words", () => {
    render(<TrafficCharts model={clusterModel(THREE_STAGES, { history: HISTORY })} />);
    expect(screen.getByTestId("bottleneck").textContent).toBe(
      "Bottleneck: stage 2 · node2, busy 85% over the last 30 s. Slowest link: node2 → node3, 12.0 ms round trip.");
  });

  it("charts every stage's busy share and every link's round trip and throughput, latest values in the legend", () => {
    render(<TrafficCharts model={clusterModel(THREE_STAGES, { history: HISTORY })} />);
    expect(series("chart-busy")).toEqual(["stage 1 · node1: 30%", "stage 2 · node2: 80% bottleneck",
                                          "stage 3 · node3: 10%"]);
    expect(series("chart-rtt")).toEqual(["node1 → node2: 0.70 ms", "node2 → node3: 12.0 ms slowest",
                                         "node3 → coordinator: –"]);
    expect(series("chart-bytes")).toEqual(["node1 → node2: 2.0 kB/s", "node2 → node3: 1.5 kB/s",
                                           "node3 → coordinator: 8 B/s"]);
    const busy = screen.getByTestId("chart-busy");
    expect(busy.querySelectorAll("path[data-series]")).toHaveLength(3);
    expect(within(busy).getByRole("img").getAttribute("aria-label")).toContain("stage 2 · node2 80%");
  });

  it("says when every stage is idle and leaves out link charts without links", () => {
    const idle: TrafficHistory = { interval_s: 2, stages: [{ node: "node1", busy_share: [0, 0] }], links: [] };
    render(<TrafficCharts model={clusterModel(THREE_STAGES, { history: idle })} />);
    expect(screen.getByTestId("bottleneck").textContent).toBe("All stages idle over the last 30 s.");
    expect(screen.queryByTestId("chart-rtt")).toBeNull();
    expect(screen.queryByTestId("chart-bytes")).toBeNull();
  });

  it("waits for the first micro-batch, also with an API that sends no history", () => {
    const { unmount } = render(<TrafficCharts model={clusterModel(THREE_STAGES, { history: null })} />);
    expect(screen.getByTestId("traffic-empty")).toBeTruthy();
    unmount();
    render(<PipelineView model={clusterModel(THREE_STAGES)} active={new Set()} />);
    expect(screen.getByTestId("traffic-empty")).toBeTruthy();
    expect(screen.queryByTestId("traffic")).toBeNull();
  });

  it("shows in the pipeline view once the model has traffic", () => {
    render(<PipelineView model={clusterModel(THREE_STAGES, { history: HISTORY })} active={new Set()} />);
    expect(within(screen.getByTestId("pipeline")).getByTestId("traffic")).toBeTruthy();
  });
});
