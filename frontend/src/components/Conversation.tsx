// The current conversation's earlier turns (oldest first): each new message is sent with them as history, so its
// prefill starts on their cached KV. "New conversation" starts over.
import type { Answer } from "../hooks/useAnswers";

interface Props {
  earlier: Answer[]; // the turns before the current answer, oldest first
  busy: boolean;
  onNew(): void;
}

export function Conversation({ earlier, busy, onNew }: Props) {
  const sent = earlier.filter((a) => a.status === "done" && a.request.chat).length;
  return (
    <section className="card conversation" aria-label="Conversation" data-testid="conversation">
      <header className="conversation-head">
        <span className="muted small" data-testid="conversation-note">
          {earlier.length === 0
            ? "New conversation: with the chat template, each message is sent with the turns before it."
            : `${sent} earlier turn${sent === 1 ? "" : "s"} go with the next message (their KV is cached on every node).`}
        </span>
        <button type="button" className="secondary" disabled={busy || earlier.length === 0} onClick={onNew}>
          New conversation
        </button>
      </header>
      {earlier.length > 0 && (
        <ol className="turns">
          {earlier.map((a) => (
            <li key={a.id} data-testid="turn" data-status={a.status}>
              <p className="turn-user"><span className="sr-only">You: </span>{a.request.text}</p>
              <p className="turn-assistant">
                <span className="sr-only">Answer: </span>{a.text || <span className="muted">({a.status})</span>}
              </p>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
