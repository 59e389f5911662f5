"""Validates the Kubernetes manifests under deploy/kubernetes.

What it proves: every document parses and is a named Kubernetes object;
the latchkeyd and latchkey-cp containers use only flags and LATCHKEY_*
variables the built binaries list in --help (issue 7's pending flags
aside, see flags_contract.py) and set the flags they cannot start
without; their gRPC probes (numeric ports) hit a declared
containerPort equal to --health-listen's port; latchkeyd is a native
sidecar whose --listen Unix socket is on an emptyDir the agent container
mounts too, while its node key and data stay on volumes only it mounts;
every Secret referenced is in the manifests, holds only placeholders, and
has the keys the flags' file paths name; every container has resource
requests and a locked-down securityContext; a NetworkPolicy limits the
agent pod's egress. Each check returns problems as strings; the
negative tests feed it broken copies and assert the exact problem.
"""

import copy
import glob
import os
import posixpath
import unittest

import yaml

import flags_contract as fc

MANIFEST_DIR = os.path.join(fc.ROOT, "deploy", "kubernetes")
DAEMONS = ("latchkeyd", "latchkey-cp")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
PLACEHOLDER = "CHANGE-ME"
# Flags a daemon exits 2 without (sidecar/main.c, controlplane/main.c), and
# --control-plane-token-file, which replica mode needs.
REQUIRED = {
    "latchkeyd": ["agent-id", "control-plane", "control-plane-token-file"],
    "latchkey-cp": ["admin-token-file", "node-token-file"],
}


def load_documents():
    """[(file relative to deploy/kubernetes, document)] for every non-empty
    document of every .yaml file, recursively."""
    docs = []
    files = sorted(glob.glob(os.path.join(MANIFEST_DIR, "**", "*.yaml"),
                             recursive=True))
    if not files:
        raise AssertionError("no manifests under %s" % MANIFEST_DIR)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((os.path.relpath(path, MANIFEST_DIR), doc))
    return docs


def pod_specs(docs):
    """[(where, namespace, pod labels, pod spec)] of every workload."""
    out = []
    for where, doc in docs:
        if doc.get("kind") in WORKLOAD_KINDS:
            tmpl = doc["spec"]["template"]
            out.append(("%s %s/%s" % (where, doc["kind"],
                                      doc["metadata"]["name"]),
                        doc["metadata"].get("namespace", "default"),
                        tmpl.get("metadata", {}).get("labels", {}),
                        tmpl["spec"]))
        elif doc.get("kind") == "Pod":
            out.append(("%s Pod/%s" % (where, doc["metadata"]["name"]),
                        doc["metadata"].get("namespace", "default"),
                        doc["metadata"].get("labels", {}), doc["spec"]))
    return out


def all_containers(spec):
    """Init containers then containers, each as (is_init, container)."""
    return ([(True, c) for c in spec.get("initContainers", [])] +
            [(False, c) for c in spec.get("containers", [])])


def daemon_of(container):
    """'latchkeyd' or 'latchkey-cp' when the container runs one, else None."""
    cmd = container.get("command") or []
    if cmd and posixpath.basename(cmd[0]) in DAEMONS:
        return posixpath.basename(cmd[0])
    return None


def parse_args(name, args, known, problems, where):
    """{flag: value or True} from --flag=value / --flag value / --flag."""
    out = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            problems.append("%s: %s: stray argument %r" % (where, name, arg))
            continue
        flag, eq, value = arg[2:].partition("=")
        kind = known.get(flag, {}).get("kind", "value")
        if eq:
            out[flag] = value
        elif kind == "bool":
            out[flag] = True
        elif i < len(args):
            out[flag] = args[i]
            i += 1
        else:
            problems.append("%s: %s: --%s needs a value" % (where, name, flag))
    return out


