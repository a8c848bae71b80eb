// The optional API key, sent as `Authorization: Bearer <key>`. Kept in this browser's localStorage, so it
// survives reloads; held in memory too, so it still works for this page where storage is disabled.

const STORAGE_KEY = "shardline.apiKey";

let current: string | null = null;

export function getApiKey(): string {
  if (current === null) {
    try {
      current = localStorage.getItem(STORAGE_KEY) ?? "";
    } catch {
      current = ""; // storage disabled (private mode, sandboxed frame)
    }
  }
  return current;
}

export function setApiKey(key: string): void {
  current = key.trim();
  try {
    if (current) localStorage.setItem(STORAGE_KEY, current);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the key lasts as long as this page
  }
}
