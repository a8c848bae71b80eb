// The prompt form's values as typed, and their check before sending.
import type { GenerationRequest, ModelCard } from "../types";

export interface FormValues {
  text: string;
  model: string;
  maxTokens: string; // as typed: checked by validate()
  temperature: string;
  topP: string;
  chat: boolean;
  logprobs: boolean; // show each token's log-probability (and the 5 most likely at its position)
  jsonSchema: string; // as typed; empty: free text
}

export const DEFAULT_VALUES: FormValues = {
  text: "", model: "", maxTokens: "128", temperature: "0", topP: "1", chat: true, logprobs: false, jsonSchema: "",
};

export const TOP_LOGPROBS = 5;

/** The JSON schema box: nothing (free text), a schema, or what is wrong with it. */
export function parseSchema(text: string): { schema?: Record<string, unknown>; problem?: string } {
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { problem: `The JSON schema is not valid JSON: ${e instanceof Error ? e.message : String(e)}` };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { problem: "The JSON schema must be a JSON object, e.g. {\"type\": \"object\"}." };
  }
  return { schema: value as Record<string, unknown> };
}

export type Checked = { ok: true; request: GenerationRequest } | { ok: false; problem: string };

function number(value: string): number {
  return value.trim() === "" ? Number.NaN : Number(value);
}

/** The request these values make, or what is wrong with them (the first problem, in form order). */
export function validate(v: FormValues): Checked {
  if (v.text.trim() === "") return { ok: false, problem: "Type a prompt to send." };
  if (!v.model) return { ok: false, problem: "Choose a model (none is served yet)." };
  const maxTokens = number(v.maxTokens);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) return { ok: false, problem: "Max tokens must be a whole number of at least 1." };
  const temperature = number(v.temperature);
  if (!(temperature >= 0 && temperature <= 2)) return { ok: false, problem: "Temperature must be between 0 and 2." };
  const topP = number(v.topP);
  if (!(topP > 0 && topP <= 1)) return { ok: false, problem: "Top-p must be above 0 and at most 1." };
  const { schema, problem } = parseSchema(v.jsonSchema);
  if (problem) return { ok: false, problem };
  const request: GenerationRequest = { text: v.text, model: v.model, max_tokens: maxTokens, temperature, top_p: topP,
                                       chat: v.chat };
  if (v.logprobs) Object.assign(request, { logprobs: true, top_logprobs: TOP_LOGPROBS });
  if (schema) request.json_schema = schema;
  return { ok: true, request };
}

/** The model to use: ``chosen`` while the API serves it, else the first ready model (else the first). */
export function chooseModel(models: readonly ModelCard[] | null, chosen: string): string {
  if (!models || models.length === 0 || models.some((m) => m.id === chosen)) return chosen;
  return (models.find((m) => m.ready) ?? models[0]).id;
}
