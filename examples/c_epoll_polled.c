/* examples/c_epoll_polled.c — nbdring inside a program's own epoll loop, creating no thread.
 *
 * The pattern an appliance's event loop uses: connect a caller-driven client (option
 * threads=0), put nbdring_get_fd() into the loop's epoll set next to the program's other
 * descriptors, and call nbdring_poll(client, 0) whenever it is readable. Completions run
 * inside that call, on this thread, so they may touch the program's state without locks.
 *
 * This one writes 8 MiB with 16 requests in flight, reads it back the same way, checks every
 * byte and prints what it did. Build (after `bazel run //:install -- PREFIX`):
 *   cc -std=c11 -O2 c_epoll_polled.c $(pkg-config --cflags --libs nbdring) -o c_epoll_polled
 * Run: ./c_epoll_polled nbd+unix:///?socket=/tmp/nbd.sock
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "nbdring.h"

enum { kBlock = 64 * 1024, kBlocks = 128, kDepth = 16 };

struct copy_state {
  nbdring_client *client;
  unsigned char *data;   /* kBlocks * kBlock bytes */
  int writing;           /* phase: 1 writes, 0 reads */
  int next_block;        /* next block to issue */
  int in_flight;
  int failed;            /* first errno seen, 0 if none */
};

static void on_done(void *user_data, int error);

/* Issues requests until kDepth are in flight or every block has been issued. */
static void issue(struct copy_state *state) {
  while (state->in_flight < kDepth && state->next_block < kBlocks && state->failed == 0) {
    const int block = state->next_block++;
    unsigned char *buf = state->data + (size_t)block * kBlock;
    const uint64_t offset = (uint64_t)block * kBlock;
    int64_t cookie = state->writing
                         ? nbdring_aio_pwrite(state->client, buf, kBlock, offset, on_done, state, 0)
                         : nbdring_aio_pread(state->client, buf, kBlock, offset, on_done, state, 0);
    if (cookie < 0) {
      fprintf(stderr, "submitting block %d: %s\n", block, nbdring_get_error());
      state->failed = nbdring_get_errno();
      return;
    }
    state->in_flight++;
  }
}

/* Runs inside nbdring_poll, on this thread: may issue more at once. */
static void on_done(void *user_data, int error) {
  struct copy_state *state = user_data;
  state->in_flight--;
  if (error != 0 && state->failed == 0) {
    fprintf(stderr, "request failed: %s\n", strerror(error));
    state->failed = error;
  }
  issue(state);
}

/* One phase (write or read): the program's event loop, epoll on the client's fd. */
static int run_phase(struct copy_state *state, int epoll_fd) {
  state->next_block = 0;
  issue(state);
  while ((state->in_flight > 0 || state->next_block < kBlocks) && state->failed == 0) {
    struct epoll_event event;
    int ready = epoll_wait(epoll_fd, &event, 1, 10000);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      fprintf(stderr, "no progress in 10 s (%s)\n", ready < 0 ? strerror(errno) : "timeout");
      return -1;
    }
    /* A real program would dispatch on event.data here; this one watches only nbdring. */
    if (nbdring_poll(state->client, 0) == -1) {
      fprintf(stderr, "nbdring_poll: %s\n", nbdring_get_error());
      return -1;
    }
  }
  return state->failed == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s NBD-URI\n", argv[0]);
    return 2;
  }
  nbdring_options *options = nbdring_options_create();
  if (options == NULL || nbdring_options_set(options, "threads", "0") == -1) {
    fprintf(stderr, "%s\n", nbdring_get_error());
    return 1;
  }
  nbdring_client *client = nbdring_connect(argv[1], options);
  nbdring_options_destroy(options);
  if (client == NULL) {
    fprintf(stderr, "%s\n", nbdring_get_error());
    return 1;
  }
  if (nbdring_get_size(client) < (int64_t)kBlocks * kBlock) {
    fprintf(stderr, "the export is smaller than the %d bytes this example writes\n",
            kBlocks * kBlock);
    nbdring_close(client);
    return 1;
  }

  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event watch = {.events = EPOLLIN, .data = {.ptr = client}};
  int client_fd = nbdring_get_fd(client);
  if (epoll_fd < 0 || client_fd < 0 || epoll_ctl(epoll_fd, EPOLL_CTL_ADD, client_fd, &watch)) {
    fprintf(stderr, "setting up epoll: %s\n", client_fd < 0 ? nbdring_get_error() : strerror(errno));
    return 1;
  }

  struct copy_state state = {.client = client, .writing = 1};
  unsigned char *expected = malloc((size_t)kBlocks * kBlock);
  state.data = malloc((size_t)kBlocks * kBlock);
  if (expected == NULL || state.data == NULL) return 1;
  for (size_t i = 0; i < (size_t)kBlocks * kBlock; ++i) expected[i] = (unsigned char)(i * 31 / 7);
  memcpy(state.data, expected, (size_t)kBlocks * kBlock);

  int status = run_phase(&state, epoll_fd);
  if (status == 0) {
    memset(state.data, 0, (size_t)kBlocks * kBlock);
    state.writing = 0;
    status = run_phase(&state, epoll_fd);
  }
  if (status == 0 && memcmp(state.data, expected, (size_t)kBlocks * kBlock) != 0) {
    fprintf(stderr, "the data read back differs from what was written\n");
    status = -1;
  }
  if (status == 0) {
    printf("wrote and read back %d MiB through epoll on nbdring_get_fd, %d requests in flight, "
           "no threads\n", kBlocks * kBlock >> 20, kDepth);
  }
  close(epoll_fd);
  if (nbdring_close(client) == -1) {
    fprintf(stderr, "nbdring_close: %s\n", nbdring_get_error());
    status = -1;
  }
  free(expected);
  free(state.data);
  return status == 0 ? 0 : 1;
}
