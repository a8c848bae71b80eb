// Page-wide states: the API cannot be reached / refuses the key / fails, and the chosen model not being ready.
import type { Problem } from "../hooks/useClusterPoll";
import type { ClusterModel, ModelCard } from "../types";

export function ApiProblemBanner({ problem, haveData }: { problem: Problem | null; haveData: boolean }) {
  if (!problem) return null;
  const title = problem.kind === "unreachable" ? "API down" : problem.kind === "auth" ? "API key needed" : "API error";
  return (
    <div className={`banner ${problem.kind === "auth" ? "warn" : "error"}`} role="alert" data-testid="api-down"
         data-kind={problem.kind}>
      <strong>{title}:</strong> {problem.message}
      {haveData && problem.kind === "unreachable" && <span> Showing the last known state; retrying every second.</span>}
    </div>
  );
}

/** The chosen model is loading or unavailable: says so, with the cluster's reason. */
export function ModelBanner({ card, model }: { card: ModelCard | undefined; model: ClusterModel | undefined }) {
  const ready = model ? model.ready : card?.ready ?? true;
  if (ready || (!card && !model)) return null;
  const name = model?.name ?? card?.id;
  const state = model?.state ?? "loading";
  const loading = state === "loading" || state === "pending";
  return (
    <div className={`banner ${loading ? "warn" : "error"}`} role="status" data-testid="model-unavailable">
      <strong>{name} is {state}.</strong>{" "}
      {model?.unavailable_reason || (loading ? "It serves as soon as every shard is loaded." : "")}
    </div>
  );
}
