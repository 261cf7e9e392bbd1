// Validates Istio objects against Istio's CRD schemas, with the models of @kubernetes-models/istio.
//
//   node deploy/istio/validate-istio.mjs [--models DIR] < objects.json
//
// Input: a JSON array of Kubernetes objects (tests/tests/istio_manifests.rs converts the YAML). DIR is the
// node_modules holding @kubernetes-models/istio (default: the repository's .tools/node_modules, where
// `make tools` installs it). Prints one line per object and exits 1 if any object is invalid or has no model.
//
// The models check types, enums, required fields and patterns of the CRD's OpenAPI schema. They do not reject
// unknown fields and do not evaluate the CRDs' CEL rules; `kubectl apply --dry-run=server` on a cluster does both.

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = args.indexOf("--models");
const models = resolve(flag >= 0 ? args[flag + 1] : join(here, "..", "..", ".tools", "node_modules"));
const istio = join(models, "@kubernetes-models", "istio");

async function modelFor(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  const file = join(istio, group, version ?? "", "index.js");
  let module;
  try {
    module = await import(pathToFileURL(file).href);
  } catch {
    return { error: `no Istio model for ${apiVersion} (looked for ${file}; run \`make tools\`)` };
  }
  const Model = module[kind];
  return Model ? { Model } : { error: `no Istio model for ${apiVersion} ${kind}` };
}

const objects = JSON.parse(readFileSync(0, "utf8"));
if (!Array.isArray(objects) || objects.length === 0) {
  console.error("expected a non-empty JSON array of objects on stdin");
  process.exit(2);
}

let failed = 0;
for (const object of objects) {
  const what = `${object.apiVersion} ${object.kind} ${object.metadata?.name ?? "(no name)"}`;
  const { Model, error } = await modelFor(object.apiVersion, object.kind);
  if (error) {
    failed++;
    console.log(`INVALID ${what}: ${error}`);
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`valid ${what}`);
  } catch (e) {
    failed++;
    console.log(`INVALID ${what}: ${e.message}`);
  }
}
process.exit(failed === 0 ? 0 : 1);
