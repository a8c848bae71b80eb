// The prompt form's values as typed, and their check before sending.
import type { GenerationRequest, ModelCard } from "../types";

export interface FormValues {
  text: string;
  model: string;
  maxTokens: string; // as typed: checked by validate()
  temperature: string;
  topP: string;
  chat: boolean;
}

export const DEFAULT_VALUES: FormValues = {
  text: "", model: "", maxTokens: "128", temperature: "0", topP: "1", chat: true,
};

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
  return {
    ok: true,
    request: { text: v.text, model: v.model, max_tokens: maxTokens, temperature, top_p: topP, chat: v.chat },
  };
}

/** The model to use: ``chosen`` while the API serves it, else the first ready model (else the first). */
export function chooseModel(models: readonly ModelCard[] | null, chosen: string): string {
  if (!models || models.length === 0 || models.some((m) => m.id === chosen)) return chosen;
  return (models.find((m) => m.ready) ?? models[0]).id;
}
