// How numbers read in the UI. A missing value shows as an en dash.

const DASH = "–";

/** Milliseconds: "850 ms", "12.3 s". */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return DASH;
  return ms < 10_000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Tokens per second, one decimal. */
export function formatRate(rate: number | null | undefined): string {
  if (rate === null || rate === undefined || !Number.isFinite(rate)) return DASH;
  return rate.toFixed(1);
}

export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH;
  return n.toLocaleString("en-US");
}

/** A half-open layer range [start, end) as people count it: "layers 0–12" (or "layer 7"). */
export function formatLayers([start, end]: readonly [number, number] | readonly number[]): string {
  return end - start === 1 ? `layer ${start}` : `layers ${start}–${end - 1}`;
}

/** Share of the KV budget in use, 0-100. */
export function kvPercent(used: number, capacity: number): number {
  return capacity > 0 ? Math.min(100, Math.max(0, (100 * used) / capacity)) : 0;
}
