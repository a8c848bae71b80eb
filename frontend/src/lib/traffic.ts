// Where a model's time goes, from the history in /api/cluster: the stages' series in pipeline order, the
// bottleneck (busiest stage) and the slowest link over the last half minute, and the SVG geometry of the charts.
import type { LinkTraffic, Replica, TrafficHistory } from "../types";
import { stagesOf } from "./pipeline";

export const RECENT_S = 30; // the bottleneck is judged over this many seconds

/** Points of the history that cover the last ``seconds``. */
export function recentPoints(intervalS: number, seconds = RECENT_S): number {
  return Math.max(1, Math.round(seconds / (intervalS > 0 ? intervalS : 2)));
}

/** Mean of the known values (nulls and non-numbers left out); null when none is known. */
export function meanOf(values: readonly (number | null)[]): number | null {
  const known = values.filter((v): v is number => typeof v === "number" && Number.isFinite(v));
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : null;
}

export function linkName(link: Pick<LinkTraffic, "src" | "dst">): string {
  return `${link.src} → ${link.dst}`;
}

export interface StageLine {
  node: string;
  label: string; // "stage 2 · node2", or the node alone when it is no longer in the model
  busy_share: number[];
}

/** The stages' series in pipeline order (layer order, then replica order). */
export function stageLines(history: TrafficHistory, replicas: readonly Replica[]): StageLine[] {
  const order = new Map<string, number>();
  stagesOf(replicas).forEach((stage, i) => {
    for (const r of stage.replicas) if (!order.has(r.node)) order.set(r.node, i);
  });
  const position = (node: string) => order.get(node) ?? Number.MAX_SAFE_INTEGER;
  return [...history.stages]
    .sort((a, b) => position(a.node) - position(b.node) || a.node.localeCompare(b.node))
    .map((s) => ({
      node: s.node,
      label: order.has(s.node) ? `stage ${position(s.node) + 1} · ${s.node}` : s.node,
      busy_share: s.busy_share,
    }));
}

export interface Leader {
  name: string;
  value: number;
}

/** The stage with the highest mean busy share over the last ``points``; null while every stage is idle. */
export function busiestStage(lines: readonly StageLine[], points: number): Leader | null {
  let best: Leader | null = null;
  for (const line of lines) {
    const share = meanOf(line.busy_share.slice(-points)) ?? 0;
    if (share > 0 && (best === null || share > best.value)) best = { name: line.label, value: share };
  }
  return best;
}

/** The link with the highest mean round trip over the last ``points``; null when none was measured. */
export function slowestLink(links: readonly LinkTraffic[], points: number): Leader | null {
  let best: Leader | null = null;
  for (const link of links) {
    const rtt = meanOf(link.rtt_ms.slice(-points));
    if (rtt !== null && (best === null || rtt > best.value)) best = { name: linkName(link), value: rtt };
  }
  return best;
}

/** A round upper bound for a chart's y axis (1, 2 or 5 times a power of ten), at least ``floor``. */
export function niceMax(values: readonly (number | null)[], floor = 1e-9): number {
  const top = Math.max(floor, ...values.filter((v): v is number => typeof v === "number" && Number.isFinite(v)));
  const power = 10 ** Math.floor(Math.log10(top));
  const step = [1, 2, 5, 10].find((m) => m * power >= top * (1 - 1e-12)) ?? 10;
  return step * power;
}

/** SVG path of one series, right-aligned into ``slots`` points across ``width`` (the newest at the right edge),
 *  scaled so ``max`` is the top; a null (not measured) breaks the line. */
export function linePath(values: readonly (number | null)[], slots: number, max: number, width: number,
                         height: number): string {
  const span = Math.max(1, slots - 1);
  const offset = slots - values.length;
  const parts: string[] = [];
  let pen = "M";
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      pen = "M";
      return;
    }
    const x = ((offset + i) / span) * width;
    const y = height - Math.min(1, Math.max(0, v / max)) * height;
    parts.push(`${pen}${x.toFixed(1)},${y.toFixed(1)}`);
    pen = "L";
  });
  return parts.join(" ");
}
