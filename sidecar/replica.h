/*
 * replica.h - replica mode: latchkeyd follows a control plane over
 * latchkey.v1.Sync/Stream (DESIGN.md §5) and keeps a scoped copy of the
 * catalog in its own store.
 *
 * Why: a fleet of sidecars follows one source of truth, yet each sidecar
 * must keep serving from what it has when the control plane is away, and
 * must never serve a half-applied change. So every batch lands in one
 * synced RocksDB WriteBatch together with its revision, and only then is
 * it acknowledged; whatever the process dies in the middle of, the store
 * holds a revision it ACKed (or a later one), never part of a batch.
 *
 * Two halves:
 *
 * - The applier (lk_replica_applier_*) turns SyncBatch messages into store
 *   writes: no gRPC, so tests and benchmarks drive it directly.
 * - The replica (lk_replica_*) runs one thread that keeps a Sync/Stream
 *   open with grpc core's C client and feeds the applier.
 *
 * What the applier accepts (anything else is NACKed and nothing of that
 * batch is applied):
 *
 * - Keys start with tool/, type/, cred/, budget/ or bind/, contain no NUL,
 *   and are exactly the key the record's ids give in the catalog layout
 *   (lib/catalog.h, lk_catalog_key_of); values decode as the message the
 *   prefix names (Tool, CredentialType, Credential, Budget, Binding). A
 *   credential's secret fields must be sealed to a node key (SealedValue
 *   with a 32-byte ephemeral_public_key): the key-ring ciphertext of the
 *   control plane is never stored here. Messages are at most
 *   LK_REPLICA_MAX_MESSAGE_BYTES; values at most LK_STORE_MAX_VALUE_BYTES.
 * - An incremental batch (no snapshot flag) needs revision > 0. Revisions
 *   at or below the applied one are ACKed and not applied (a resent
 *   batch is harmless). Otherwise its puts, then its deletes (a key in
 *   both ends up deleted), then "meta/revision" go in one WriteBatch.
 * - A snapshot runs from a batch with snapshot_begin to one with
 *   snapshot_end (the same batch, or several); its parts carry puts only.
 *   The parts are accumulated (at most LK_REPLICA_MAX_SNAPSHOT_BYTES of
 *   keys and values) and applied at snapshot_end, with the end's revision,
 *   as one WriteBatch that also deletes every catalog key (the prefixes
 *   above) the snapshot does not hold. A new snapshot_begin drops a
 *   snapshot in progress. Only the whole snapshot is ACKed.
 * - A heartbeat (heartbeat set, nothing else but an audit key) changes no
 *   record and gets no answer; it only proves the control plane is alive.
 * - An audit key (SyncBatch.audit_key, on the first batch of each stream,
 *   lib/audit.h) must be sealed to this node's key (32-byte
 *   ephemeral_public_key, 24-byte nonce, a ciphertext of 32 + 16 bytes)
 *   for cred id LK_AUDIT_SEAL_ID and field LK_AUDIT_SEAL_FIELD, and open
 *   to exactly 32 bytes with the node key this stream presents (the
 *   applier's node key; during a rotation the next key, never the other
 *   one held); otherwise the batch is NACKed. It is stored as a
 *   SealedValue (those three fields) under "meta/audit_key", in the
 *   WriteBatch of the batch that carried it, or of the snapshot that batch
 *   began; when that batch writes nothing (a heartbeat, a batch already
 *   applied), in a WriteBatch of its own, except while the store is
 *   sealed to another node key: then it waits for the snapshot, whose
 *   WriteBatch stores it. Once stored it is handed to the audit key
 *   holder. A NACKed batch's audit key is dropped with the batch.
 * - After a NACK the applier waits for a snapshot: the control plane
 *   answers a NACK with one, and a later incremental batch must not be
 *   applied over the change that was refused. Until a snapshot_begin
 *   arrives every batch (heartbeats too) is skipped without an answer
 *   and does not count as contact; the stream thread reconnects (and
 *   resumes from the applied revision) when no snapshot begins within
 *   LK_REPLICA_RESYNC_MS.
 *
 * The applied revision is stored under "meta/revision" as 8 bytes
 * big-endian (absent = 0, nothing applied), and the node public key the
 * replica's secrets are sealed to under "meta/node_public_key" (32 bytes),
 * both written with every batch. When the applier is given another node
 * key than the stored one (the key file changed, or a rotation presents
 * its next key: sidecar/node_keys), it reports revision 0, so the control
 * plane sends a snapshot sealed to the new key, which replaces everything;
 * until that snapshot lands an incremental batch is NACKed
 * (FAILED_PRECONDITION), so the stored key always names the key of every
 * stored secret, the audit key included: a snapshot that moves the store
 * to another node key without an audit key for it deletes meta/audit_key
 * (the next stream brings it again). After each ACKed commit the replica tells
 * the node keys (lk_node_keys_replica_sealed), which finish a rotation to that
 * key. While the replica streams, a change of the key to present (SIGHUP) ends
 * the stream, and the next one presents the new key.
 *
 * Refresh (sidecar/oauth_retry): lk_replica_refresh makes the unary
 * Sync/Refresh call on the channel of the open stream (never a channel of
 * its own: without a stream the new token could not arrive anyway), and
 * every batch ACKed as applied bumps a count that lk_replica_wait_applied
 * waits on, so a call waiting for a refreshed credential wakes as soon as
 * it may be in the store.
 *
 * Staleness (--max-staleness, 0 = off). The replica's contact clock is the
 * CLOCK_MONOTONIC time of the last batch it accepted from a control plane
 * (applied, already applied, a snapshot part, or a heartbeat; a NACKed
 * or skipped batch is not contact). Before the first such batch in this process
 * the clock reads the time lk_replica_start ran: a restarted sidecar serves
 * from the replica already on disk at once, for up to max_staleness_ms,
 * whether or not a control plane is reachable, and then refuses calls
 * until one is. The control plane must send heartbeats more often than
 * the smallest --max-staleness in its fleet.
 *
 * Invariants: one WriteBatch per batch (a whole snapshot), synced, with
 * its revision (and the batch's audit key); buffers that held batch bytes are
 * wiped before free (credentials carry sealed values); no log line or error
 * message holds a value, only keys, revisions and counts.
 */
