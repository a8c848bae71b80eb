// The pipeline of one model: its layer ranges in order, each with its replicas (node boxes) showing
// state, KV cache use, and a pulse when micro-batches passed since the last poll.
import { useRef } from "react";
import type { ClusterModel, Replica } from "../types";

export function groupByStage(replicas: Replica[]): Replica[][] {
  const stages: Replica[][] = [];
  for (const r of replicas) (stages[r.stage] ??= []).push(r);
  return stages.filter(Boolean);
}

function kvPercent(r: Replica): number {
  return r.kv_capacity_tokens > 0 ? Math.min(100, (100 * r.kv_used_tokens) / r.kv_capacity_tokens) : 0;
}

export function PipelineView({ model }: { model: ClusterModel | undefined }) {
  const seen = useRef(new Map<string, number>()); // micro-batches per node at the previous poll
  if (!model) return <p className="muted">No model selected.</p>;
  const active = new Set<string>();
  for (const r of model.replicas) {
    const key = `${model.name}/${r.node}`;
    const count = r.micro_batches ?? 0;
    const before = seen.current.get(key);
    if (before !== undefined && count > before) active.add(r.node);
    seen.current.set(key, count);
  }
  return (
    <div className="pipeline" data-testid="pipeline" aria-label={`pipeline of ${model.name}`}>
      {groupByStage(model.replicas).map((replicas, i) => (
        <div className="stage" key={i} data-testid="stage">
          <div className="stage-title">stage {i + 1}</div>
          {replicas.map((r) => (
            <div className={`node state-${r.state}`} key={r.node} data-testid="node" data-state={r.state}>
              <div className="node-head">
                <span className={`activity ${active.has(r.node) ? "on" : ""}`} title="micro-batches passing"
                      data-testid="activity" data-active={active.has(r.node)} />
                <strong>{r.node}</strong>
                <span className="badge">{r.state}</span>
              </div>
              <div className="layers" data-testid="layers">layers {r.layers[0]}–{r.layers[1] - 1}</div>
              <div className="kv" title={`${r.kv_used_tokens} of ${r.kv_capacity_tokens} KV tokens`}>
                <div className="kv-bar"><div style={{ width: `${kvPercent(r)}%` }} /></div>
                <span>KV {r.kv_used_tokens.toLocaleString()} / {r.kv_capacity_tokens.toLocaleString()}</span>
              </div>
              <div className="address muted">{r.address}</div>
              {r.last_error && <div className="error-text small">{r.last_error}</div>}
            </div>
          ))}
        </div>
      ))}
    </div>
  );
}
