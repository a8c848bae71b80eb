// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { AnswerView } from "./components/AnswerView";
import { groupByStage, PipelineView } from "./components/PipelineView";
import { PromptForm, type FormState } from "./components/PromptForm";
import type { ClusterModel, Replica } from "./types";

afterEach(cleanup);

const replica = (node: string, stage: number, layers: [number, number], extra: Partial<Replica> = {}): Replica => ({
  node, stage, layers, address: `127.0.0.1:${50051 + stage}`, state: "ready", kv_used_tokens: 0,
  kv_capacity_tokens: 1000, last_error: "", micro_batches: 0, ...extra,
});

const model = (replicas: Replica[]): ClusterModel => ({
  name: "m", state: "serving", ready: true, unavailable_reason: "", num_stages: 3, running: 0, waiting: 0,
  failovers: 0, replicas,
});

describe("PipelineView", () => {
  it("shows each node in layer order with its range, state and KV use; replicas beside their range", () => {
    const m = model([replica("n1", 0, [0, 13]), replica("n4", 0, [0, 13], { state: "down" }),
                     replica("n2", 1, [13, 25], { kv_used_tokens: 500 }), replica("n3", 2, [25, 30])]);
    render(<PipelineView model={m} />);
    const stages = screen.getAllByTestId("stage");
    expect(stages).toHaveLength(3);
    expect(stages[0].textContent).toContain("n1");
    expect(stages[0].textContent).toContain("n4");
    expect(screen.getAllByTestId("layers").map((e) => e.textContent)).toEqual(
      ["layers 0–12", "layers 0–12", "layers 13–24", "layers 25–29"]);
    expect(screen.getAllByTestId("node").map((e) => e.getAttribute("data-state"))).toEqual(
      ["ready", "down", "ready", "ready"]);
    expect(stages[1].textContent).toContain("KV 500 / 1,000");
  });

  it("pulses a node whose micro-batch count grew since the last poll", () => {
    const { rerender } = render(<PipelineView model={model([replica("n1", 0, [0, 2], { micro_batches: 5 })])} />);
    expect(screen.getByTestId("activity").getAttribute("data-active")).toBe("false");
    rerender(<PipelineView model={model([replica("n1", 0, [0, 2], { micro_batches: 9 })])} />);
    expect(screen.getByTestId("activity").getAttribute("data-active")).toBe("true");
  });

  it("groups replicas by stage", () => {
    expect(groupByStage([replica("a", 1, [1, 2]), replica("b", 0, [0, 1]), replica("c", 1, [1, 2])])
      .map((s) => s.map((r) => r.node))).toEqual([["b"], ["a", "c"]]);
  });
});

describe("PromptForm", () => {
  const form: FormState = { text: "", model: "m", maxTokens: 16, temperature: 0, topP: 1, chat: true };
  const models = [{ id: "m", ready: true, max_model_len: 100, num_stages: 3 }];

  it("disables sending an empty prompt and says why", () => {
    render(<PromptForm form={form} models={models} busy={false} onChange={() => {}} onSubmit={() => {}}
                       onCancel={() => {}} />);
    expect((screen.getByRole("button", { name: "Send" }) as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByTestId("empty-hint")).toBeTruthy();
  });

  it("sends with Ctrl+Enter and labels every input", () => {
    const onSubmit = vi.fn();
    render(<PromptForm form={{ ...form, text: "hi" }} models={models} busy={false} onChange={() => {}}
                       onSubmit={onSubmit} onCancel={() => {}} />);
    fireEvent.keyDown(screen.getByLabelText("Prompt"), { key: "Enter", ctrlKey: true });
    expect(onSubmit).toHaveBeenCalledOnce();
    for (const name of ["Model", "Max tokens", "Temperature", "Top-p", "Chat template"]) {
      expect(screen.getByLabelText(name)).toBeTruthy();
    }
  });

  it("offers Cancel while an answer streams", () => {
    const onCancel = vi.fn();
    render(<PromptForm form={{ ...form, text: "hi" }} models={models} busy onChange={() => {}} onSubmit={() => {}}
                       onCancel={onCancel} />);
    fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    expect(onCancel).toHaveBeenCalledOnce();
  });
});

describe("AnswerView", () => {
  it("shows the text, the figures and the API's error message", () => {
    render(<AnswerView answer={{ id: 1, prompt: "q", model: "m", text: "Paris.", status: "error", error: "boom",
                                 ttftMs: 210, tokensPerSecond: 12.5, totalMs: 900, tokens: 8, nodeCount: 3,
                                 stages: [{ node: "n1", address: "a", layers: [0, 13], seconds: 0.25 }] }} />);
    expect(screen.getByTestId("answer-text").textContent).toBe("Paris.");
    expect(screen.getByTestId("ttft").textContent).toBe("210 ms");
    expect(screen.getByTestId("tps").textContent).toBe("12.5");
    expect(screen.getByTestId("node-count").textContent).toBe("3");
    expect(screen.getByTestId("stage-times").textContent).toContain("250 ms");
    expect(screen.getByRole("alert").textContent).toBe("boom");
  });
});
