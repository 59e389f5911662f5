#!/bin/bash
# Keeps the call-path benchmark from rotting (not a timing test): runs
# calls_bench.py --smoke (every system for 1 s at concurrency 2, 1,000
# bindings, cold start, seal throughput) against the real latchkeyd, nginx
# and grpc_floor, then asserts that every request of every run succeeded
# and that the JSON holds every field docs/PERFORMANCE.md reports. The gRPC
# systems run loadgen's HTTP/2 (libnghttp2) client; one more latchkey-uds
# run uses its grpc-core client, so both stay alive.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export PYTHONPATH="${root}/protos:${root}/tests/e2e:${root}/tests/bench"
export PYTHONDONTWRITEBYTECODE=1
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
out="${TEST_TMPDIR:-/tmp}/bench-results.json"
cd "${root}"
/usr/bin/python3 tests/bench/calls_bench.py --bin-dir "${root}" --smoke \
  --out "${out}"
/usr/bin/python3 - "${out}" <<'PY'
import json
import sys

r = json.load(open(sys.argv[1]))
systems = ["direct", "nginx-proxy", "grpc-floor", "latchkey-uds",
           "latchkey-tcp"]
fields = ["throughput", "p50_us", "p90_us", "p99_us", "p999_us",
          "cpu_us_per_call", "errors", "calls"]
problems = []
for s in systems:
    cell = r["table"].get(s + "@2")
    if cell is None:
        problems.append("no table cell for " + s)
        continue
    problems += ["%s: no %s" % (s, f) for f in fields if cell.get(f) is None]
    if cell["errors"] != 0 or cell["calls"] <= 0:
        problems.append("%s: %s errors, %s calls" % (s, cell["errors"],
                                                       cell["calls"]))
for run in r["runs"]:
    if run["errors"] or run["exit"] or run["ok"] <= 0:
        problems.append("run failed: %r" % run)
if r["config"].get("grpc_client") != "h2" or \
        r["config"].get("loadgen_grpc_mode") != "grpc":
    problems.append("config: gRPC client not h2: %r" % r["config"])
for run in r["runs"]:
    if run["system"] in ("grpc-floor", "latchkey-uds", "latchkey-tcp") and \
            run["mode"] != "grpc":
        problems.append("%s ran loadgen mode %s" % (run["system"],
                                                     run["mode"]))
other = r.get("other_grpc_client_run")
if other is None or other["mode"] != "grpc-core" or other["errors"] or \
        other["exit"] or other["ok"] <= 0:
    problems.append("grpc-core cross-check run failed: %r" % (other,))
for lk in ("latchkey-uds", "latchkey-tcp"):
    for k in ("throughput_vs_direct", "throughput_vs_nginx",
              "added_p50_us", "nginx_added_p50_us",
              "added_p50_vs_nginx_added_p50", "internal_p50_us_estimate"):
        if r["ratios"]["c2"].get(lk + ":" + k) is None:
            problems.append("no ratio %s:%s" % (lk, k))
for k in ("seal_per_s", "unseal_per_s"):
    if not r["seal"].get(k):
        problems.append("no seal " + k)
for k in ("seeded", "with_bindings"):
    if not r["cold_start_ms"].get(k):
        problems.append("no cold start " + k)
if r["bindings"]["count"] != 1000 or not r["bindings"]["rss_kb_loaded"]:
    problems.append("bindings: %r" % r["bindings"])
for state in ("idle", "loaded", "after_restart", "after_restart_and_calls"):
    sp = r.get("rss_split", {}).get(state, {})
    if not all(sp.get(k) for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")):
        problems.append("rss_split %s: %r" % (state, sp))
for state in ("idle", "loaded", "after_restart_and_calls"):
    bd = r.get("rss_breakdown", {}).get(state, {})
    if not any(k.startswith("file: latchkeyd") and v for k, v in bd.items()):
        problems.append("rss_breakdown %s: %r" % (state, bd))
if not r["bindings"].get("rss_kb_load_peak"):
    problems.append("no rss_kb_load_peak")
for k in ("vendor_nginx_workers", "proxy_nginx_workers",
          "latchkeyd_workers"):
    if not r["config"].get(k):
        problems.append("config without " + k)
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("bench smoke: every request succeeded; every field present")
PY
