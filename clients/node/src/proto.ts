// Loads the latchkey.v1.ToolCalls service from the .proto files the build
// copied into the package (dist/protos, from the repository's protos/), so
// the client speaks exactly the contract it was built against and no
// generated code is committed. Loaded once per process, on first use.

import * as fs from "fs";
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** Where the build put the .proto files: <package>/dist/protos. */
export const PROTO_DIR = path.resolve(__dirname, "..", "protos");

const TOOLCALLS_PROTO = "latchkey/v1/toolcalls.proto";

let cached: grpc.ServiceClientConstructor | undefined;

/** The ToolCalls client constructor; throws when the package was not built. */
export function toolCallsClientConstructor(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  if (!fs.existsSync(path.join(PROTO_DIR, TOOLCALLS_PROTO))) {
    throw new Error(
      `@latchkey/client: ${path.join(PROTO_DIR, TOOLCALLS_PROTO)} is missing: ` +
        "build the package (npm run build) so that it carries the protos",
    );
  }
  const definition = protoLoader.loadSync(TOOLCALLS_PROTO, {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    latchkey: { v1: { ToolCalls: grpc.ServiceClientConstructor } };
  };
  cached = root.latchkey.v1.ToolCalls;
  return cached;
}
