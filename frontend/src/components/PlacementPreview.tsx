// "Preview placement": the plan the coordinator would make for a model from the model cache (POST
// /api/models?dry_run=true), predicted from the nodes' speed profiles: nodes, layer ranges, memory, tokens/s for one
// stream and for 8 and 32, beside the split by configured capacity, and the nodes left out with the reason. Nothing
// is loaded. Needs an admin key where keys are set.
import { useId, useState, type FormEvent } from "react";
import { ApiError, apiFetch } from "../api/client";
import { formatLayers } from "../lib/format";
import type { PlacementPreview as Preview, PlanFigures } from "../types";

function PlanTable({ title, plan }: { title: string; plan: PlanFigures }) {
  return (
    <table className="stage-times" data-testid={`plan-${title}`}>
      <caption>{title}: {plan.single_stream_tps.toFixed(1)} tok/s one stream
        {Object.entries(plan.aggregate_tps).map(([c, t]) => ` · ${t.toFixed(0)} at ${c}`).join("")}</caption>
      <thead><tr><th scope="col">Node</th><th scope="col">Layers</th><th scope="col">Memory</th><th scope="col">Step</th></tr></thead>
      <tbody>
        {plan.stages.map((s) => (
          <tr key={s.node}>
            <td className="node-name">{s.node}</td>
            <td>{formatLayers(s.layers)}</td>
            <td>{(s.memory_bytes / 2 ** 20).toFixed(0)} MiB</td>
            <td>{s.step_ms.toFixed(1)} ms</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function PlacementPreview({ defaultSource }: { defaultSource: string }) {
  const id = useId();
  const [source, setSource] = useState("");
  const [concurrency, setConcurrency] = useState("1");
  const [preview, setPreview] = useState<Preview | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const model = source.trim() || defaultSource;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    try {
      const response = await apiFetch("/api/models?dry_run=true", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: `${model}-preview`, source: model, expected_concurrency: Number(concurrency) || 1 }),
      });
      setPreview((await response.json()) as Preview);
    } catch (err) {
      setPreview(null);
      setProblem(err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <details className="card placement-preview">
      <summary>Placement preview</summary>
      <form className="params" onSubmit={submit} aria-label="Preview a placement">
        <label className="field model-field" htmlFor={`${id}-source`}>
          <span>Model (model cache folder)</span>
          <input id={`${id}-source`} value={source} placeholder={defaultSource} onChange={(e) => setSource(e.target.value)} />
        </label>
        <label className="field" htmlFor={`${id}-c`}>
          <span>Streams</span>
          <input id={`${id}-c`} type="number" min={1} max={1024} value={concurrency}
                 onChange={(e) => setConcurrency(e.target.value)} />
        </label>
        <button type="submit" disabled={busy || !model}>Preview placement</button>
      </form>
      {problem && <p className="error-text" role="alert" data-testid="preview-error">{problem}</p>}
      {preview && (
        <div data-testid="placement-preview">
          <p className="small">
            {preview.method === "speed" ? "Placed for speed" : "As named"}:{" "}
            <strong data-testid="preview-speedup">{preview.speedup.toFixed(2)}x</strong> the split by capacity (one stream).
          </p>
          <PlanTable title="plan" plan={preview.plan} />
          <PlanTable title="capacity" plan={preview.capacity_split} />
          {preview.left_out.length > 0 && (
            <ul className="small muted" data-testid="left-out">
              {preview.left_out.map((x) => <li key={x.node}><strong>{x.node}</strong> left out: {x.reason}</li>)}
            </ul>
          )}
        </div>
      )}
    </details>
  );
}
