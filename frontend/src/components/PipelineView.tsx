// The pipeline of one model: its layer ranges (stages) in layer order, each with the nodes holding it
// (replicas side by side), and where its time goes lately (TrafficCharts), updated from every poll of /api/cluster.
import { replicaKey } from "../lib/activity";
import { formatLayers } from "../lib/format";
import { stagesOf } from "../lib/pipeline";
import type { ClusterModel } from "../types";
import { NodeBox } from "./NodeBox";
import { TrafficCharts } from "./TrafficCharts";

interface Props {
  model: ClusterModel | undefined;
  active: ReadonlySet<string>;
}

export function PipelineView({ model, active }: Props) {
  if (!model) return <p className="muted" data-testid="pipeline-empty">No model to show yet.</p>;
  const stages = stagesOf(model.replicas);
  return (
    <div data-testid="pipeline">
      <p className="pipeline-stats small" data-testid="pipeline-stats">
        <span className={`pill model-${model.state}`}>{model.state}</span>
        <span>{model.running} running</span>
        <span>{model.waiting} waiting</span>
        {model.failovers > 0 && <span>{model.failovers} failovers</span>}
      </p>
      {stages.length === 0 && <p className="muted">No shards are placed yet.</p>}
      <ol className="pipeline" aria-label={`Pipeline of ${model.name}`}>
        {stages.map((stage, i) => (
          <li className="stage" key={stage.index} data-testid="stage"
              aria-label={`Stage ${i + 1}: ${formatLayers(stage.layers)}`}>
            <div className="stage-title">
              <span>Stage {i + 1}</span>
              {stage.replicas.length > 1 && <span className="muted">× {stage.replicas.length} replicas</span>}
            </div>
            <div className="replicas">
              {stage.replicas.map((r) => (
                <NodeBox key={r.node} replica={r} active={active.has(replicaKey(model.name, r.node, r.stage))} />
              ))}
            </div>
          </li>
        ))}
      </ol>
      <ul className="legend small" aria-label="Node states">
        {["loading", "ready", "draining", "down"].map((s) => (
          <li key={s}><span className={`swatch state-${s}`} aria-hidden="true" />{s}</li>
        ))}
        <li><span className="activity on" aria-hidden="true" />micro-batches passing</li>
      </ul>
      <TrafficCharts model={model} />
    </div>
  );
}
