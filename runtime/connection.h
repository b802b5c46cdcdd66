// runtime/connection.h — one socket to the server, driven by the ring thread that owns it.
// Three files implement it, one idea each: connection_send.cc (staging and the send chain),
// connection_receive.cc (replies and completion), connection.cc (life: failure, reconnect,
// cancel, disconnect).
//
// A Connection turns queued Operations into NBD requests and replies into completions:
//   pending_ (FIFO of Operations waiting for an in-flight slot)
//     -> staged: a slot in table_, header encoded into headers_, iovecs in the send batch
//     -> sent: one sendmsg in the kernel at a time
//     -> replied: ReplyParser events copy or receive data into the caller's buffer
//     -> completed: slot released, Operation's on_complete called (once per Operation, after
//        its last part when it was split).
//
// The send chain. At most one sendmsg per connection is in the kernel, because a stream
// socket must carry requests whole and in order:
//     idle --Flush() finds staged work--> sending --CQE, all bytes--> idle
//                                         sending --CQE, short-----> sending (rest of batch)
//                                         sending --CQE, TLS chunk-> sending (next chunk sealed)
//                                         sending --CQE, error-----> connection fails
// Requests are staged only while the chain is idle, so everything issued during one loop
// turn (and while the previous batch was in the kernel) leaves in one sendmsg. A reply can be
// parsed before the CQE of the send that carried its request is reaped (both may land in one
// reap); such a request is finished only when its batch's send completes, since until then
// the kernel may still read the caller's write buffer. Only StageBatch, PostSend and OnSend
// touch the chain.
//
// Receiving: one recv is always armed. Normally it takes whatever replies have arrived into a
// receive buffer; when the parser is inside a read payload of at least direct_receive_bytes,
// the recv targets the caller's buffer instead (MSG_WAITALL), so large reads are never copied.
//
// Which receive buffer. With a shared ring (the ring's ReceiveBufferRing: Linux 5.19+, plain
// text), the recv selects one of the ring's shared buffers (IOSQE_BUFFER_SELECT), which the
// kernel picks only once data is there; the bytes go through the parser (which keeps partial
// replies itself) and the buffer goes back to the ring at once. An idle connection holds no
// receive buffer at all. A recv that fills a whole shared buffer marks the connection busy:
// from then on it receives into a private buffer, receive_buffer_, which starts at twice a
// shared buffer and doubles, up to receive_buffer_bytes, each time a recv fills it — a busy
// connection soon takes many replies per recv, as before. A recv that finds the shared ring
// empty (-ENOBUFS) makes it grow; at its maximum, it is armed again on the shared ring,
// where other connections' recvs of the same reap give their buffers back before the next
// submission (the retried recv, issued at submission, picks first). Only if it finds the
// ring empty again with no buffer given back in between does it take a private buffer for
// one recv, freed afterwards: never a spin, and no private buffer for a mere crowd.
//
// Without a shared ring (TLS, an older kernel, NBDRING_DISABLE_FEATURES=buf_ring) every recv
// goes into receive_buffer_, which starts at kInitialReceiveBytes (allocated with the first
// recv) and doubles as above.
//
// TLS: with a session, the chain sends the batch sealed in chunks of kTlsSealChunkBytes (the
// headers and small payloads corked into as few records as fit), one chunk in the kernel at a
// time, so the server decrypts one while the next is sealed; and every recv carries
// ciphertext into the private receive_buffer_, which is opened record by record: small replies into
// plaintext_ and through the parser, a read payload straight into the caller's buffer. No
// recv ever targets a caller's buffer then.
//
// Failure: the first fatal error (server closed, socket error, protocol violation, timeout)
// moves the connection to kDying. The socket is shut down so the kernel finishes our pending
// recv/send promptly; once none is left in the kernel (so no kernel write can land in a
// caller's buffer any more), every staged and pending Operation completes with the error.
#ifndef NBDRING_RUNTIME_CONNECTION_H_
#define NBDRING_RUNTIME_CONNECTION_H_

#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nbd/export_info.h"
#include "nbd/reply_parser.h"
#include "nbdring/operation.h"
#include "runtime/operation_state.h"
#include "runtime/adaptive_limit.h"
#include "runtime/inflight_table.h"
#include "runtime/latency_recorder.h"
#include "runtime/logger.h"
#include "runtime/operation_queue.h"
#include "runtime/reconnector.h"
#include "runtime/ring.h"
#include "runtime/ring_reconnector.h"
#include "runtime/socket.h"
#include "runtime/tls_session.h"

