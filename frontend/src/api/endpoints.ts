// The API's read-only routes the UI polls.
import type { Cluster, ModelCard } from "../types";
import { getJson } from "./client";

export async function listModels(signal?: AbortSignal): Promise<ModelCard[]> {
  return (await getJson<{ data: ModelCard[] }>("/v1/models", signal)).data ?? [];
}

export async function getCluster(signal?: AbortSignal): Promise<Cluster> {
  const cluster = await getJson<Partial<Cluster>>("/api/cluster", signal);
  return { nodes: cluster.nodes ?? [], models: cluster.models ?? [] };
}
