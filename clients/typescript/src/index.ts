/**
 * A typed client for the Atelier API, built on openapi-fetch and the types that openapi-typescript generated
 * from the API's OpenAPI document (`./schema.d.ts`; regenerate with `make ts-client`).
 *
 *     const atelier = new AtelierClient("http://127.0.0.1:8000", "atl_...");
 *     const job = await atelier.submitJob({ kind: "campaign", spec: { ... } });
 *     const done = await atelier.waitForJob(job.id);
 *
 * Every operation of the API is reachable, typed, through `atelier.api` (`atelier.api.GET("/v1/capabilities")`);
 * the methods below are the common ones, answering the response body or throwing an `AtelierError`.
 */
import createClient, { type Client, type ClientOptions } from "openapi-fetch";

import type { components, operations, paths } from "./schema";

export type { components, operations, paths } from "./schema";

type Schemas = components["schemas"];

// Names for the generated types (aliases, never copies: a change of the API changes them).
export type Job = Schemas["JobView"];
export type JobStatus = Job["status"];
export type CampaignJobRequest = Schemas["CampaignJobRequest"];
export type StoryJobRequest = Schemas["StoryJobRequest"];
/** A job submission: a union discriminated by `kind` (the `spec` type follows it). */
export type JobRequest = CampaignJobRequest | StoryJobRequest;
export type CampaignSpec = Schemas["CampaignSpec"];
export type StorySpec = Schemas["StorySpec"];
export type JobList = Schemas["JobList"];
export type ListJobsQuery = NonNullable<operations["list_jobs"]["parameters"]["query"]>;
export type Artifact = Schemas["ArtifactView"];
export type ItemFailure = Schemas["ItemFailureView"];
export type Webhook = Schemas["WebhookView"];
export type WebhookCreate = Schemas["WebhookCreate"];
export type WebhookDelivery = Schemas["DeliveryView"];
export type Problem = Schemas["Problem"];

/** The statuses a job does not leave (checked against the schema's enum: a renamed status fails `tsc`). */
export const TERMINAL_STATUSES = ["succeeded", "failed", "canceled"] as const satisfies readonly JobStatus[];
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];

/** Whether the job has ended (succeeded, possibly with `failures`; failed; canceled). */
export function isTerminal(status: JobStatus): status is TerminalStatus {
  return (TERMINAL_STATUSES as readonly JobStatus[]).includes(status);
}

/** An answer of 4xx/5xx: its HTTP status and, when the body was an RFC 9457 problem, that problem. */
export class AtelierError extends Error {
  readonly status: number;
  readonly problem: Problem | undefined;

  constructor(status: number, problem: Problem | undefined, body: unknown) {
    const what = problem ? `${problem.title}${problem.detail ? `: ${problem.detail}` : ""}` : String(body ?? "");
    super(`Atelier API answered ${status}${what ? ` (${what})` : ""}`);
    this.name = "AtelierError";
    this.status = status;
    this.problem = problem;
  }
}

function isProblem(value: unknown): value is Problem {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.status === "number" && typeof v.title === "string" && typeof v.type === "string";
}

// openapi-fetch types an error body by its `.../json` media types; ours are application/problem+json, so the
// error is narrowed here at run time instead.
function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  const { data, error, response } = result;
  if (!response.ok || data === undefined) {
    throw new AtelierError(response.status, isProblem(error) ? error : undefined, error);
  }
  return data;
}

export interface AtelierClientOptions {
  /** A fetch to use instead of the global one (tests, proxies, retries). */
  fetch?: ClientOptions["fetch"];
  /** Extra headers sent with every request (the Authorization header is set from the API key). */
  headers?: Record<string, string>;
}

export interface WaitOptions {
  /** Between two polls of the job (default 1000 ms). */
  intervalMs?: number;
  /** Give up after this long with an Error (default: wait as long as it takes). */
  timeoutMs?: number;
  /** Stop waiting when aborted. */
  signal?: AbortSignal;
  /** Called with the job after each poll. */
  onPoll?: (job: Job) => void;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort(): void {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export class AtelierClient {
  /** The openapi-fetch client: every operation of the API, typed from the schema. */
  readonly api: Client<paths>;

  constructor(baseUrl: string, apiKey: string, options: AtelierClientOptions = {}) {
    this.api = createClient<paths>({
      baseUrl: baseUrl.replace(/\/+$/, ""),
      headers: { ...options.headers, Authorization: `Bearer ${apiKey}` },
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
  }

  /** Submit a campaign or story job; the same `idempotencyKey` and body answer the job stored the first time. */
  async submitJob(body: JobRequest, options: { idempotencyKey?: string } = {}): Promise<Job> {
    const header = options.idempotencyKey === undefined ? {} : { "Idempotency-Key": options.idempotencyKey };
    return unwrap(await this.api.POST("/v1/jobs", { body, params: { header } }));
  }

  /** One job: its status, progress, stages and per-item failures. */
  async getJob(jobId: string): Promise<Job> {
    return unwrap(await this.api.GET("/v1/jobs/{job_id}", { params: { path: { job_id: jobId } } }));
  }

  /** A page of the tenant's jobs, newest first (filter by `external_id`, `status`, `kind`; page with `cursor`). */
  async listJobs(query: ListJobsQuery = {}): Promise<JobList> {
    return unwrap(await this.api.GET("/v1/jobs", { params: { query } }));
  }

  /** A job's artifacts (`kind` filters), each with its `url` and, where the store signs one, `download_url`. */
  async listArtifacts(jobId: string, kind?: string): Promise<Artifact[]> {
    const query = kind === undefined ? {} : { kind };
    const page = unwrap(
      await this.api.GET("/v1/jobs/{job_id}/artifacts", { params: { path: { job_id: jobId }, query } }),
    );
    return page.items;
  }

  /** Poll the job until it reaches a terminal status and answer it (a failed job is answered, not thrown). */
  async waitForJob(jobId: string, options: WaitOptions = {}): Promise<Job> {
    const { intervalMs = 1000, timeoutMs, signal, onPoll } = options;
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      const job = await this.getJob(jobId);
      onPoll?.(job);
      if (isTerminal(job.status)) return job;
      if (deadline !== undefined && Date.now() + intervalMs > deadline) {
        throw new Error(`job ${jobId} still ${job.status} after ${timeoutMs} ms`);
      }
      await sleep(intervalMs, signal);
    }
  }

  /** Register a webhook endpoint; the answer carries its signing secret (`whsec_...`). */
  async createWebhook(body: WebhookCreate): Promise<Webhook> {
    return unwrap(await this.api.POST("/v1/webhooks", { body }));
  }

  /** Send a test event to the webhook and answer the delivery that records it. */
  async sendTestWebhook(webhookId: string): Promise<WebhookDelivery> {
    return unwrap(
      await this.api.POST("/v1/webhooks/{webhook_id}/test", { params: { path: { webhook_id: webhookId } } }),
    );
  }
}