def daemon_settings(name, container, known, where, problems):
    """The container's flags from args and LATCHKEY_* env, each checked
    against the binary's --help (or issue 7's pending list)."""
    flags = parse_args(name, container.get("args") or [], known, problems,
                       where)
    env_to_flag = {v["env"]: k for k, v in known.items()}
    for flag in fc.PENDING.get(name, set()):
        env_to_flag.setdefault(fc.env_name(flag), flag)
    for env in container.get("env") or []:
        if not env["name"].startswith("LATCHKEY_"):
            continue
        flag = env_to_flag.get(env["name"])
        if flag is None:
            problems.append("%s: %s: unknown environment variable %s" %
                            (where, name, env["name"]))
            continue
        if flag in flags:
            problems.append("%s: %s: --%s given as argument and as %s" %
                            (where, name, flag, env["name"]))
        flags[flag] = env.get("value", "")
    for flag in flags:
        if flag not in known and not fc.pending_allowed(name, flag, known):
            problems.append("%s: %s: unknown flag --%s" % (where, name, flag))
    return flags


def mount_for(container, path):
    """The volumeMount whose mountPath holds path (longest match)."""
    best = None
    for m in container.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def check_documents(docs):
    """apiVersion, kind and metadata.name on every document."""
    problems = []
    for where, doc in docs:
        if not isinstance(doc, dict):
            problems.append("%s: a document is not a mapping" % where)
            continue
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                problems.append("%s: a document has no %s" % (where, key))
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            problems.append("%s: %s has no metadata.name" %
                            (where, doc.get("kind")))
    return problems


def secrets_in(docs):
    """{(namespace, name): set of keys} of every Secret in the manifests."""
    out = {}
    for _, doc in docs:
        if doc.get("kind") == "Secret":
            keys = set((doc.get("stringData") or {}).keys())
            keys |= set((doc.get("data") or {}).keys())
            out[(doc["metadata"].get("namespace", "default"),
                 doc["metadata"]["name"])] = keys
    return out


def check_secrets(docs):
    """Secrets hold placeholders only, and every one a pod references
    exists in its namespace with the keys it projects."""
    problems = []
    secrets = secrets_in(docs)
    for where, doc in docs:
        if doc.get("kind") != "Secret":
            continue
        if doc.get("data"):
            problems.append("%s: Secret %s has data: only stringData "
                            "placeholders belong in a manifest" %
                            (where, doc["metadata"]["name"]))
        for key, value in (doc.get("stringData") or {}).items():
            if value != PLACEHOLDER:
                problems.append("%s: Secret %s key %s is not the placeholder "
                                "%s" % (where, doc["metadata"]["name"], key,
                                        PLACEHOLDER))
    for where, ns, _, spec in pod_specs(docs):
        refs = []
        for vol in spec.get("volumes") or []:
            if "secret" in vol:
                refs.append((vol["secret"]["secretName"],
                             [i["key"] for i in vol["secret"].get("items", [])]))
        for _, c in all_containers(spec):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], [ref["key"]]))
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    refs.append((src["secretRef"]["name"], []))
        for name, keys in refs:
            if (ns, name) not in secrets:
                problems.append("%s: Secret %s/%s is referenced but not in "
                                "the manifests" % (where, ns, name))
                continue
            for key in keys:
                if key not in secrets[(ns, name)]:
                    problems.append("%s: Secret %s has no key %s" %
                                    (where, name, key))
    return problems


def check_file_flags(docs, known_by_daemon):
    """A daemon flag naming a file on a Secret mount names a key that the
    Secret has."""
    problems = []
    secrets = secrets_in(docs)
    for where, ns, _, spec in pod_specs(docs):
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for _, c in all_containers(spec):
            name = daemon_of(c)
            if name is None:
                continue
            flags = daemon_settings(name, c, known_by_daemon[name], where, [])
            for flag, value in flags.items():
                if not isinstance(value, str) or not value.startswith("/"):
                    continue
                m = mount_for(c, value)
                vol = vols.get(m["name"]) if m else None
                if vol is None or "secret" not in vol:
                    continue
                key = value[len(m["mountPath"].rstrip("/")) + 1:]
                secret = vol["secret"]["secretName"]
                if key not in secrets.get((ns, secret), set()):
                    problems.append("%s: %s --%s=%s: Secret %s has no key %s"
                                    % (where, name, flag, value, secret, key))
    return problems


def port_number(container, port):
    """A probe's port (number or name) as the declared containerPort, or
    None when the container declares no such port."""
    for p in container.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return p["containerPort"]
    return None


