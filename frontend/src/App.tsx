// Shardline's web UI: ask a model, watch the answer stream and the pipeline work.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, ApiUnreachable, apiKey, getCluster, listModels, setApiKey, streamAnswer } from "./api";
import { AnswerView, type Answer } from "./components/AnswerView";
import { PipelineView } from "./components/PipelineView";
import { PromptForm, type FormState } from "./components/PromptForm";
import type { Cluster, ModelCard } from "./types";

const POLL_MS = 1000;

function problemOf(e: unknown): string {
  if (e instanceof ApiUnreachable) return e.message;
  if (e instanceof ApiError) return e.status === 401 ? `${e.message} (set the API key below)` : e.message;
  return String(e);
}

export default function App() {
  const [models, setModels] = useState<ModelCard[]>([]);
  const [cluster, setCluster] = useState<Cluster | null>(null);
  const [apiDown, setApiDown] = useState<string>("");
  const [form, setForm] = useState<FormState>({ text: "", model: "", maxTokens: 128, temperature: 0, topP: 1, chat: true });
  const [answers, setAnswers] = useState<Answer[]>([]); // newest first
  const [key, setKey] = useState(apiKey());
  const abort = useRef<AbortController | null>(null);
  const busy = answers[0]?.status === "streaming";

  const poll = useCallback(async () => {
    try {
      const [m, c] = await Promise.all([listModels(), getCluster()]);
      setModels(m);
      setCluster(c);
      setApiDown("");
      setForm((f) => (f.model || m.length === 0 ? f : { ...f, model: m[0].id }));
    } catch (e) {
      setApiDown(problemOf(e));
    }
  }, []);

  useEffect(() => {
    void poll();
    const timer = setInterval(() => void poll(), POLL_MS);
    return () => clearInterval(timer);
  }, [poll]);

  const update = (id: number, change: Partial<Answer>) =>
    setAnswers((all) => all.map((a) => (a.id === id ? { ...a, ...change } : a)));

  const send = async () => {
    const id = Date.now();
    const controller = new AbortController();
    abort.current = controller;
    setAnswers((all) => [{ id, prompt: form.text, model: form.model, text: "", status: "streaming" }, ...all]);
    let text = "";
    try {
      await streamAnswer({ text: form.text, model: form.model, max_tokens: form.maxTokens,
                           temperature: form.temperature, top_p: form.topP, chat: form.chat }, controller.signal, {
        onStart: (e) => update(id, { nodeCount: e.nodeCount, stages: e.stages }),
        onFirstToken: (e) => update(id, { ttftMs: e.timeToFirstToken }),
        onToken: (e) => {
          text += e.text;
          update(id, { text, tokens: e.tokens, tokensPerSecond: e.tokensPerSecond, totalMs: e.elapsedMs });
        },
        onDone: (e) => update(id, {
          text: e.text, status: "done", ttftMs: e.timeToFirstToken ?? undefined, tokensPerSecond: e.tokensPerSecond,
          totalMs: e.processingTime, tokens: e.usage.completion_tokens, nodeCount: e.nodeCount, stages: e.stages,
        }),
      });
      setAnswers((all) => all.map((a) => (a.id === id && a.status === "streaming" ? { ...a, status: "done" } : a)));
    } catch (e) {
      if ((e as Error).name === "AbortError") update(id, { status: "cancelled" });
      else update(id, { status: "error", error: problemOf(e) });
    } finally {
      abort.current = null;
    }
  };

  const selected = cluster?.models.find((m) => m.name === form.model);
  const notServing = selected && !selected.ready;
  return (
    <div className="app">
      <header>
        <h1>Shardline</h1>
        <span className="muted">pipeline-parallel inference</span>
      </header>
      {apiDown && <div className="banner error" role="alert" data-testid="api-down">{apiDown}</div>}
      {notServing && (
        <div className="banner warn" role="status" data-testid="model-unavailable">
          Model {selected.name} is {selected.state}{selected.unavailable_reason ? `: ${selected.unavailable_reason}` : ""}
        </div>
      )}
      <main>
        <section className="ask" aria-label="ask">
          <PromptForm form={form} models={models} busy={busy} onChange={setForm} onSubmit={() => void send()}
                      onCancel={() => abort.current?.abort()} />
          {answers[0] && <AnswerView answer={answers[0]} />}
        </section>
        <section className="side" aria-label="pipeline">
          <h2>Pipeline {selected && <span className="muted small">{selected.name} · {selected.state} · running {selected.running}, waiting {selected.waiting}{selected.failovers ? `, ${selected.failovers} failovers` : ""}</span>}</h2>
          <PipelineView model={selected} />
          {answers.length > 1 && (
            <>
              <h2>Earlier answers</h2>
              <ol className="history" data-testid="history">
                {answers.slice(1).map((a) => (
                  <li key={a.id}>
                    <details>
                      <summary>{a.prompt} <span className="muted small">({a.status}{a.tokens ? `, ${a.tokens} tokens` : ""})</span></summary>
                      <AnswerView answer={a} />
                    </details>
                  </li>
                ))}
              </ol>
            </>
          )}
          <details className="key">
            <summary>API key</summary>
            <label>Bearer key (kept in this browser)
              <input type="password" value={key} onChange={(e) => { setKey(e.target.value); setApiKey(e.target.value); }} />
            </label>
          </details>
        </section>
      </main>
    </div>
  );
}
