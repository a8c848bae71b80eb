// One answer: the prompt, the text as it streams, its state (cancelled, error) and its figures.
import type { Answer } from "../hooks/useAnswers";
import { Figures } from "./Figures";
import { TokenLogprobs } from "./TokenLogprobs";

const STATUS_TEXT: Record<Answer["status"], string> = {
  streaming: "streaming", done: "done", cancelled: "cancelled", error: "failed",
};

export function AnswerCard({ answer }: { answer: Answer }) {
  const { request } = answer;
  const waiting = answer.status === "streaming" && answer.text === "";
  const nothing = answer.status === "error" && answer.text === "" && !answer.started; // refused before it began
  return (
    <article className={`card answer status-${answer.status}`} data-testid="answer" data-status={answer.status}
             aria-busy={answer.status === "streaming"}>
      <header className="answer-head">
        <p className="prompt" data-testid="answer-prompt">{request.text}</p>
        <span className={`pill status-${answer.status}`}>{STATUS_TEXT[answer.status]}</span>
      </header>
      <p className="muted small">
        {request.model} · max {request.max_tokens} tokens · temperature {request.temperature} · top-p {request.top_p}
        {request.chat ? " · chat" : ""}
        {request.history?.length ? ` · after ${request.history.length / 2} earlier turn${request.history.length === 2 ? "" : "s"}` : ""}
        {request.json_schema ? " · JSON schema" : ""}
        {answer.finishReason ? ` · finished: ${answer.finishReason}` : ""}
      </p>
      {!nothing && (
        <div className="answer-text" data-testid="answer-text">
          {answer.text}
          {answer.status === "streaming" && answer.text && <span className="cursor" aria-hidden="true">▍</span>}
        </div>
      )}
      {answer.logprobs && answer.logprobs.length > 0 && <TokenLogprobs tokens={answer.logprobs} />}
      {waiting && <p className="waiting muted small" data-testid="waiting">Waiting for the first token…</p>}
      {answer.status === "cancelled" && (
        <p className="muted small" data-testid="cancelled">Cancelled: generation stopped and its KV cache was freed.</p>
      )}
      {answer.status === "error" && (
        <p className="error-text" role="alert" data-testid="answer-error">
          {answer.error}
          {answer.errorStatus ? <span className="muted small"> (HTTP {answer.errorStatus})</span> : null}
        </p>
      )}
      {!nothing && <Figures answer={answer} />}
    </article>
  );
}
