"""Audit lines end to end on a standalone latchkeyd (harness.Stack): every
tool call writes exactly one audit.tool_call line and every Admin change
one audit.admin line, as JSON members on stderr; secret values appear in
them only as keyed hashes (secret_hashes), and `latchkeyctl audit-hash`,
reading the same JSON object `credential create` reads from stdin, prints
exactly those hashes, so an owner can search the audit log for a leaked
value. No form of the canary secret is in any log line."""

import json
import os
import re
import subprocess

import harness
from latchkey.v1 import admin_pb2

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def events(lk, name):
    """latchkeyd's JSON log lines whose event is name, parsed."""
    found = []
    for line in lk.log_lines():
        if '"event":"%s"' % name in line:
            found.append(json.loads(line))
    return found


class AuditTest(harness.StackTestCase):

    def audit_hash(self, fields, *flags):
        """`latchkeyctl [flags] audit-hash` with fields as JSON on stdin;
        returns {field: hash} parsed from its text output."""
        out = self.lk.ctl(*flags, "audit-hash", stdin=json.dumps(fields))
        self.assertEqual(out.returncode, 0, out.stderr)
        got = {}
        for line in out.stdout.splitlines():
            field, digest = line.split(" ")
            got[field] = digest
        return got

    def create(self, ctype, fields, label):
        out = self.lk.ctl("credential", "create", "--type", ctype, "--label",
                          label, stdin=json.dumps(fields))
        self.assertEqual(out.returncode, 0, out.stderr)
        return harness.ctl_output_id(out.stdout)

    def assertNoCanaryInLog(self, *secrets):
        text = "\n".join(self.lk.log_lines())
        self.assertIn("audit.", text)
        for secret in secrets:
            self.assertNoSecret(text, secret, "latchkeyd log")

    def test_tool_call_line_carries_the_hash_that_audit_hash_prints(self):
        lk = self.lk
        canary = harness.make_secret("audit")
        cred_id = self.create("api-key", {"api_key": canary}, "leaky")
        lk.bind("main", cred_id, tool="echo-apikey")
        resp = lk.call("main", "echo-apikey", "get", {"item": "a1"})
        self.assertEqual(resp.result.http_status, 200)
        self.assertTrue(resp.result.redacted)

        calls = events(lk, "audit.tool_call")
        self.assertEqual(len(calls), 1, calls)
        line = calls[0]
        self.assertEqual(line["budget"], "main")
        self.assertEqual(line["tool"], "echo-apikey")
        self.assertEqual(line["operation"], "get")
        self.assertEqual(line["credential_id"], cred_id)
        self.assertEqual(line["vendor_status"], 200)
        self.assertEqual(line["outcome"], "ok")
        self.assertTrue(line["redacted"])
        self.assertEqual(line["bytes"], len(resp.result.body))
        self.assertGreaterEqual(line["latency_ms"], 0)
        self.assertEqual(list(line["secret_hashes"]), ["api_key"])
        logged = line["secret_hashes"]["api_key"]
        self.assertRegex(logged, HEX64)

        # The operator pipes the leaked credential's JSON and greps.
        self.assertEqual(self.audit_hash({"api_key": canary}),
                         {"api_key": logged})
        out = lk.ctl("--json", "audit-hash",
                     stdin=json.dumps({"api_key": canary}))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout), {"api_key": logged})
        self.assertNoSecret(out.stdout + out.stderr, canary, "audit-hash output")
        direct = lk.admin("AuditHash", admin_pb2.AuditHashRequest(
            value=canary.encode()))
        self.assertEqual(direct.hash, logged)
        # Another value hashes differently; the hash is no form of the value.
        other = self.audit_hash({"api_key": canary + "x"})["api_key"]
        self.assertNotEqual(other, logged)
        self.assertNoSecret(logged, canary, "hash")
        self.assertNoCanaryInLog(canary)

    def test_every_call_outcome_writes_exactly_one_line(self):
        lk = self.lk
        canary = harness.make_secret("outc")
        cred_id = self.create("bearer-token", {"token": canary}, "outcomes")
        lk.bind("main", cred_id, tool="echo-bearer")
        lk.call("main", "echo-bearer", "get", {"item": "x"})     # ok
        lk.call("main", "echo-apikey", "get", {"item": "x"})     # missing
        self.assertCode(harness.StatusCode.INVALID_ARGUMENT, lk.call,
                        "main", "echo-bearer", "get", {"item": 1})
        self.assertCode(harness.StatusCode.NOT_FOUND, lk.call,
                        "main", "no-such-tool", "get", {})
        self.assertCode(harness.StatusCode.INVALID_ARGUMENT, lk.call,
                        "main", "not an id " + canary, "get", {})
        lk.call("main", "echo-open", "get", {"item": "y"})        # no credential
        calls = events(lk, "audit.tool_call")
        self.assertEqual([c["outcome"] for c in calls],
                         ["ok", "missing_credential", "INVALID_ARGUMENT",
                          "NOT_FOUND", "INVALID_ARGUMENT", "ok"])
        want = self.audit_hash({"token": canary})
        self.assertEqual(calls[0]["secret_hashes"], want)
        self.assertEqual(calls[1]["credential_type"], "api-key")
        for c in calls[1:]:
            self.assertNotIn("secret_hashes", c)
        self.assertNotIn("credential_id", calls[2])  # refused before resolving
        self.assertEqual(calls[3]["tool"], "no-such-tool")
        self.assertNotIn("tool", calls[4])  # what is no id is not echoed
        self.assertEqual(calls[5]["tool"], "echo-open")
        self.assertNotIn("credential_id", calls[5])
        self.assertNoCanaryInLog(canary)

    def test_admin_changes_write_audit_admin_lines(self):
        lk = self.lk
        first = harness.make_secret("adm1")
        second = harness.make_secret("adm2")
        setup = events(lk, "audit.admin")
        self.assertEqual(
            [(a["action"], a.get("credential_type", a.get("budget_id")))
             for a in setup[:len(harness.ALL_TYPES)]],
            [("type.register", t["id"]) for t in harness.ALL_TYPES])
        self.assertIn(("tool.register", "echo-bearer"),
                      [(a["action"], a.get("tool_id")) for a in setup])
        self.assertEqual(setup[-1]["action"], "budget.create")
        self.assertEqual(setup[-1]["budget_id"], "main")
        self.assertEqual(setup[-1]["agents"], [harness.AGENT])
        done = len(setup)

        cred_id = self.create("bearer-token", {"token": first}, "rotating")
        out = lk.ctl("credential", "update", cred_id,
                     stdin=json.dumps({"token": second}))
        self.assertEqual(out.returncode, 0, out.stderr)
        lk.bind("main", cred_id, tool="echo-bearer")
        lk.set_paused("main", True)
        lk.set_paused("main", False)
        lk.unbind("main", tool="echo-bearer")
        self.assertEqual(lk.ctl("credential", "delete", cred_id).returncode, 0)
        self.assertEqual(lk.ctl("tool", "delete", "echo-open").returncode, 0)
        # A refused change is audited too; a read and a wrong token are not.
        bad = lk.ctl("credential", "create", "--type", "bearer-token",
                     "--label", "bad", stdin=json.dumps({"token": "short"}))
        self.assertEqual(bad.returncode, 1)
        lk.admin("GetBudget", admin_pb2.GetRequest(id="main"))
        self.assertCode(harness.StatusCode.UNAUTHENTICATED, lk.admin,
                        "DeleteBudget", admin_pb2.DeleteRequest(id="main"),
                        token="wrong-token")

        lines = events(lk, "audit.admin")[done:]
        self.assertEqual(
            [(a["action"], a["outcome"]) for a in lines],
            [("credential.create", "ok"), ("credential.update", "ok"),
             ("bind", "ok"), ("budget.pause", "ok"), ("budget.resume", "ok"),
             ("unbind", "ok"), ("credential.delete", "ok"),
             ("tool.delete", "ok"), ("credential.create", "INVALID_ARGUMENT")])
        create, update, bind = lines[0], lines[1], lines[2]
        self.assertEqual(create["credential_id"], cred_id)
        self.assertEqual(create["credential_type"], "bearer-token")
        self.assertEqual(create["secret_hashes"],
                         self.audit_hash({"token": first}))
        self.assertEqual(update["credential_id"], cred_id)
        self.assertEqual(update["secret_hashes"],
                         self.audit_hash({"token": second}))
        self.assertNotEqual(create["secret_hashes"], update["secret_hashes"])
        self.assertEqual((bind["budget_id"], bind["tool_id"],
                          bind["credential_id"]),
                         ("main", "echo-bearer", cred_id))
        self.assertEqual(lines[3]["budget_id"], "main")
        self.assertEqual(lines[6]["credential_id"], cred_id)
        self.assertEqual(lines[7]["tool_id"], "echo-open")
        self.assertNotIn("secret_hashes", lines[8])
        # audit-hash calls are audited (without the value or its hash).
        asked = [a for a in events(lk, "audit.admin")
                 if a["action"] == "audit.hash"]
        self.assertEqual(len(asked), 2)
        for a in asked:
            self.assertEqual(set(a), {"ts", "level", "event", "msg", "action",
                                      "outcome"})
        self.assertNoCanaryInLog(first, second)

    def test_audit_hash_needs_the_admin_token_and_reads_only_stdin(self):
        lk = self.lk
        secret = harness.make_secret("tok")
        self.assertCode(harness.StatusCode.UNAUTHENTICATED, lk.admin,
                        "AuditHash",
                        admin_pb2.AuditHashRequest(value=secret.encode()),
                        token="not-the-admin-token")
        wrong = os.path.join(lk.dir, "wrong.token")
        fd = os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("wrong-admin-token-0123456789\n")
        out = subprocess.run(
            [harness.latchkeyctl_path(), "--server", lk.admin_addr,
             "--token-file", wrong, "audit-hash"],
            input=json.dumps({"k": secret}), capture_output=True, text=True,
            timeout=60)
        self.assertEqual(out.returncode, 1)
        self.assertIn("UNAUTHENTICATED", out.stderr)
        # The value never goes in argv: an argument is a usage error.
        out = lk.ctl("audit-hash", secret)
        self.assertEqual(out.returncode, 2)
        self.assertNoSecret(out.stderr, secret, "usage error")
        for stdin, why in (("", "empty"), ("{}", "no values"),
                           ('{"k": 5}', "must be a string"),
                           ("[1]", "one JSON object")):
            out = lk.ctl("audit-hash", stdin=stdin)
            self.assertEqual(out.returncode, 1, stdin)
            self.assertIn(why, out.stderr)
        self.assertNoCanaryInLog(secret)

    def test_hashes_are_stable_across_a_restart(self):
        lk = self.lk
        secret = harness.make_secret("rst")
        before = self.audit_hash({"api_key": secret, "other": "value-2"})
        lk.restart_daemon()
        self.assertEqual(self.audit_hash({"api_key": secret,
                                          "other": "value-2"}), before)
        self.assertEqual(set(before), {"api_key", "other"})
        self.assertNotEqual(before["api_key"], before["other"])


if __name__ == "__main__":
    harness.main()
