// runtime/inflight_limiter.cc — the probe cycle of InflightLimiter (see the header).
#include "runtime/inflight_limiter.h"

#include <algorithm>
#include <cmath>

namespace nbdring {

InflightLimiter::InflightLimiter(const InflightLimiterOptions& options) : options_(options) {
  options_.cap = std::max<uint32_t>(options_.cap, 1);
  options_.min_samples = std::max<uint32_t>(options_.min_samples, 2);
  options_.step = std::max(options_.step, 1.01);
  settled_ = std::clamp<uint32_t>(options_.initial, 1, options_.cap);
  active_ = settled_;
  probe_gap_ns_ = options_.period_ns;
  down_step_ = options_.step;
  options_.far_step = std::max(options_.far_step, 1.0);
  stays_since_far_ = options_.far_every > 2 ? options_.far_every - 2 : 0;
  period_end_after_ns_ = options_.period_ns;
  period_start_ns_ = INT64_MIN;  // the first sample starts the first period
}

uint32_t InflightLimiter::Up(uint32_t limit) const {
  const auto scaled = static_cast<uint32_t>(std::lround(limit * (startup_ ? 2 : options_.step)));
  return std::min(std::max(scaled, limit + 1), options_.cap);
}

uint32_t InflightLimiter::Down(uint32_t limit) const {
  if (limit <= 1) return 1;
  const auto scaled = static_cast<uint32_t>(std::lround(limit / down_step_));
  return std::max<uint32_t>(std::min(scaled, limit - 1), 1);
}

uint32_t InflightLimiter::Far(uint32_t limit) const {
  const auto scaled = static_cast<uint32_t>(std::lround(limit * options_.far_step));
  return std::min(scaled, options_.cap);
}

void InflightLimiter::StartPeriod(Phase phase, uint32_t active) {
  phase_ = phase;
  active_ = active;
  samples_ = 0;
  latency_sum_ns_ = 0;
  in_flight_sum_ = 0;
  // Long enough for the change of limit to have settled in most of it: a request admitted
  // under the old limit is answered within about one latency.
  period_end_after_ns_ = std::max(options_.period_ns, 2 * last_latency_ns_);
  if (phase == Phase::kWait) {
    period_end_after_ns_ = std::max(period_end_after_ns_, probe_gap_ns_);
  }
}

bool InflightLimiter::EndPeriod(int64_t now_ns) {
  const uint32_t before = active_;
  const int64_t elapsed_ns = now_ns - period_start_ns_;
  const uint32_t samples = samples_;
  const int64_t latency_sum_ns = latency_sum_ns_;
  const double in_flight = static_cast<double>(in_flight_sum_) / samples;
  period_start_ns_ = now_ns;
  if (before == 0 || elapsed_ns <= 0) return false;  // unreachable; keeps the division safe
  if (elapsed_ns > std::max(options_.stale_period_ns, 8 * period_end_after_ns_)) {
    // The connection was idle for most of it: no verdict on anything. Start over at the
    // settled limit.
    StartPeriod(Phase::kWait, settled_);
    return active_ != before;
  }
  const int64_t latency_ns = latency_sum_ns / samples;
  const double throughput = samples * 1e9 / static_cast<double>(elapsed_ns);
  // A count of n replies is uncertain by about one reply: with a slow server's handful per
  // period that is 12 % or more, and decisions must not follow it.
  const double quantum = 1.0 / samples;
  last_throughput_ = throughput;
  last_latency_ns_ = latency_ns;

  auto stay = [&] {
    startup_ = false;
    ++stays_since_far_;
    down_step_ = options_.step;
    // A slow server's periods are long (two latencies): the pause grows to 8 of them, so
    // probes still take a small share of the time.
    probe_gap_ns_ = std::min(probe_gap_ns_ * 2,
                             std::max(options_.max_probe_gap_ns, 8 * period_end_after_ns_));
    StartPeriod(Phase::kWait, settled_);
  };
  auto move_to = [&](uint32_t limit) {
    settled_ = limit;
    ++moves_;
    probe_gap_ns_ = options_.period_ns;
    base_throughput_ = throughput;  // this period becomes the next comparison's A
  };
  auto try_down = [&] {
    if (settled_ > 1) {
      StartPeriod(Phase::kDown, Down(settled_));
    } else {
      stay();
    }
  };

  switch (phase_) {
    case Phase::kWait:
    case Phase::kMeasure: {
      base_throughput_ = throughput;
      if (phase_ == Phase::kWait) {
        // Latency less strictly: a pause right after a probe still drains the probe's extra
        // requests.
        auto far = [](double a, double b, double by) { return a > by * b || b > by * a; };
        if (far(throughput, pause_throughput_, 1.25) ||
            far(static_cast<double>(latency_ns), static_cast<double>(pause_latency_ns_), 2)) {
          probe_gap_ns_ = options_.period_ns;  // the server changed: probe again soon
          if (options_.far_every > 2) {
            stays_since_far_ = std::max(stays_since_far_, options_.far_every - 2);
          }
        }
        pause_throughput_ = throughput;
        pause_latency_ns_ = latency_ns;
      }
      const uint32_t up = Up(settled_);
      const uint32_t far = Far(settled_);
      if (!startup_ && options_.far_every > 0 && stays_since_far_ >= options_.far_every &&
          far > up) {
        stays_since_far_ = 0;
        StartPeriod(Phase::kFar, far);
      } else if (up > settled_) {
        StartPeriod(Phase::kUp, up);
      } else {
        try_down();
      }
      break;
    }
    case Phase::kFar: {
      // What `up_gain` asks of one step, asked of every step the far probe spans.
      const double ratio = static_cast<double>(active_) / settled_;
      const double per_step = 1 + options_.up_gain * (options_.step - 1);
      far_wanted_ = std::pow(per_step, std::log(ratio) / std::log(options_.step)) + quantum;
      const bool gained = throughput >= base_throughput_ * far_wanted_;
      const bool used = in_flight >= 0.5 * (settled_ + active_);
      if (gained && used) {
        // One period on a busy machine can be that much faster by chance, and a move this
        // far would cost 4x the latency: measure L again, and move only if the far period
        // beat both measurements of L.
        far_limit_ = active_;
        far_throughput_ = throughput;
        StartPeriod(Phase::kFarCheck, settled_);
      } else {
        stay();
      }
      break;
    }
    case Phase::kFarCheck:
      if (far_throughput_ >= std::max(base_throughput_, throughput) * far_wanted_) {
        settled_ = far_limit_;
        ++moves_;
        probe_gap_ns_ = options_.period_ns;
        base_throughput_ = far_throughput_;
        const uint32_t up = Up(settled_);
        if (up > settled_) {
          StartPeriod(Phase::kUp, up);
        } else {
          try_down();
        }
      } else {
        stay();
      }
      break;
    case Phase::kUp: {
      const double step = static_cast<double>(active_) / settled_ - 1;
      const bool gained =
          throughput >= base_throughput_ * (1 + options_.up_gain * step + quantum);
      // Little's law: the requests B really had in flight. A caller that never filled the
      // higher limit says nothing about it.
      const bool used = in_flight >= 0.5 * (settled_ + active_);
      const bool strong = throughput >= base_throughput_ * (1 + 0.5 * step + quantum);
      if (!(gained && used && strong)) startup_ = false;
      if (gained && used) {
        move_to(active_);
        const uint32_t up = Up(settled_);
        if (up > settled_) {
          StartPeriod(Phase::kUp, up);
        } else {
          stay();
        }
      } else {
        try_down();
      }
      break;
    }
    case Phase::kDown:
      if (throughput >= base_throughput_ * (1 - options_.down_loss - quantum)) {
        move_to(active_);
        down_step_ = std::min(down_step_ * options_.step, 2.0);
        try_down();
      } else {
        stay();
      }
      break;
  }
  return active_ != before;
}

}  // namespace nbdring
