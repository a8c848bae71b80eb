// One shard of the pipeline: its node, layer range, state (own colour), KV cache use and an activity light
// that pulses while micro-batches pass through it.
import { formatCount, formatLayers, kvPercent } from "../lib/format";
import type { Replica } from "../types";

const KNOWN_STATES = new Set(["loading", "ready", "draining", "down"]);

interface Props {
  replica: Replica;
  active: boolean; // its micro-batch count grew since the previous poll
}

export function NodeBox({ replica: r, active }: Props) {
  const state = KNOWN_STATES.has(r.state) ? r.state : "unknown";
  const tracked = typeof r.micro_batches === "number";
  const percent = kvPercent(r.kv_used_tokens, r.kv_capacity_tokens);
  const activity = !tracked ? "no activity data" : active ? "micro-batches passing" : "idle";
  return (
    <div className={`node state-${state}`} data-testid="node" data-node={r.node} data-state={r.state}
         aria-label={`${r.node}: ${formatLayers(r.layers)}, ${r.state}`}>
      <div className="node-head">
        <span className={`activity${active ? " on" : ""}${tracked ? "" : " untracked"}`} data-testid="activity"
              data-active={active} title={activity} role="img" aria-label={activity} />
        <strong className="node-name">{r.node}</strong>
        <span className="pill state" data-testid="node-state">{r.state}</span>
      </div>
      <div className="layers" data-testid="layers" title={`layers [${r.layers[0]}, ${r.layers[1]})`}>
        {formatLayers(r.layers)}
      </div>
      <div className="kv" data-testid="kv">
        <div className="kv-bar" role="meter" aria-label={`KV cache of ${r.node}`} aria-valuemin={0}
             aria-valuemax={r.kv_capacity_tokens} aria-valuenow={r.kv_used_tokens}>
          <span style={{ width: `${percent}%` }} />
        </div>
        <span className="small" title="KV cache: tokens in use / budget">
          KV {formatCount(r.kv_used_tokens)} / {formatCount(r.kv_capacity_tokens)}
        </span>
      </div>
      <div className="muted small address">
        {r.address}
        {tracked && <> · {formatCount(r.micro_batches)} micro-batches</>}
      </div>
      {r.last_error && r.state !== "ready" && <div className="error-text small">{r.last_error}</div>}
    </div>
  );
}
