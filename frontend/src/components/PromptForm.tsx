// The prompt box and its parameters. Ctrl+Enter (Cmd+Enter on a Mac) sends.
import type { FormEvent, KeyboardEvent } from "react";
import type { ModelCard } from "../types";

export interface FormState {
  text: string;
  model: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  chat: boolean;
}

interface Props {
  form: FormState;
  models: ModelCard[];
  busy: boolean;
  onChange(form: FormState): void;
  onSubmit(): void;
  onCancel(): void;
}

export function PromptForm({ form, models, busy, onChange, onSubmit, onCancel }: Props) {
  const empty = form.text.trim() === "";
  const set = <K extends keyof FormState>(key: K, value: FormState[K]) => onChange({ ...form, [key]: value });
  const submit = (e?: FormEvent) => {
    e?.preventDefault();
    if (!empty && !busy) onSubmit();
  };
  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit();
  };
  return (
    <form className="prompt-form" onSubmit={submit} aria-label="ask a model">
      <label htmlFor="prompt">Prompt</label>
      <textarea id="prompt" rows={4} value={form.text} placeholder="Ask something… (Ctrl+Enter sends)"
                onChange={(e) => set("text", e.target.value)} onKeyDown={onKey} />
      <div className="params">
        <label>Model
          <select value={form.model} onChange={(e) => set("model", e.target.value)}>
            {models.map((m) => (
              <option key={m.id} value={m.id}>{m.id}{m.ready ? "" : " (loading)"}</option>
            ))}
          </select>
        </label>
        <label>Max tokens
          <input type="number" min={1} max={8192} value={form.maxTokens}
                 onChange={(e) => set("maxTokens", Number(e.target.value))} />
        </label>
        <label>Temperature
          <input type="number" min={0} max={2} step={0.1} value={form.temperature}
                 onChange={(e) => set("temperature", Number(e.target.value))} />
        </label>
        <label>Top-p
          <input type="number" min={0.01} max={1} step={0.05} value={form.topP}
                 onChange={(e) => set("topP", Number(e.target.value))} />
        </label>
        <label className="check">
          <input type="checkbox" checked={form.chat} onChange={(e) => set("chat", e.target.checked)} /> Chat template
        </label>
      </div>
      <div className="actions">
        <button type="submit" disabled={empty || busy}>Send</button>
        {busy && <button type="button" className="secondary" onClick={onCancel}>Cancel</button>}
        {empty && !busy && <span className="muted small" data-testid="empty-hint">Type a prompt to send.</span>}
      </div>
    </form>
  );
}
