// Polls GET /api/cluster and GET /v1/models about once a second (never two polls at once), and works out
// which shards ran micro-batches since the previous poll.
import { useEffect, useRef, useState } from "react";
import { ApiError, ApiUnreachable, isAbort } from "../api/client";
import { getCluster, listModels } from "../api/endpoints";
import { activeSince, batchCounts, type BatchCounts } from "../lib/activity";
import type { Cluster, ModelCard } from "../types";

export type ProblemKind = "unreachable" | "auth" | "error";

export interface Problem {
  kind: ProblemKind;
  message: string;
}

export interface ClusterStatus {
  cluster: Cluster | null; // the last good answer (kept while the API is down)
  models: ModelCard[] | null; // null until the first answer
  problem: Problem | null; // why the last poll failed
  active: ReadonlySet<string>; // replica keys (lib/activity) that ran micro-batches since the previous poll
  polls: number; // good polls so far
}

export const POLL_MS = 1000;

export function problemOf(e: unknown): Problem {
  if (e instanceof ApiUnreachable) return { kind: "unreachable", message: e.message };
  if (e instanceof ApiError && e.status === 401) {
    return { kind: "auth", message: `${e.message}. Enter a key under “API key”.` };
  }
  return { kind: "error", message: e instanceof Error ? e.message : String(e) };
}

const INITIAL: ClusterStatus = { cluster: null, models: null, problem: null, active: new Set(), polls: 0 };

/** The cluster as last seen. ``refreshKey`` polls again at once when it changes (e.g. a new API key). */
export function useClusterPoll(intervalMs = POLL_MS, refreshKey: unknown = null): ClusterStatus {
  const [status, setStatus] = useState<ClusterStatus>(INITIAL);
  const counts = useRef<BatchCounts>(new Map());

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;

    const poll = async () => {
      try {
        const [cluster, models] = await Promise.all([getCluster(controller.signal), listModels(controller.signal)]);
        const now = batchCounts(cluster);
        const active = activeSince(counts.current, now);
        counts.current = now;
        setStatus((s) => ({ cluster, models, problem: null, active, polls: s.polls + 1 }));
      } catch (e) {
        if (controller.signal.aborted || isAbort(e)) return;
        setStatus((s) => ({ ...s, problem: problemOf(e), active: new Set() }));
      }
      if (!controller.signal.aborted) timer = setTimeout(() => void poll(), intervalMs);
    };

    void poll();
    return () => {
      controller.abort();
      clearTimeout(timer);
    };
  }, [intervalMs, refreshKey]);

  return status;
}