#ifndef LK_REPLICA_H
#define LK_REPLICA_H

#include <stddef.h>
#include <stdint.h>

#include "lib/audit.h"
#include "lib/metrics.h"
#include "lib/seal.h"
#include "lib/status.h"
#include "lib/store.h"
#include "sidecar/node_keys.h"

/* Largest Sync message accepted from the control plane. */
#define LK_REPLICA_MAX_MESSAGE_BYTES (64u * 1024u * 1024u)
/* Largest snapshot (keys plus values) held in memory until it is applied. */
#define LK_REPLICA_MAX_SNAPSHOT_BYTES (256u * 1024u * 1024u)
/* The store key of the applied revision. */
#define LK_REPLICA_REVISION_KEY "meta/revision"
/* The store key of the node public key the replica is sealed to. */
#define LK_REPLICA_NODE_KEY_KEY "meta/node_public_key"
/* The store key of the audit key, sealed to the node key. */
#define LK_REPLICA_AUDIT_KEY_KEY "meta/audit_key"
/* After a NACK, how long to wait for a snapshot before reconnecting. */
#define LK_REPLICA_RESYNC_MS 15000
/* Reconnect backoff: first delay, and the cap it doubles up to. */
#define LK_REPLICA_BACKOFF_INITIAL_MS 100
#define LK_REPLICA_BACKOFF_MAX_MS 5000

/* ---- the applier --------------------------------------------------------- */

typedef struct lk_replica_applier lk_replica_applier;

/* What to answer a batch with. */
typedef enum {
  LK_REPLICA_REPLY_NONE, /* heartbeat or a snapshot part: no answer */
  LK_REPLICA_REPLY_ACK,  /* applied, or already applied */
  LK_REPLICA_REPLY_NACK, /* refused; nothing of it applied */
  LK_REPLICA_REPLY_SKIP  /* dropped unanswered: a snapshot must come first */
} lk_replica_reply;

