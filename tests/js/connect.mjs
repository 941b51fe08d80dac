// A connect-es client of roz, as a web developer would write one, with the service descriptors
// loaded at run time from a FileDescriptorSet (no code generation): the Connect protocol in JSON
// and binary (unary, GET, a server-streaming watch, an error with details) and gRPC-web in both
// formats. Prints one JSON line per step for tests/e2e/test_connect_js.py to check.
//
// Environment: ROZ_URL (http://host:port), ROZ_API_KEY, ROZ_DESCRIPTORS (a FileDescriptorSet
// with roz's protos, their imports and google/rpc/error_details.proto).
import { readFileSync } from "node:fs";
import http from "node:http";

import { createFileRegistry, fromBinary, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

const { ROZ_URL: baseUrl, ROZ_API_KEY: key, ROZ_DESCRIPTORS: descriptors } = process.env;
const registry = createFileRegistry(
  fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)),
);
const BadRequest = registry.getMessage("google.rpc.BadRequest");
const Environments = registry.getService("roz.v1.EnvironmentService");
const Tasks = registry.getService("roz.v1.TaskService");
const Watches = registry.getService("roz.v1.WatchService");

const methods = []; // each HTTP/1.1 request as it went on the wire
const authorize = (next) => async (request) => {
  request.header.set("authorization", `Bearer ${key}`);
  return next(request);
};
// Records each HTTP/1.1 request's method as Node sends it (interceptors run before the
// transport turns a POST into a GET, so they cannot see it).
class RecordingAgent extends http.Agent {
  addRequest(request, options) {
    const query = new URL(request.path, "http://x").searchParams;
    methods.push({
      method: request.method,
      contentType: request.getHeader("content-type") ?? null,
      encoding: query.get("encoding"),
    });
    return super.addRequest(request, options);
  }
}
const nodeOptions = { agent: new RecordingAgent() };

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

function json(message) {
  return toJson(registry.getMessage(message.$typeName), message, { registry });
}

async function failure(call) {
  try {
    await call();
  } catch (error) {
    const connectError = ConnectError.from(error);
    const details = connectError.findDetails(BadRequest);
    return {
      code: Code[connectError.code],
      message: connectError.rawMessage,
      fields: details.flatMap((detail) => detail.fieldViolations.map((v) => v.field)),
    };
  }
  throw new Error("the call did not fail");
}

const connectJson = createConnectTransport({
  baseUrl,
  httpVersion: "1.1",
  useBinaryFormat: false, // connect-node's default is binary
  nodeOptions,
  interceptors: [authorize],
});
const connectBinary = createConnectTransport({
  baseUrl,
  httpVersion: "2",
  useBinaryFormat: true,
  interceptors: [authorize],
});
const connectGet = createConnectTransport({
  baseUrl,
  httpVersion: "1.1",
  useBinaryFormat: false,
  nodeOptions,
  useHttpGet: true,
  interceptors: [authorize],
});

// -- Connect, JSON: create, then read back
const environments = createClient(Environments, connectJson);
const created = await environments.createEnvironment({
  environment: { name: "connect-es-cell", allowedTools: ["camera", "gripper"] },
});
report("create", { id: created.id, allowedTools: created.allowedTools, wire: methods.pop() });

// -- Connect, binary over HTTP/2
const binary = await createClient(Environments, connectBinary).getEnvironment({ id: created.id });
report("get_binary", { name: binary.name });

// -- Connect GET for a side-effect-free method
const viaGet = await createClient(Environments, connectGet).getEnvironment({ id: created.id });
report("get_http_get", { name: viaGet.name, wire: methods.pop() });

// -- an error with details, over Connect
report(
  "error_connect",
  await failure(() => environments.getEnvironment({ id: "not-a-uuid" })),
);

// -- a server-streaming watch over Connect: the task's snapshot, then its end
const tasks = createClient(Tasks, connectJson);
const task = await tasks.createTask({
  task: { prompt: "wave", environmentId: created.id },
});
const seen = [];
for await (const event of createClient(Watches, connectJson).watchTask({ taskId: task.id })) {
  const value = json(event);
  seen.push(value);
  if (seen.length === 1) {
    await tasks.transitionTask({
      id: task.id,
      state: registry.getEnum("roz.v1.Task.State").values.find(
        (v) => v.name === "STATE_CANCELLED",
      ).number,
      reason: "not needed",
    });
  }
}
report("watch", {
  states: seen.filter((e) => e.task).map((e) => e.task.state),
  changes: seen.filter((e) => e.change).map((e) => e.change.kind),
});

// -- gRPC-web, binary and JSON
for (const useBinaryFormat of [true, false]) {
  const transport = createGrpcWebTransport({
    baseUrl,
    httpVersion: "1.1",
    useBinaryFormat,
    interceptors: [authorize],
  });
  const client = createClient(Environments, transport);
  const got = await client.getEnvironment({ id: created.id });
  const error = await failure(() => client.getEnvironment({ id: "not-a-uuid" }));
  report(useBinaryFormat ? "grpc_web_binary" : "grpc_web_json", { name: got.name, error });
}
