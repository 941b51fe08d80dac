// roz's API for TypeScript: every roz.v1 message, enum and service descriptor, and the
// google.rpc error model a Status's details are decoded with (BadRequest, ErrorInfo, RetryInfo …).
// The files under ./gen are written by `make gen` (protoc-gen-es); this one is not.
// google.api's annotation types are there too, for whoever reads options: "./gen/google/api/…".

export * from "./gen/roz/v1/access_pb";
export * from "./gen/roz/v1/api_keys_pb";
export * from "./gen/roz/v1/audit_pb";
export * from "./gen/roz/v1/commands_pb";
export * from "./gen/roz/v1/device_auth_pb";
export * from "./gen/roz/v1/environments_pb";
export * from "./gen/roz/v1/estop_pb";
export * from "./gen/roz/v1/health_pb";
export * from "./gen/roz/v1/hosts_pb";
export * from "./gen/roz/v1/metrics_pb";
export * from "./gen/roz/v1/robot_link_pb";
export * from "./gen/roz/v1/safety_policies_pb";
export * from "./gen/roz/v1/sessions_pb";
export * from "./gen/roz/v1/tasks_pb";
export * from "./gen/roz/v1/triggers_pb";
export * from "./gen/roz/v1/watch_pb";

export * from "./gen/google/rpc/code_pb";
export * from "./gen/google/rpc/error_details_pb";
export * from "./gen/google/rpc/status_pb";
