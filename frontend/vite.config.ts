/// <reference types="vitest/config" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

declare const process: { env: Record<string, string | undefined> }; // Node's, without all of @types/node

// npm run dev: the UI on :5173 with hot reload, API calls proxied to the API of `make up` on :8000
// (SHARDLINE_API=http://host:port points it at another one)
const api = process.env.SHARDLINE_API || "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  server: {
    port: 5173,
    strictPort: true,
    proxy: { "/api": api, "/v1": api, "/health": api, "/ready": api, "/metrics": api },
  },
  build: { outDir: "dist", emptyOutDir: true },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test/setup.ts"],
    watch: false,
  },
});
