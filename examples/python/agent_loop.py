#!/usr/bin/python3
"""An agent loop over Latchkey, with a scripted model standing in for the
LLM (examples/llm_script.json; no network, no API key).

The loop is what a real agent does: list the budget's tools and hand them
to the model as function definitions, run every function call the model
makes through Latchkey, give the model the scrubbed result, and when a
credential is missing, show the user the setup link (only the user can
provide a credential) and tell the model. Swap ScriptedModel for a real
LLM client and nothing else changes.

    LATCHKEY_SIDECAR=unix:/run/latchkey/agent.sock \\
    LATCHKEY_AGENT_TOKEN_FILE=/run/latchkey/agent.token \\
        python3 examples/python/agent_loop.py --budget main

Needs the `latchkey` package (clients/python) on the path.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List

import latchkey

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCRIPT = os.path.join(os.path.dirname(HERE), "llm_script.json")
MAX_SCRIPT_BYTES = 1024 * 1024
MAX_SHOWN = 400   # characters of a result printed for the human


class ScriptedModel:
    """Plays the assistant turns of an llm_script.json in order. Like a real
    LLM it is given the conversation and the function definitions; it only
    ever names functions it was offered."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            raw = f.read(MAX_SCRIPT_BYTES + 1)
        if len(raw) > MAX_SCRIPT_BYTES:
            raise ValueError("%s is over %d bytes" % (path, MAX_SCRIPT_BYTES))
        script = json.loads(raw)
        self.user = script.get("user", "")
        self.turns = list(script["turns"])

    def respond(self, messages: List[Dict[str, Any]],
                functions: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The next assistant message, OpenAI-shaped: content and
        tool_calls whose arguments are a JSON string."""
        if not self.turns:
            return {"role": "assistant", "content": "", "tool_calls": []}
        turn = self.turns.pop(0)
        offered = {f["function"]["name"] for f in functions}
        calls = []
        for call in turn.get("tool_calls", []):
            if call["name"] not in offered:
                print("(script calls %s, which Latchkey did not offer)"
                      % call["name"])
            calls.append({"id": call.get("id", ""), "type": "function",
                          "function": {
                              "name": call["name"],
                              "arguments": json.dumps(call["arguments"])}})
        return {"role": "assistant", "content": turn.get("content", ""),
                "tool_calls": calls}


def shorten(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def run_tool_call(lk: latchkey.Client, functions: latchkey.ToolFunctions,
                  budget: str, call: Dict[str, Any]) -> Dict[str, Any]:
    """Runs one function call through Latchkey; prints what the human
    should see; returns what the model gets back."""
    name = call["function"]["name"]
    arguments = call["function"]["arguments"]
    print("assistant calls %s(%s)" % (name, arguments))
    try:
        result = functions.call(lk, budget, name, arguments)
    except latchkey.MissingCredential as missing:
        # Only the user can fix this: show them where.
        print("  -> Latchkey: tool '%s' needs a credential (%s) before it "
              "can run." % (missing.tool, missing.credential_type))
        for field in missing.required_fields:
            print("     field %s%s: %s" % (field.name,
                                           " (secret)" if field.secret else "",
                                           field.description))
        if missing.setup_url:
            print("     Set it up here: " + missing.setup_url)
        else:
            print("     Set it up with: " + missing.hint)
        return missing.as_dict()
    except latchkey.LatchkeyError as err:
        # Bad arguments, unknown function, deadline...: the model may retry.
        print("  -> %s" % err)
        return {"error": err.code.name, "message": err.message}
    print("  -> HTTP %d %s, redacted=%s" % (result.status,
                                           result.content_type,
                                           result.redacted))
    print("     " + shorten(result.text))
    return result.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default=os.environ.get("LATCHKEY_BUDGET",
                                                           "main"))
    parser.add_argument("--script", default=DEFAULT_SCRIPT,
                        help="the scripted model (default: %(default)s)")
    parser.add_argument("--max-turns", type=int, default=8)
    opts = parser.parse_args()

    model = ScriptedModel(opts.script)
    with latchkey.Client.from_env() as lk:
        try:
            functions = latchkey.ToolFunctions(lk.list_tools(opts.budget))
        except latchkey.LatchkeyError as err:
            print("cannot list the tools of budget %s: %s" % (opts.budget,
                                                              err),
                  file=sys.stderr)
            return 1
        definitions = functions.definitions
        print("functions offered to the model: " + ", ".join(functions.names))
        print("user: " + model.user)
        messages: List[Dict[str, Any]] = [{"role": "user",
                                           "content": model.user}]
        for _ in range(opts.max_turns):
            reply = model.respond(messages, definitions)
            messages.append(reply)
            if reply["content"]:
                print("assistant: " + reply["content"])
            if not reply["tool_calls"]:
                return 0
            for call in reply["tool_calls"]:
                output = run_tool_call(lk, functions, opts.budget, call)
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "content": json.dumps(output)})
    print("stopped after %d turns" % opts.max_turns, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
