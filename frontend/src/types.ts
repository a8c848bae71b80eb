// Shapes of the API's answers (see the API's /docs).

export interface ModelCard {
  id: string;
  ready: boolean;
  max_model_len: number;
  num_stages: number;
}

export interface StageTime {
  node: string;
  address: string;
  layers: [number, number];
  seconds?: number;
}

export interface StartEvent {
  id: string;
  model: string;
  promptTokens: number;
  maxTokens: number;
  nodeCount: number;
  stages: StageTime[];
}

export interface TokenEvent {
  text: string;
  tokens: number;
  elapsedMs: number;
  tokensPerSecond: number;
}

export interface DoneEvent {
  text: string;
  processingTime: number;
  queueTime: number;
  timeToFirstToken: number | null;
  tokensPerSecond: number;
  nodeCount: number;
  model: string;
  usage: { prompt_tokens: number; completion_tokens: number };
  finish_reason: string;
  stages: StageTime[];
}

export interface Replica {
  node: string;
  address: string;
  stage: number;
  layers: [number, number];
  state: string; // loading | ready | draining | down
  kv_used_tokens: number;
  kv_capacity_tokens: number;
  last_error: string;
  micro_batches?: number;
}

export interface ClusterModel {
  name: string;
  state: string; // serving | loading | unavailable | pending | draining
  ready: boolean;
  unavailable_reason: string;
  num_stages: number;
  running: number;
  waiting: number;
  failovers: number;
  replicas: Replica[];
}

export interface ClusterNode {
  id: string;
  address: string;
  state: string;
  last_error: string;
}

export interface Cluster {
  nodes: ClusterNode[];
  models: ClusterModel[];
}

export interface GenerationParams {
  text: string;
  model: string;
  max_tokens: number;
  temperature: number;
  top_p: number;
  chat: boolean;
}
