/*
 * latchkeyctl.c - the admin and test CLI: argument parsing and output.
 *
 * Why it looks like this: every command is "parse argv into one request
 * message, make one unary RPC (rpc.c; the agent commands tools and call
 * through the C client library, clients/c), print the answer" - a table or a
 * readable block for people, the response message as one JSON document
 * (convert.c) with --json for scripts. Commands live in one table so the
 * parser, the usage text and the dispatch cannot disagree.
 *
 * Contract (DESIGN.md §10): exit 0 on success, 1 when the call (or a local
 * input such as a JSON file) failed, with "latchkeyctl: CODE: details" on
 * stderr, 2 for a malformed command line, with a short usage on stderr.
 *
 * Secrets: credential field values come only from standard input (no flag
 * carries one), are read into lk_secret memory (lib/secret.h) that is
 * wiped as soon as it is parsed, and every later copy is wiped on free:
 * jansson allocates through wiping functions installed in main, the request
 * message is freed by lk_convert_message_free, and rpc.c (like clients/c)
 * packs into lk_secret memory. Token files are read the same way, core dumps
 * are off, and nothing here prints a value it read from stdin or a token file.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "clients/c/latchkey_client.h"
#include "clients/c/latchkey_client_internal.h"
#include "clients/cli/convert.h"
#include "clients/cli/oauth_text.h"
#include "clients/cli/rpc.h"
#include "latchkey/v1/admin.pb-c.h"
#include "latchkey/v1/sync.pb-c.h"
#include "latchkey/v1/toolcalls.pb-c.h"
#include "latchkey/v1/types.pb-c.h"
#include "lib/oauth.h"
#include "lib/secret.h"
#include "lib/status.h"

#define DEFAULT_SERVER "unix:/run/latchkey/admin.sock"
#define DEFAULT_SIDECAR "unix:/run/latchkey/agent.sock"
#define ADMIN_DEADLINE_MS 15000
#define LIST_TOOLS_DEADLINE_MS 15000
#define CALL_DEADLINE_MS 30000
#define MAX_DEADLINE_MS 3600000
/* keys rotate polls GetKeyStatus this often until the rotation is done. */
#define KEYS_POLL_MS 500
/* Credential field values on stdin: generous for PEM keys and service
 * account files, small enough to live in guarded memory. */
#define MAX_STDIN_BYTES (64 * 1024)
#define MAX_POSITIONAL 2
#define MAX_OPTIONS 64
#define MAX_TABLE_ROWS (1024 * 1024)
#define CELL_BYTES 4096

#define EXIT_CALL_FAILED 1
#define EXIT_USAGE 2

/* ---- wiping allocator for jansson ------------------------------------- */

/* jansson has no size on free, so each block carries its length in a
 * header aligned like malloc's result. */
#define JSON_HDR 16
_Static_assert(JSON_HDR >= sizeof(size_t) &&
                   JSON_HDR % _Alignof(max_align_t) == 0,
               "JSON_HDR must hold a size and keep malloc alignment");

static void *json_wiping_malloc(size_t n) {
  unsigned char *p;
  if (n > SIZE_MAX - JSON_HDR) {
    return NULL;
  }
  p = malloc(JSON_HDR + n);
  if (p == NULL) {
    return NULL;
  }
  memcpy(p, &n, sizeof(n));
  return p + JSON_HDR;
}

static void json_wiping_free(void *ptr) {
  unsigned char *p;
  size_t n;
  if (ptr == NULL) {
    return;
  }
  p = (unsigned char *)ptr - JSON_HDR;
  memcpy(&n, p, sizeof(n));
  lk_wipe(ptr, n);
  free(p);
}

/* ---- command line ------------------------------------------------------ */

typedef struct {
  const char *server;
  const char *token_file;
  const char *tls_ca;
  int json;
} cli;

typedef struct {
  const char *name; /* without the leading "--" */
  int repeat;       /* may be given more than once; OPT_FLAG: no value */
} opt_spec;

/* opt_spec.repeat of a flag that takes no value (present or not). */
#define OPT_FLAG 2

typedef struct {
  const char *pos[MAX_POSITIONAL];
  size_t npos;
  const char *opt_name[MAX_OPTIONS];
  const char *opt_val[MAX_OPTIONS];
  size_t nopts;
} args;

typedef int (*cmd_fn)(cli *c, const args *a);

typedef struct {
  const char *group;    /* first word */
  const char *verb;     /* second word, or NULL for one-word commands */
  size_t npos;          /* positional arguments after the words */
  size_t npos_min;      /* how many of them are required */
  const opt_spec *opts; /* accepted command flags, NULL-terminated */
  cmd_fn run;
} command;

static const char short_usage[] =
    "usage: latchkeyctl [--server ADDR] [--token-file PATH] [--tls-ca PATH] "
    "[--json] COMMAND ...\n"
    "commands: tool, type, credential, budget, bind, unbind, bindings, tools, "
    "call, status, keys, audit-hash\n"
    "run 'latchkeyctl --help' for details\n";

static const char long_usage[] =
    "usage: latchkeyctl [--server ADDR] [--token-file PATH] [--tls-ca PATH] "
    "[--json] COMMAND ...\n"
    "\n"
    "Admin commands (to --server, with the admin token):\n"
    "  tool register FILE.json       register a tool; its credential_type is "
    "a type id\n"
    "                                or an inline type object (FILE - reads "
    "stdin)\n"
    "  tool list | tool show ID | tool delete ID\n"
    "  type register FILE.json       register a credential type\n"
    "  type list | type show ID | type delete ID\n"
    "  credential create --type TYPE --label LABEL [--id ID]\n"
    "                                field values on stdin as one JSON "
    "object,\n"
    "                                e.g. {\"api_key\":\"...\"}; prints the "
    "new id\n"
    "  credential list | credential show ID     (secret fields masked; "
    "oauth2:\n"
    "                                token expiry and last refresh result)\n"
    "  credential update ID [--label LABEL]     changed fields on stdin\n"
    "  credential delete ID\n"
    "  budget create ID --agent AGENT [--agent AGENT ...]\n"
    "  budget list | budget show ID | budget pause ID | budget resume ID\n"
    "  budget delete ID\n"
    "  bind BUDGET (--tool TOOL | --type TYPE) --credential CRED\n"
    "  unbind BUDGET (--tool TOOL | --type TYPE)\n"
    "  bindings [--budget BUDGET]\n"
    "  status                        control plane: replicas, applied "
    "revision, lag\n"
    "  keys rotate [--no-wait]       control plane: add a key ring key, "
    "re-seal every\n"
    "                                secret under it, retire the old key "
    "(progress on\n"
    "                                stderr until done)\n"
    "  keys status                   control plane: key ring keys and "
    "values per key\n"
    "  audit-hash                    values on stdin as one JSON object, "
    "e.g. a leaked\n"
    "                                credential's {\"api_key\":\"...\"}; "
    "prints \"FIELD HASH\" per\n"
    "                                value, the hash audit lines carry "
    "(secret_hashes)\n"
    "\n"
    "Agent commands (to --sidecar, with the agent token if one is set):\n"
    "  tools --budget BUDGET\n"
    "  call --budget BUDGET --tool TOOL --op OP [--args JSON] "
    "[--timeout-ms N]\n"
    "      both also take --sidecar ADDR, --agent-token-file PATH\n"
    "\n"
    "Options (environment variable in brackets):\n"
    "  --server ADDR            Admin endpoint [LATCHKEY_SERVER]\n"
    "                           default " DEFAULT_SERVER
    "\n"
    "  --token-file PATH        file holding the admin token "
    "[LATCHKEY_TOKEN_FILE]\n"
    "  --tls-ca PATH            use TLS, trusting this CA bundle "
    "[LATCHKEY_TLS_CA]\n"
    "  --json                   print one JSON document [LATCHKEY_JSON=1]\n"
    "  --sidecar ADDR           ToolCalls endpoint [LATCHKEY_SIDECAR]\n"
    "                           default " DEFAULT_SIDECAR
    "\n"
    "  --agent-token-file PATH  file holding the agent token "
    "[LATCHKEY_AGENT_TOKEN_FILE]\n"
    "  --timeout-ms N           deadline of tools/call (default 30000 for "
    "call)\n"
    "\n"
    "Addresses use gRPC syntax: unix:/path or host:port.\n"
    "Exit status: 0 success, 1 the call failed, 2 usage error.\n";

/* Prints "latchkeyctl: <why>" and the short usage on stderr; returns 2. */
static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("latchkeyctl: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n", stderr);
  fputs(short_usage, stderr);
  return EXIT_USAGE;
}

/* Prints "latchkeyctl: CODE: details" on stderr; returns 1. */
static int fail(const lk_err *err) {
  const char *name = lk_status_name(err->code);
  if (strncmp(name, "LK_", 3) == 0) {
    name += 3;
  }
  fprintf(stderr, "latchkeyctl: %s: %s\n", name,
          err->msg[0] != '\0' ? err->msg : lk_status_default_msg(err->code));
  return EXIT_CALL_FAILED;
}

/* Like fail, with "where: " put before the message. */
static int fail_in(const char *where, lk_err *err) {
  char msg[sizeof(err->msg)];
  snprintf(msg, sizeof(msg), "%s", err->msg);
  lk_fail(err, err->code, "%s: %s", where, msg);
  return fail(err);
}

static const char *opt_get(const args *a, const char *name) {
  size_t i;
  for (i = 0; i < a->nopts; i++) {
    if (strcmp(a->opt_name[i], name) == 0) {
      return a->opt_val[i];
    }
  }
  return NULL;
}

static int env_true(const char *v) {
  return v != NULL && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 ||
                       strcmp(v, "yes") == 0);
}

/* Parses one "--name" or "--name=value" at argv[*i] as a global flag.
 * Returns 1 when consumed, 0 when not global, 2 on a usage error. */
