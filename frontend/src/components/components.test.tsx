import { fireEvent, render, screen, within } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import type { Answer } from "../hooks/useAnswers";
import { replicaKey } from "../lib/activity";
import { DEFAULT_VALUES, type FormValues } from "../lib/params";
import { clusterModel, replica, THREE_STAGES } from "../test/fakeApi";
import { AnswerCard } from "./AnswerCard";
import { ApiProblemBanner, ModelBanner } from "./Banners";
import { History } from "./History";
import { PipelineView } from "./PipelineView";
import { PromptForm } from "./PromptForm";

const MODELS = [{ id: "smol", ready: true }, { id: "big", ready: false }];

function form(values: Partial<FormValues> = {}, props: Partial<Parameters<typeof PromptForm>[0]> = {}) {
  const handlers = { onChange: vi.fn(), onSubmit: vi.fn(), onCancel: vi.fn() };
  render(<PromptForm values={{ ...DEFAULT_VALUES, model: "smol", ...values }} models={MODELS} busy={false}
                     problem={null} {...handlers} {...props} />);
  return handlers;
}

describe("PromptForm", () => {
  it("labels every input", () => {
    form();
    for (const name of ["Prompt", "Model", "Max tokens", "Temperature", "Top-p", "Chat template"]) {
      expect(screen.getByLabelText(name)).toBeTruthy();
    }
  });

  it("lists the models, not-ready ones as loading", () => {
    form();
    const options = within(screen.getByLabelText("Model")).getAllByRole("option").map((o) => o.textContent);
    expect(options).toEqual(["smol", "big (loading…)"]);
  });

  it("disables Send on empty input and says why", () => {
    form({ text: "" }, { problem: "Type a prompt to send." });
    expect(screen.getByRole("button", { name: "Send" })).toHaveProperty("disabled", true);
    expect(screen.getByTestId("empty-hint").textContent).toBe("Type a prompt to send.");
  });

  it("sends with Ctrl+Enter and Cmd+Enter, not with plain Enter", () => {
    const { onSubmit } = form({ text: "hi" });
    const box = screen.getByLabelText("Prompt");
    fireEvent.keyDown(box, { key: "Enter" });
    expect(onSubmit).not.toHaveBeenCalled();
    fireEvent.keyDown(box, { key: "Enter", ctrlKey: true });
    fireEvent.keyDown(box, { key: "Enter", metaKey: true });
    expect(onSubmit).toHaveBeenCalledTimes(2);
  });

  it("does not send an invalid form with the shortcut", () => {
    const { onSubmit } = form({ text: "" }, { problem: "Type a prompt to send." });
    fireEvent.keyDown(screen.getByLabelText("Prompt"), { key: "Enter", ctrlKey: true });
    expect(onSubmit).not.toHaveBeenCalled();
  });

  it("reports edits as typed", () => {
    const { onChange } = form({ text: "hi" });
    fireEvent.change(screen.getByLabelText("Max tokens"), { target: { value: "300" } });
    expect(onChange).toHaveBeenLastCalledWith(expect.objectContaining({ maxTokens: "300", text: "hi" }));
    fireEvent.click(screen.getByLabelText("Chat template"));
    expect(onChange).toHaveBeenLastCalledWith(expect.objectContaining({ chat: false }));
  });

  it("offers Cancel while an answer streams (and Escape cancels)", () => {
    const { onCancel } = form({ text: "hi" }, { busy: true });
    expect(screen.getByRole("button", { name: "Send" })).toHaveProperty("disabled", true);
    fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    fireEvent.keyDown(screen.getByLabelText("Prompt"), { key: "Escape" });
    expect(onCancel).toHaveBeenCalledTimes(2);
  });
});

describe("PipelineView", () => {
  it("shows each node in layer order with its range, state and KV use", () => {
    const m = clusterModel([THREE_STAGES[2], THREE_STAGES[0], { ...THREE_STAGES[1], kv_used_tokens: 512 }]);
    render(<PipelineView model={m} active={new Set()} />);
    const nodes = screen.getAllByTestId("node");
    expect(nodes.map((n) => n.getAttribute("data-node"))).toEqual(["node1", "node2", "node3"]);
    expect(screen.getAllByTestId("layers").map((e) => e.textContent)).toEqual(["layers 0–12", "layers 13–24", "layers 25–29"]);
    expect(within(nodes[1]).getByTestId("kv").textContent).toContain("KV 512 / 16,384");
    expect(within(nodes[1]).getByRole("meter").getAttribute("aria-valuenow")).toBe("512");
  });

  it("gives each state its own colour class, and puts replicas beside their range", () => {
    const m = clusterModel([replica("n1", 0, [0, 13]), replica("n4", 0, [0, 13], { state: "down", last_error: "refused" }),
                            replica("n2", 1, [13, 30], { state: "draining" }), replica("n5", 1, [13, 30], { state: "loading" })]);
    render(<PipelineView model={m} active={new Set()} />);
    const stages = screen.getAllByTestId("stage");
    expect(stages).toHaveLength(2);
    expect(within(stages[0]).getAllByTestId("node").map((n) => n.className)).toEqual(["node state-ready", "node state-down"]);
    expect(within(stages[1]).getAllByTestId("node").map((n) => n.getAttribute("data-state"))).toEqual(["draining", "loading"]);
    expect(stages[0].textContent).toContain("2 replicas");
    expect(stages[0].textContent).toContain("refused");
  });

  it("lights the activity of the nodes that ran micro-batches", () => {
    const m = clusterModel(THREE_STAGES);
    render(<PipelineView model={m} active={new Set([replicaKey("smol", "node2", 1)])} />);
    expect(screen.getAllByTestId("activity").map((a) => a.getAttribute("data-active"))).toEqual(["false", "true", "false"]);
  });

  it("does not break without micro_batches", () => {
    const r = replica("n1", 0, [0, 30]);
    delete r.micro_batches;
    render(<PipelineView model={clusterModel([r])} active={new Set()} />);
    expect(screen.getByTestId("activity").getAttribute("aria-label")).toBe("no activity data");
  });

  it("shows the model's counters", () => {
    render(<PipelineView model={clusterModel(THREE_STAGES, { running: 2, waiting: 1, failovers: 3 })} active={new Set()} />);
    expect(screen.getByTestId("pipeline-stats").textContent).toBe("serving2 running1 waiting3 failovers");
  });
});

