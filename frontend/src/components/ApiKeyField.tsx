// The optional API key (needed when the API sets SHARDLINE_API_KEYS), kept in this browser.
import { useState } from "react";

interface Props {
  value: string;
  onSave(key: string): void;
  open: boolean; // unfolded, e.g. when the API asks for a key
}

export function ApiKeyField({ value, onSave, open }: Props) {
  const [draft, setDraft] = useState(value);
  return (
    <details className="api-key" open={open || undefined}>
      <summary>API key {value ? "(set)" : "(none)"}</summary>
      <form className="api-key-form" onSubmit={(e) => { e.preventDefault(); onSave(draft); }}>
        <label className="field">
          <span>API key</span>
          <input type="password" autoComplete="off" value={draft} placeholder="only when the API requires one"
                 onChange={(e) => setDraft(e.target.value)} />
        </label>
        <button type="submit" className="secondary">Save</button>
      </form>
      <p className="muted small">Sent as <code>Authorization: Bearer …</code>; kept in this browser's local storage.</p>
    </details>
  );
}