static int parse_global(cli *c, int argc, char **argv, int *i) {
  static const char *const valued[] = {"server", "token-file", "tls-ca"};
  const char *arg = argv[*i] + 2;
  const char *eq = strchr(arg, '=');
  size_t nlen = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
  const char *val;
  size_t k;

  if (nlen == 4 && strncmp(arg, "json", 4) == 0) {
    if (eq != NULL) {
      return usage_error("--json takes no value");
    }
    c->json = 1;
    return 1;
  }
  for (k = 0; k < sizeof(valued) / sizeof(valued[0]); k++) {
    if (strlen(valued[k]) == nlen && strncmp(arg, valued[k], nlen) == 0) {
      break;
    }
  }
  if (k == sizeof(valued) / sizeof(valued[0])) {
    return 0;
  }
  if (eq != NULL) {
    val = eq + 1;
  } else if (*i + 1 < argc) {
    val = argv[++*i];
  } else {
    return usage_error("--%s needs a value", valued[k]);
  }
  if (val[0] == '\0') {
    return usage_error("--%s needs a non-empty value", valued[k]);
  }
  if (k == 0) {
    c->server = val;
  } else if (k == 1) {
    c->token_file = val;
  } else {
    c->tls_ca = val;
  }
  return 1;
}

/* Parses the words after the command into a, accepting global flags too. */
static int parse_command_args(cli *c, const command *cmd, int argc, char **argv,
                              int start, args *a) {
  int i;

  memset(a, 0, sizeof(*a));
  for (i = start; i < argc; i++) {
    const char *arg = argv[i];
    const char *eq;
    size_t nlen;
    const opt_spec *o;
    const char *val;
    int g;

    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      /* Arguments are not echoed back: a misplaced one may be a secret. */
      if (arg[0] == '-' && arg[1] != '\0') {
        return usage_error("unknown option '%.*s'", (int)strcspn(arg, "="),
                           arg);
      }
      if (a->npos == cmd->npos) {
        return usage_error(
            "too many arguments for '%s%s%s' (it takes %zu; field values "
            "go on stdin, never on the command line)",
            cmd->group, cmd->verb ? " " : "", cmd->verb ? cmd->verb : "",
            cmd->npos);
      }
      a->pos[a->npos++] = arg;
      continue;
    }
    g = parse_global(c, argc, argv, &i);
    if (g == 1) {
      continue;
    }
    if (g != 0) {
      return g;
    }
    eq = strchr(arg + 2, '=');
    nlen = eq != NULL ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    for (o = cmd->opts; o != NULL && o->name != NULL; o++) {
      if (strlen(o->name) == nlen && strncmp(arg + 2, o->name, nlen) == 0) {
        break;
      }
    }
    if (o == NULL || o->name == NULL) {
      return usage_error("unknown option %.*s for '%s%s%s'", (int)nlen + 2, arg,
                         cmd->group, cmd->verb ? " " : "",
                         cmd->verb ? cmd->verb : "");
    }
    if (o->repeat == OPT_FLAG) {
      if (eq != NULL) {
        return usage_error("--%s takes no value", o->name);
      }
      val = "1";
    } else if (eq != NULL) {
      val = eq + 1;
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      return usage_error("--%s needs a value", o->name);
    }
    if (val[0] == '\0') {
      return usage_error("--%s needs a non-empty value", o->name);
    }
    if (!o->repeat && opt_get(a, o->name) != NULL) {
      return usage_error("--%s given twice", o->name);
    }
    if (a->nopts == MAX_OPTIONS) {
      return usage_error("too many options");
    }
    a->opt_name[a->nopts] = o->name;
    a->opt_val[a->nopts] = val;
    a->nopts++;
  }
  if (a->npos < cmd->npos_min) {
    return usage_error("'%s%s%s' needs %zu argument%s", cmd->group,
                       cmd->verb ? " " : "", cmd->verb ? cmd->verb : "",
                       cmd->npos_min, cmd->npos_min == 1 ? "" : "s");
  }
  return 0;
}

/* ---- secrets from files and stdin --------------------------------------- */

/* Reads a token file into guarded memory, trailing newline stripped (the
 * token is lk_secret_str(*out)). */
static lk_status read_token_file(const char *path, lk_secret **out,
                                 lk_err *err) {
  lk_status st = LK_OK;
  FILE *f = fopen(path, "rb");
  lk_secret *s = NULL;
  char *buf;
  size_t n = 0;

  *out = NULL;
  if (f == NULL) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot open token file %s: %s",
                 path, strerror(errno));
    goto done;
  }
  s = lk_secret_new(LK_RPC_MAX_TOKEN_BYTES + 2);
  if (s == NULL) {
    st = lk_fail(err, LK_INTERNAL, "out of memory reading token file %s", path);
    goto done;
  }
  buf = (char *)lk_secret_mut(s);
  n = fread(buf, 1, LK_RPC_MAX_TOKEN_BYTES + 2, f);
  if (ferror(f)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot read token file %s", path);
    goto done;
  }
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
    n--;
  }
  if (n > LK_RPC_MAX_TOKEN_BYTES) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "token file %s holds more than %d bytes", path,
                 LK_RPC_MAX_TOKEN_BYTES);
    goto done;
  }
  if (n == 0) {
    st = lk_fail(err, LK_INVALID_ARGUMENT, "token file %s is empty", path);
    goto done;
  }
  /* The string view ends here; the bytes after it are zero already. */
  buf[n] = '\0';
  *out = s;
  s = NULL;
done:
  lk_secret_free(s);
  if (f != NULL) {
    fclose(f);
  }
  return st;
}

/* Reads all of stdin into buf (capacity cap), with echo off on a terminal. */
static lk_status read_stdin_into(char *buf, size_t cap, size_t *len,
                                 lk_err *err) {
  lk_status st = LK_OK;
  struct termios saved;
  int restore = 0;
  size_t n = 0;

  if (isatty(STDIN_FILENO)) {
    fputs(
        "Enter the credential fields as one JSON object, then Ctrl-D "
        "(input is not echoed):\n",
        stderr);
    if (tcgetattr(STDIN_FILENO, &saved) == 0) {
      struct termios quiet = saved;
      quiet.c_lflag &= ~(tcflag_t)ECHO;
      restore = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
    }
  }
  for (;;) {
    ssize_t r = read(STDIN_FILENO, buf + n, cap - n);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      st = lk_fail(err, LK_INVALID_ARGUMENT, "cannot read stdin: %s",
                   strerror(errno));
      goto done;
    }
    if (r == 0) {
      break;
    }
    n += (size_t)r;
    if (n == cap) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "stdin holds more than %zu bytes of credential fields",
                   cap - 1);
      goto done;
    }
  }
  *len = n;
done:
  if (restore) {
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    fputs("\n", stderr);
  }
  return st;
}

/* Reads the credential field values from stdin as one JSON object; with
 * allow_empty an empty stdin yields *out == NULL. */
static lk_status read_stdin_fields(int allow_empty, json_t **out, lk_err *err) {
  lk_status st = LK_OK;
  lk_secret *s = lk_secret_new(MAX_STDIN_BYTES + 1);
  char *buf;
  size_t n = 0;
  size_t i;
  json_t *j = NULL;

  *out = NULL;
  if (s == NULL) {
    st = lk_fail(err, LK_INTERNAL, "out of memory reading stdin");
    goto done;
  }
  buf = (char *)lk_secret_mut(s);
  st = read_stdin_into(buf, MAX_STDIN_BYTES + 1, &n, err);
  if (st != LK_OK) {
    goto done;
  }
  for (i = 0; i < n && strchr(" \t\r\n", buf[i]) != NULL; i++) {
  }
  if (i == n) {
    if (!allow_empty) {
      st = lk_fail(err, LK_INVALID_ARGUMENT,
                   "stdin is empty: give the field values as one JSON "
                   "object, e.g. {\"api_key\":\"...\"}");
    }
    goto done;
  }
  st = lk_convert_parse(buf, n, 1, &j, err);
  if (st != LK_OK) {
    char msg[sizeof(err->msg)];
    snprintf(msg, sizeof(msg), "%s", err->msg);
    st = lk_fail(err, st, "stdin: %s", msg);
    goto done;
  }
  if (!json_is_object(j)) {
    st = lk_fail(err, LK_INVALID_ARGUMENT,
                 "stdin must hold one JSON object of field values, e.g. "
                 "{\"api_key\":\"...\"}");
    goto done;
  }
  *out = j;
  j = NULL;
done:
  /* Last use of the raw text: lk_secret_free wipes it. */
  lk_secret_free(s);
  json_decref(j);
  return st;
}

/* ---- calls --------------------------------------------------------------- */

/* Where a call goes and how it authenticates. */
typedef struct {
  const char *address;
  const char *tls_ca;
  const char *token_file;
} endpoint;

static endpoint admin_endpoint(const cli *c) {
  endpoint e;
  e.address = c->server;
  e.tls_ca = c->tls_ca;
  e.token_file = c->token_file;
  return e;
}

/* Makes one call; the reason of a failure in *err, nothing printed. */
static lk_status call_endpoint_status(
    endpoint e, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *resp_desc, int64_t deadline_ms,
    ProtobufCMessage **resp, lk_err *err) {
  lk_status st;
  lk_rpc_channel *ch = NULL;
  lk_secret *token = NULL;

  *resp = NULL;
  if (e.token_file != NULL) {
    st = read_token_file(e.token_file, &token, err);
    if (st != LK_OK) {
      goto done;
    }
  }
  st = lk_rpc_open(e.address, e.tls_ca, &ch, err);
  if (st != LK_OK) {
    goto done;
  }
  st = lk_rpc_unary(ch, method, token != NULL ? lk_secret_str(token) : NULL,
                    deadline_ms, req, resp_desc, resp, err);
done:
  lk_secret_free(token);
  lk_rpc_close(ch);
  return st;
}