/* Creates an applier over store (borrowed; it must outlive the applier),
 * reading the applied revision from it. node_pk (32 bytes, copied) is the
 * key the control plane seals to; NULL skips the node key check and
 * record. LK_FAILED_PRECONDITION when "meta/revision" is not 8 bytes
 * holding a non-negative revision. */
lk_status lk_replica_applier_new(lk_store *store, const unsigned char *node_pk,
                                 lk_replica_applier **out,
                                 lk_err *err) LK_MUST_CHECK;

/* Frees the applier (and any snapshot in progress); NULL is a no-op. */
void lk_replica_applier_destroy(lk_replica_applier *a);

/* Lets the applier accept audit keys (see above): they are opened with
 * the key of keys whose public key is the applier's node key (the one the
 * stream presents; lk_node_keys_unseal_from_key) and, once stored, set in
 * audit (NULL = stored only). Also loads the audit key already stored,
 * when there is one, into audit, so a restarted replica hashes before it
 * reconnects, at any step of a node key rotation: it is opened the way
 * calls open credentials (lk_node_keys_unseal_from_node: the key
 * meta/node_public_key names, then the other one held). A stored key that
 * does not open (the node key file changed) is logged and left for the
 * next stream to replace. Both are borrowed and must outlive the applier.
 * Without this call a batch carrying an audit key is NACKed. Returns the
 * store's status when it cannot be read. */
lk_status lk_replica_applier_use_audit(lk_replica_applier *a,
                                       lk_node_keys *keys, lk_audit_key *audit,
                                       lk_err *err) LK_MUST_CHECK;

/* Returns the applied revision (0 = nothing applied). Thread-safe. */
int64_t lk_replica_applier_revision(const lk_replica_applier *a);

/* Handles one SyncBatch encoding (len bytes at msg) as the header describes
 * and sets *reply and *revision (the revision to ACK or NACK). LK_OK for
 * NONE, ACK and SKIP; on NACK the refusal's status, with the reason in
 * err: LK_INVALID_ARGUMENT for a malformed batch, key or record,
 * LK_RESOURCE_EXHAUSTED for a message or snapshot over its cap,
 * LK_FAILED_PRECONDITION for an incremental batch while the store is
 * sealed to another node key, or for an audit key that does not open with
 * the node key the applier presents (or when there are no node keys to
 * open it with), LK_UNAVAILABLE (or the store's status) when the store
 * write fails. */
lk_status lk_replica_applier_handle(lk_replica_applier *a,
                                    const unsigned char *msg, size_t len,
                                    lk_replica_reply *reply, int64_t *revision,
                                    lk_err *err) LK_MUST_CHECK;

/* Starts over for a new stream: drops a snapshot in progress and stops
 * waiting for the snapshot an earlier NACK asked for. */
void lk_replica_applier_reset(lk_replica_applier *a);

/* Starts over for a new stream presenting node_pk (32 bytes, copied): as
 * lk_replica_applier_reset, then re-reads the store as
 * lk_replica_applier_new does, so the revision reads 0 when the store is
 * sealed to another key. Not thread-safe with handle. LK_FAILED_PRECONDITION
 * as lk_replica_applier_new. */
lk_status lk_replica_applier_set_node_key(lk_replica_applier *a,
                                          const unsigned char node_pk[32],
                                          lk_err *err) LK_MUST_CHECK;

/* Returns 1 when the store records the applier's node key as the one its
 * secrets are sealed to (a batch was committed with it); else 0, also
 * when the applier tracks no key. Thread-safe. */
int lk_replica_applier_sealed_to_node_key(const lk_replica_applier *a);

/* Copies the node public key the store's secrets are sealed to
 * (meta/node_public_key) into pk and returns 1; returns 0, pk untouched,
 * when none (or no 32-byte key) is recorded. */
int lk_replica_stored_node_key(lk_store *store, unsigned char pk[32]);

/* ---- the replica ----------------------------------------------------------
 */