namespace nbdring {

struct ConnectionOptions {
  uint32_t inflight_limit = 64;  // the table's capacity
  // Admit requests up to an InflightLimiter's limit (at most inflight_limit) instead of up
  // to the table's capacity: ClientOptions::inflight_limit = 0.
  bool adaptive_limit = false;
  uint32_t receive_buffer_bytes = 256 * 1024;
  uint32_t direct_receive_bytes = 16 * 1024;
  int64_t request_timeout_ns = 0;  // 0: none
  uint64_t max_payload_part = nbd::kDefaultMaxPayload;  // READ/WRITE split size
  uint64_t max_effect_part = UINT32_MAX;                // TRIM/WRITE_ZEROES/CACHE split size
  std::string description;  // "connection 1 to nbd+unix:///?socket=..." for messages
  int index = 0;            // position among the client's connections
  // Reconnecting, one of the two (neither: off). With ring threads, `reconnect` opens and
  // negotiates a new socket to the same export on a Reconnector's helper thread, which wakes
  // the owning ring when an attempt series ends. In caller-driven mode, `ring_reconnect`
  // plans attempts a RingReconnector runs inside the ring's turns, with no thread.
  Reconnector::Attempt reconnect;
  std::function<void()> wake_ring;
  std::shared_ptr<const RingReconnectPlan> ring_reconnect;
  int64_t reconnect_delay_ns = 0;
  int reconnect_attempts = 0;  // per loss; 0: no limit but the delay
  std::shared_ptr<const Logger> logger;  // null: logging off
  LatencyRecorder* latency = nullptr;     // the owning ring's histograms
};

struct ConnectionCounters {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> wire_requests{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> queue_full_waits{0};
  std::atomic<uint64_t> reconnects{0};
  LatencyRecorder* latency = nullptr;  // the ring's; null in tests that make no ring
};

// Completes `operation` if `status` is its last part (helper shared with the ring thread).
void CompleteOperationPart(Operation* operation, const absl::Status& status,
                           ConnectionCounters* counters);

class Connection : private nbd::RequestLookup {
 public:
  // kOpen -> kDisconnecting -> kClosed (orderly), kOpen -> kDying -> kClosed (failure), and
  // with reconnect: kDying -> kReconnecting -> kOpen, or -> kDying -> kClosed when it gives up.
  enum class State { kOpen, kDisconnecting, kDying, kReconnecting, kClosed };

  // `info` is what this connection negotiated; `client_contexts` the meta contexts as the
  // client reports them (connection 1's ids). The server may number contexts differently on
  // each connection (and after a reconnect): extents are reported under the client's id.
  Connection(Ring* ring, FileDescriptor fd, std::unique_ptr<TlsSession> tls,
             const nbd::ExportInfo& info,
             std::vector<nbd::MetaContext> client_contexts, ConnectionOptions options);
  ~Connection() override;

  // Arms the first receive. Ring thread only, like everything below.
  void Start();
  void Enqueue(Operation* operation);
  // Stages waiting requests and starts a send when the chain is idle.
  void Flush();
  // Fails the connection if a request has been in flight longer than the request timeout.
  void CheckTimeouts(int64_t now_ns);
  void Fail(absl::Status status);
  // Cancels `operation` if it is queued or in flight here and still on submission
  // `submission`; returns false when this connection does not have it. Never dereferences
  // an Operation it does not hold (it may have completed and been freed).
  bool Cancel(Operation* operation, uint64_t submission);
  // Adopts the outcome of a finished reconnect attempt series, if any.
  void PollReconnect();
  // Gives up reconnecting now (the client is closing).
  void StopReconnecting();
  // Orderly end once idle: NBD_CMD_DISC, then close.
  void Disconnect();

