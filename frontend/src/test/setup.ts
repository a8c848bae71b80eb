// Runs before every test file: a clean DOM, storage and fetch after each test.
import { cleanup, configure } from "@testing-library/react";
import { afterEach, vi } from "vitest";

configure({ asyncUtilTimeout: 5000 }); // findBy / waitFor: room for a busy 2-core CI machine

afterEach(() => {
  cleanup();
  localStorage.clear();
  vi.unstubAllGlobals();
  vi.useRealTimers();
});
