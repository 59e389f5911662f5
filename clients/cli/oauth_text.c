/*
 * oauth_text.c - the words and numbers latchkeyctl shows for an oauth2
 * credential's refresh state (see oauth_text.h).
 *
 * Everything is snprintf into the caller's buffer, so a long reason from
 * the server is cut at the buffer, and each function fills its output
 * even on the unusual paths (an unknown expiry, no reason given).
 */
#include "clients/cli/oauth_text.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lib/oauth.h"

/* Writes unix ms as UTC RFC 3339 ("-" for 0 or an unrepresentable time). */
static void rfc3339(int64_t ms, char *out, size_t n) {
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  if (ms <= 0 || gmtime_r(&secs, &tm) == NULL ||
      strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    snprintf(out, n, "-");
  }
}

void lk_oauth_text_span(int64_t ms, char *out, size_t n) {
  static const struct {
    int64_t secs;
    char unit;
  } units[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}, {1, 's'}};
  int64_t left = (ms < 0 ? -ms : ms) / 1000;
  size_t used = 0;
  size_t shown = 0;
  size_t i;

  if (n == 0) {
    return;
  }
  out[0] = '\0';
  for (i = 0; i < sizeof(units) / sizeof(units[0]) && shown < 2; i++) {
    int64_t q = left / units[i].secs;
    int w;
    if (q == 0 && shown > 0) {
      break; /* "2m", not "2m0s" */
    }
    if (q == 0 && units[i].secs != 1) {
      continue; /* leading zero units; "0s" still shows */
    }
    w = snprintf(out + used, n - used, "%lld%c", (long long)q, units[i].unit);
    if (w < 0 || (size_t)w >= n - used) {
      return;
    }
    used += (size_t)w;
    left -= q * units[i].secs;
    shown++;
  }
}

void lk_oauth_text_expiry(const Latchkey__V1__Credential *cred, int64_t now_ms,
                          char *out, size_t n) {
  int64_t at = lk_oauth_expires_at_ms(cred);
  char when[32];
  char span[32];

  if (at == 0) {
    snprintf(out, n, "unknown (refreshed at once)");
    return;
  }
  rfc3339(at, when, sizeof(when));
  lk_oauth_text_span(at - now_ms, span, sizeof(span));
  if (at > now_ms) {
    snprintf(out, n, "%s (in %s)", when, span);
  } else {
    snprintf(out, n, "%s (expired %s ago)", when, span);
  }
}

void lk_oauth_text_refresh(const Latchkey__V1__OAuthState *st, char *out,
                           size_t n) {
  const char *result =
      st->last_refresh_result != NULL ? st->last_refresh_result : "";
  char when[32];

  if (st->failures > 0) {
    int w = snprintf(out, n, "failed %u time%s in a row: %s", st->failures,
                     st->failures == 1 ? "" : "s",
                     result[0] != '\0' ? result : "no reason given");
    if (st->next_attempt_at > 0 && w > 0 && (size_t)w < n) {
      rfc3339(st->next_attempt_at, when, sizeof(when));
      snprintf(out + w, n - (size_t)w, "; next attempt %s", when);
    }
  } else if (strcmp(result, "ok") == 0) {
    rfc3339(st->last_refresh_at > 0 ? st->last_refresh_at : st->last_success_at,
            when, sizeof(when));
    snprintf(out, n, "ok at %s", when);
  } else if (result[0] != '\0' && st->last_refresh_at > 0) {
    rfc3339(st->last_refresh_at, when, sizeof(when));
    snprintf(out, n, "%s at %s", result, when);
  } else if (result[0] != '\0') {
    snprintf(out, n, "%s", result);
  } else {
    snprintf(out, n, "none yet");
  }
}

void lk_oauth_text_summary(const Latchkey__V1__Credential *cred, int64_t now_ms,
                           char *out, size_t n) {
  const Latchkey__V1__OAuthState *st = cred->oauth;
  int64_t at = lk_oauth_expires_at_ms(cred);
  char span[32];
  char expiry[64];

  if (st == NULL) {
    if (n > 0) {
      out[0] = '\0';
    }
    return;
  }
  lk_oauth_text_span(at - now_ms, span, sizeof(span));
  if (at == 0) {
    snprintf(expiry, sizeof(expiry), "expiry unknown");
  } else {
    snprintf(expiry, sizeof(expiry),
             at > now_ms ? "expires in %s" : "expired %s ago", span);
  }
  if (st->reauthorize) {
    snprintf(out, n, "%s, re-authorisation needed", expiry);
  } else if (st->failures > 0) {
    snprintf(out, n, "%s, refresh failed %u time%s", expiry, st->failures,
             st->failures == 1 ? "" : "s");
  } else if (st->last_refresh_result != NULL &&
             strcmp(st->last_refresh_result, "ok") == 0) {
    snprintf(out, n, "%s, refresh ok", expiry);
  } else {
    snprintf(out, n, "%s", expiry);
  }
}

int lk_oauth_text_json(json_t *obj, const Latchkey__V1__Credential *cred,
                       int64_t now_ms) {
  json_t *o = json_object_get(obj, "oauth");
  int64_t at = lk_oauth_expires_at_ms(cred);
  char text[LK_OAUTH_TEXT_BYTES];
  int rc = 0;

  if (cred->oauth == NULL || !json_is_object(o)) {
    return 0;
  }
  rfc3339(at, text, sizeof(text));
  rc |= json_object_set_new(o, "access_token_expires_at",
                            at > 0 ? json_string(text) : json_null());
  rc |= json_object_set_new(
      o, "access_token_expires_in_s",
      at > 0 ? json_integer((json_int_t)((at - now_ms) / 1000)) : json_null());
  rc |= json_object_set_new(o, "access_token_expired",
                            json_boolean(lk_oauth_expired(cred, now_ms)));
  lk_oauth_text_refresh(cred->oauth, text, sizeof(text));
  rc |= json_object_set_new(o, "last_refresh", json_string(text));
  if (cred->oauth->reauthorize) {
    rc |=
        json_object_set_new(o, "hint", json_string(LK_OAUTH_TEXT_REAUTHORIZE));
  }
  return rc != 0 ? -1 : 0;
}