  State state() const { return state_; }
  // Closed, and nothing of it left in the ring's kernel queue: it may be destroyed while the
  // ring goes on (a shared Runtime's ring outlives the clients on it).
  bool quiescent() const {
    return state_ == State::kClosed &&
           (reconnector_ == nullptr || !reconnector_->holds_ring_operations());
  }
  bool usable() const { return state_ == State::kOpen; }
  // Reconnecting, or about to (dying from a loss it will reconnect after): new requests may
  // wait in its queue for the new connection.
  bool will_reopen() const {
    return state_ == State::kReconnecting || (state_ == State::kDying && ShouldReconnect());
  }
  bool idle() const { return pending_.empty() && table_.in_use() == 0; }
  // Staged plus queued bytes: what routing compares, so a burst dispatched within one loop
  // turn (before anything is staged) still spreads over the connections.
  uint64_t outstanding_bytes() const { return outstanding_bytes_ + queued_bytes_; }
  uint32_t in_flight() const { return table_.in_use(); }
  bool send_in_flight() const { return send_in_flight_; }
  // True once after PostSend queued a send small enough to complete inside the submitting
  // io_uring_enter (the socket buffer takes it whole): the ring may then count that send's
  // completion into the same enter's wait instead of entering twice. Clears on reading.
  bool TakeInlineSend() {
    const bool inline_send = inline_send_posted_;
    inline_send_posted_ = false;
    return inline_send;
  }
  // True while a read or write with a payload of at least `direct_receive_bytes` is in
  // flight. Such a payload crosses the socket in many steps (the kernel retries the recv or
  // send in task work each time the socket buffer drains or fills), and each step needs the
  // ring's thread: a ring waiting out a completion-batching window would stall the transfer,
  // and the server writing it, for the whole window.
  bool large_payload_in_flight() const { return large_payloads_in_flight_ > 0; }
  const absl::Status& failure() const { return failure_; }
  const ConnectionCounters& counters() const { return counters_; }
  // Any thread: the in-flight limit now (the adaptive one's settled value), and the
  // adaptive limiter's send-to-reply latencies (nothing with a fixed limit).
  uint32_t inflight_limit() const {
    return adaptive_ != nullptr ? adaptive_->published_limit() : table_.capacity();
  }
  void AddWireLatency(LatencyHistogram* histogram) const {
    if (adaptive_ != nullptr) adaptive_->AddWireLatency(histogram);
  }
  int index() const { return options_.index; }

 private:
  struct Slot : nbd::InflightRequest {
    Operation* operation = nullptr;  // nullptr once cancelled: the reply is discarded
    uint64_t part_offset = 0;  // of this part within the Operation
    uint64_t batch = 0;        // send batch that carries the request
    int64_t deadline_ns = 0;
    int64_t staged_ns = 0;     // set with an adaptive limit only
    bool reply_done = false;   // replied, waiting for its batch's send to complete
    bool large_payload = false;  // counted in large_payloads_in_flight_
    absl::Status deferred_status;
  };

  // The most plaintext one TLS record carries.
  static constexpr size_t kTlsPlaintextBytes = 16 * 1024;
  static constexpr size_t kTlsSealChunkBytes = 64 * 1024;
  static constexpr uint32_t kInitialReceiveBytes = 16 * 1024;

  // Adaptive limit: one reply for the limiter (connection_receive.cc).
  void ObserveReply(const Slot& slot);

  // Every in-use slot leaves the table through here.
  void ReleaseSlot(uint64_t cookie, Slot* slot);

  nbd::InflightRequest* Find(uint64_t cookie) override;

  void StageBatch();
  // Posts the staged iovecs; with TLS, seals their first chunk (followed by close_notify,
  // when asked, after the batch's last chunk) and posts that.
  void SealAndPost(bool then_close_notify = false);
  // TLS: seals up to kTlsSealChunkBytes more of the batch into sealed_. A large batch goes
  // out chunk by chunk, so the server decrypts the first while the next is being sealed.
  bool SealNextChunk();
  void PostSend();
  static void OnSend(IoCompletion* completion);
  void ArmReceive();
  static void OnReceive(IoCompletion* completion);
  // After a recv of `received` bytes into the shared buffer or receive_buffer_: picks where
  // the next one goes, and grows or frees receive_buffer_.
  void AdaptReceiveBuffer(bool was_shared, uint32_t received);
  // receive_buffer_ with `capacity` bytes (replacing any smaller one), or none (0), counted
  // in the ring's gauges.
  void ResizePrivateReceiveBuffer(uint32_t capacity);
  // What one recv takes into a shared buffer: all of it, or receive_buffer_bytes if less.
  uint32_t SharedReceiveBytes() const {
    return std::min(shared_receive_->buffer_bytes(), options_.receive_buffer_bytes);
  }
  void ProcessInput(absl::Span<const uint8_t> input);
  // TLS: opens every record in `ciphertext` (and any the session holds) into the parser.
  void ProcessCiphertext(absl::Span<const uint8_t> ciphertext);
  void FinishSlot(uint64_t cookie, Slot* slot, const absl::Status& status);
  void CompleteSlot(uint64_t cookie, Slot* slot, const absl::Status& status);
  void CompleteDeferredSlots();
  void MaybeFinishDying();
  void CompleteCancelled();
  void BeginSoftDisconnect(const absl::Status& reason);
  // After pending_ changed other than by Enqueue/StageBatch (rare paths).
  void RecountQueuedBytes();
  bool ShouldReconnect() const;
  void StartReconnecting();
  // Takes on the meta-context ids `info` negotiated: the parser accepts them, and
  // ClientContextId() maps them to the client's.
  void AdoptMetaContexts(const nbd::ExportInfo& info);
  uint32_t ClientContextId(uint32_t wire_id) const;
  uint64_t PartLimit(const Operation& operation) const;

