// The figures of one answer: time to first token, tokens/s, total time, tokens, node count, queue time, the draft
// tokens accepted (speculative decoding), and the compute time of each stage (per node). Filled in as the stream
// goes; the per-stage times and the drafts come with `done`.
import { formatCount, formatLayers, formatMs, formatRate } from "../lib/format";
import type { Answer } from "../hooks/useAnswers";

function formatDrafts(drafts: Answer["drafts"]): string {
  if (!drafts) return "–";
  if (drafts.proposed === 0) return "none";
  return `${drafts.accepted} of ${drafts.proposed}`;
}

export function Figures({ answer }: { answer: Answer }) {
  const stages = answer.stages ?? [];
  const slowest = Math.max(0, ...stages.map((s) => s.seconds ?? 0));
  return (
    <div className="figures" data-testid="figures">
      <dl>
        <div><dt>Time to first token</dt><dd data-testid="ttft">{formatMs(answer.ttftMs)}</dd></div>
        <div><dt>Tokens/s</dt><dd data-testid="tps">{formatRate(answer.tokensPerSecond)}</dd></div>
        <div><dt>Total time</dt><dd data-testid="total">{formatMs(answer.totalMs)}</dd></div>
        <div><dt>Tokens</dt><dd data-testid="tokens">{formatCount(answer.tokens)}</dd></div>
        <div><dt>Nodes</dt><dd data-testid="node-count">{formatCount(answer.nodeCount)}</dd></div>
        <div><dt>Queue</dt><dd data-testid="queue">{formatMs(answer.queueMs)}</dd></div>
        <div title="Prompt tokens whose KV came from the prefix cache of every node (their prefill was skipped)">
          <dt>Cached prompt</dt>
          <dd data-testid="cached">
            {answer.cachedTokens === undefined ? "–" : `${formatCount(answer.cachedTokens)} of ${formatCount(answer.promptTokens)}`}
          </dd>
        </div>
        <div title="Speculative decoding: draft tokens from the prompt and the answer so far, verified in one pass">
          <dt>Drafts accepted</dt><dd data-testid="drafts">{formatDrafts(answer.drafts)}</dd>
        </div>
      </dl>
      {stages.length > 0 && (
        <table className="stage-times" data-testid="stage-times">
          <caption className="sr-only">Compute time per stage</caption>
          <thead>
            <tr><th scope="col">Stage</th><th scope="col">Node</th><th scope="col">Layers</th><th scope="col">Compute</th></tr>
          </thead>
          <tbody>
            {stages.map((s, i) => (
              <tr key={`${i}-${s.node}`}>
                <td>{i + 1}</td>
                <td className="node-name">{s.node}</td>
                <td>{formatLayers(s.layers)}</td>
                <td>
                  <div className="stage-time">
                    <span>{s.seconds === undefined ? "–" : formatMs(s.seconds * 1000)}</span>
                    {s.seconds !== undefined && slowest > 0 && (
                      <span className="bar" aria-hidden="true"><span style={{ width: `${(100 * s.seconds) / slowest}%` }} /></span>
                    )}
                  </div>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
