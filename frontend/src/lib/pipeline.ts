// A model's replicas grouped into its stages (layer ranges), in layer order.
import type { Replica } from "../types";

export interface Stage {
  index: number;
  layers: [number, number];
  replicas: Replica[];
}

export function stagesOf(replicas: readonly Replica[]): Stage[] {
  const byStage = new Map<number, Replica[]>();
  for (const r of replicas) {
    const list = byStage.get(r.stage);
    if (list) list.push(r);
    else byStage.set(r.stage, [r]);
  }
  return [...byStage.entries()]
    .map(([index, list]) => ({ index, layers: list[0].layers, replicas: list }))
    .sort((a, b) => a.layers[0] - b.layers[0] || a.index - b.index);
}