typedef struct {
  const char *control_plane; /* gRPC address: host:port or unix:/path */
  const char *token_file;    /* node token, sent as "Bearer <token>" */
  const char *tls_ca;        /* root PEM file; NULL = plaintext channel */
  const char *agent_id;      /* this sidecar's agent */
  /* The key to present (asked before each connection) and to tell about
   * commits, which also opens audit keys; borrowed, must outlive the
   * replica. */
  lk_node_keys *keys;
  int64_t max_staleness_ms; /* 0 = off */
  lk_audit_key *audit; /* receives the audit key; borrowed, NULL = not kept */
  /* Registry for the replica's metrics (borrowed; it must outlive the
   * replica). NULL = no metrics. */
  lk_metrics *metrics;
} lk_replica_config;

typedef struct lk_replica lk_replica;

/* Reads the token (and CA) files and the applied revision, starts the
 * contact clock, and starts the stream thread, which connects, applies and
 * reconnects (jittered backoff from LK_REPLICA_BACKOFF_INITIAL_MS doubling
 * to LK_REPLICA_BACKOFF_MAX_MS) until lk_replica_stop. store is borrowed
 * and must outlive the replica; cfg strings are copied. Returns at once:
 * it never waits for a control plane. Audit keys are accepted and opened
 * with cfg->keys (lk_replica_applier_use_audit). LK_INVALID_ARGUMENT or
 * LK_FAILED_PRECONDITION naming the flag or file that is wrong. */
lk_status lk_replica_start(const lk_replica_config *cfg, lk_store *store,
                           lk_replica **out, lk_err *err) LK_MUST_CHECK;

/* Closes the stream and joins the thread; idempotent. The replica stays
 * readable (revision, staleness) until lk_replica_destroy. */
void lk_replica_stop(lk_replica *r);

/* Stops (when needed) and frees the replica; NULL is a no-op. */
void lk_replica_destroy(lk_replica *r);

/* Returns the applied revision. Thread-safe. */
int64_t lk_replica_revision(const lk_replica *r);

/* Largest RefreshResponse accepted from the control plane. */
#define LK_REPLICA_MAX_REFRESH_RESPONSE_BYTES 1024u

/* Asks the control plane for an immediate refresh of oauth2 credential
 * credential_id, whose token of OAuthState generation a vendor refused:
 * the unary Sync/Refresh on the channel of the stream now open, with the
 * node token the stream sends, ending by deadline_ms (CLOCK_MONOTONIC) or
 * at lk_replica_stop. Blocks. On LK_OK sets *now_generation to the
 * credential's generation the control plane reports (the new token then
 * arrives over the stream). Otherwise the control plane's status (its
 * message sanitised into err): LK_FAILED_PRECONDITION when the provider
 * refused the grant, LK_DEADLINE_EXCEEDED, LK_PERMISSION_DENIED, ...; any
 * status Refresh does not document, no open stream, or a malformed answer
 * (over LK_REPLICA_MAX_REFRESH_RESPONSE_BYTES) is LK_UNAVAILABLE.
 * Thread-safe. */
lk_status lk_replica_refresh(lk_replica *r, const char *credential_id,
                             uint64_t generation, int64_t deadline_ms,
                             uint64_t *now_generation,
                             lk_err *err) LK_MUST_CHECK;

/* Returns the number of batches ACKed as applied (or found applied) since
 * start; it grows after each one is durable. Thread-safe. */
uint64_t lk_replica_applied_count(lk_replica *r);

/* Waits until the applied count differs from seen, deadline_ms
 * (CLOCK_MONOTONIC) passes or lk_replica_stop runs, and returns the count
 * then. Thread-safe. */
uint64_t lk_replica_wait_applied(lk_replica *r, uint64_t seen,
                                 int64_t deadline_ms);

/* Returns 1 and sets err to LK_FAILED_PRECONDITION ("no contact with the
 * control plane for N ms (limit --max-staleness M ms): calls are refused
 * until it is back") when max_staleness_ms is on and the contact clock is
 * older than that; else 0. Thread-safe. */
int lk_replica_too_stale(const lk_replica *r, lk_err *err);

#endif
