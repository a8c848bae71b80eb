// The answers of this session, newest first, each in a conversation: sends one (streamed) with the conversation's
// earlier turns as history (so the next turn starts on their cached KV), cancels the one in flight, and starts a new
// conversation.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, ApiUnreachable, isAbort } from "../api/client";
import { streamAnswer } from "../api/stream";
import type { ChatTurn, GenerationRequest, StageTime, TokenLogprob } from "../types";

export type AnswerStatus = "streaming" | "done" | "cancelled" | "error";

export interface Answer {
  id: number;
  conversation: number; // the conversation it is a turn of
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
  cachedTokens?: number; // prompt tokens whose KV came from the prefix cache
  logprobs?: TokenLogprob[]; // when asked: one per generated token
}

export interface Answers {
  answers: Answer[];
  busy: boolean;
  conversation: number; // the current conversation
  thread: Answer[]; // its turns so far, oldest first
  send(request: GenerationRequest): void; // with the chat template: as the next turn of the conversation
  cancel(): void;
  newConversation(): void;
}

/** The turns of ``thread`` a new message goes after: every answered one (user message, then the answer). */
export function historyOf(thread: Answer[]): ChatTurn[] {
  return thread.filter((a) => a.status === "done" && a.request.chat)
    .flatMap((a) => [{ role: "user" as const, content: a.request.text }, { role: "assistant" as const, content: a.text }]);
}

let nextId = 1;

export function useAnswers(): Answers {
  const [answers, setAnswers] = useState<Answer[]>([]);
  const inFlight = useRef<AbortController | null>(null);
  const [busy, setBusy] = useState(false);
  const [conversation, setConversation] = useState(1);
  const answersNow = useRef<Answer[]>([]);
  answersNow.current = answers;
  const conversationNow = useRef(conversation);
  conversationNow.current = conversation;

  useEffect(() => () => inFlight.current?.abort(), []); // leaving the page closes the stream

  const send = useCallback((asked: GenerationRequest) => {
    if (inFlight.current) return; // one answer at a time
    const id = nextId++;
    const turn = conversationNow.current;
    const thread = answersNow.current.filter((a) => a.conversation === turn).reverse();
    const history = asked.chat ? historyOf(thread) : [];
    const request = history.length > 0 ? { ...asked, history } : asked;
    const controller = new AbortController();
    inFlight.current = controller;
    setBusy(true);
    const update = (change: Partial<Answer> | ((a: Answer) => Partial<Answer>)) =>
      setAnswers((all) => all.map((a) => (a.id === id ? { ...a, ...(typeof change === "function" ? change(a) : change) } : a)));
    setAnswers((all) => [{ id, conversation: turn, request, status: "streaming", started: false, text: "" }, ...all]);

    streamAnswer(request, controller.signal, {
      onStart: (e) => update({ started: true, nodeCount: e.nodeCount, stages: e.stages, promptTokens: e.promptTokens }),
      onFirstToken: (e) => update({ ttftMs: e.timeToFirstToken, queueMs: e.queueTime }),
      onToken: (e) => update((a) => ({ text: a.text + e.text, tokens: e.tokens, tokensPerSecond: e.tokensPerSecond,
                                       totalMs: e.elapsedMs,
                                       logprobs: e.logprobs ? [...(a.logprobs ?? []), ...e.logprobs] : a.logprobs })),
    })
      .then((done) => update({
        status: "done", text: done.text, ttftMs: done.timeToFirstToken ?? undefined, queueMs: done.queueTime,
        tokensPerSecond: done.tokensPerSecond, totalMs: done.processingTime, tokens: done.usage?.completion_tokens,
        promptTokens: done.usage?.prompt_tokens, nodeCount: done.nodeCount, stages: done.stages,
        finishReason: done.finish_reason, drafts: done.usage?.speculative, cachedTokens: done.usage?.cached_tokens,
        logprobs: done.logprobs ?? undefined,
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
  const newConversation = useCallback(() => setConversation((c) => c + 1), []);
  const thread = answers.filter((a) => a.conversation === conversation).reverse();

  return { answers, busy, conversation, thread, send, cancel, newConversation };
}
