/* nbdring.h — the C API of nbdring, for C11 programs and other languages' FFIs.
 *
 * A thin layer over the C++ client (nbdring/client.h), with the same contract:
 *   - nbdring_connect() negotiates with the server and starts the client's ring threads
 *     (option "threads", default 1); requests are batched, one io_uring_enter per loop turn.
 *     With "threads" = "0" no thread is created: the caller drives the client with
 *     nbdring_poll / nbdring_get_fd (see there).
 *   - Synchronous calls (nbdring_pread, ...) block the calling thread until the server
 *     answers. Asynchronous calls (nbdring_aio_*) return a cookie (> 0) at once and call the
 *     completion exactly once, on a ring thread, with 0 or an errno. A completion must not
 *     block; a synchronous call or nbdring_close from inside one is refused (-1, EDEADLK).
 *   - Errors are reported as libnbd does: the call returns -1 (or NULL), and
 *     nbdring_get_error() / nbdring_get_errno() give the message and errno of the last
 *     failed call on this thread. Every argument is checked (NULL pointers, zero lengths,
 *     ranges past the export, flags the server did not advertise, unknown cookies): a bad
 *     one fails the call with a message naming it, never a crash.
 *   - Buffers belong to the client from the call until its completion (asynchronous) or
 *     until the call returns (synchronous).
 * Every function may be called from any thread; one client may be shared by many threads.
 */
#ifndef NBDRING_H_
#define NBDRING_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nbdring_client nbdring_client;
typedef struct nbdring_options nbdring_options;
typedef struct nbdring_runtime nbdring_runtime;

/* Request flags (NBD_CMD_FLAG_*), for the `flags` arguments. */
#define NBDRING_CMD_FLAG_FUA 0x01u
#define NBDRING_CMD_FLAG_NO_HOLE 0x02u
#define NBDRING_CMD_FLAG_DF 0x04u
#define NBDRING_CMD_FLAG_REQ_ONE 0x08u
#define NBDRING_CMD_FLAG_FAST_ZERO 0x10u

/* Options, set by name. Keys: "connections", "threads" (0: caller-driven, see
 * nbdring_poll), "inflight_limit" (1-65536, or "auto" or "0": each connection adapts its own
 * limit, up to 256; a URI's inflight_limit=N|auto replaces it),
 * "request_timeout_ms", "connect_timeout_ms", "close_timeout_ms", "reconnect" (true/false),
 * "reconnect_delay_ms", "reconnect_attempts" (per loss; 0: no limit),
 * "completion_batch_delay_us", "structured_replies" (true/false), "receive_buffer_bytes",
 * "meta_context" (adds one, e.g. "base:allocation"), "ring_cpus" (CPUs to pin the ring
 * threads "nbdring-ring-N" to, e.g. "0,2"); TLS: "tls" (disable/allow/require; default:
 * require for nbds URIs, disable for nbd), "tls_certificates" (directory with ca-cert.pem
 * [client-cert.pem client-key.pem]), "tls_psk_file" (psktool format), "tls_username",
 * "tls_hostname", "tls_verify_peer" (true/false; default true); "export_name" (for
 * nbdring_connect_socket / nbdring_connect_command; a URI names its own export).
 * nbdring_options_set returns 0, or -1 for an unknown key or a bad value. A TLS handshake
 * that fails (certificate not trusted, wrong host, wrong key) fails nbdring_connect with
 * errno EACCES. */
nbdring_options *nbdring_options_create(void);
int nbdring_options_set(nbdring_options *options, const char *key, const char *value);
void nbdring_options_destroy(nbdring_options *options);

/* Diagnostics: `log` receives every message at `max_level` or below (NBDRING_LOG_ERROR: a
 * connection failed; NBDRING_LOG_INFO: connecting, what was negotiated, reconnects;
 * NBDRING_LOG_DEBUG: every request and reply). It may be called from several of the client's
 * threads at once and must return quickly; `message` is valid during the call only. A NULL
 * `log` turns the hook off; with no hook, NBDRING_DEBUG=1 in the environment prints
 * everything to stderr. Returns 0, or -1 for a bad level. */
