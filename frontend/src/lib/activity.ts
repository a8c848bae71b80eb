// Which shards ran micro-batches since the last poll of /api/cluster: each replica carries a cumulative
// `micro_batches` count; a count that grew means micro-batches passed through that node.
import type { Cluster } from "../types";

export type BatchCounts = ReadonlyMap<string, number>;

export function replicaKey(model: string, node: string, stage: number): string {
  return `${model}/${stage}/${node}`;
}

export function batchCounts(cluster: Cluster): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of cluster.models) {
    for (const r of m.replicas) {
      if (typeof r.micro_batches === "number") counts.set(replicaKey(m.name, r.node, r.stage), r.micro_batches);
    }
  }
  return counts;
}

/** Keys of the replicas whose count increased from ``before`` to ``after`` (none without an earlier count). */
export function activeSince(before: BatchCounts, after: BatchCounts): Set<string> {
  const active = new Set<string>();
  for (const [key, count] of after) {
    const previous = before.get(key);
    if (previous !== undefined && count > previous) active.add(key);
  }
  return active;
}
