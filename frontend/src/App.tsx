// Shardline's web UI: ask a model and watch the answer stream (left), and the pipeline work (right).
import { useState } from "react";
import { getApiKey, setApiKey } from "./api/keyStore";
import { AnswerCard } from "./components/AnswerCard";
import { Conversation } from "./components/Conversation";
import { ApiKeyField } from "./components/ApiKeyField";
import { ApiProblemBanner, ModelBanner } from "./components/Banners";
import { History } from "./components/History";
import { PipelineView } from "./components/PipelineView";
import { PlacementPreview } from "./components/PlacementPreview";
import { Rebalance } from "./components/Rebalance";
import { PromptForm } from "./components/PromptForm";
import { useAnswers } from "./hooks/useAnswers";
import { useClusterPoll, type ProblemKind } from "./hooks/useClusterPoll";
import { chooseModel, DEFAULT_VALUES, validate, type FormValues } from "./lib/params";

function connectionText(live: boolean, problem: ProblemKind | undefined): string {
  if (live) return "live";
  if (problem === "unreachable") return "offline";
  if (problem === "auth") return "key needed";
  return problem ? "error" : "connecting…";
}

export default function App({ pollMs }: { pollMs?: number }) {
  const [apiKey, setKey] = useState(getApiKey);
  const status = useClusterPoll(pollMs, apiKey);
  const { answers, busy, thread, send, cancel, newConversation } = useAnswers();
  const [values, setValues] = useState<FormValues>(DEFAULT_VALUES);

  // the chosen model, or (until one is chosen, or if it goes away) the first ready one the API serves
  const models = status.models;
  const model = chooseModel(models, values.model);
  const form = model === values.model ? values : { ...values, model };

  const checked = validate(form);
  const card = models?.find((m) => m.id === model);
  const clusterModel = status.cluster?.models.find((m) => m.name === model) ?? status.cluster?.models[0];
  const [current, ...earlier] = answers;
  const before = current && thread.length > 0 && thread[thread.length - 1].id === current.id ? thread.slice(0, -1) : thread;
  const live = status.polls > 0 && status.problem === null;

  return (
    <div className="app">
      <header className="top">
        <h1>Shardline</h1>
        <span className="muted">pipeline-parallel inference</span>
        <span className={`connection ${live ? "live" : status.problem ? "offline" : ""}`} data-testid="connection">
          {connectionText(live, status.problem?.kind)}
        </span>
        <a className="small" href="/docs">API docs</a>
      </header>
      <ApiProblemBanner problem={status.problem} haveData={status.cluster !== null} />
      <ModelBanner card={card} model={status.cluster?.models.find((m) => m.name === model)} />
      <main className="layout">
        <section className="ask" aria-labelledby="ask-title" data-testid="current-answer">
          <h2 id="ask-title" className="sr-only">Ask</h2>
          <Conversation earlier={before} busy={busy} onNew={newConversation} />
          <PromptForm values={form} models={models} busy={busy} problem={checked.ok ? null : checked.problem}
                      onChange={setValues} onSubmit={() => checked.ok && send(checked.request)} onCancel={cancel} />
          {current && <AnswerCard answer={current} />}
        </section>
        <section className="side" aria-labelledby="pipeline-title">
          <h2 id="pipeline-title">
            Pipeline {clusterModel && <span className="muted">· {clusterModel.name}</span>}
          </h2>
          <PipelineView model={clusterModel} active={status.active} />
          <PlacementPreview defaultSource={model} />
          <Rebalance model={clusterModel?.name} />
          <ApiKeyField value={apiKey} open={status.problem?.kind === "auth"}
                       onSave={(k) => { setApiKey(k); setKey(getApiKey()); }} />
        </section>
        <History answers={earlier} />
      </main>
    </div>
  );
}
