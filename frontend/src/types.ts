// Shapes of the Shardline API's answers (see the API's /docs). Only the fields the UI reads.

/** GET /v1/models: one served model. */
export interface ModelCard {
  id: string;
  ready: boolean;
  max_model_len?: number;
  num_stages?: number;
}

/** One stage of a generation's route: the node that ran a layer range, and its compute time once known. */
export interface StageTime {
  node: string;
  address: string;
  layers: [number, number]; // [start, end)
  seconds?: number;
}

/** SSE `start`: the request was admitted and its first token exists. */
export interface StartEvent {
  id: string;
  model: string;
  promptTokens: number;
  maxTokens: number;
  nodeCount: number;
  stages: StageTime[];
}

/** SSE `first_token` (milliseconds). */
export interface FirstTokenEvent {
  timeToFirstToken: number;
  queueTime: number;
}

/** A generated token with its log-probability and the most likely tokens at its position. */
export interface TokenLogprob {
  token: string;
  logprob: number;
  top_logprobs?: { token: string; logprob: number }[];
}

/** SSE `token`: new text, the completion tokens so far, and the rate so far (with logprobs: of its tokens). */
export interface TokenEvent {
  text: string;
  tokens: number;
  elapsedMs: number;
  tokensPerSecond: number;
  logprobs?: TokenLogprob[] | null;
}

/** SSE `done`: the same object as POST /api/model/process answers (times in milliseconds). */
export interface DoneEvent {
  text: string;
  processingTime: number;
  queueTime: number;
  timeToFirstToken: number | null;
  tokensPerSecond: number;
  nodeCount: number;
  model?: string;
  usage: { prompt_tokens: number; completion_tokens: number; cached_tokens?: number;
           speculative?: { proposed: number; accepted: number } };
  finish_reason: string;
  stages: StageTime[];
  logprobs?: TokenLogprob[] | null;
}

/** The API's error body, as JSON answers and as SSE `error` events. */
export interface ErrorBody {
  error: { message: string; type?: string; param?: string | null; code?: number | string | null };
}

export type NodeState = "loading" | "ready" | "draining" | "down";

/** GET /api/cluster: one shard of a model on one node. Replicas of a layer range share `stage`. */
export interface Replica {
  node: string;
  address: string;
  stage: number;
  layers: [number, number]; // [start, end)
  state: NodeState | string;
  kv_used_tokens: number;
  kv_capacity_tokens: number;
  weight_bytes?: number;
  last_error?: string;
  micro_batches?: number; // cumulative; older APIs do not send it
}

/** GET /api/cluster: the last few minutes of a model's pipeline, one point per ``interval_s``, oldest first;
 *  every series of a model ends at the newest point. */
export interface StageTraffic {
  node: string;
  busy_share: number[]; // 0..1: share of the interval it computed this model's micro-batches
}

export interface LinkTraffic {
  src: string; // node id, or "coordinator"
  dst: string;
  bytes_per_s: number[];
  rtt_ms: (number | null)[]; // mean round trip of the interval; null when none was measured
}

export interface TrafficHistory {
  interval_s: number;
  stages: StageTraffic[];
  links: LinkTraffic[];
}

export interface ClusterModel {
  name: string;
  state: string; // serving | loading | unavailable | pending | draining
  ready: boolean;
  unavailable_reason?: string;
  num_stages: number;
  running: number;
  waiting: number;
  failovers: number;
  replicas: Replica[];
  history?: TrafficHistory | null; // null before its first micro-batch; older APIs do not send it
}

export interface ClusterNode {
  id: string;
  address: string;
  state: NodeState | string;
  last_error?: string;
  kv_used_tokens?: number;
  kv_capacity_tokens?: number;
  rss_bytes?: number;
  events?: string[];
}

export interface Cluster {
  nodes: ClusterNode[];
  models: ClusterModel[];
}

/** Body of POST /api/model/stream. */
export interface GenerationRequest {
  text: string;
  model: string;
  max_tokens: number;
  temperature: number;
  top_p: number;
  chat: boolean;
  history?: ChatTurn[]; // the conversation before `text` (chat only), oldest first
  logprobs?: boolean;
  top_logprobs?: number;
  json_schema?: Record<string, unknown>; // structured output, enforced while decoding
}

/** One earlier turn of a conversation, sent again with each new message. */
export interface ChatTurn {
  role: "system" | "user" | "assistant";
  content: string;
}

/** POST /api/models?dry_run=true: the plan the coordinator would make, from the nodes' speed profiles. */
export interface PlanFigures {
  stages: { node: string; address: string; layers: [number, number]; memory_bytes: number; step_ms: number }[];
  single_stream_tps: number;
  aggregate_tps: Record<string, number>;
}

export interface PlacementPreview {
  model: string;
  method: string;
  expected_concurrency: number;
  plan: PlanFigures;
  capacity_split: PlanFigures;
  speedup: number;
  left_out: { node: string; reason: string }[];
}

// POST /api/models/{name}/rebalance: a live re-placement, or why the model stays
export interface RebalanceResult {
  model: string;
  changed: boolean;
  reason: string;
  trigger: string;
  before: { nodes: string[]; layers: [number, number] }[];
  after: { nodes: string[]; layers: [number, number] }[];
  predicted_tps_before: number | null;
  predicted_tps_after: number | null;
  expected_concurrency: number;
  moved_requests: number;
  seconds: number;
  generation: number;
}
