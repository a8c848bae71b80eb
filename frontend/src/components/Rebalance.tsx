// "Re-place now": moves the model shown to the plan the coordinator would make now (POST
// /api/models/{name}/rebalance), live: the new layout loads beside the old one and running answers move over
// unchanged. It moves when the plan is predicted at least 1.05x faster, or always with "even if not faster" (when
// the plan differs); else the reason it stays is shown. Needs an admin key where keys are set.
import { useId, useState } from "react";
import { ApiError, apiFetch } from "../api/client";
import { formatLayers } from "../lib/format";
import type { RebalanceResult } from "../types";

function describe(layout: RebalanceResult["before"]): string {
  return layout.map((s) => `${s.nodes.join("+")} ${formatLayers(s.layers)}`).join(", ");
}

function tps(value: number | null): string {
  return value === null ? "?" : value.toFixed(1);
}

export function Rebalance({ model }: { model: string | undefined }) {
  const id = useId();
  const [force, setForce] = useState(false);
  const [result, setResult] = useState<RebalanceResult | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const run = async () => {
    if (!model) return;
    setBusy(true);
    setProblem(null);
    try {
      const response = await apiFetch(`/api/models/${encodeURIComponent(model)}/rebalance`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ force }),
      });
      setResult((await response.json()) as RebalanceResult);
    } catch (err) {
      setResult(null);
      setProblem(err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="card rebalance" data-testid="rebalance">
      <div className="params">
        <button type="button" onClick={run} disabled={busy || !model}>
          {busy ? "Re-placing…" : "Re-place now"}
        </button>
        <label className="field inline" htmlFor={`${id}-force`}>
          <input id={`${id}-force`} type="checkbox" checked={force} onChange={(e) => setForce(e.target.checked)} />
          <span>even if not faster</span>
        </label>
      </div>
      {problem && <p className="error-text" role="alert" data-testid="rebalance-error">{problem}</p>}
      {result && (
        <p className="small" data-testid="rebalance-result" data-changed={String(result.changed)}>
          {result.changed
            ? <>Moved {result.model} to <strong>{describe(result.after)}</strong> (was {describe(result.before)}):{" "}
                {result.moved_requests} running request(s) moved in {result.seconds.toFixed(1)} s; predicted{" "}
                {tps(result.predicted_tps_before)} → {tps(result.predicted_tps_after)} tok/s.</>
            : <>{result.model} stays on {describe(result.before)}: {result.reason}.</>}
        </p>
      )}
    </div>
  );
}
