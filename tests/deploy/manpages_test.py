"""Keeps the man pages (docs/latchkeyd.8.md, docs/latchkey-cp.8.md,
docs/latchkeyctl.1.md) in step with the binaries.

What it proves: every flag a binary's --help lists has an entry in its
page's OPTIONS section naming the same environment variable, every
OPTIONS entry is a flag the binary lists (or one of issue 7's pending
flags DESIGN.md §10 names, see flags_contract.py), and each page has the
sections a man page has. Entries are the OPTIONS lines that start with
- **`--flag ...`**.
"""

import os
import re
import unittest

import flags_contract as fc

PAGES = {
    "latchkeyd": "docs/latchkeyd.8.md",
    "latchkey-cp": "docs/latchkey-cp.8.md",
    "latchkeyctl": "docs/latchkeyctl.1.md",
}
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "FILES",
            "EXIT STATUS", "EXAMPLES", "SEE ALSO"]
ENTRY_RE = re.compile(r"^- \*\*`--([a-z][a-z0-9-]*)")
ENV_RE = re.compile(r"`(LATCHKEY_[A-Z0-9_]+)")
CLI_ENV_RE = re.compile(r"^  --([a-z][a-z0-9-]*) .*\[(LATCHKEY_[A-Z0-9_]+)")


def sections(text):
    """{heading: body} of the page's "## " sections."""
    out = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def option_entries(page_text):
    """{flag: the entry's text up to the next entry} in OPTIONS."""
    entries = {}
    current = None
    for line in sections(page_text).get("OPTIONS", []):
        m = ENTRY_RE.match(line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current is not None and line.startswith("  "):
            entries[current] += "\n" + line
        else:
            current = None
    return entries


def help_flags(name):
    """{flag: environment variable or None} from the binary's --help."""
    if name == "latchkeyctl":
        envs = {}
        for line in fc.help_text(name).splitlines():
            m = CLI_ENV_RE.match(line)
            if m:
                envs[m.group(1)] = m.group(2)
        return {f: envs.get(f) for f in fc.cli_flags()}
    return {f: v["env"] for f, v in fc.daemon_flags(name).items()}


def drift(name, page_text, listed):
    """Problems between a page and the flags its binary lists."""
    problems = []
    entries = option_entries(page_text)
    entries.pop("help", None)
    for flag, env in sorted(listed.items()):
        if flag not in entries:
            problems.append("%s: --%s is in --help but not in OPTIONS" %
                            (name, flag))
            continue
        first = ENV_RE.search(entries[flag])
        if env is not None and (first is None or first.group(1) != env):
            problems.append("%s: --%s's entry does not name %s" %
                            (name, flag, env))
    for flag in sorted(entries):
        if flag not in listed and not fc.pending_allowed(name, flag, listed):
            problems.append("%s: --%s is in OPTIONS but not in --help" %
                            (name, flag))
    missing = [s for s in SECTIONS if s not in sections(page_text)]
    if missing:
        problems.append("%s: sections missing: %s" % (name, ", ".join(missing)))
    return problems


def read_page(name):
    with open(os.path.join(fc.ROOT, PAGES[name]), encoding="utf-8") as f:
        return f.read()


class ManPageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.listed = {name: help_flags(name) for name in PAGES}

    def test_pages_match_help(self):
        for name in PAGES:
            self.assertEqual(drift(name, read_page(name), self.listed[name]),
                             [], name)

    def test_every_page_documents_help(self):
        for name in PAGES:
            self.assertIn("help", option_entries(read_page(name)), name)

    def test_flag_missing_from_page_is_reported(self):
        text = read_page("latchkeyd").replace("- **`--workers N`**",
                                              "- workers")
        self.assertIn("latchkeyd: --workers is in --help but not in OPTIONS",
                      drift("latchkeyd", text, self.listed["latchkeyd"]))

    def test_flag_missing_from_help_is_reported(self):
        listed = dict(self.listed["latchkey-cp"])
        listed.pop("etcd-prefix")
        self.assertIn("latchkey-cp: --etcd-prefix is in OPTIONS but not in "
                      "--help",
                      drift("latchkey-cp", read_page("latchkey-cp"), listed))

    def test_unknown_flag_in_page_is_reported(self):
        text = read_page("latchkeyctl").replace(
            "## SIGNALS", "- **`--colour`** (`LATCHKEY_COLOUR`)\n\n## SIGNALS")
        self.assertIn("latchkeyctl: --colour is in OPTIONS but not in --help",
                      drift("latchkeyctl", text, self.listed["latchkeyctl"]))

    def test_wrong_environment_variable_is_reported(self):
        text = read_page("latchkey-cp").replace("(`LATCHKEY_KEYRING`;",
                                                "(`LATCHKEY_KEY_RING`;")
        self.assertIn("latchkey-cp: --keyring's entry does not name "
                      "LATCHKEY_KEYRING",
                      drift("latchkey-cp", text, self.listed["latchkey-cp"]))

    def test_pending_flag_needs_design_10(self):
        # --drain-timeout is being added by issue 7 but DESIGN.md §10 does
        # not name it: no allowance until the binary lists it.
        text = read_page("latchkeyd").replace(
            "## SIGNALS",
            "- **`--drain-timeout DURATION`** (`LATCHKEY_DRAIN_TIMEOUT`)\n\n"
            "## SIGNALS")
        problems = drift("latchkeyd", text, self.listed["latchkeyd"])
        if "drain-timeout" in self.listed["latchkeyd"]:
            self.assertNotIn("latchkeyd: --drain-timeout is in OPTIONS but "
                             "not in --help", problems)
        else:
            self.assertIn("latchkeyd: --drain-timeout is in OPTIONS but not "
                          "in --help", problems)

    def test_missing_section_is_reported(self):
        text = read_page("latchkeyctl").replace("## EXIT STATUS", "## EXIT")
        self.assertIn("latchkeyctl: sections missing: EXIT STATUS",
                      drift("latchkeyctl", text, self.listed["latchkeyctl"]))


if __name__ == "__main__":
    unittest.main()
