// A robot written with grpc-js: proof that the robot link needs nothing from Python. It runs the
// first command delivered to it, reports RUNNING then COMPLETED, and exits 0 once the server has
// applied the COMPLETED report; any error, or no result within the timeout, exits 1.
//
// Environment: ROZ_TARGET (host:port), ROZ_API_KEY (the robot key), ROZ_PROTO_DIRS (include
// directories, separated as in PATH). One JSON line per event on stdout; trouble on stderr.
import path from "node:path";
import process from "node:process";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const TIMEOUT_MS = 20_000;
const RESULT = { by: "grpc-js" };

const { ROZ_TARGET, ROZ_API_KEY, ROZ_PROTO_DIRS } = process.env;

function fail(message) {
  console.error(`robot: ${message}`);
  process.exit(1);
}

function emit(event, fields) {
  console.log(JSON.stringify({ event, ...fields }));
}

// proto-loader hands google.protobuf.Struct over as its wire shape (fields → Value with a `kind`
// oneof); JSON objects are converted by hand in both directions.
function toValue(value) {
  if (value === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case "number": return { numberValue: value };
    case "string": return { stringValue: value };
    case "boolean": return { boolValue: value };
    default: return { structValue: toStruct(value) };
  }
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

if (!ROZ_TARGET || !ROZ_API_KEY || !ROZ_PROTO_DIRS) {
  fail("ROZ_TARGET, ROZ_API_KEY and ROZ_PROTO_DIRS must all be set");
}

const definition = protoLoader.loadSync("roz/v1/robot_link.proto", {
  keepCase: true, // field names as in the .proto: host_id, not hostId
  enums: String, // "STATE_RUNNING", not 3
  longs: String, // uint64 sequences without loss of precision; echoed back as they came
  oneofs: true, // each message names the member of its oneof that is set
  defaults: true, // a false `applied` arrives as false, not as a missing field
  includeDirs: ROZ_PROTO_DIRS.split(path.delimiter),
});
const { RobotLinkService } = grpc.loadPackageDefinition(definition).roz.v1;
const client = new RobotLinkService(ROZ_TARGET, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${ROZ_API_KEY}`);
const call = client.Connect(metadata);

const timer = setTimeout(() => fail(`nothing completed in ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);
let finished = false;

function report(command_id, state, extra = {}) {
  const report_id = `${command_id}/${state}`;
  call.write({ command_report: { command_id, state, report_id, ...extra } });
}

call.on("data", (response) => {
  const message = response[response.message];
  switch (response.message) {
    case "welcome":
      emit("welcome", { host_id: message.host_id, link_id: message.link_id });
      break;
    case "delivery":
      emit("delivery", {
        sequence: message.sequence,
        item: message.item,
        command_id: message.command?.id,
        type: message.command?.type,
      });
      call.write({ ack: { sequence: message.sequence } });
      if (message.item === "command") report(message.command.id, "STATE_RUNNING");
      break;
    case "report_result": {
      const { report_id, applied, reason, command } = message;
      emit("report_result", { report_id, applied, reason, state: command?.state });
      if (!applied) fail(`report ${report_id} not applied: ${reason}`);
      if (command.state === "STATE_RUNNING") {
        report(command.id, "STATE_COMPLETED", { result: toStruct(RESULT) });
      } else if (command.state === "STATE_COMPLETED") {
        finished = true;
        call.end(); // the robot leaves; the server ends the stream with OK
      }
      break;
    }
    case "drain":
      fail(`the server is draining: ${message.reason}`);
      break;
    default: // keepalives
      break;
  }
});

call.on("error", (error) => fail(`stream failed: ${error.code} ${error.details}`));

call.on("status", (status) => {
  if (!finished) fail(`stream ended before a completed command: ${status.code} ${status.details}`);
  clearTimeout(timer);
  client.close();
  emit("ended", { code: status.code });
});

call.write({ hello: { host_id: "", last_received_sequence: 0, client: "grpc-js-robot" } });
