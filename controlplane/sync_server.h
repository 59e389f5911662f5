/*
 * sync_server.h - the control plane's latchkey.v1.Sync/Stream fan-out
 * (DESIGN.md §5-6).
 *
 * Why: every sidecar in replica mode holds a copy of exactly its agent's
 * scope (controlplane/scope.h) and must follow every catalog change fast,
 * with each secret sealed to its own node key. This module serves those
 * streams: it authenticates the node token, takes the replica's hello,
 * sends a scoped snapshot or resumes, pushes per-subscriber differences on
 * every change, heartbeats, and tracks each replica's ACKed revision.
 *
 * Protocol as served here (sync.proto):
 *   - The stream's metadata must carry "authorization: Bearer <node
 *     token>" (checked in constant time) -> else UNAUTHENTICATED.
 *   - The first SyncRequest must carry a valid agent_id and the node's
 *     32-byte X25519 node_public_key -> else INVALID_ARGUMENT.
 *   - Resume rule: when this server's current revision equals the hello's
 *     have_revision (> 0), the replica already holds exactly the scope of
 *     the catalog at that revision, which is what this server's view is;
 *     it sends no records, only a heartbeat at that revision. When the
 *     hello's have_revision R is below the current revision (0 < R < cur)
 *     and a history source is set (lk_sync_server_set_history), the server
 *     loads the catalog as of R, computes the agent's scope at R with the
 *     same scope code, takes it as what the replica holds (its records'
 *     hashes seed the sent map exactly as a sent batch would) and sends
 *     ONE ordinary batch at the current revision with the puts and deletes
 *     between R and now (no snapshot_begin; a difference over one message
 *     is a snapshot as for any change): another control-plane replica
 *     takes over a stream without a snapshot. Otherwise (no history source,
 *     have_revision 0, or the load fails: R compacted away in etcd,
 *     unknown, unreachable) it sends a full scoped snapshot at its current
 *     revision (batches from snapshot_begin to snapshot_end, each message
 *     at most LK_SYNC_MAX_MESSAGE_BYTES), which is always correct because
 *     the replica applies it as a replacement. The last loaded history
 *     view is kept (one revision), so a fleet reconnecting at once from
 *     the same revision costs one load. A replica ahead of this server
 *     (have_revision > current) waits, receiving nothing, until this server
 *     reaches that revision, so it is never moved backwards; a replica
 *     connecting before the first lk_sync_server_changed also waits. A
 *     replica whose node key changed must send have_revision 0.
 *   - After that, each lk_sync_server_changed(rev) sends every synced
 *     subscriber exactly one batch at rev: the puts (records new or changed
 *     in its scope since what it was last sent, compared by BLAKE2b of the
 *     stored record) and deletes (keys that left its scope). The batch may
 *     be empty: it still moves the replica's revision, so lag and
 *     change-to-ACK times stay exact. A difference over
 *     LK_SYNC_MAX_MESSAGE_BYTES is sent as a snapshot instead.
 *   - Heartbeats: every LK_SYNC_HEARTBEAT_MS each synced subscriber gets
 *     {heartbeat: true, revision: the last revision sent to it}, no
 *     records. Replicas need not ACK them (an ACK is accepted).
 *   - Later SyncRequests carry ack {revision, nack, error}. An ACK raises
 *     the subscriber's applied revision; a NACK is logged with its reason
 *     and answered with a fresh snapshot (at once, or at the next change
 *     when the NACKed batch was itself a snapshot, to avoid a loop).
 *   - The first batch sent on every stream (snapshot part, resume
 *     heartbeat or diff) carries audit_key: the key ring's audit key
 *     (lk_keyring_audit_key) sealed to the subscriber's node key with
 *     lk_seal_for_node for cred id LK_AUDIT_SEAL_ID and field
 *     LK_AUDIT_SEAL_FIELD (lib/audit.h), so replicas hash secret values
 *     for their audit lines exactly as the control plane does. Later
 *     batches carry none.
 *   - Credentials are re-sealed per subscriber: every secret field is
 *     unsealed from the key ring into guarded memory, sealed to the
 *     subscriber's node key (lk_seal_for_node; SealedValue gets nonce,
 *     ciphertext and ephemeral_public_key, key_id 0), and the plaintext is
 *     wiped at once. The key-ring ciphertext never leaves. A credential
 *     that cannot be re-sealed (or a record too large for one message) is
 *     logged and left out of that batch, and retried at the next change.
 *
 * Threads: stream callbacks run on the rpc server's workers,
 * lk_sync_server_changed on the caller's thread, heartbeats on a timer
 * thread this module owns (started by new, stopped by destroy). Call
 * lk_sync_server_changed(rev) after the catalog reflects revision rev and
 * before it reflects a later one (from the thread applying the etcd watch),
 * so the view it reads is exactly that revision.
 *
 * Lifecycle: lk_sync_server_new, then register lk_sync_server_handler()
 * with lk_rpc_server_listen_stream(srv, addr, LK_SYNC_METHOD, h, sync);
 * shut the rpc server down (every stream ends) before lk_sync_server_destroy.
 *
 * Limits: at most LK_SYNC_MAX_SUBSCRIBERS streams (more are refused with
 * RESOURCE_EXHAUSTED); a subscriber that lets 64 MiB of batches queue up
 * (lib/rpc_server) is ended with RESOURCE_EXHAUSTED and will reconnect, so
 * one agent's scope must encode to less than that.
 */
#ifndef LK_SYNC_SERVER_H
#define LK_SYNC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/catalog.h"
#include "lib/keyring.h"
#include "lib/metrics.h"
#include "lib/rpc_server.h"
#include "lib/status.h"
#include "lib/token.h"

