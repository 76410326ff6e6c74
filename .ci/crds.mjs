// Validates the custom resources of a rendered chart (a JSON array of
// manifests on standard input) against their CRDs' schemas, as the
// @kubernetes-models packages carry them. Every custom resource kind the
// chart renders must be known here, so a new one cannot pass unchecked.
//
//   node .ci/crds.mjs NODE_MODULES_DIR < manifests.json
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const load = async (path) => import(pathToFileURL(`${modules}/${path}/index.js`).href);
const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1");
const monitoring = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const models = {
  "keda.sh/v1alpha1/ScaledObject": keda.ScaledObject,
  "monitoring.coreos.com/v1/ServiceMonitor": monitoring.ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": monitoring.PrometheusRule,
};
const builtIn = /^(v1|apps\/v1|batch\/v1|policy\/v1|autoscaling\/v2|networking\.k8s\.io\/v1)$/;

let failed = 0;
for (const manifest of JSON.parse(readFileSync(0, "utf8"))) {
  if (builtIn.test(manifest.apiVersion)) continue;
  const key = `${manifest.apiVersion}/${manifest.kind}`;
  const Model = models[key];
  if (!Model) {
    console.error(`${key}: no CRD schema known to .ci/crds.mjs`);
    failed++;
    continue;
  }
  try {
    new Model(manifest).validate();
    console.log(`${key} ${manifest.metadata.name}: valid`);
  } catch (error) {
    console.error(`${key} ${manifest.metadata.name}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