def check_daemons(docs, known_by_daemon):
    """Flags, probes, the sidecar's shape and its socket."""
    problems = []
    sidecars = 0
    for where, _, _, spec in pod_specs(docs):
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        for is_init, c in all_containers(spec):
            name = daemon_of(c)
            if name is None:
                continue
            w = "%s container %s" % (where, c["name"])
            flags = daemon_settings(name, c, known_by_daemon[name], w,
                                    problems)
            for flag in REQUIRED[name]:
                if not flags.get(flag):
                    problems.append("%s: %s needs --%s" % (w, name, flag))
            health = flags.get("health-listen")
            if not isinstance(health, str) or ":" not in health:
                problems.append("%s: %s has no --health-listen host:port" %
                                (w, name))
                health_port = None
            else:
                health_port = int(health.rsplit(":", 1)[1])
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append("%s: no %s" % (w, probe))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in c:
                    continue
                grpc = c[probe].get("grpc")
                if grpc is None:
                    problems.append("%s: %s is not a gRPC probe" % (w, probe))
                    continue
                number = port_number(c, grpc.get("port"))
                if not isinstance(grpc.get("port"), int):
                    # The API takes only a number for grpc.port, no name.
                    problems.append("%s: %s grpc.port %r is not a number" %
                                    (w, probe, grpc.get("port")))
                elif number is None:
                    problems.append("%s: %s port %s is not a declared "
                                    "containerPort" % (w, probe,
                                                       grpc.get("port")))
                elif number != health_port:
                    problems.append("%s: %s port %s is not --health-listen's "
                                    "port %s" % (w, probe, number,
                                                 health_port))
            if name != "latchkeyd":
                continue
            sidecars += 1
            if not is_init or c.get("restartPolicy") != "Always":
                problems.append("%s: latchkeyd is not a native sidecar (an "
                                "initContainer with restartPolicy: Always)" %
                                w)
            problems += check_socket(w, spec, vols, c, flags)
    if sidecars == 0:
        problems.append("no pod runs latchkeyd as a sidecar")
    return problems


def check_socket(w, spec, vols, sidecar, flags):
    """--listen is a Unix socket on an emptyDir both containers mount; the
    node key and data dir are on volumes the agent does not mount."""
    problems = []
    listen = flags.get("listen", "")
    if not isinstance(listen, str) or not listen.startswith("unix:/"):
        return ["%s: --listen %r is not a unix:/path socket" % (w, listen)]
    path = listen[len("unix:"):]
    m = mount_for(sidecar, path)
    if m is None or "emptyDir" not in vols.get(m["name"], {}):
        return ["%s: --listen %s is not on an emptyDir volume" % (w, path)]
    rel = path[len(m["mountPath"].rstrip("/")):]
    others = [c for _, c in all_containers(spec) if c is not sidecar]
    sharers = [c for c in others
               if any(o["name"] == m["name"] for o in c.get("volumeMounts")
                      or [])]
    if not sharers:
        problems.append("%s: no other container mounts the socket volume %s"
                        % (w, m["name"]))
    for c in sharers:
        mp = [o for o in c["volumeMounts"] if o["name"] == m["name"]][0]
        want = "unix:" + mp["mountPath"].rstrip("/") + rel
        for env in c.get("env") or []:
            if env["name"] == "LATCHKEY_SIDECAR" and env.get("value") != want:
                problems.append("%s: container %s has LATCHKEY_SIDECAR %s, "
                                "the socket is %s" % (w, c["name"],
                                                      env.get("value"), want))
    for flag in ("node-key", "data-dir"):
        value = flags.get(flag)
        if not isinstance(value, str):
            problems.append("%s: --%s is not set" % (w, flag))
            continue
        km = mount_for(sidecar, value)
        if km is None:
            problems.append("%s: --%s %s is on no volume (read-only root)" %
                            (w, flag, value))
            continue
        for c in others:
            if any(o["name"] == km["name"] for o in c.get("volumeMounts")
                   or []):
                problems.append("%s: container %s mounts %s, the volume of "
                                "--%s" % (w, c["name"], km["name"], flag))
    return problems


