// fetch() for the Shardline API: adds the API key, and turns failures into two kinds of errors the UI
// shows differently: ApiUnreachable (no answer at all) and ApiError (the API answered with an error).
import type { ErrorBody } from "../types";
import { getApiKey } from "./keyStore";

/** The API answered with an error: its status and its own message ({"error": {"message"}}). */
export class ApiError extends Error {
  readonly status: number;
  readonly type: string;

  constructor(status: number, message: string, type = "") {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
  }
}

/** The API could not be reached at all (connection refused, network down, proxy without upstream). */
export class ApiUnreachable extends Error {
  constructor(detail = "") {
    super(`The Shardline API cannot be reached${detail ? ` (${detail})` : ""}. Is it running? Start it with make up.`);
    this.name = "ApiUnreachable";
  }
}

export function isAbort(e: unknown): boolean {
  return e instanceof DOMException ? e.name === "AbortError" : (e as Error | null)?.name === "AbortError";
}

/** The message of an error body, or null when ``body`` is not one. */
export function errorMessageOf(body: unknown): { message: string; type: string } | null {
  const error = (body as Partial<ErrorBody> | null)?.error;
  if (error && typeof error.message === "string") return { message: error.message, type: error.type ?? "" };
  return null;
}

/** The ApiError for a non-2xx response: the API's own message when it sent one. */
export async function errorFromResponse(response: Response): Promise<ApiError | ApiUnreachable> {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // the body broke off: go on with the status alone
  }
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  const known = errorMessageOf(parsed);
  if (known) return new ApiError(response.status, known.message, known.type);
  // a dev proxy answers 5xx without the API's error body when the API is down
  if (response.status >= 500) return new ApiUnreachable(`HTTP ${response.status}`);
  return new ApiError(response.status, `HTTP ${response.status} ${response.statusText}`.trim());
}

/** fetch(path) with the API key; resolves only on a 2xx answer. Aborts are rethrown as they are. */
export async function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const key = getApiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiUnreachable();
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await apiFetch(path, { signal, headers: { Accept: "application/json" } });
  try {
    return (await response.json()) as T;
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(response.status, `${path} did not answer JSON`);
  }
}
