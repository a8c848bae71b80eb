// One answer: its text as it streams, and its figures once known.
import type { StageTime } from "../types";

export interface Answer {
  id: number;
  prompt: string;
  model: string;
  text: string;
  status: "streaming" | "done" | "cancelled" | "error";
  error?: string;
  ttftMs?: number;
  tokensPerSecond?: number;
  totalMs?: number;
  tokens?: number;
  nodeCount?: number;
  stages?: StageTime[];
}

const fmt = (v: number | undefined, digits = 0, unit = "") => (v === undefined ? "–" : `${v.toFixed(digits)}${unit}`);

export function Figures({ answer }: { answer: Answer }) {
  return (
    <div className="figures" data-testid="figures">
      <dl>
        <div><dt>Time to first token</dt><dd data-testid="ttft">{fmt(answer.ttftMs, 0, " ms")}</dd></div>
        <div><dt>Tokens/s</dt><dd data-testid="tps">{fmt(answer.tokensPerSecond, 1)}</dd></div>
        <div><dt>Total time</dt><dd data-testid="total">{fmt(answer.totalMs, 0, " ms")}</dd></div>
        <div><dt>Tokens</dt><dd>{answer.tokens ?? "–"}</dd></div>
        <div><dt>Nodes</dt><dd data-testid="node-count">{answer.nodeCount ?? "–"}</dd></div>
      </dl>
      {answer.stages && answer.stages.length > 0 && (
        <table className="stages" data-testid="stage-times">
          <thead><tr><th>Stage</th><th>Node</th><th>Layers</th><th>Compute</th></tr></thead>
          <tbody>
            {answer.stages.map((s, i) => (
              <tr key={i}>
                <td>{i + 1}</td><td>{s.node}</td><td>{s.layers[0]}–{s.layers[1] - 1}</td>
                <td>{s.seconds === undefined ? "–" : `${(s.seconds * 1000).toFixed(0)} ms`}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

export function AnswerView({ answer }: { answer: Answer }) {
  return (
    <article className={`answer ${answer.status}`} data-testid="answer" data-status={answer.status}>
      <p className="prompt"><span className="muted">{answer.model} ·</span> {answer.prompt}</p>
      <div className="text" data-testid="answer-text" aria-live="polite">
        {answer.text}{answer.status === "streaming" && <span className="cursor">▍</span>}
      </div>
      {answer.status === "cancelled" && <p className="muted" data-testid="cancelled">Cancelled.</p>}
      {answer.error && <p className="error-text" role="alert" data-testid="answer-error">{answer.error}</p>}
      <Figures answer={answer} />
    </article>
  );
}
