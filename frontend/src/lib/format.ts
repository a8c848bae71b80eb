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

/** Bytes per second: "850 B/s", "12.3 kB/s", "4.6 MB/s". */
export function formatBytesRate(bps: number | null | undefined): string {
  if (bps === null || bps === undefined || !Number.isFinite(bps)) return DASH;
  if (bps < 1000) return `${Math.round(bps)} B/s`;
  if (bps < 1_000_000) return `${(bps / 1000).toFixed(1)} kB/s`;
  if (bps < 1_000_000_000) return `${(bps / 1_000_000).toFixed(1)} MB/s`;
  return `${(bps / 1_000_000_000).toFixed(1)} GB/s`;
}

/** A share 0..1 as a whole percentage: "87%". */
export function formatShare(share: number | null | undefined): string {
  if (share === null || share === undefined || !Number.isFinite(share)) return DASH;
  return `${Math.round(100 * share)}%`;
}

/** A round trip in milliseconds, finer than formatMs: "0.42 ms", "4.2 ms", "120 ms". */
export function formatRtt(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return DASH;
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  return ms < 100 ? `${ms.toFixed(1)} ms` : formatMs(ms);
}