/* The method path to register the handler under. */
#define LK_SYNC_METHOD "/latchkey.v1.Sync/Stream"
/* Largest SyncBatch message sent (gRPC's default receive limit). */
#define LK_SYNC_MAX_MESSAGE_BYTES (4u * 1024u * 1024u)
/* Most concurrent Sync streams. */
#define LK_SYNC_MAX_SUBSCRIBERS 65536
/* Interval of heartbeat batches. */
#define LK_SYNC_HEARTBEAT_MS 1000
/* Buckets of the change-to-ACK histogram (see lk_sync_latency_bound_ms). */
#define LK_SYNC_LATENCY_BUCKETS 14

typedef struct lk_sync_server lk_sync_server;

/* One connected replica, as lk_sync_server_replicas reports it. */
typedef struct {
  const char *agent_id;     /* valid during the callback only */
  uint64_t peer_id;         /* this server's number for the stream, from 1 */
  int64_t applied_revision; /* highest ACKed revision, or until the first
                               ACK the hello's have_revision; 0 = none */
  int64_t lag_revisions;    /* current revision - applied_revision */
  int64_t ms_since_ack;     /* since the last ACK; -1 = never ACKed */
} lk_sync_replica;

typedef void (*lk_sync_replica_fn)(void *ctx, const lk_sync_replica *r);

/* Time from lk_sync_server_changed(rev) until every replica subscribed at
 * that moment (and still connected) has ACKed rev or later. */
typedef struct {
  int64_t last_us; /* the latest sample; -1 = none yet */
  uint64_t count;  /* samples recorded */
  /* samples per bucket: bucket i holds those <= lk_sync_latency_bound_ms(i)
   * and above bucket i-1's bound; the last bucket has no bound. */
  uint64_t buckets[LK_SYNC_LATENCY_BUCKETS];
} lk_sync_ack_latency;

/* Creates the fan-out over cat, re-sealing from kr (refreshed from its
 * file when a value names a key it does not hold) and admitting streams
 * that present node_token (all borrowed: they must outlive the server), and
 * starts its heartbeat thread. LK_INVALID_ARGUMENT when one is NULL;
 * LK_RESOURCE_EXHAUSTED / LK_INTERNAL when memory or the thread fails. */
lk_status lk_sync_server_new(lk_catalog *cat, lk_keyring *kr,
                             const lk_token *node_token, lk_sync_server **out,
                             lk_err *err) LK_MUST_CHECK;

/* Stops the heartbeat thread and frees the server; NULL is a no-op. The rpc
 * server serving its handler must be shut down first. */
void lk_sync_server_destroy(lk_sync_server *s);

/* Loads the catalog as of etcd revision `revision` into *cat_out, with
 * *handle_out what the release function needs to free it. Returns
 * LK_FAILED_PRECONDITION when the revision was compacted away, any other
 * error when it cannot be loaded; the server then sends a snapshot. */
typedef lk_status (*lk_sync_history_fn)(void *ctx, int64_t revision,
                                        lk_catalog **cat_out, void **handle_out,
                                        lk_err *err);
/* Frees what a successful lk_sync_history_fn returned (by its handle). */
typedef void (*lk_sync_history_free_fn)(void *ctx, void *handle);

/* Gives the server a source of past catalogs for resuming a replica
 * behind the current revision with one batch instead of a snapshot (see
 * the resume rule above); load NULL removes it. Call before streams are
 * served; ctx must outlive the server. Loads run on an rpc worker while
 * that replica's stream is held, so a change's fan-out waits for them. */
void lk_sync_server_set_history(lk_sync_server *s, lk_sync_history_fn load,
                                lk_sync_history_free_fn release, void *ctx);

/* Returns the stream callbacks to register (ctx = the lk_sync_server). */
const lk_rpc_stream_handler *lk_sync_server_handler(void);

/* Tells the server the catalog now reflects etcd revision `revision`:
 * reads one view of it, recomputes every subscriber's scope and pushes the
 * difference (or the first snapshot). A revision not above the current one
 * is logged and ignored; so is a catalog that cannot be read (the next
 * change retries). */
void lk_sync_server_changed(lk_sync_server *s, int64_t revision);

/* Sends one heartbeat batch to every synced subscriber (the timer thread
 * calls it every LK_SYNC_HEARTBEAT_MS). */
void lk_sync_server_heartbeat(lk_sync_server *s);

/* Returns the revision of the last accepted lk_sync_server_changed, 0 before.
 */
int64_t lk_sync_server_revision(lk_sync_server *s);

/* Calls fn once per replica that has said hello, in peer_id order, outside
 * the server's locks. LK_RESOURCE_EXHAUSTED when out of memory. */
lk_status lk_sync_server_replicas(lk_sync_server *s, lk_sync_replica_fn fn,
                                  void *ctx, lk_err *err) LK_MUST_CHECK;

/* Copies the change-to-ACK statistics into *out. */
void lk_sync_server_ack_latency(lk_sync_server *s, lk_sync_ack_latency *out);

/* Registers the Sync metrics in m (borrowed; it must outlive s): the
 * write-to-all-ACKed histogram, NACKs, the revision, connected replicas
 * and each one's ACK lag and age. NULL m registers nothing. */
lk_status lk_sync_server_use_metrics(lk_sync_server *s, lk_metrics *m,
                                     lk_err *err) LK_MUST_CHECK;

/* Returns the upper bound in milliseconds of histogram bucket i, INT64_MAX
 * for the last one. */
int64_t lk_sync_latency_bound_ms(size_t i);

#endif