/* Makes one call; on failure prints the error and returns 1, else 0. */
static int call_endpoint(endpoint e, const char *method,
                         const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *resp_desc,
                         int64_t deadline_ms, ProtobufCMessage **resp) {
  lk_err err;
  lk_err_clear(&err);
  return call_endpoint_status(e, method, req, resp_desc, deadline_ms, resp,
                              &err) == LK_OK
             ? 0
             : fail(&err);
}

static int admin_call(const cli *c, const char *method,
                      const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *resp_desc,
                      ProtobufCMessage **resp) {
  return call_endpoint(admin_endpoint(c), method, req, resp_desc,
                       ADMIN_DEADLINE_MS, resp);
}

/* Resolves the sidecar endpoint from a's flags and the environment. */
static endpoint sidecar_endpoint(const args *a) {
  endpoint e;
  e.address = opt_get(a, "sidecar");
  if (e.address == NULL) {
    e.address = getenv("LATCHKEY_SIDECAR");
  }
  if (e.address == NULL || e.address[0] == '\0') {
    e.address = DEFAULT_SIDECAR;
  }
  e.tls_ca = NULL;
  e.token_file = opt_get(a, "agent-token-file");
  if (e.token_file == NULL) {
    e.token_file = getenv("LATCHKEY_AGENT_TOKEN_FILE");
  }
  if (e.token_file != NULL && e.token_file[0] == '\0') {
    e.token_file = NULL;
  }
  return e;
}

/* Prints a clients/c error as "latchkeyctl: CODE: details" (the codes
 * carry the same names as lk_status); returns 1. */
static int fail_client(const lk_client_error *ce) {
  lk_err err;
  lk_status st;

  switch (ce->code) {
    case LK_CLIENT_NOT_FOUND:
      st = LK_NOT_FOUND;
      break;
    case LK_CLIENT_INVALID_ARGUMENT:
      st = LK_INVALID_ARGUMENT;
      break;
    case LK_CLIENT_PERMISSION_DENIED:
      st = LK_PERMISSION_DENIED;
      break;
    case LK_CLIENT_FAILED_PRECONDITION:
      st = LK_FAILED_PRECONDITION;
      break;
    case LK_CLIENT_UNAUTHENTICATED:
      st = LK_UNAUTHENTICATED;
      break;
    case LK_CLIENT_DEADLINE_EXCEEDED:
      st = LK_DEADLINE_EXCEEDED;
      break;
    case LK_CLIENT_UNAVAILABLE:
      st = LK_UNAVAILABLE;
      break;
    case LK_CLIENT_RESOURCE_EXHAUSTED:
      st = LK_RESOURCE_EXHAUSTED;
      break;
    default:
      st = LK_INTERNAL;
      break;
  }
  lk_fail(&err, st, "%s", ce->message);
  return fail(&err);
}

/* Opens the clients/c client of the sidecar a names, sending the agent
 * token file's token (read into guarded memory, wiped once the client has
 * its own copy) with a deadline of deadline_ms per call; on failure prints
 * the error and returns 1, else 0. */
static int open_sidecar(const args *a, int64_t deadline_ms, lk_client **out) {
  endpoint e = sidecar_endpoint(a);
  lk_secret *token = NULL;
  lk_client_opts opts;
  lk_client_error cerr;
  lk_err err;
  int rc = 0;

  *out = NULL;
  lk_err_clear(&err);
  if (e.token_file != NULL &&
      read_token_file(e.token_file, &token, &err) != LK_OK) {
    return fail(&err);
  }
  memset(&opts, 0, sizeof(opts));
  opts.agent_token = token != NULL ? lk_secret_str(token) : NULL;
  opts.timeout_ms = (long)deadline_ms;
  opts.tls_ca = e.tls_ca;
  opts.max_response_bytes = LK_RPC_MAX_RESPONSE_BYTES;
  if (lk_client_open(e.address, &opts, out, &cerr) != LK_CLIENT_OK) {
    rc = fail_client(&cerr);
  }
  lk_secret_free(token);
  return rc;
}

/* ---- output -------------------------------------------------------------- */

/* Adds what people need on top of a message's JSON (msg's rendering). */
typedef void (*json_extra_fn)(json_t *j, const ProtobufCMessage *msg);

/* Prints msg as one JSON document, passed through extra when not NULL;
 * returns 0 or 1. */
static int print_json_with(const ProtobufCMessage *msg, json_extra_fn extra) {
  lk_err err;
  json_t *j = NULL;
  int rc = 0;

  lk_err_clear(&err);
  if (lk_convert_to_json(msg, &j, &err) != LK_OK) {
    return fail(&err);
  }
  if (extra != NULL) {
    extra(j, msg);
  }
  if (json_dumpf(j, stdout, JSON_INDENT(2)) != 0) {
    rc = 1;
  }
  fputc('\n', stdout);
  json_decref(j);
  return rc;
}

/* Prints msg as one JSON document; returns 0 or 1. */
static int print_json(const ProtobufCMessage *msg) {
  return print_json_with(msg, NULL);
}

/* A fixed-size text cell: control characters become '?', overflow is cut
 * with "...", so server text can neither move the cursor nor grow memory. */
typedef struct {
  char buf[CELL_BYTES];
  size_t len;
} cell;

static void cell_reset(cell *c) {
  c->len = 0;
  c->buf[0] = '\0';
}