def check_pods(docs):
    """Resource requests and a locked-down securityContext everywhere."""
    problems = []
    for where, _, _, spec in pod_specs(docs):
        pod_sc = spec.get("securityContext") or {}
        for _, c in all_containers(spec):
            w = "%s container %s" % (where, c["name"])
            req = (c.get("resources") or {}).get("requests") or {}
            lim = (c.get("resources") or {}).get("limits") or {}
            for r in ("cpu", "memory"):
                if r not in req:
                    problems.append("%s: no %s request" % (w, r))
            if "memory" not in lim:
                problems.append("%s: no memory limit" % w)
            sc = c.get("securityContext") or {}
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True or user == 0:
                problems.append("%s: may run as root" % w)
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append("%s: root filesystem is writable" % w)
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append("%s: privilege escalation allowed" % w)
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append("%s: capabilities not all dropped" % w)
            if sc.get("privileged"):
                problems.append("%s: privileged" % w)
    return problems


def check_network_policy(docs):
    """Each pod running latchkeyd is selected by a NetworkPolicy that
    limits its egress."""
    problems = []
    policies = [(d["metadata"].get("namespace", "default"), d["spec"])
                for _, d in docs if d.get("kind") == "NetworkPolicy"]
    for where, ns, labels, spec in pod_specs(docs):
        if not any(daemon_of(c) == "latchkeyd"
                   for _, c in all_containers(spec)):
            continue
        limited = False
        for pns, p in policies:
            sel = (p.get("podSelector") or {}).get("matchLabels") or {}
            if (pns == ns and sel and
                    all(labels.get(k) == v for k, v in sel.items()) and
                    "Egress" in (p.get("policyTypes") or [])):
                limited = True
        if not limited:
            problems.append("%s: no NetworkPolicy limits this pod's egress" %
                            where)
    return problems


class ManifestTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.docs = load_documents()
        cls.known = {name: fc.daemon_flags(name) for name in DAEMONS}

    def all_problems(self, docs):
        return (check_documents(docs) + check_secrets(docs) +
                check_file_flags(docs, self.known) +
                check_daemons(docs, self.known) + check_pods(docs) +
                check_network_policy(docs))

    def find(self, docs, kind, name):
        for _, doc in docs:
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError("no %s %s" % (kind, name))

    def sidecar(self, docs):
        dep = self.find(docs, "Deployment", "example-agent")
        return [c for c in dep["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "latchkeyd"][0]

    def test_manifests_have_no_problems(self):
        self.assertEqual(self.all_problems(self.docs), [])

    def test_expected_objects_are_present(self):
        kinds = {(d["kind"], d["metadata"]["name"]) for _, d in self.docs}
        for want in [("StatefulSet", "latchkey-etcd"),
                     ("Deployment", "latchkey-cp"),
                     ("Service", "latchkey-cp"),
                     ("Deployment", "example-agent"),
                     ("NetworkPolicy", "latchkey-agent-egress"),
                     ("Secret", "latchkey-keyring"),
                     ("Secret", "latchkey-admin-token"),
                     ("Secret", "latchkey-node-token"),
                     ("Secret", "latchkey-cp-tls"),
                     ("Secret", "latchkey-ca")]:
            self.assertIn(want, kinds)
        sts = self.find(self.docs, "StatefulSet", "latchkey-etcd")
        self.assertTrue(sts["spec"]["volumeClaimTemplates"])

    def test_pending_flags_are_named_by_design_10(self):
        for name, flags in fc.PENDING.items():
            for flag in flags:
                self.assertIn(flag, fc.design_10_flags(name), name)

    def test_binaries_implement_design_10(self):
        for name in DAEMONS:
            for flag in fc.design_10_flags(name):
                self.assertTrue(
                    flag in self.known[name] or
                    fc.pending_allowed(name, flag, self.known[name]),
                    "%s --help does not list --%s" % (name, flag))
                if flag in self.known[name]:
                    self.assertEqual(self.known[name][flag]["env"],
                                     fc.env_name(flag))

    def test_unknown_flag_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["args"].append("--no-such-flag=1")
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: latchkeyd: unknown flag --no-such-flag",
            self.all_problems(docs))

    def test_missing_agent_id_is_reported(self):
        docs = copy.deepcopy(self.docs)
        env = self.sidecar(docs)["env"]
        env[:] = [e for e in env if e["name"] != "LATCHKEY_AGENT_ID"]
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: latchkeyd needs --agent-id", self.all_problems(docs))

    def test_unknown_environment_variable_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["env"].append({"name": "LATCHKEY_NOPE",
                                          "value": "x"})
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: latchkeyd: unknown environment variable LATCHKEY_NOPE",
            self.all_problems(docs))

    def test_probe_off_the_health_port_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["readinessProbe"]["grpc"]["port"] = 9090
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: readinessProbe port 9090 is not --health-listen's "
            "port 7702", self.all_problems(docs))

    def test_undeclared_probe_port_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["livenessProbe"]["grpc"]["port"] = 7777
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: livenessProbe port 7777 is not a declared "
            "containerPort", self.all_problems(docs))

    def test_named_grpc_probe_port_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["startupProbe"]["grpc"]["port"] = "health"
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: startupProbe grpc.port 'health' is not a number",
            self.all_problems(docs))

    def test_socket_off_the_shared_volume_is_reported(self):
        docs = copy.deepcopy(self.docs)
        args = self.sidecar(docs)["args"]
        args[args.index("--listen=unix:/run/latchkey/agent.sock")] = (
            "--listen=unix:/tmp/agent.sock")
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: --listen /tmp/agent.sock is not on an emptyDir volume",
            self.all_problems(docs))

    def test_sidecar_as_plain_container_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs).pop("restartPolicy")
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: latchkeyd is not a native sidecar (an initContainer "
            "with restartPolicy: Always)", self.all_problems(docs))

    def test_agent_mounting_the_node_key_is_reported(self):
        docs = copy.deepcopy(self.docs)
        dep = self.find(docs, "Deployment", "example-agent")
        agent = dep["spec"]["template"]["spec"]["containers"][0]
        agent["volumeMounts"].append({"name": "node-key",
                                      "mountPath": "/keys"})
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: container agent mounts node-key, the volume of "
            "--node-key", self.all_problems(docs))

    def test_missing_secret_is_reported(self):
        docs = [(w, d) for w, d in copy.deepcopy(self.docs)
                if not (d.get("kind") == "Secret" and
                        d["metadata"]["name"] == "latchkey-ca")]
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent: Secret "
            "latchkey/latchkey-ca is referenced but not in the manifests",
            self.all_problems(docs))

    def test_flag_naming_a_missing_secret_key_is_reported(self):
        docs = copy.deepcopy(self.docs)
        args = self.sidecar(docs)["args"]
        args[args.index("--tls-ca=/etc/latchkey/ca/ca.crt")] = (
            "--tls-ca=/etc/latchkey/ca/ca.pem")
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent: latchkeyd "
            "--tls-ca=/etc/latchkey/ca/ca.pem: Secret latchkey-ca has no key "
            "ca.pem", self.all_problems(docs))

    def test_real_looking_secret_value_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.find(docs, "Secret", "latchkey-node-token")["stringData"][
            "token"] = "s3cr3t-t0ken-value"
        self.assertIn(
            "placeholders/secrets.yaml: Secret latchkey-node-token key token "
            "is not the placeholder CHANGE-ME", self.all_problems(docs))

    def test_missing_requests_are_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["resources"].pop("requests")
        problems = self.all_problems(docs)
        for r in ("cpu", "memory"):
            self.assertIn("40-agent-example.yaml Deployment/example-agent "
                          "container latchkeyd: no %s request" % r, problems)

    def test_writable_root_is_reported(self):
        docs = copy.deepcopy(self.docs)
        self.sidecar(docs)["securityContext"]["readOnlyRootFilesystem"] = False
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent container "
            "latchkeyd: root filesystem is writable", self.all_problems(docs))

    def test_missing_network_policy_is_reported(self):
        docs = [(w, d) for w, d in copy.deepcopy(self.docs)
                if d.get("kind") != "NetworkPolicy"]
        self.assertIn(
            "40-agent-example.yaml Deployment/example-agent: no NetworkPolicy "
            "limits this pod's egress", self.all_problems(docs))

    def test_document_without_name_is_reported(self):
        docs = copy.deepcopy(self.docs)
        docs.append(("extra.yaml", {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {}}))
        self.assertIn("extra.yaml: ConfigMap has no metadata.name",
                      self.all_problems(docs))


if __name__ == "__main__":
    unittest.main()
