"""The canary: a unique secret, created through latchkeyctl from stdin and
used in calls whose vendor echoes it, appears nowhere it must not: not in
any file under the data dir after a clean shutdown, not in any line of
latchkeyd's log, not in any Call answer, not in latchkeyd's argv."""

import json
import os
import uuid

import harness


class CanaryTest(harness.StackTestCase):

    def test_canary_secret_leaks_nowhere(self):
        lk = self.lk
        token = "canaryT-%s/+?" % uuid.uuid4().hex
        key = "canaryK-%s~!" % uuid.uuid4().hex
        stdin = json.dumps({"token": token, "api_key": key})
        out = lk.ctl("credential", "create", "--type", "multi-key",
                     "--label", "canary", stdin=stdin)
        self.assertEqual(out.returncode, 0, out.stderr)
        cred_id = harness.ctl_output_id(out.stdout)
        for text in (out.stdout, out.stderr):
            self.assertNoSecret(text, token, "latchkeyctl output")
            self.assertNoSecret(text, key, "latchkeyctl output")
        listed = {c.label: c.id for c in lk.admin(
            "ListCredentials", harness.admin_pb2.ListRequest()).credentials}
        self.assertEqual(listed["canary"], cred_id)
        lk.bind("main", cred_id, tool="echo-multi")

        answers = []
        for i in range(3):
            answers.append(lk.call("main", "echo-multi", "get",
                                   {"item": "c%d" % i, "q": "x"}))
            answers.append(lk.call("main", "echo-multi", "post",
                                   {"note": "c%d" % i}))
        answers.append(lk.call("main", "echo-multi", "quiet"))
        answers.append(lk.list_tools("main"))
        # The vendor really got (and echoed) the canary each time.
        arrived = lk.nginx.arrivals("/", expect=7)
        self.assertEqual(len(arrived), 7)
        for entry in arrived:
            self.assertEqual(entry["authorization"], "Bearer " + token)
        for entry in arrived:
            if entry["uri"].startswith("/body/"):
                self.assertEqual(json.loads(entry["body"])["api_key"], key)
        redacted = [a for a in answers[:6] if a.result.redacted]
        self.assertEqual(len(redacted), 6)
        for answer in answers:
            self.assertNoSecret(harness.whole_response(answer), token)
            self.assertNoSecret(harness.whole_response(answer), key)

        # A failure on a tool with this credential says nothing about it.
        err = self.assertCode(harness.StatusCode.INVALID_ARGUMENT, lk.call,
                              "main", "echo-multi", "get", {"item": 1})
        self.assertNoSecret(err.details(), token, "error message")
        self.assertNoSecret(err.details(), key, "error message")

        pid = lk.daemon.pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read()
        self.assertNoSecret(cmdline, token, "cmdline")
        self.assertNoSecret(cmdline, key, "cmdline")

        # A clean shutdown flushes everything to disk; then look at it all.
        self.assertEqual(lk.stop_daemon(), 0)
        scanned = 0
        for top in (lk.data_dir,):
            for dirpath, _dirs, files in os.walk(top):
                for name in files:
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as f:
                        data = f.read()
                    scanned += len(data)
                    self.assertNoSecret(data, token, "file " + path)
                    self.assertNoSecret(data, key, "file " + path)
        self.assertGreater(scanned, 0, "the data dir holds no data at all")
        with open(lk.node_key, "rb") as f:
            self.assertNoSecret(f.read(), token, "node key file")

        lines = lk.log_lines()
        self.assertTrue(any('"event":"ready"' in l for l in lines))
        for number, line in enumerate(lines, 1):
            self.assertNoSecret(line, token, "log line %d" % number)
            self.assertNoSecret(line, key, "log line %d" % number)


if __name__ == "__main__":
    harness.main()