static void cell_add(cell *c, const char *s) {
  for (; s != NULL && *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (c->len + 4 >= sizeof(c->buf)) {
      memcpy(c->buf + sizeof(c->buf) - 4, "...", 4);
      c->len = sizeof(c->buf) - 1;
      return;
    }
    c->buf[c->len++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
  }
  c->buf[c->len] = '\0';
}

static void cell_addf(cell *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cell_addf(cell *c, const char *fmt, ...) {
  char tmp[CELL_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  cell_add(c, tmp);
}

/* Prints "<indent><label><value>\n" with value made safe for a terminal. */
static void print_line(const char *indent, const char *label,
                       const char *value) {
  cell v;
  cell_reset(&v);
  cell_add(&v, value);
  printf("%s%s%s\n", indent, label, v.buf);
}

/* Rows of cells printed with columns padded to the widest entry. */
typedef struct {
  size_t ncols;
  size_t nrows;
  size_t cap;
  char **cells;
} table;

static int table_add(table *t, const char *const *row) {
  int failed = 0;
  size_t i;
  if (t->nrows == MAX_TABLE_ROWS) {
    return -1;
  }
  if (t->nrows == t->cap) {
    size_t ncap = t->cap ? t->cap * 2 : 16;
    char **n = realloc(t->cells, ncap * t->ncols * sizeof(char *));
    if (n == NULL) {
      return -1;
    }
    t->cells = n;
    t->cap = ncap;
  }
  for (i = 0; i < t->ncols; i++) {
    cell c;
    cell_reset(&c);
    cell_add(&c, row[i][0] != '\0' ? row[i] : "-");
    t->cells[t->nrows * t->ncols + i] = strdup(c.buf);
    if (t->cells[t->nrows * t->ncols + i] == NULL) {
      failed = 1;
    }
  }
  /* Counted even when a cell failed, so table_free sees every cell. */
  t->nrows++;
  return failed ? -1 : 0;
}

/* Display width of UTF-8 text: one column per code point. */
static size_t text_width(const char *s) {
  size_t w = 0;
  for (; *s != '\0'; s++) {
    if (((unsigned char)*s & 0xc0) != 0x80) {
      w++;
    }
  }
  return w;
}

static void table_print(const table *t) {
  size_t width[8] = {0};
  size_t r;
  size_t i;

  for (r = 0; r < t->nrows; r++) {
    for (i = 0; i < t->ncols && i < 8; i++) {
      const char *s = t->cells[r * t->ncols + i];
      size_t w = s != NULL ? text_width(s) : 0;
      if (w > width[i]) {
        width[i] = w;
      }
    }
  }
  for (r = 0; r < t->nrows; r++) {
    for (i = 0; i < t->ncols; i++) {
      const char *s = t->cells[r * t->ncols + i];
      if (s == NULL) {
        s = "?";
      }
      fputs(s, stdout);
      if (i + 1 < t->ncols) {
        size_t pad = width[i] - text_width(s) + 2;
        while (pad-- > 0) {
          fputc(' ', stdout);
        }
      }
    }
    fputc('\n', stdout);
  }
}

static void table_free(table *t) {
  size_t i;
  for (i = 0; i < t->nrows * t->ncols; i++) {
    free(t->cells[i]);
  }
  free(t->cells);
}

/* Formats unix milliseconds as UTC ISO 8601, "-" for zero. */
static void format_time(int64_t ms, char *out, size_t n) {
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  if (ms <= 0 || gmtime_r(&secs, &tm) == NULL) {
    snprintf(out, n, "-");
    return;
  }
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Prints a result table, failing cleanly when it could not be built. */
static int finish_table(table *t, int ok) {
  lk_err err;
  if (!ok) {
    table_free(t);
    lk_fail(&err, LK_RESOURCE_EXHAUSTED,
            "cannot lay out the answer as a table (more than %d rows or out "
            "of memory); use --json",
            MAX_TABLE_ROWS);
    return fail(&err);
  }
  table_print(t);
  table_free(t);
  return 0;
}

/* ---- tool ------------------------------------------------------------------
 */

/* kind is the tool's credential type's kind when it could be read, else
 * NULL. */
static void print_tool(const Latchkey__V1__Tool *t, const char *kind) {
  size_t i;
  size_t k;
  char timeout[32];
  cell ct;

  print_line("", "tool ", t->id);
  if (t->description[0] != '\0') {
    print_line("  ", "description:     ", t->description);
  }
  print_line("  ", "base_url:        ", t->base_url);
  cell_reset(&ct);
  cell_add(&ct, t->credential_type[0] ? t->credential_type : "(none needed)");
  if (kind != NULL && kind[0] != '\0') {
    cell_addf(&ct, " (kind %s)", kind);
  }
  print_line("  ", "credential_type: ", ct.buf);
  if (t->timeout_ms == 0) {
    snprintf(timeout, sizeof(timeout), "default (30000)");
  } else {
    snprintf(timeout, sizeof(timeout), "%u", t->timeout_ms);
  }
  print_line("  ", "timeout_ms:      ", timeout);
  printf("  operations:\n");
  for (i = 0; i < t->n_operations; i++) {
    const Latchkey__V1__Operation *op = t->operations[i];
    cell c;
    cell_reset(&c);
    cell_addf(&c, "%s  %s %s", op->name, op->method, op->path);
    print_line("    ", "", c.buf);
    if (op->description[0] != '\0') {
      print_line("      ", "", op->description);
    }
    for (k = 0; k < op->n_params; k++) {
      const Latchkey__V1__Param *p = op->params[k];
      cell_reset(&c);
      cell_addf(&c, "%s (%s, %s%s)%s%s", p->name, p->in, p->type,
                p->required ? ", required" : "", p->description[0] ? "  " : "",
                p->description);
      print_line("      - ", "", c.buf);
    }
  }
}

static int cmd_tool_register(cli *c, const args *a) {
  lk_err err;
  json_t *j = NULL;
  Latchkey__V1__RegisterToolRequest *req = NULL;
  ProtobufCMessage *resp = NULL;
  int rc = EXIT_CALL_FAILED;

  lk_err_clear(&err);
  if (lk_convert_load_file(a->pos[0], &j, &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  if (lk_convert_tool_request_from_json(j, &req, &err) != LK_OK) {
    rc = fail_in(a->pos[0], &err);
    goto done;
  }
  rc = admin_call(c, "/latchkey.v1.Admin/RegisterTool", &req->base,
                  &latchkey__v1__tool__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
  } else {
    const Latchkey__V1__Tool *t = (const Latchkey__V1__Tool *)resp;
    cell m;
    cell_reset(&m);
    cell_addf(&m, "registered tool %s", t->id);
    if (req->credential_type != NULL) {
      cell_addf(&m, " with credential type %s", req->credential_type->id);
    } else if (t->credential_type[0] != '\0') {
      cell_addf(&m, " (credential type %s)", t->credential_type);
    } else {
      cell_add(&m, " (no credential needed)");
    }
    printf("%s\n", m.buf);
  }
done:
  lk_convert_message_free(resp);
  lk_convert_message_free(req != NULL ? &req->base : NULL);
  json_decref(j);
  return rc;
}

static int cmd_tool_list(cli *c, const args *a) {
  Latchkey__V1__ListRequest req = LATCHKEY__V1__LIST_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__ToolList *list;
  static const char *const header[] = {"ID", "OPERATIONS", "CREDENTIAL_TYPE",
                                       "BASE_URL"};
  table t = {4, 0, 0, NULL};
  int ok = 1;
  size_t i;
  size_t k;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Admin/ListTools", &req.base,
                  &latchkey__v1__tool_list__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
    goto done;
  }
  list = (const Latchkey__V1__ToolList *)resp;
  ok = table_add(&t, header) == 0;
  for (i = 0; ok && i < list->n_tools; i++) {
    const Latchkey__V1__Tool *tool = list->tools[i];
    cell ops;
    const char *row[4];
    cell_reset(&ops);
    for (k = 0; k < tool->n_operations; k++) {
      cell_addf(&ops, "%s%s", k ? "," : "", tool->operations[k]->name);
    }
    row[0] = tool->id;
    row[1] = ops.buf;
    row[2] = tool->credential_type;
    row[3] = tool->base_url;
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_tool_show(cli *c, const args *a) {
  Latchkey__V1__GetRequest req = LATCHKEY__V1__GET_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)a->pos[0];
  rc = admin_call(c, "/latchkey.v1.Admin/GetTool", &req.base,
                  &latchkey__v1__tool__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      const Latchkey__V1__Tool *t = (const Latchkey__V1__Tool *)resp;
      ProtobufCMessage *type = NULL;
      lk_err err;
      lk_err_clear(&err);
      /* The kind is a courtesy: without it the tool still shows. */
      if (t->credential_type[0] != '\0') {
        req.id = t->credential_type;
        if (call_endpoint_status(
                admin_endpoint(c), "/latchkey.v1.Admin/GetCredentialType",
                &req.base, &latchkey__v1__credential_type__descriptor,
                ADMIN_DEADLINE_MS, &type, &err) != LK_OK) {
          type = NULL;
        }
      }
      print_tool(t, type != NULL
                        ? ((const Latchkey__V1__CredentialType *)type)->kind
                        : NULL);
      lk_convert_message_free(type);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

/* Shared by every "X delete ID": one DeleteRequest, an Empty answer. */
static int delete_by_id(cli *c, const char *method, const char *what,
                        const char *id) {
  Latchkey__V1__DeleteRequest req = LATCHKEY__V1__DELETE_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)id;
  rc =
      admin_call(c, method, &req.base, &latchkey__v1__empty__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      print_line("", what, id);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_tool_delete(cli *c, const args *a) {
  return delete_by_id(c, "/latchkey.v1.Admin/DeleteTool", "deleted tool ",
                      a->pos[0]);
}

/* ---- type ------------------------------------------------------------------
 */

static void type_summary(const Latchkey__V1__CredentialType *t, cell *fields,
                         cell *inject) {
  size_t i;
  cell_reset(fields);
  cell_reset(inject);
  for (i = 0; i < t->n_fields; i++) {
    cell_addf(fields, "%s%s%s", i ? "," : "", t->fields[i]->name,
              t->fields[i]->secret ? "(secret)" : "");
  }
  for (i = 0; i < t->n_inject; i++) {
    const Latchkey__V1__InjectRule *r = t->inject[i];
    cell_addf(inject, "%s%s%s%s", i ? "," : "", r->in, r->name[0] ? ":" : "",
              r->name);
  }
}

static void print_type(const Latchkey__V1__CredentialType *t) {
  size_t i;
  cell c;

  print_line("", "credential type ", t->id);
  if (t->description[0] != '\0') {
    print_line("  ", "description: ", t->description);
  }
  if (strcmp(t->kind, LK_OAUTH_KIND) == 0) {
    print_line("  ", "kind:        ",
               "oauth2 (the control plane refreshes access_token)");
  } else {
    print_line("  ", "kind:        ", t->kind[0] ? t->kind : "static");
  }
  printf("  fields:\n");
  for (i = 0; i < t->n_fields; i++) {
    const Latchkey__V1__CredentialField *f = t->fields[i];
    cell_reset(&c);
    cell_addf(&c, "%s%s", f->name, f->secret ? " (secret)" : "");
    if (f->pattern[0] != '\0') {
      cell_addf(&c, "  pattern %s", f->pattern);
    }
    if (f->max_len != 0) {
      cell_addf(&c, "  max_len %u", f->max_len);
    }
    print_line("    - ", "", c.buf);
    if (f->description[0] != '\0') {
      print_line("      ", "", f->description);
    }
  }
  printf("  inject:\n");
  for (i = 0; i < t->n_inject; i++) {
    const Latchkey__V1__InjectRule *r = t->inject[i];
    cell_reset(&c);
    if (strcmp(r->in, "basic") == 0) {
      cell_addf(&c, "basic  username=%s password=%s", r->username, r->password);
    } else {
      cell_addf(&c, "%s  %s = %s", r->in, r->name, r->value);
    }
    print_line("    - ", "", c.buf);
  }
}

static int cmd_type_register(cli *c, const args *a) {
  lk_err err;
  json_t *j = NULL;
  Latchkey__V1__CredentialType *req = NULL;
  ProtobufCMessage *resp = NULL;
  int rc = EXIT_CALL_FAILED;

  lk_err_clear(&err);
  if (lk_convert_load_file(a->pos[0], &j, &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  if (lk_convert_credential_type_from_json(j, &req, &err) != LK_OK) {
    rc = fail_in(a->pos[0], &err);
    goto done;
  }
  rc = admin_call(c, "/latchkey.v1.Admin/RegisterCredentialType", &req->base,
                  &latchkey__v1__credential_type__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
  } else {
    print_line("", "registered credential type ",
               ((const Latchkey__V1__CredentialType *)resp)->id);
  }
done:
  lk_convert_message_free(resp);
  lk_convert_message_free(req != NULL ? &req->base : NULL);
  json_decref(j);
  return rc;
}

static int cmd_type_list(cli *c, const args *a) {
  Latchkey__V1__ListRequest req = LATCHKEY__V1__LIST_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__CredentialTypeList *list;
  static const char *const header[] = {"ID", "KIND", "FIELDS", "INJECT"};
  table t = {4, 0, 0, NULL};
  int ok;
  size_t i;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Admin/ListCredentialTypes", &req.base,
                  &latchkey__v1__credential_type_list__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
    goto done;
  }
  list = (const Latchkey__V1__CredentialTypeList *)resp;
  ok = table_add(&t, header) == 0;
  for (i = 0; ok && i < list->n_types; i++) {
    cell fields;
    cell inject;
    const char *row[4];
    type_summary(list->types[i], &fields, &inject);
    row[0] = list->types[i]->id;
    row[1] = list->types[i]->kind[0] ? list->types[i]->kind : "static";
    row[2] = fields.buf;
    row[3] = inject.buf;
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_type_show(cli *c, const args *a) {
  Latchkey__V1__GetRequest req = LATCHKEY__V1__GET_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)a->pos[0];
  rc = admin_call(c, "/latchkey.v1.Admin/GetCredentialType", &req.base,
                  &latchkey__v1__credential_type__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      print_type((const Latchkey__V1__CredentialType *)resp);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_type_delete(cli *c, const args *a) {
  return delete_by_id(c, "/latchkey.v1.Admin/DeleteCredentialType",
                      "deleted credential type ", a->pos[0]);
}

/* ---- credential
 * -------------------------------------------------------------- */

/* "api_key=••••abcd region=eu": masks for secret fields, values otherwise. */
static void credential_fields(const Latchkey__V1__Credential *cr, cell *out) {
  size_t i;
  cell_reset(out);
  for (i = 0; i < cr->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = cr->fields[i];
    const char *shown = f->secret ? f->mask : f->value;
    if (f->secret && shown[0] == '\0') {
      shown = "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2";
    }
    cell_addf(out, "%s%s=%s", i ? " " : "", f->name, shown);
  }
}

/* ---- oauth2 refresh state (oauth_text.h) ---- */

static int64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void print_oauth(const Latchkey__V1__Credential *cr) {
  char text[LK_OAUTH_TEXT_BYTES];
  printf("  oauth:\n");
  lk_oauth_text_expiry(cr, now_unix_ms(), text, sizeof(text));
  print_line("    ", "access token expires: ", text);
  lk_oauth_text_refresh(cr->oauth, text, sizeof(text));
  print_line("    ", "last refresh:         ", text);
  if (cr->oauth->reauthorize) {
    print_line("    ", "", LK_OAUTH_TEXT_REAUTHORIZE);
  }
  snprintf(text, sizeof(text), "%llu",
           (unsigned long long)cr->oauth->generation);
  print_line("    ", "generation:           ", text);
}

static void credential_json_extra(json_t *j, const ProtobufCMessage *msg) {
  (void)lk_oauth_text_json(j, (const Latchkey__V1__Credential *)msg,
                           now_unix_ms());
}

static void credential_list_json_extra(json_t *j, const ProtobufCMessage *msg) {
  const Latchkey__V1__CredentialList *list =
      (const Latchkey__V1__CredentialList *)msg;
  json_t *arr = json_object_get(j, "credentials");
  int64_t now = now_unix_ms();
  size_t i;
  for (i = 0; i < list->n_credentials && i < json_array_size(arr); i++) {
    (void)lk_oauth_text_json(json_array_get(arr, i), list->credentials[i], now);
  }
}

static void print_credential(const Latchkey__V1__Credential *cr) {
  char when[32];
  char version[24];
  size_t i;

  print_line("", "credential ", cr->id);
  print_line("  ", "type:       ", cr->type);
  print_line("  ", "label:      ", cr->label);
  snprintf(version, sizeof(version), "%llu", (unsigned long long)cr->version);
  print_line("  ", "version:    ", version);
  format_time(cr->created_at, when, sizeof(when));
  print_line("  ", "created_at: ", when);
  format_time(cr->updated_at, when, sizeof(when));
  print_line("  ", "updated_at: ", when);
  printf("  fields:\n");
  for (i = 0; i < cr->n_fields; i++) {
    const Latchkey__V1__FieldValue *f = cr->fields[i];
    cell c;
    cell_reset(&c);
    if (f->secret) {
      cell_addf(&c, "%s (secret) = %s", f->name,
                f->mask[0]
                    ? f->mask
                    : "\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2");
    } else {
      cell_addf(&c, "%s = %s", f->name, f->value);
    }
    print_line("    - ", "", c.buf);
  }
  if (cr->oauth != NULL) {
    print_oauth(cr);
  }
}

/* Adds key: value to obj unless value is NULL; returns 0 or -1. */
static int set_string(json_t *obj, const char *key, const char *value) {
  if (value == NULL) {
    return 0;
  }
  return json_object_set_new(obj, key, json_string(value));
}

/* Builds a Create/UpdateCredentialRequest from flags and the stdin fields
 * through the converter, so field errors read "fields.api_key must be a
 * string" like every other document. */
static lk_status credential_request(const ProtobufCMessageDescriptor *desc,
                                    const char *id, const char *type,
                                    const char *label, json_t *fields,
                                    ProtobufCMessage **out, lk_err *err) {
  lk_status st;
  json_t *doc = json_object();

  *out = NULL;
  if (doc == NULL || set_string(doc, "id", id) != 0 ||
      set_string(doc, "type", type) != 0 ||
      set_string(doc, "label", label) != 0 ||
      (fields != NULL && json_object_set(doc, "fields", fields) != 0)) {
    st = lk_fail(err, LK_INTERNAL, "out of memory building the request");
  } else {
    st = lk_convert_from_json(doc, desc, out, err);
  }
  json_decref(doc);
  if (st != LK_OK) {
    char msg[sizeof(err->msg)];
    snprintf(msg, sizeof(msg), "%s", err->msg);
    st = lk_fail(err, st, "stdin: %s", msg);
  }
  return st;
}

static int cmd_credential_create(cli *c, const args *a) {
  lk_err err;
  json_t *fields = NULL;
  ProtobufCMessage *req = NULL;
  ProtobufCMessage *resp = NULL;
  const char *type = opt_get(a, "type");
  const char *label = opt_get(a, "label");
  int rc = EXIT_CALL_FAILED;

  lk_err_clear(&err);
  if (type == NULL) {
    return usage_error("credential create needs --type TYPE");
  }
  if (label == NULL) {
    return usage_error("credential create needs --label LABEL");
  }
  if (read_stdin_fields(0, &fields, &err) != LK_OK ||
      credential_request(&latchkey__v1__create_credential_request__descriptor,
                         opt_get(a, "id"), type, label, fields, &req,
                         &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  /* jansson's copies of the values are wiped by the allocator in main. */
  json_decref(fields);
  fields = NULL;
  rc = admin_call(c, "/latchkey.v1.Admin/CreateCredential", req,
                  &latchkey__v1__credential__descriptor, &resp);
  lk_convert_message_free(req);
  req = NULL;
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json_with(resp, credential_json_extra);
  } else {
    print_line("", "", ((const Latchkey__V1__Credential *)resp)->id);
  }
done:
  lk_convert_message_free(resp);
  lk_convert_message_free(req);
  json_decref(fields);
  return rc;
}

static int cmd_credential_update(cli *c, const args *a) {
  lk_err err;
  json_t *fields = NULL;
  ProtobufCMessage *req = NULL;
  ProtobufCMessage *resp = NULL;
  const char *label = opt_get(a, "label");
  int rc = EXIT_CALL_FAILED;

  lk_err_clear(&err);
  /* A label-only change from a terminal must not wait for typed fields. */
  if (!(label != NULL && isatty(STDIN_FILENO)) &&
      read_stdin_fields(1, &fields, &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  if (label == NULL && fields == NULL) {
    rc = usage_error(
        "nothing to update: give --label LABEL and/or the changed field "
        "values on stdin");
    goto done;
  }
  if (credential_request(&latchkey__v1__update_credential_request__descriptor,
                         a->pos[0], NULL, label, fields, &req, &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  json_decref(fields);
  fields = NULL;
  rc = admin_call(c, "/latchkey.v1.Admin/UpdateCredential", req,
                  &latchkey__v1__credential__descriptor, &resp);
  lk_convert_message_free(req);
  req = NULL;
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json_with(resp, credential_json_extra);
  } else {
    const Latchkey__V1__Credential *cr = (const Latchkey__V1__Credential *)resp;
    cell m;
    cell_reset(&m);
    cell_addf(&m, "updated credential %s (version %llu)", cr->id,
              (unsigned long long)cr->version);
    printf("%s\n", m.buf);
  }
done:
  lk_convert_message_free(resp);
  lk_convert_message_free(req);
  json_decref(fields);
  return rc;
}

static int cmd_credential_list(cli *c, const args *a) {
  Latchkey__V1__ListRequest req = LATCHKEY__V1__LIST_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__CredentialList *list;
  static const char *const header[] = {"ID", "TYPE", "LABEL", "OAUTH",
                                       "FIELDS(masked)"};
  table t = {5, 0, 0, NULL};
  int64_t now = now_unix_ms();
  int ok;
  size_t i;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Admin/ListCredentials", &req.base,
                  &latchkey__v1__credential_list__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json_with(resp, credential_list_json_extra);
    goto done;
  }
  list = (const Latchkey__V1__CredentialList *)resp;
  ok = table_add(&t, header) == 0;
  for (i = 0; ok && i < list->n_credentials; i++) {
    const Latchkey__V1__Credential *cr = list->credentials[i];
    cell fields;
    char oauth[LK_OAUTH_TEXT_BYTES];
    const char *row[5];
    credential_fields(cr, &fields);
    lk_oauth_text_summary(cr, now, oauth, sizeof(oauth));
    row[0] = cr->id;
    row[1] = cr->type;
    row[2] = cr->label;
    row[3] = oauth;
    row[4] = fields.buf;
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_credential_show(cli *c, const args *a) {
  Latchkey__V1__GetRequest req = LATCHKEY__V1__GET_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)a->pos[0];
  rc = admin_call(c, "/latchkey.v1.Admin/GetCredential", &req.base,
                  &latchkey__v1__credential__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json_with(resp, credential_json_extra);
    } else {
      print_credential((const Latchkey__V1__Credential *)resp);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_credential_delete(cli *c, const args *a) {
  return delete_by_id(c, "/latchkey.v1.Admin/DeleteCredential",
                      "deleted credential ", a->pos[0]);
}

/* ---- budget
 * ------------------------------------------------------------------ */

static void budget_agents(const Latchkey__V1__Budget *b, cell *out) {
  size_t i;
  cell_reset(out);
  for (i = 0; i < b->n_agents; i++) {
    cell_addf(out, "%s%s", i ? "," : "", b->agents[i]);
  }
}

static void print_budget(const Latchkey__V1__Budget *b) {
  cell agents;
  budget_agents(b, &agents);
  print_line("", "budget ", b->id);
  print_line("  ", "agents: ", agents.buf);
  print_line("  ", "paused: ", b->paused ? "yes" : "no");
}

static int cmd_budget_create(cli *c, const args *a) {
  Latchkey__V1__Budget req = LATCHKEY__V1__BUDGET__INIT;
  ProtobufCMessage *resp = NULL;
  char *agents[MAX_OPTIONS];
  size_t n = 0;
  size_t i;
  int rc;

  for (i = 0; i < a->nopts; i++) {
    if (strcmp(a->opt_name[i], "agent") == 0) {
      agents[n++] = (char *)a->opt_val[i];
    }
  }
  if (n == 0) {
    return usage_error("budget create needs at least one --agent AGENT");
  }
  req.id = (char *)a->pos[0];
  req.agents = agents;
  req.n_agents = n;
  rc = admin_call(c, "/latchkey.v1.Admin/CreateBudget", &req.base,
                  &latchkey__v1__budget__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      cell agents_cell;
      cell m;
      budget_agents((const Latchkey__V1__Budget *)resp, &agents_cell);
      cell_reset(&m);
      cell_addf(&m, "created budget %s (agents: %s)",
                ((const Latchkey__V1__Budget *)resp)->id, agents_cell.buf);
      printf("%s\n", m.buf);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_budget_list(cli *c, const args *a) {
  Latchkey__V1__ListRequest req = LATCHKEY__V1__LIST_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__BudgetList *list;
  static const char *const header[] = {"ID", "AGENTS", "PAUSED"};
  table t = {3, 0, 0, NULL};
  int ok;
  size_t i;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Admin/ListBudgets", &req.base,
                  &latchkey__v1__budget_list__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
    goto done;
  }
  list = (const Latchkey__V1__BudgetList *)resp;
  ok = table_add(&t, header) == 0;
  for (i = 0; ok && i < list->n_budgets; i++) {
    cell agents;
    const char *row[3];
    budget_agents(list->budgets[i], &agents);
    row[0] = list->budgets[i]->id;
    row[1] = agents.buf;
    row[2] = list->budgets[i]->paused ? "yes" : "no";
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

/* status: the control plane's replicas and how far behind each is. */
static int cmd_status(cli *c, const args *a) {
  Latchkey__V1__ReplicationStatusRequest req =
      LATCHKEY__V1__REPLICATION_STATUS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  static const char *const header[] = {"AGENT", "PEER", "APPLIED", "LAG",
                                       "MS_SINCE_ACK"};
  table t = {5, 0, 0, NULL};
  int ok;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Replication/Status", &req.base,
                  &latchkey__v1__replication_status__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
    goto done;
  }
  const Latchkey__V1__ReplicationStatus *st =
      (const Latchkey__V1__ReplicationStatus *)resp;
  printf("revision %lld, %zu replica%s", (long long)st->revision,
         st->n_replicas, st->n_replicas == 1 ? "" : "s");
  if (st->last_write_to_all_acked_us >= 0) {
    printf(", last write applied by all replicas in %.3f ms",
           (double)st->last_write_to_all_acked_us / 1000.0);
  }
  printf("\n");
  ok = table_add(&t, header) == 0;
  for (size_t i = 0; ok && i < st->n_replicas; i++) {
    const Latchkey__V1__ReplicaStatus *r = st->replicas[i];
    char peer[24], applied[24], lag[24], since[24];
    snprintf(peer, sizeof(peer), "%llu", (unsigned long long)r->peer_id);
    snprintf(applied, sizeof(applied), "%lld", (long long)r->applied_revision);
    snprintf(lag, sizeof(lag), "%lld", (long long)r->lag_revisions);
    if (r->ms_since_ack < 0) {
      snprintf(since, sizeof(since), "never");
    } else {
      snprintf(since, sizeof(since), "%lld", (long long)r->ms_since_ack);
    }
    const char *row[5] = {r->agent_id, peer, applied, lag, since};
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_budget_show(cli *c, const args *a) {
  Latchkey__V1__GetRequest req = LATCHKEY__V1__GET_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)a->pos[0];
  rc = admin_call(c, "/latchkey.v1.Admin/GetBudget", &req.base,
                  &latchkey__v1__budget__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      print_budget((const Latchkey__V1__Budget *)resp);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int set_paused(cli *c, const char *id, int paused) {
  Latchkey__V1__SetBudgetPausedRequest req =
      LATCHKEY__V1__SET_BUDGET_PAUSED_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  req.id = (char *)id;
  req.paused = paused ? 1 : 0;
  rc = admin_call(c, "/latchkey.v1.Admin/SetBudgetPaused", &req.base,
                  &latchkey__v1__budget__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      print_line("", paused ? "paused budget " : "resumed budget ",
                 ((const Latchkey__V1__Budget *)resp)->id);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_budget_pause(cli *c, const args *a) {
  return set_paused(c, a->pos[0], 1);
}

static int cmd_budget_resume(cli *c, const args *a) {
  return set_paused(c, a->pos[0], 0);
}

static int cmd_budget_delete(cli *c, const args *a) {
  return delete_by_id(c, "/latchkey.v1.Admin/DeleteBudget", "deleted budget ",
                      a->pos[0]);
}

/* ---- bindings
 * ---------------------------------------------------------------- */

/* Fills b from BUDGET and exactly one of --tool/--type; returns 0 or 2. */
static int binding_target(const args *a, const char *verb,
                          Latchkey__V1__Binding *b) {
  const char *tool = opt_get(a, "tool");
  const char *type = opt_get(a, "type");

  if ((tool == NULL) == (type == NULL)) {
    return usage_error("%s needs exactly one of --tool TOOL or --type TYPE",
                       verb);
  }
  b->budget_id = (char *)a->pos[0];
  if (tool != NULL) {
    b->tool_id = (char *)tool;
  } else {
    b->credential_type = (char *)type;
  }
  return 0;
}

static void binding_text(const Latchkey__V1__Binding *b, cell *out) {
  cell_reset(out);
  if (b->tool_id[0] != '\0') {
    cell_addf(out, "tool/%s", b->tool_id);
  } else {
    cell_addf(out, "type/%s", b->credential_type);
  }
}

static int cmd_bind(cli *c, const args *a) {
  Latchkey__V1__Binding req = LATCHKEY__V1__BINDING__INIT;
  ProtobufCMessage *resp = NULL;
  const char *cred = opt_get(a, "credential");
  int rc = binding_target(a, "bind", &req);

  if (rc != 0) {
    return rc;
  }
  if (cred == NULL) {
    return usage_error("bind needs --credential CRED");
  }
  req.credential_id = (char *)cred;
  rc = admin_call(c, "/latchkey.v1.Admin/Bind", &req.base,
                  &latchkey__v1__binding__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      const Latchkey__V1__Binding *b = (const Latchkey__V1__Binding *)resp;
      cell target;
      cell m;
      binding_text(b, &target);
      cell_reset(&m);
      cell_addf(&m, "bound %s %s -> %s", b->budget_id, target.buf,
                b->credential_id);
      printf("%s\n", m.buf);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_unbind(cli *c, const args *a) {
  Latchkey__V1__Binding req = LATCHKEY__V1__BINDING__INIT;
  ProtobufCMessage *resp = NULL;
  int rc = binding_target(a, "unbind", &req);

  if (rc != 0) {
    return rc;
  }
  rc = admin_call(c, "/latchkey.v1.Admin/Unbind", &req.base,
                  &latchkey__v1__empty__descriptor, &resp);
  if (rc == 0) {
    if (c->json) {
      rc = print_json(resp);
    } else {
      cell target;
      cell m;
      binding_text(&req, &target);
      cell_reset(&m);
      cell_addf(&m, "unbound %s %s", req.budget_id, target.buf);
      printf("%s\n", m.buf);
    }
  }
  lk_convert_message_free(resp);
  return rc;
}

static int cmd_bindings(cli *c, const args *a) {
  Latchkey__V1__ListBindingsRequest req =
      LATCHKEY__V1__LIST_BINDINGS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__BindingList *list;
  static const char *const header[] = {"BUDGET", "TARGET", "CREDENTIAL"};
  table t = {3, 0, 0, NULL};
  const char *budget = opt_get(a, "budget");
  int ok;
  size_t i;
  int rc;

  if (budget != NULL) {
    req.budget_id = (char *)budget;
  }
  rc = admin_call(c, "/latchkey.v1.Admin/ListBindings", &req.base,
                  &latchkey__v1__binding_list__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  if (c->json) {
    rc = print_json(resp);
    goto done;
  }
  list = (const Latchkey__V1__BindingList *)resp;
  ok = table_add(&t, header) == 0;
  for (i = 0; ok && i < list->n_bindings; i++) {
    cell target;
    const char *row[3];
    binding_text(list->bindings[i], &target);
    row[0] = list->bindings[i]->budget_id;
    row[1] = target.buf;
    row[2] = list->bindings[i]->credential_id;
    ok = table_add(&t, row) == 0;
  }
  rc = finish_table(&t, ok);
done:
  lk_convert_message_free(resp);
  return rc;
}

/* ---- agent side: tools and call ------------------------------------------ */

/* Reads --timeout-ms (or the default) into *ms; returns 0 or 2. */
static int parse_timeout(const args *a, int64_t dflt, int64_t *ms) {
  const char *v = opt_get(a, "timeout-ms");
  char *end = NULL;
  long long n;

  *ms = dflt;
  if (v == NULL) {
    return 0;
  }
  errno = 0;
  n = strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n < 1 || n > MAX_DEADLINE_MS) {
    return usage_error("--timeout-ms must be an integer from 1 to %d",
                       MAX_DEADLINE_MS);
  }
  *ms = n;
  return 0;
}

static int cmd_tools(cli *c, const args *a) {
  lk_client *client = NULL;
  lk_client_tools *list = NULL;
  lk_client_error cerr;
  const char *budget = opt_get(a, "budget");
  int64_t deadline;
  size_t i;
  size_t k;
  int rc;

  if (budget == NULL) {
    return usage_error("tools needs --budget BUDGET");
  }
  rc = parse_timeout(a, LIST_TOOLS_DEADLINE_MS, &deadline);
  if (rc != 0) {
    return rc;
  }
  rc = open_sidecar(a, deadline, &client);
  if (rc != 0) {
    goto done;
  }
  if (lk_client_list_tools(client, budget, &list, &cerr) != LK_CLIENT_OK) {
    rc = fail_client(&cerr);
    goto done;
  }
  if (c->json) {
    rc = print_json(lk_client_tools_message(list));
    goto done;
  }
  if (list->n_tools == 0) {
    print_line("", "no tools for budget ", budget);
  }
  for (i = 0; i < list->n_tools; i++) {
    const lk_client_tool *t = &list->tools[i];
    cell m;
    cell_reset(&m);
    cell_addf(&m, "%s  credential_type=%s  credential_ready=%s", t->id,
              t->credential_type[0] ? t->credential_type : "-",
              t->credential_ready ? "true" : "false");
    print_line("", "", m.buf);
    if (t->description[0] != '\0') {
      print_line("  ", "", t->description);
    }
    for (k = 0; k < t->n_operations; k++) {
      const lk_client_operation *op = &t->operations[k];
      cell_reset(&m);
      cell_addf(&m, "%s  %s %s%s%s", op->name, op->method, op->path,
                op->description[0] ? "  " : "", op->description);
      print_line("  - ", "", m.buf);
    }
  }
done:
  lk_client_tools_free(list);
  lk_client_close(client);
  return rc;
}

static void print_missing(const lk_client_missing_credential *m) {
  size_t i;
  cell c;

  cell_reset(&c);
  cell_addf(&c,
            "missing credential: budget %s has no credential bound for "
            "tool %s",
            m->budget, m->tool);
  print_line("", "", c.buf);
  print_line("  ", "credential type: ", m->credential_type);
  printf("  required fields:\n");
  for (i = 0; i < m->n_required_fields; i++) {
    const lk_client_field *f = &m->required_fields[i];
    cell_reset(&c);
    cell_addf(&c, "%s%s", f->name, f->secret ? " (secret)" : "");
    print_line("    - ", "", c.buf);
    if (f->description[0] != '\0') {
      print_line("      ", "", f->description);
    }
    if (f->pattern[0] != '\0') {
      print_line("      ", "pattern: ", f->pattern);
    }
  }
  if (m->setup_url[0] != '\0') {
    print_line("  ", "set it up at: ", m->setup_url);
  }
  if (m->hint[0] != '\0') {
    print_line("  ", "hint: ", m->hint);
  }
}

static int cmd_call(cli *c, const args *a) {
  lk_client *client = NULL;
  lk_client_result *res = NULL;
  lk_client_error cerr;
  lk_client_code code;
  const char *budget = opt_get(a, "budget");
  const char *tool = opt_get(a, "tool");
  const char *op = opt_get(a, "op");
  const char *arguments = opt_get(a, "args");
  int64_t deadline;
  json_t *parsed = NULL;
  lk_err err;
  int rc;

  lk_err_clear(&err);
  if (budget == NULL || tool == NULL || op == NULL) {
    return usage_error("call needs --budget BUDGET, --tool TOOL and --op OP");
  }
  rc = parse_timeout(a, CALL_DEADLINE_MS, &deadline);
  if (rc != 0) {
    return rc;
  }
  if (arguments == NULL) {
    arguments = "{}";
  }
  if (lk_convert_parse(arguments, strlen(arguments), 0, &parsed, &err) !=
          LK_OK ||
      !json_is_object(parsed)) {
    json_decref(parsed);
    return usage_error(
        "--args must be one JSON object of the operation's "
        "params%s%s",
        err.msg[0] ? ": " : "", err.msg);
  }
  json_decref(parsed);
  rc = open_sidecar(a, deadline, &client);
  if (rc != 0) {
    goto done;
  }
  code = lk_client_call(client, budget, tool, op, arguments, &res, &cerr);
  if (code != LK_CLIENT_OK && code != LK_CLIENT_MISSING_CREDENTIAL) {
    rc = fail_client(&cerr);
    goto done;
  }
  if (c->json) {
    rc = print_json(lk_client_result_message(res));
    goto done;
  }
  if (res->missing_credential != NULL) {
    print_missing(res->missing_credential);
    fprintf(stderr, "[latchkey] missing_credential request_id=%s\n",
            res->request_id);
  } else {
    cell ct;
    if (res->body_len > 0 &&
        fwrite(res->body, 1, res->body_len, stdout) != res->body_len) {
      rc = EXIT_CALL_FAILED;
    }
    fflush(stdout);
    cell_reset(&ct);
    cell_add(&ct, res->content_type);
    fprintf(stderr,
            "[latchkey] http_status=%d redacted=%s content_type=%s "
            "request_id=%s\n",
            res->http_status, res->redacted ? "true" : "false",
            ct.len ? ct.buf : "-", res->request_id);
  }
done:
  lk_client_result_free(res);
  lk_client_close(client);
  return rc;
}

/* ---- keys ------------------------------------------------------------------
 */

/* Prints a KeyStatus for people: a summary line, then one row per key. */
static int print_key_status(const Latchkey__V1__KeyStatus *ks) {
  static const char *const header[] = {"KEY", "STATE", "SEALED_VALUES"};
  table t = {3, 0, 0, NULL};
  int ok;
  printf("active key %u, %llu secret value%s, re-sealing %s\n",
         (unsigned)ks->active_key_id, (unsigned long long)ks->total_fields,
         ks->total_fields == 1 ? "" : "s", ks->resealing ? "yes" : "no");
  if (ks->last_error != NULL && ks->last_error[0] != '\0') {
    printf("last error: %s\n", ks->last_error);
  }
  ok = table_add(&t, header) == 0;
  for (size_t i = 0; ok && i < ks->n_keys; i++) {
    char id[16], n[24];
    snprintf(id, sizeof(id), "%u", (unsigned)ks->keys[i]->id);
    snprintf(n, sizeof(n), "%llu",
             (unsigned long long)ks->keys[i]->sealed_fields);
    const char *row[3] = {id, ks->keys[i]->state, n};
    ok = table_add(&t, row) == 0;
  }
  return finish_table(&t, ok);
}

/* Returns 1 while ks lists a retiring key (the rotation is not done). */
static int key_status_retiring(const Latchkey__V1__KeyStatus *ks) {
  for (size_t i = 0; i < ks->n_keys; i++) {
    if (strcmp(ks->keys[i]->state, "retiring") == 0) {
      return 1;
    }
  }
  return 0;
}

/* Secret values sealed under the active key. */
static uint64_t key_status_moved(const Latchkey__V1__KeyStatus *ks) {
  for (size_t i = 0; i < ks->n_keys; i++) {
    if (ks->keys[i]->id == ks->active_key_id) {
      return ks->keys[i]->sealed_fields;
    }
  }
  return 0;
}

/* keys status: the key ring's keys and how many values each seals. */
static int cmd_keys_status(cli *c, const args *a) {
  Latchkey__V1__Empty req = LATCHKEY__V1__EMPTY__INIT;
  ProtobufCMessage *resp = NULL;
  int rc;

  (void)a;
  rc = admin_call(c, "/latchkey.v1.Admin/GetKeyStatus", &req.base,
                  &latchkey__v1__key_status__descriptor, &resp);
  if (rc == 0) {
    rc = c->json ? print_json(resp)
                 : print_key_status((const Latchkey__V1__KeyStatus *)resp);
  }
  lk_convert_message_free(resp);
  return rc;
}

/* keys rotate: RotateKey, then (unless --no-wait) GetKeyStatus every
 * KEYS_POLL_MS with progress on stderr until no key is retiring. */
static int cmd_keys_rotate(cli *c, const args *a) {
  Latchkey__V1__RotateKeyRequest req = LATCHKEY__V1__ROTATE_KEY_REQUEST__INIT;
  Latchkey__V1__Empty empty = LATCHKEY__V1__EMPTY__INIT;
  ProtobufCMessage *resp = NULL;
  const Latchkey__V1__KeyStatus *ks;
  char last_error[512];
  uint64_t shown_moved = UINT64_MAX;
  uint64_t shown_total = UINT64_MAX;
  int rc;

  last_error[0] = '\0';
  rc = admin_call(c, "/latchkey.v1.Admin/RotateKey", &req.base,
                  &latchkey__v1__key_status__descriptor, &resp);
  if (rc != 0) {
    goto done;
  }
  ks = (const Latchkey__V1__KeyStatus *)resp;
  fprintf(stderr, "latchkeyctl: key %u is now active\n",
          (unsigned)ks->active_key_id);
  while (opt_get(a, "no-wait") == NULL) {
    uint64_t moved = key_status_moved(ks);
    if (moved != shown_moved || ks->total_fields != shown_total) {
      fprintf(stderr, "re-sealing: %llu/%llu secret values moved to key %u\n",
              (unsigned long long)moved, (unsigned long long)ks->total_fields,
              (unsigned)ks->active_key_id);
      shown_moved = moved;
      shown_total = ks->total_fields;
    }
    if (ks->last_error != NULL && ks->last_error[0] != '\0' &&
        strcmp(ks->last_error, last_error) != 0) {
      fprintf(stderr, "re-sealing: %s\n", ks->last_error);
      snprintf(last_error, sizeof(last_error), "%s", ks->last_error);
    }
    if (!key_status_retiring(ks)) {
      break;
    }
    struct timespec pause = {KEYS_POLL_MS / 1000,
                             (KEYS_POLL_MS % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    lk_convert_message_free(resp);
    resp = NULL;
    rc = admin_call(c, "/latchkey.v1.Admin/GetKeyStatus", &empty.base,
                    &latchkey__v1__key_status__descriptor, &resp);
    if (rc != 0) {
      goto done;
    }
    ks = (const Latchkey__V1__KeyStatus *)resp;
  }
  if (c->json) {
    rc = print_json(resp);
  } else if (opt_get(a, "no-wait") != NULL) {
    printf(
        "key %u is active; re-sealing runs in the background (see "
        "'latchkeyctl keys status')\n",
        (unsigned)ks->active_key_id);
  } else {
    printf(
        "rotation done: every secret value is sealed under key %u and "
        "the old keys are removed\n",
        (unsigned)ks->active_key_id);
  }
done:
  lk_convert_message_free(resp);
  return rc;
}

/* ---- audit hashes -------------------------------------------------------- */

/* audit-hash: for each value of the JSON object on stdin, the keyed hash
 * audit lines carry for it (Admin/AuditHash), so an owner can grep the
 * audit log for a leaked value; values never travel in argv. */
static int cmd_audit_hash(cli *c, const args *a) {
  lk_err err;
  json_t *fields = NULL;
  json_t *out = NULL;
  const char *key;
  json_t *value;
  int rc = EXIT_CALL_FAILED;

  (void)a;
  lk_err_clear(&err);
  if (read_stdin_fields(0, &fields, &err) != LK_OK) {
    rc = fail(&err);
    goto done;
  }
  if (json_object_size(fields) == 0) {
    lk_fail(&err, LK_INVALID_ARGUMENT,
            "stdin holds no values: give them as one JSON object, e.g. "
            "{\"api_key\":\"...\"}");
    rc = fail(&err);
    goto done;
  }
  json_object_foreach(fields, key, value) {
    if (!json_is_string(value)) {
      lk_fail(&err, LK_INVALID_ARGUMENT,
              "stdin: fields.%.128s must be a string", key);
      rc = fail(&err);
      goto done;
    }
  }
  out = json_object();
  if (out == NULL) {
    lk_fail(&err, LK_INTERNAL, "out of memory");
    rc = fail(&err);
    goto done;
  }
  json_object_foreach(fields, key, value) {
    Latchkey__V1__AuditHashRequest req = LATCHKEY__V1__AUDIT_HASH_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    req.value.data = (uint8_t *)json_string_value(value);
    req.value.len = json_string_length(value);
    rc = admin_call(c, "/latchkey.v1.Admin/AuditHash", &req.base,
                    &latchkey__v1__audit_hash_response__descriptor, &resp);
    if (rc != 0) {
      goto done;
    }
    const char *hash = ((const Latchkey__V1__AuditHashResponse *)resp)->hash;
    if (c->json) {
      json_object_set_new(out, key, json_string(hash));
    } else {
      cell line;
      cell_reset(&line);
      cell_addf(&line, "%s %s", key, hash);
      printf("%s\n", line.buf);
    }
    lk_convert_message_free(resp);
  }
  if (c->json) {
    if (json_dumpf(out, stdout, JSON_INDENT(2)) != 0) {
      rc = EXIT_CALL_FAILED;
    }
    fputc('\n', stdout);
  }
done:
  json_decref(out);
  /* jansson's copies of the values are wiped by the allocator in main. */
  json_decref(fields);
  return rc;
}

/* ---- dispatch ------------------------------------------------------------ */

static const opt_spec no_opts[] = {{NULL, 0}};
static const opt_spec credential_create_opts[] = {
    {"type", 0}, {"label", 0}, {"id", 0}, {NULL, 0}};
static const opt_spec credential_update_opts[] = {{"label", 0}, {NULL, 0}};
static const opt_spec budget_create_opts[] = {{"agent", 1}, {NULL, 0}};
static const opt_spec bind_opts[] = {
    {"tool", 0}, {"type", 0}, {"credential", 0}, {NULL, 0}};
static const opt_spec unbind_opts[] = {{"tool", 0}, {"type", 0}, {NULL, 0}};
static const opt_spec bindings_opts[] = {{"budget", 0}, {NULL, 0}};
static const opt_spec keys_rotate_opts[] = {{"no-wait", OPT_FLAG}, {NULL, 0}};
static const opt_spec tools_opts[] = {{"sidecar", 0},
                                      {"agent-token-file", 0},
                                      {"budget", 0},
                                      {"timeout-ms", 0},
                                      {NULL, 0}};
static const opt_spec call_opts[] = {{"sidecar", 0},    {"agent-token-file", 0},
                                     {"budget", 0},     {"tool", 0},
                                     {"op", 0},         {"args", 0},
                                     {"timeout-ms", 0}, {NULL, 0}};

static const command commands[] = {
    {"tool", "register", 1, 1, no_opts, cmd_tool_register},
    {"tool", "list", 0, 0, no_opts, cmd_tool_list},
    {"tool", "show", 1, 1, no_opts, cmd_tool_show},
    {"tool", "delete", 1, 1, no_opts, cmd_tool_delete},
    {"type", "register", 1, 1, no_opts, cmd_type_register},
    {"type", "list", 0, 0, no_opts, cmd_type_list},
    {"type", "show", 1, 1, no_opts, cmd_type_show},
    {"type", "delete", 1, 1, no_opts, cmd_type_delete},
    {"credential", "create", 0, 0, credential_create_opts,
     cmd_credential_create},
    {"credential", "list", 0, 0, no_opts, cmd_credential_list},
    {"credential", "show", 1, 1, no_opts, cmd_credential_show},
    {"credential", "update", 1, 1, credential_update_opts,
     cmd_credential_update},
    {"credential", "delete", 1, 1, no_opts, cmd_credential_delete},
    {"budget", "create", 1, 1, budget_create_opts, cmd_budget_create},
    {"budget", "list", 0, 0, no_opts, cmd_budget_list},
    {"budget", "show", 1, 1, no_opts, cmd_budget_show},
    {"budget", "pause", 1, 1, no_opts, cmd_budget_pause},
    {"budget", "resume", 1, 1, no_opts, cmd_budget_resume},
    {"budget", "delete", 1, 1, no_opts, cmd_budget_delete},
    {"bind", NULL, 1, 1, bind_opts, cmd_bind},
    {"unbind", NULL, 1, 1, unbind_opts, cmd_unbind},
    {"bindings", NULL, 0, 0, bindings_opts, cmd_bindings},
    {"tools", NULL, 0, 0, tools_opts, cmd_tools},
    {"call", NULL, 0, 0, call_opts, cmd_call},
    {"status", NULL, 0, 0, no_opts, cmd_status},
    {"keys", "rotate", 0, 0, keys_rotate_opts, cmd_keys_rotate},
    {"keys", "status", 0, 0, no_opts, cmd_keys_status},
    {"audit-hash", NULL, 0, 0, no_opts, cmd_audit_hash},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Finds the command named by argv[*i] (and the verb after it). */
static int find_command(int argc, char **argv, int *i, const command **out) {
  const char *group = argv[*i];
  const char *verb = *i + 1 < argc ? argv[*i + 1] : NULL;
  char verbs[128];
  size_t used = 0;
  int known_group = 0;
  size_t k;

  verbs[0] = '\0';
  for (k = 0; k < N_COMMANDS; k++) {
    const command *c = &commands[k];
    if (strcmp(c->group, group) != 0) {
      continue;
    }
    known_group = 1;
    if (c->verb == NULL) {
      *out = c;
      *i += 1;
      return 0;
    }
    if (verb != NULL && strcmp(c->verb, verb) == 0) {
      *out = c;
      *i += 2;
      return 0;
    }
    if (used < sizeof(verbs)) {
      int n = snprintf(verbs + used, sizeof(verbs) - used, "%s%s",
                       used ? ", " : "", c->verb);
      used += n > 0 ? (size_t)n : 0;
    }
  }
  if (!known_group) {
    return usage_error("unknown command '%s'", group);
  }
  if (verb == NULL) {
    return usage_error("'%s' needs a subcommand: %s", group, verbs);
  }
  return usage_error("unknown '%s' subcommand '%s' (expected: %s)", group, verb,
                     verbs);
}

/* Resolves flags not given on the command line from the environment. */
static void apply_environment(cli *c) {
  const char *v;
  if (c->server == NULL) {
    v = getenv("LATCHKEY_SERVER");
    c->server = v != NULL && v[0] != '\0' ? v : DEFAULT_SERVER;
  }
  if (c->token_file == NULL) {
    v = getenv("LATCHKEY_TOKEN_FILE");
    c->token_file = v != NULL && v[0] != '\0' ? v : NULL;
  }
  if (c->tls_ca == NULL) {
    v = getenv("LATCHKEY_TLS_CA");
    c->tls_ca = v != NULL && v[0] != '\0' ? v : NULL;
  }
  if (!c->json) {
    c->json = env_true(getenv("LATCHKEY_JSON"));
  }
}

static int run(int argc, char **argv) {
  cli c;
  args a;
  const command *cmd = NULL;
  int i;
  int rc;

  memset(&c, 0, sizeof(c));
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(long_usage, stdout);
      return 0;
    }
  }
  for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    rc = parse_global(&c, argc, argv, &i);
    if (rc == 0) {
      return usage_error("unknown option '%.*s' before the command",
                         (int)strcspn(argv[i], "="), argv[i]);
    }
    if (rc != 1) {
      return rc;
    }
  }
  if (i == argc) {
    return usage_error("no command given");
  }
  rc = find_command(argc, argv, &i, &cmd);
  if (rc != 0) {
    return rc;
  }
  rc = parse_command_args(&c, cmd, argc, argv, i, &a);
  if (rc != 0) {
    return rc;
  }
  apply_environment(&c);
  return cmd->run(&c, &a);
}

int main(int argc, char **argv) {
  lk_err err;
  int rc;

  /* Before any jansson allocation: every JSON value is wiped on free. */
  json_set_alloc_funcs(json_wiping_malloc, json_wiping_free);
  lk_err_clear(&err);
  if (lk_secret_init() != LK_OK) {
    lk_fail(&err, LK_INTERNAL, "libsodium failed to initialize");
    return fail(&err);
  }
  /* Field values and tokens pass through this process's memory. */
  if (lk_secret_disable_core_dumps(&err) != LK_OK) {
    return fail(&err);
  }
  rc = run(argc, argv);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fputs("latchkeyctl: INTERNAL: cannot write to stdout\n", stderr);
    if (rc == 0) {
      rc = EXIT_CALL_FAILED;
    }
  }
  return rc;
}
