// The earlier answers of this session (newest first), each folded to one line.
import { formatRate } from "../lib/format";
import type { Answer } from "../hooks/useAnswers";
import { AnswerCard } from "./AnswerCard";

export function History({ answers }: { answers: Answer[] }) {
  if (answers.length === 0) return null;
  return (
    <section aria-labelledby="history-title" className="history">
      <h2 id="history-title">Earlier answers</h2>
      <ol data-testid="history">
        {answers.map((a) => (
          <li key={a.id}>
            <details>
              <summary>
                <span className="summary-prompt">{a.request.text}</span>
                <span className="muted small">
                  {" "}{a.status}{a.tokens ? ` · ${a.tokens} tokens` : ""}
                  {a.tokensPerSecond ? ` · ${formatRate(a.tokensPerSecond)} tok/s` : ""}
                </span>
              </summary>
              <AnswerCard answer={a} />
            </details>
          </li>
        ))}
      </ol>
    </section>
  );
}
