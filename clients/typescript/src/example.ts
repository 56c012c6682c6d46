// How an integrator uses the client. Type-checked by `npm run check` (so it breaks when the API changes shape);
// never run by the tests.
import { AtelierClient, AtelierError, type CampaignSpec, type Job } from "./index";

export async function runCampaign(baseUrl: string, apiKey: string): Promise<Job> {
  const atelier = new AtelierClient(baseUrl, apiKey);

  const spec: CampaignSpec = {
    product: { name: "Aurora Lamp", description: "A brass desk lamp with a warm, dimmable glow." },
    brand: { name: "Lumen & Co", palette: ["#1F2937", "#F59E0B"], tone: "calm, premium" },
    taglines: ["Light that works late", "Warmth, on demand"],
    sizes: ["300x250", "iab-leaderboard", "1080x1350"],
    backdrop: "studio",
  };

  let job: Job;
  try {
    job = await atelier.submitJob(
      { kind: "campaign", spec, external_id: "crm-4711", metadata: { team: "growth", quarter: "2026Q4" } },
      { idempotencyKey: "crm-4711-v1" },
    );
  } catch (err) {
    if (err instanceof AtelierError && err.status === 422) {
      for (const fieldError of err.problem?.errors ?? []) console.error(fieldError);
    }
    throw err;
  }
  console.log(`submitted ${job.id}: ${job.status}`);

  const sameOrder = await atelier.listJobs({ external_id: "crm-4711", limit: 10 });
  console.log(`${sameOrder.items.length} job(s) for crm-4711`);

  const done = await atelier.waitForJob(job.id, {
    intervalMs: 2000,
    timeoutMs: 10 * 60 * 1000,
    onPoll: (j) => console.log(`${j.status} ${Math.round(j.progress * 100)}%`),
  });
  if (done.status === "failed") throw new Error(`job ${done.id} failed: ${done.error ?? "unknown"}`);
  for (const failure of done.failures ?? []) {
    console.warn(`item ${failure.item} failed at ${failure.stage}: ${failure.error ?? "no reason given"}`);
  }

  for (const artifact of await atelier.listArtifacts(done.id)) {
    const href = artifact.download_url ?? new URL(artifact.url, baseUrl).toString();
    console.log(`${artifact.name} ${artifact.width ?? "?"}x${artifact.height ?? "?"} ${artifact.content_type}: ${href}`);
  }
  return done;
}

export async function registerWebhook(atelier: AtelierClient): Promise<void> {
  const webhook = await atelier.createWebhook({
    url: "https://hooks.example.com/atelier",
    events: ["job.succeeded", "job.failed"],
    description: "CRM sync",
  });
  console.log(`webhook ${webhook.id} signs with ${webhook.secret ?? "(secret hidden)"}`);
  const delivery = await atelier.sendTestWebhook(webhook.id);
  console.log(`test delivery ${delivery.id}: ${delivery.status}`);

  // every other operation, typed, through the openapi-fetch client
  const { data: capabilities } = await atelier.api.GET("/v1/capabilities");
  console.log(capabilities?.placements.map((p) => p.name));
}