#define NBDRING_LOG_ERROR 0
#define NBDRING_LOG_INFO 1
#define NBDRING_LOG_DEBUG 2
typedef void (*nbdring_log_callback)(void *user_data, int level, const char *message);
int nbdring_options_set_log(nbdring_options *options, nbdring_log_callback log,
                            void *user_data, int max_level);

/* Connects to an NBD URI (nbd://, nbd+unix://, nbd+vsock://, and the nbds forms with TLS,
 * taking libnbd's tls-* query keys); options may be NULL. */
nbdring_client *nbdring_connect(const char *uri, const nbdring_options *options);
/* Negotiates over `fd`, a stream socket already connected to the server; the client owns it
 * from this call on, even when it fails. One connection; option "reconnect" is refused. */
nbdring_client *nbdring_connect_socket(int fd, const nbdring_options *options);
/* Runs `argv` (NULL-terminated; argv[0] looked up in PATH) with its stdin and stdout on a
 * socketpair and negotiates over the other end, e.g. {"nbdkit", "-s", "memory", "1G", NULL}
 * as libnbd's nbd_connect_command. nbdring_close ends the server (EOF, then SIGKILL after a
 * second) and reaps it. A command that cannot run fails with ENOENT. */
nbdring_client *nbdring_connect_command(char **argv, const nbdring_options *options);
/* Lets submitted requests finish (bounded by "close_timeout_ms"), disconnects, stops the
 * ring threads and frees the client. Requests still unanswered complete with an error. */
int nbdring_close(nbdring_client *client);

/* The last error on this thread: a message (never NULL; "" when none) and an errno. */
const char *nbdring_get_error(void);
int nbdring_get_errno(void);

int64_t nbdring_get_size(nbdring_client *client);
/* 1 if the server advertises it, 0 if not, -1 on error. */
int nbdring_is_read_only(nbdring_client *client);
int nbdring_can_flush(nbdring_client *client);
int nbdring_can_trim(nbdring_client *client);
int nbdring_can_zero(nbdring_client *client);
int nbdring_can_multi_conn(nbdring_client *client);

/* Synchronous requests: 0 or -1. */
int nbdring_pread(nbdring_client *client, void *buf, size_t count, uint64_t offset,
                  uint32_t flags);
int nbdring_pwrite(nbdring_client *client, const void *buf, size_t count, uint64_t offset,
                   uint32_t flags);
int nbdring_flush(nbdring_client *client, uint32_t flags);
int nbdring_trim(nbdring_client *client, uint64_t count, uint64_t offset, uint32_t flags);
int nbdring_zero(nbdring_client *client, uint64_t count, uint64_t offset, uint32_t flags);
int nbdring_cache(nbdring_client *client, uint64_t count, uint64_t offset, uint32_t flags);

/* Block status (NBD_CMD_BLOCK_STATUS) of [offset, offset + count) for every meta context
 * negotiated (option "meta_context", e.g. "base:allocation"): `extent` is called once per
 * extent, in order, with the context's name, the extent's offset, length and flags
 * (for base:allocation NBDRING_STATE_HOLE 1, NBDRING_STATE_ZERO 2). The server may describe
 * less than the whole range. 0 or -1 (ENOTSUP: no meta context was negotiated). */
#define NBDRING_STATE_HOLE 1u
#define NBDRING_STATE_ZERO 2u
typedef void (*nbdring_extent_callback)(void *user_data, const char *context, uint64_t offset,
                                        uint64_t length, uint64_t flags);
int nbdring_block_status(nbdring_client *client, uint64_t count, uint64_t offset,
                         nbdring_extent_callback extent, void *user_data, uint32_t flags);

/* Counters since connect, and latency percentiles (from Submit to completion, ns; 0 when
 * none of that kind completed). `inflight_limit`: the requests the connections may have in
 * flight now, summed over connections; with option "inflight_limit" "auto" (or the URI's
 * inflight_limit=auto) what each connection's limiter chose at the moment, else the fixed
 * limit times the connections. 0 or -1. */