const ANSWER: Answer = {
  id: 1, conversation: 1, request: { text: "Capital of France?", model: "smol", max_tokens: 64, temperature: 0, top_p: 1, chat: true },
  status: "done", started: true, text: "Paris.", ttftMs: 210, queueMs: 0.3, tokensPerSecond: 12.5, totalMs: 900,
  tokens: 3, nodeCount: 3, finishReason: "stop", drafts: { proposed: 12, accepted: 9 },
  stages: [{ node: "node1", address: "a", layers: [0, 13], seconds: 0.25 }, { node: "node2", address: "b", layers: [13, 30], seconds: 0.5 }],
};

describe("AnswerCard", () => {
  it("shows the text and every figure, per-stage time per node", () => {
    render(<AnswerCard answer={ANSWER} />);
    expect(screen.getByTestId("answer-text").textContent).toBe("Paris.");
    expect(screen.getByTestId("ttft").textContent).toBe("210 ms");
    expect(screen.getByTestId("tps").textContent).toBe("12.5");
    expect(screen.getByTestId("total").textContent).toBe("900 ms");
    expect(screen.getByTestId("node-count").textContent).toBe("3");
    expect(screen.getByTestId("drafts").textContent).toBe("9 of 12");
    const rows = within(screen.getByTestId("stage-times")).getAllByRole("row").slice(1);
    expect(rows.map((r) => r.textContent)).toEqual(["1node1layers 0–12250 ms", "2node2layers 13–29500 ms"]);
  });

  it("shows dashes for figures not known yet, and the API's error message", () => {
    render(<AnswerCard answer={{ ...ANSWER, status: "error", text: "", error: "model 'x' is not served",
                                 ttftMs: undefined, tokensPerSecond: undefined, stages: undefined,
                                 drafts: undefined }} />);
    expect(screen.getByTestId("ttft").textContent).toBe("–");
    expect(screen.getByTestId("drafts").textContent).toBe("–");
    expect(screen.getByRole("alert").textContent).toBe("model 'x' is not served");
    expect(screen.queryByTestId("stage-times")).toBeNull();
  });

  it("says when it was cancelled", () => {
    render(<AnswerCard answer={{ ...ANSWER, status: "cancelled" }} />);
    expect(screen.getByTestId("answer").getAttribute("data-status")).toBe("cancelled");
    expect(screen.getByTestId("cancelled")).toBeTruthy();
  });
});

describe("History", () => {
  it("lists earlier answers with their prompt", () => {
    render(<History answers={[ANSWER, { ...ANSWER, id: 2, request: { ...ANSWER.request, text: "Second?" } }]} />);
    expect(within(screen.getByTestId("history")).getAllByRole("listitem")).toHaveLength(2);
    expect(screen.getByTestId("history").textContent).toContain("Second?");
  });
});

describe("Banners", () => {
  it("says the API is down", () => {
    render(<ApiProblemBanner problem={{ kind: "unreachable", message: "cannot be reached" }} haveData={false} />);
    expect(screen.getByRole("alert").textContent).toBe("API down: cannot be reached");
  });

  it("says why the chosen model is not ready", () => {
    render(<ModelBanner card={{ id: "smol", ready: false }}
                        model={clusterModel([], { state: "unavailable", ready: false,
                                                  unavailable_reason: "node2 at 127.0.0.1:50052 is down" })} />);
    expect(screen.getByTestId("model-unavailable").textContent).toBe("smol is unavailable. node2 at 127.0.0.1:50052 is down");
  });

  it("says nothing for a ready model", () => {
    const { container } = render(<ModelBanner card={{ id: "smol", ready: true }} model={clusterModel([])} />);
    expect(container.textContent).toBe("");
  });
});
