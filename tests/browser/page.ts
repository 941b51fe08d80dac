// A web page that uses roz's generated TypeScript client (clients/typescript) through
// connect-web, as a web developer would: from its own origin, with an API key as a Bearer header.
// tests/e2e/test_browser_client.py bundles it with esbuild, serves it and reads what it reports.
//
// Its address says what to do: #server=<roz's URL>&key=<API key>&transport=<one of TRANSPORTS>.
// It reports into window.roz (and <pre id="report">): one entry per step, as it goes, then
// `done`. The last step watches the task it made; the test moves that task along meanwhile.

import { type Client, Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  BadRequestSchema,
  Environment_Kind,
  EnvironmentService,
  Task_State,
  TaskService,
  WatchService,
} from "../../clients/typescript/src/index";

type Report = Record<string, unknown> & { done?: boolean; failed?: string };

const TRANSPORTS: Record<string, (baseUrl: string, interceptors: Interceptor[]) => Transport> = {
  "grpc-web": (baseUrl, interceptors) => createGrpcWebTransport({ baseUrl, interceptors }),
  "grpc-web+json": (baseUrl, interceptors) =>
    createGrpcWebTransport({ baseUrl, interceptors, useBinaryFormat: false }),
  // Side-effect-free methods (GetEnvironment) as Connect's GET, the request in the query.
  connect: (baseUrl, interceptors) =>
    createConnectTransport({ baseUrl, interceptors, useHttpGet: true }),
  "connect+proto": (baseUrl, interceptors) =>
    createConnectTransport({ baseUrl, interceptors, useBinaryFormat: true }),
};

const report: Report = {};
(window as unknown as { roz: Report }).roz = report;

function record(step: string, value: unknown): void {
  report[step] = value;
  document.getElementById("report")!.textContent = JSON.stringify(report, null, 2);
}

/** What a failed call tells the page: its code by name, its message, its field violations. */
function failure(error: unknown): Record<string, unknown> {
  const e = ConnectError.from(error);
  return {
    code: Code[e.code],
    message: e.rawMessage,
    violations: e
      .findDetails(BadRequestSchema)
      .flatMap((b) => b.fieldViolations.map((v) => ({ field: v.field, description: v.description }))),
  };
}

async function outcome<T>(call: () => Promise<T>, ok: (value: T) => unknown): Promise<unknown> {
  try {
    return { ok: ok(await call()) };
  } catch (error) {
    return { error: failure(error) };
  }
}

async function run(params: URLSearchParams): Promise<void> {
  const server = params.get("server")!;
  const key = params.get("key")!;
  const transportName = params.get("transport")!;
  const makeTransport = TRANSPORTS[transportName];
  if (!makeTransport) throw new Error(`no transport ${transportName}`);

  const bearer: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${key}`);
    return next(request);
  };
  const transport = makeTransport(server, [bearer]);
  const environments = createClient(EnvironmentService, transport);
  const tasks = createClient(TaskService, transport);
  const watches = createClient(WatchService, transport);

  const name = `browser-${transportName}-${Math.random().toString(16).slice(2, 10)}`;
  const created = await environments.createEnvironment({
    environment: { name, kind: Environment_Kind.SIMULATION, allowedTools: ["camera", "gripper"] },
  });
  record("created", {
    id: created.id,
    name: created.name,
    kind: Environment_Kind[created.kind],
    allowedTools: created.allowedTools,
    createTime: created.createTime?.seconds.toString(),
  });

  record(
    "got",
    await outcome(
      () => environments.getEnvironment({ id: created.id }),
      (got) => ({ id: got.id, name: got.name, kind: Environment_Kind[got.kind] }),
    ),
  );

  record(
    "invalid",
    await outcome(
      () => environments.createEnvironment({ environment: { name: "", allowedTools: ["not ok!"] } }),
      (made) => made.id,
    ),
  );

  const anonymous = createClient(EnvironmentService, makeTransport(server, []));
  record(
    "anonymous",
    await outcome(
      () => anonymous.getEnvironment({ id: created.id }),
      (got) => got.id,
    ),
  );

  await watchTask(tasks, watches, created.id);
}

/** Makes a task, watches it until its stream ends, and reports each message as it comes. */
async function watchTask(
  tasks: Client<typeof TaskService>,
  watches: Client<typeof WatchService>,
  environmentId: string,
): Promise<void> {
  const task = await tasks.createTask({ task: { prompt: "wave at the browser", environmentId } });
  record("task", task.id);
  const seen: Record<string, unknown>[] = [];
  try {
    for await (const message of watches.watchTask({ taskId: task.id })) {
      const event = message.event;
      if (event.case === "task") {
        seen.push({ task: Task_State[event.value.state] });
      } else if (event.case === "change") {
        seen.push({ change: event.value.kind, sequence: message.sequence.toString() });
      } else {
        seen.push({ other: event.case ?? "checkpoint" });
      }
      record("watch", seen);
    }
    record("watchEnd", "ended");
  } catch (error) {
    record("watchEnd", failure(error));
  }
}

run(new URLSearchParams(location.hash.slice(1)))
  .catch((error) => record("failed", String(error instanceof Error ? error.stack ?? error : error)))
  .finally(() => record("done", true));