typedef struct nbdring_stats {
  uint64_t requests, errors, bytes_read, bytes_written, reconnects, queue_full_waits;
  uint64_t read_p50_ns, read_p99_ns, write_p50_ns, write_p99_ns;
  uint64_t inflight_limit;
} nbdring_stats;
int nbdring_get_stats(nbdring_client *client, nbdring_stats *stats);
/* The counters and latency histograms as OpenMetrics text for a Prometheus endpoint;
 * `labels` (may be NULL) is added to every sample, e.g. "volume=\"vol7\"". A string the
 * caller frees with free(), or NULL on error. */
char *nbdring_metrics_text(nbdring_client *client, const char *labels);

/* Asynchronous requests: a cookie (> 0) or -1. `completion` may be NULL. */
typedef void (*nbdring_completion)(void *user_data, int error);
int64_t nbdring_aio_pread(nbdring_client *client, void *buf, size_t count, uint64_t offset,
                          nbdring_completion completion, void *user_data, uint32_t flags);
int64_t nbdring_aio_pwrite(nbdring_client *client, const void *buf, size_t count,
                           uint64_t offset, nbdring_completion completion, void *user_data,
                           uint32_t flags);
int64_t nbdring_aio_flush(nbdring_client *client, nbdring_completion completion,
                          void *user_data, uint32_t flags);
/* Asks for the request to complete early with ECANCELED (a request already sent may still
 * be carried out by the server). -1 with ENOENT when no request with that cookie is in
 * flight (it completed already, or never existed). */
int nbdring_aio_cancel(nbdring_client *client, int64_t cookie);
/* Requests submitted and not yet completed. */
int64_t nbdring_aio_in_flight(nbdring_client *client);

/* Rings shared by many clients (C++: nbdring/runtime.h): a storage node talking to hundreds
 * of exports runs one runtime of a few ring threads instead of threads per client. From
 * `options` (NULL: defaults) it takes "threads" (0: caller-driven, turned by
 * nbdring_runtime_poll on the creating thread), "ring_cpus" and "completion_batch_delay_us";
 * other keys are the clients' business. A client connects onto it when its options carry it
 * (nbdring_options_set_runtime); each connection goes to the ring with the fewest. Closing a
 * client drains only its own connections. nbdring_runtime_destroy drops the caller's
 * reference: the rings stop once no client attached to them is left open.
 * nbdring_runtime_poll / nbdring_runtime_get_fd are nbdring_poll / nbdring_get_fd for every
 * client of a caller-driven runtime at once (the count covers all of them). */
nbdring_runtime *nbdring_runtime_create(const nbdring_options *options);
void nbdring_runtime_destroy(nbdring_runtime *runtime);
/* `runtime` NULL: the client makes rings of its own (the default). */
int nbdring_options_set_runtime(nbdring_options *options, nbdring_runtime *runtime);
int nbdring_runtime_poll(nbdring_runtime *runtime, int timeout_ms);
int nbdring_runtime_get_fd(nbdring_runtime *runtime);

/* Caller-driven mode (option "threads" = "0"): no thread is ever created; the thread that
 * called nbdring_connect owns the ring and must make these calls, and nbdring_close.
 * nbdring_poll sends what was submitted, waits up to `timeout_ms` (-1: until something
 * completes, 0: not at all) and runs the completions on the calling thread; returns how
 * many completion callbacks it ran (0 when none was due), or -1.
 * nbdring_get_fd gives a file descriptor to watch for reading in the caller's own
 * poll/epoll: readable whenever nbdring_poll has work (then call nbdring_poll(client, 0)).
 * The client owns it. -1 with EINVAL for a client with ring threads or on another thread.
 * Synchronous calls on the owner thread drive the ring themselves. */
int nbdring_poll(nbdring_client *client, int timeout_ms);
int nbdring_get_fd(nbdring_client *client);

#ifdef __cplusplus
}
#endif

#endif /* NBDRING_H_ */
