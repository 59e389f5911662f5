"""Splits a `perf record --call-graph dwarf` profile of latchkeyd into the
parts of a call that belong to each component, for docs/PERFORMANCE.md.

Why: the §9 targets compare latchkeyd with nginx. Whether a target can be
reached depends on how much of latchkeyd's CPU per call is spent inside
the libraries the design mandates (grpc core for the agent's side, libcurl
for the vendor's side, and the kernel work each one asks for) and how much
in latchkeyd's own code. A flat profile does not say that; attributing
every sample by the frames on its stack does.

Each sample goes to the first rule (in the order of RULES) that one of its
frames matches, so a malloc called from curl counts as libcurl's and one
called from the ToolCalls handler as latchkeyd's. Kernel time is reported
inside the component whose call made it (a send from curl is libcurl's).

Usage: perf_split.py PERF_DATA [CPU_US_PER_CALL]
Prints one line per component: share of latchkeyd's samples and, when the
CPU per call of the same run is given, microseconds per call. `--json`
as a third argument prints the same as JSON.
"""

import json
import re
import subprocess
import sys

# (component, frame names or prefixes that put a sample in it). Order
# matters: the first match wins.
RULES = [
    ("grpc core: reply write (from the completion)",
     ("send_final",)),
    ("latchkeyd: completion (scrub, result, audit)",
     ("on_vendor_done",)),
    ("libcurl: transfer (incl. its send/recv/poll syscalls)",
     ("curl_multi_perform", "curl_multi_poll", "curl_multi_add_handle",
      "curl_multi_remove_handle", "curl_multi_info_read")),
    ("libcurl: handle setup and wake-ups",
     ("setup_easy", "curl_easy_", "curl_multi_wakeup", "curl_slist_")),
    ("latchkeyd: call handling (lookups, unseal, inject, scrubber)",
     ("lk_toolcalls_handle",)),
    ("latchkeyd: forwarder loop",
     ("forwarder_main",)),
    ("grpc core: server, transport, executor, timers",
     ("worker_main", "grpc_", "grpc_core::", "cq_next", "pollset_work",
      "gpr_", "absl::")),
]
OTHER = "other (thread start-up, heap trimmer, unattributed)"

FRAME = re.compile(r"^\s+[0-9a-f]+ (\S+)")


def parse(text):
    """Yields each sample's frames (leaf first) from `perf script -F
    comm,ip,sym` text: a line naming the command, then one tab-indented
    "ADDR SYMBOL" line per frame."""
    cur = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            m = FRAME.match(line)
            if m and cur is not None:
                cur.append(m.group(1))
        else:
            if cur:
                yield cur
            cur = []
    if cur:
        yield cur


def samples(data):
    """Yields each sample's frames (leaf first) of the perf.data file."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         check=True, text=True, errors="replace").stdout
    return parse(out)


def component(frames):
    for name, keys in RULES:
        for f in frames:
            for k in keys:
                if f == k or f.startswith(k):
                    return name
    return OTHER


def count(stacks):
    """Returns (samples, {component: samples}) over the stacks."""
    counts = {}
    total = 0
    for frames in stacks:
        total += 1
        c = component(frames)
        counts[c] = counts.get(c, 0) + 1
    return total, counts


def split(data):
    return count(samples(data))


def rows(total, counts, cpu):
    """One row per component: its share of the samples and, when cpu (the
    run's CPU per call) is given, microseconds per call."""
    out = []
    for name in [r[0] for r in RULES] + [OTHER]:
        share = counts.get(name, 0) / total if total else 0.0
        out.append({"component": name, "share": share,
                    "us_per_call": share * cpu if cpu else None})
    return out


def render(total, table, cpu):
    lines = ["latchkeyd CPU by component (%d samples%s):" % (
        total, ", %.1f us per call" % cpu if cpu else "")]
    for r in table:
        lines.append("  %-62s %5.1f %%%s" % (
            r["component"], 100 * r["share"],
            "  %5.1f us" % r["us_per_call"] if cpu else ""))
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: perf_split.py PERF_DATA [CPU_US_PER_CALL] [--json]")
    cpu = float(sys.argv[2]) if len(sys.argv) > 2 else None
    total, counts = split(sys.argv[1])
    if total == 0:
        sys.exit("perf_split: no samples in " + sys.argv[1])
    table = rows(total, counts, cpu)
    if "--json" in sys.argv[3:]:
        print(json.dumps({"samples": total, "cpu_us_per_call": cpu,
                          "components": table}, indent=1))
    else:
        sys.stdout.write(render(total, table, cpu))


if __name__ == "__main__":
    main()
