// The answers of this session, newest first: sends one (streamed), cancels the one in flight.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, ApiUnreachable, isAbort } from "../api/client";
import { streamAnswer } from "../api/stream";
import type { GenerationRequest, StageTime } from "../types";

export type AnswerStatus = "streaming" | "done" | "cancelled" | "error";

export interface Answer {
  id: number;
  request: GenerationRequest;
  status: AnswerStatus;
  started: boolean; // the `start` event came: the request was admitted and its first token exists
  text: string;
  error?: string;
  errorStatus?: number; // HTTP status (or the error event's code); 0 when the API could not be reached
  ttftMs?: number;
  queueMs?: number;
  tokensPerSecond?: number;
  totalMs?: number;
  tokens?: number;
  promptTokens?: number;
  nodeCount?: number;
  stages?: StageTime[];
  finishReason?: string;
  drafts?: { proposed: number; accepted: number }; // speculative decoding: draft tokens verified and accepted
}

export interface Answers {
  answers: Answer[];
  busy: boolean;
  send(request: GenerationRequest): void;
  cancel(): void;
}

let nextId = 1;

export function useAnswers(): Answers {
  const [answers, setAnswers] = useState<Answer[]>([]);
  const inFlight = useRef<AbortController | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => () => inFlight.current?.abort(), []); // leaving the page closes the stream

  const send = useCallback((request: GenerationRequest) => {
    if (inFlight.current) return; // one answer at a time
    const id = nextId++;
    const controller = new AbortController();
    inFlight.current = controller;
    setBusy(true);
    const update = (change: Partial<Answer> | ((a: Answer) => Partial<Answer>)) =>
      setAnswers((all) => all.map((a) => (a.id === id ? { ...a, ...(typeof change === "function" ? change(a) : change) } : a)));
    setAnswers((all) => [{ id, request, status: "streaming", started: false, text: "" }, ...all]);

    streamAnswer(request, controller.signal, {
      onStart: (e) => update({ started: true, nodeCount: e.nodeCount, stages: e.stages, promptTokens: e.promptTokens }),
      onFirstToken: (e) => update({ ttftMs: e.timeToFirstToken, queueMs: e.queueTime }),
      onToken: (e) => update((a) => ({ text: a.text + e.text, tokens: e.tokens, tokensPerSecond: e.tokensPerSecond,
                                       totalMs: e.elapsedMs })),
    })
      .then((done) => update({
        status: "done", text: done.text, ttftMs: done.timeToFirstToken ?? undefined, queueMs: done.queueTime,
        tokensPerSecond: done.tokensPerSecond, totalMs: done.processingTime, tokens: done.usage?.completion_tokens,
        promptTokens: done.usage?.prompt_tokens, nodeCount: done.nodeCount, stages: done.stages,
        finishReason: done.finish_reason, drafts: done.usage?.speculative,
      }))
      .catch((e: unknown) => {
        if (isAbort(e) || controller.signal.aborted) update({ status: "cancelled" });
        else if (e instanceof ApiError) update({ status: "error", error: e.message, errorStatus: e.status });
        else if (e instanceof ApiUnreachable) update({ status: "error", error: e.message, errorStatus: 0 });
        else update({ status: "error", error: e instanceof Error ? e.message : String(e) });
      })
      .finally(() => {
        inFlight.current = null;
        setBusy(false);
      });
  }, []);

  const cancel = useCallback(() => inFlight.current?.abort(), []);

  return { answers, busy, send, cancel };
}
