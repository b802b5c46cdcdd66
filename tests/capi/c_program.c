/* A C11 program using nbdring.h and nothing else of the library: proves the C API is
 * includable and usable from C. Run by c_program_test.sh against `nbdkit memory`, with the
 * export's URI as argv[1]. Prints what failed and exits 1 on any mismatch. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nbdring.h"

#define CHECK(condition)                                                             \
  do {                                                                               \
    if (!(condition)) {                                                              \
      fprintf(stderr, "%s:%d: %s failed (last error: %s, errno %d)\n", __FILE__,     \
              __LINE__, #condition, nbdring_get_error(), nbdring_get_errno());       \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

enum { kBlock = 4096, kRequests = 64 };

struct waiter {
  pthread_mutex_t mutex;
  pthread_cond_t done;
  int completed;
  int failed;
};

static void on_complete(void *user_data, int error) {
  struct waiter *w = user_data;
  pthread_mutex_lock(&w->mutex);
  w->completed++;
  if (error != 0) w->failed++;
  pthread_cond_broadcast(&w->done);
  pthread_mutex_unlock(&w->mutex);
}

/* Waits until `count` completions arrived, at most 30 s. */
static int wait_for(struct waiter *w, int count) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 30;
  pthread_mutex_lock(&w->mutex);
  int result = 0;
  while (w->completed < count && result == 0) {
    result = pthread_cond_timedwait(&w->done, &w->mutex, &deadline);
  }
  int reached = w->completed >= count;
  pthread_mutex_unlock(&w->mutex);
  return reached;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  nbdring_options *options = nbdring_options_create();
  CHECK(options != NULL);
  CHECK(nbdring_options_set(options, "connections", "2") == 0);
  CHECK(nbdring_options_set(options, "inflight_limit", "16") == 0);
  CHECK(nbdring_options_set(options, "no_such_option", "1") == -1);
  CHECK(nbdring_get_errno() == EINVAL && strstr(nbdring_get_error(), "no_such_option") != NULL);

  nbdring_client *client = nbdring_connect(argv[1], options);
  nbdring_options_destroy(options);
  CHECK(client != NULL);
  CHECK(nbdring_get_size(client) == 64 * 1024 * 1024);

  static unsigned char data[kRequests * kBlock], back[kRequests * kBlock];
  for (size_t i = 0; i < sizeof data; ++i) data[i] = (unsigned char)(i * 7 + i / 4096);
  CHECK(nbdring_pwrite(client, data, kBlock, 0, 0) == 0);

  struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
  for (int i = 1; i < kRequests; ++i) {
    CHECK(nbdring_aio_pwrite(client, data + i * kBlock, kBlock, (uint64_t)i * kBlock,
                             on_complete, &w, 0) > 0);
  }
  CHECK(wait_for(&w, kRequests - 1));
  for (int i = 0; i < kRequests; ++i) {
    CHECK(nbdring_aio_pread(client, back + i * kBlock, kBlock, (uint64_t)i * kBlock,
                            on_complete, &w, 0) > 0);
  }
  CHECK(wait_for(&w, 2 * kRequests - 1));
  CHECK(w.failed == 0);
  CHECK(memcmp(data, back, sizeof data) == 0);
  CHECK(nbdring_flush(client, 0) == 0);

  /* Bad input fails the call with a message, never a crash. */
  CHECK(nbdring_pread(client, NULL, kBlock, 0, 0) == -1 && nbdring_get_errno() == EFAULT);
  CHECK(nbdring_pread(client, back, kBlock, 64 * 1024 * 1024, 0) == -1);
  CHECK(nbdring_aio_cancel(client, 12345) == -1 && nbdring_get_errno() == ENOENT);
  CHECK(nbdring_get_size(NULL) == -1 && nbdring_get_errno() == EFAULT);

  CHECK(nbdring_close(client) == 0);
  printf("ok\n");
  return 0;
}
