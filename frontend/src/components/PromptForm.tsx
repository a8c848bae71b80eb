// The prompt box with its model and parameters. Ctrl+Enter (Cmd+Enter on a Mac) sends; Escape cancels.
import { useId, type FormEvent, type KeyboardEvent } from "react";
import type { FormValues } from "../lib/params";
import type { ModelCard } from "../types";

interface Props {
  values: FormValues;
  models: ModelCard[] | null; // null: not known yet
  busy: boolean; // an answer is streaming
  problem: string | null; // why it cannot be sent (null: it can)
  onChange(values: FormValues): void;
  onSubmit(): void;
  onCancel(): void;
}

const isMac = typeof navigator !== "undefined" && /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);
export const SEND_SHORTCUT = isMac ? "⌘+Enter" : "Ctrl+Enter";

export function PromptForm({ values, models, busy, problem, onChange, onSubmit, onCancel }: Props) {
  const id = useId();
  const set = <K extends keyof FormValues>(key: K, value: FormValues[K]) => onChange({ ...values, [key]: value });
  const canSend = !busy && problem === null;

  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    if (canSend) onSubmit();
  };
  const onKeyDown = (e: KeyboardEvent<HTMLFormElement>) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submit();
    } else if (e.key === "Escape" && busy) {
      onCancel();
    }
  };

  return (
    <form className="card prompt-form" onSubmit={submit} onKeyDown={onKeyDown} aria-label="Ask a model">
      <label className="field" htmlFor={`${id}-prompt`}>
        <span>Prompt</span>
      </label>
      <textarea id={`${id}-prompt`} rows={4} value={values.text} placeholder="Ask something…"
                aria-describedby={`${id}-hint`} onChange={(e) => set("text", e.target.value)} />
      <div className="params">
        <label className="field model-field">
          <span>Model</span>
          <select value={values.model} disabled={!models || models.length === 0}
                  onChange={(e) => set("model", e.target.value)}>
            {!models && <option value="">loading models…</option>}
            {models && models.length === 0 && <option value="">no model is served</option>}
            {models?.map((m) => (
              <option key={m.id} value={m.id}>{m.ready ? m.id : `${m.id} (loading…)`}</option>
            ))}
          </select>
        </label>
        <label className="field">
          <span>Max tokens</span>
          <input type="number" inputMode="numeric" min={1} step={1} value={values.maxTokens}
                 onChange={(e) => set("maxTokens", e.target.value)} />
        </label>
        <label className="field">
          <span>Temperature</span>
          <input type="number" inputMode="decimal" min={0} max={2} step={0.1} value={values.temperature}
                 onChange={(e) => set("temperature", e.target.value)} />
        </label>
        <label className="field">
          <span>Top-p</span>
          <input type="number" inputMode="decimal" min={0.01} max={1} step={0.05} value={values.topP}
                 onChange={(e) => set("topP", e.target.value)} />
        </label>
        <label className="check">
          <input type="checkbox" checked={values.chat} onChange={(e) => set("chat", e.target.checked)} />
          <span>Chat template</span>
        </label>
        <label className="check">
          <input type="checkbox" checked={values.logprobs} onChange={(e) => set("logprobs", e.target.checked)} />
          <span>Token logprobs</span>
        </label>
      </div>
      <details className="schema" open={values.jsonSchema.trim() !== ""}>
        <summary>Structured output</summary>
        <label className="field" htmlFor={`${id}-schema`}>
          <span>JSON schema</span>
        </label>
        <textarea id={`${id}-schema`} rows={4} value={values.jsonSchema} spellCheck={false}
                  placeholder='{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
                  onChange={(e) => set("jsonSchema", e.target.value)} />
        <span className="muted small">The answer is JSON valid against it, enforced while decoding. Empty: free text.</span>
      </details>
      <div className="actions">
        <button type="submit" disabled={!canSend} aria-describedby={`${id}-hint`}>Send</button>
        {busy && <button type="button" className="secondary" onClick={onCancel}>Cancel</button>}
        <span id={`${id}-hint`} className="muted small" aria-live="polite"
              data-testid={values.text.trim() === "" ? "empty-hint" : "send-hint"}>
          {busy ? "Generating… Cancel (or Escape) stops it." : problem ?? `${SEND_SHORTCUT} sends.`}
        </span>
      </div>
    </form>
  );
}
