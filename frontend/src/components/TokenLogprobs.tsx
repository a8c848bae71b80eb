// An answer's tokens shaded by their probability; hovering (or focusing) one shows its log-probability and the most
// likely tokens at its position.
import type { TokenLogprob } from "../types";

export function describeToken(t: TokenLogprob): string {
  const p = Math.exp(t.logprob);
  const top = (t.top_logprobs ?? []).map((o) => `${JSON.stringify(o.token)} ${(100 * Math.exp(o.logprob)).toFixed(1)}%`);
  return `${JSON.stringify(t.token)}: logprob ${t.logprob.toFixed(3)} (${(100 * p).toFixed(1)}%)`
    + (top.length ? `; most likely: ${top.join(", ")}` : "");
}

export function TokenLogprobs({ tokens }: { tokens: TokenLogprob[] }) {
  return (
    <div className="token-logprobs" data-testid="token-logprobs" aria-label="Tokens and their log-probabilities">
      {tokens.map((t, i) => {
        const p = Math.exp(t.logprob);
        return (
          <span key={i} className="token" data-testid="token" data-logprob={t.logprob.toFixed(4)} tabIndex={0}
                title={describeToken(t)} style={{ backgroundColor: `rgba(220, 80, 60, ${(0.55 * (1 - p)).toFixed(3)})` }}>
            {t.token}
          </span>
        );
      })}
    </div>
  );
}
