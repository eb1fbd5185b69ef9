// A TypeScript client of tandem.v1.Inference, as an internal service would write it (README,
// "Clients in other languages"). tests/contract/test_buf.py generates the code with `buf generate`,
// compiles this file with tsc and runs it against a real core: node ts_client.js HOST:PORT.
// It prints one JSON line that the test compares with the Python stubs' answers.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  FinishReason,
  GenerateRequestSchema,
  Inference,
} from "./gen/ts/tandem/v1/inference_pb.js";

async function main(target: string): Promise<void> {
  // gRPC over HTTP/2 (h2c); createConnectTransport / connect-web's createGrpcWebTransport are the
  // alternatives for a proxy or a browser.
  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const client = createClient(Inference, transport);

  const request = create(GenerateRequestSchema, {
    input: { case: "text", value: "Once upon a time" },
    sampling: { temperature: 0 },
    stopping: { maxTokens: 8, ignoreEos: true },
  });
  let text = "";
  const tokenIds: number[] = [];
  let finishReason = FinishReason.UNSPECIFIED;
  let usage = { promptTokens: 0, completionTokens: 0 };
  let requestId = "";
  for await (const chunk of client.generate(request, {
    headers: { "x-request-id": "ts-client-1" },
    timeoutMs: 30_000,
  })) {
    for (const choice of chunk.choices) {
      text += choice.text;
      tokenIds.push(...choice.tokenIds);
      if (choice.finishReason !== FinishReason.UNSPECIFIED) finishReason = choice.finishReason;
    }
    if (chunk.usage) usage = chunk.usage;
    requestId = chunk.requestId;
  }

  const models = await client.listModels({});
  const tokenized = await client.tokenize({ input: { case: "text", value: "Once upon a time" } });

  // Errors are gRPC status codes; google.rpc details ride along (ConnectError.findDetails).
  let errorCode = "";
  try {
    for await (const _ of client.generate({ model: "no-such-model", input: { case: "text", value: "x" } })) {
      // not reached
    }
  } catch (err) {
    errorCode = Code[ConnectError.from(err).code];
  }

  console.log(JSON.stringify({
    text,
    tokenIds,
    finishReason: FinishReason[finishReason],
    promptTokens: usage.promptTokens,
    completionTokens: usage.completionTokens,
    requestId,
    models: models.models.map((m) => m.id),
    tokenizeIds: tokenized.tokenIds,
    errorCode,
  }));
}

main(process.argv[2] ?? "127.0.0.1:50051").catch((err) => {
  console.error(err);
  process.exit(1);
});