  Ring* ring_;
  FileDescriptor fd_;
  std::unique_ptr<TlsSession> tls_;  // null for plain text
  ConnectionOptions options_;
  bool extended_headers_;
  State state_ = State::kOpen;
  absl::Status failure_;
  unsigned kernel_operations_ = 0;  // our SQEs the kernel has not completed yet

  InflightTable<Slot> table_;
  // Requests are staged while fewer than this are in flight: the table's capacity, or the
  // adaptive limiter's current limit.
  uint32_t admit_limit_;
  std::unique_ptr<AdaptiveLimit> adaptive_;  // null with a fixed limit
  OperationQueue pending_;
  uint64_t outstanding_bytes_ = 0;  // staged requests
  uint64_t queued_bytes_ = 0;       // unstaged parts of pending_ (RecountQueuedBytes)
  uint32_t large_payloads_in_flight_ = 0;

  // The send chain.
  IoCompletion send_completion_;
  bool send_in_flight_ = false;
  bool inline_send_posted_ = false;  // see TakeInlineSend()
  bool disconnect_sent_ = false;
  std::unique_ptr<uint8_t[]> headers_;
  std::vector<iovec> iovecs_;
  // TLS: the batch's plaintext is iovecs_ from iovec_first_ (not sealed yet); sealed_ holds
  // the records of the chunk in the kernel, sealed_unsent_ what of them is not sent yet.
  std::vector<uint8_t> sealed_;
  iovec sealed_unsent_{};
  bool close_notify_after_batch_ = false;
  size_t iovec_first_ = 0;  // first iovec not completely sent
  size_t iovec_count_ = 0;
  msghdr message_{};
  uint64_t batch_ = 0;       // id of the newest staged batch
  uint64_t sent_batch_ = 0;  // every batch up to this id is completely sent
  uint32_t deferred_slots_ = 0;
  // Cancelled Operations waiting for the kernel to let go of their buffers.
  OperationQueue cancelled_;

  // Receiving.
  IoCompletion receive_completion_;
  IoCompletion cancel_completion_;
  // The ring's shared receive buffers; null with TLS or without the kernel feature, when
  // every recv goes to receive_buffer_.
  ReceiveBufferRing* shared_receive_ = nullptr;
  // Where a recv that is not direct goes, with a shared ring: a shared buffer; or
  // receive_buffer_, for good once the connection is busy (a recv filled a whole shared
  // buffer), or only for the next recv, because the shared ring was empty twice with no
  // buffer given back in between. Without a shared ring it stays kShared and every recv
  // goes to receive_buffer_.
  enum class ReceiveInto { kShared, kPrivateOnce, kPrivate };
  ReceiveInto receive_into_ = ReceiveInto::kShared;
  // The shared ring was empty for the armed recv; ReceiveBufferRing::returned() then.
  bool shared_receive_exhausted_ = false;
  uint64_t shared_returned_at_exhaustion_ = 0;
  std::unique_ptr<uint8_t[]> receive_buffer_;  // allocated when first needed
  uint32_t receive_buffer_capacity_ = 0;  // grows to options_.receive_buffer_bytes
  std::unique_ptr<uint8_t[]> plaintext_;  // TLS: one opened record
  bool receive_direct_ = false;
  Operation* receive_direct_operation_ = nullptr;  // whose buffer the armed recv fills
  nbd::ReplyParser parser_;

  ConnectionCounters counters_;

  // Reconnecting (null when off).
  std::unique_ptr<ReconnectSeries> reconnector_;
  // Meta contexts: the client's list, and this connection's wire id -> the client's id.
  std::vector<nbd::MetaContext> client_contexts_;
  std::vector<std::pair<uint32_t, uint32_t>> context_ids_;
  nbd::ReplyParserOptions parser_options_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CONNECTION_H_
