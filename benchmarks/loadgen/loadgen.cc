// bench_server's native load generator: the lean client loop of benchmarks/bench_server.py (SimClient),
// driven by gRPC's C++ callback API instead of Python coroutines.
//
// Why it exists: on a machine with few cores the Python generators share the server's CPUs, and each
// generator's single event loop times every reply it receives late while thousands arrive at once (a
// round opening). Here replies are handled on gRPC's own thread pool with no interpreter lock, so a
// latency is the server's (and the network's), and the generators take a fraction of the CPU.
//
// Protocol with the parent (bench_server.py's native_load_generator), one line per message:
//   argv:   --target T --manifest HEX --rng-spec S --train LO HI --heartbeat-s H --seed N
//   stdin:  one "CLIENT_ID DELAY_S" line per client, "end", then "go" (start the clock), later "stop"
//           (or EOF)
//   stdout: "ready" (clients built), "progress JOINED SUBMITTED SYNCED FAILED" every 0.2 s,
//           "result {json}" once every client ended (or after stop), with bench_server's Samples keys.
// Clocks: steady_clock is CLOCK_MONOTONIC on Linux, the clock of Python's time.monotonic.

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "fedmezo/v1/federation.grpc.pb.h"

namespace fv1 = fedmezo::v1;
using Clock = std::chrono::steady_clock;

namespace {

// The Python generator's constants (bench_server.py), kept equal so both measure the same loop.
constexpr double kRpcTimeoutS = 60.0;
constexpr double kLongPollS = 30.0;
constexpr double kRoundDeadlineS = 600.0;
constexpr int kRetries = 5;
constexpr double kRetryBaseS = 0.2;
constexpr uint32_t kMaxDeltas = 16;
constexpr double kLagTickS = 0.02;
constexpr double kProgressS = 0.2;
constexpr double kStopGraceS = 5.0;

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

struct Settings {
  std::string target, manifest, rng_spec;
  double train_lo = 1.0, train_hi = 6.0, heartbeat_s = 0.0;
  uint64_t seed = 0;
};

// --- what was measured (bench_server.Samples), one lock: a sample costs far less than a call ---------
struct Samples {
  std::mutex mu;
  std::map<std::string, std::vector<double>> latency_ms;
  std::map<uint32_t, std::vector<double>> submitted_at, submit_ms, assigned_at, delta_at;
  std::map<std::string, long> errors;
  std::vector<std::string> failed_clients;
  std::vector<std::pair<double, double>> loop_lag;
  long accepted = 0, in_sync = 0;
};
Samples samples;
std::atomic<long> joined{0}, submitted{0}, synced{0}, failed{0}, running{0};
std::atomic<bool> stopping{false};

// --- one timer thread: sleeps (training, heartbeat intervals, retry backoff, start delays) -----------
class Timers {
 public:
  void at(double due, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push(Entry{due, seq_++, std::move(fn)});
    }
    cv_.notify_one();
  }
  void after(double delay_s, std::function<void()> fn) { at(now_s() + delay_s, std::move(fn)); }
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      double due = queue_.top().due;
      double wait = due - now_s();
      if (wait > 0) {
        cv_.wait_for(lock, std::chrono::duration<double>(wait));
        continue;
      }
      auto fn = std::move(const_cast<Entry&>(queue_.top()).fn);
      queue_.pop();
      lock.unlock();
      fn();  // starts an async call or schedules again: never blocks
      lock.lock();
    }
  }

 private:
  struct Entry {
    double due;
    uint64_t seq;
    std::function<void()> fn;
    bool operator<(const Entry& o) const { return due != o.due ? due > o.due : seq > o.seq; }
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Entry> queue_;
  uint64_t seq_ = 0;
};
Timers timers;

const char* code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

bool retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

// --- one simulated client ------------------------------------------------------------------------------
// The task chain (join, poll, train, submit, report) runs one step at a time; the heartbeat chain runs
// beside it and only reads the atomics below.
class Client : public std::enable_shared_from_this<Client> {
 public:
  Client(std::string id, const Settings& s) : id_(std::move(id)), s_(s) {
    std::seed_seq seq(id_.begin(), id_.end());
    std::vector<uint32_t> words(2);
    seq.generate(words.begin(), words.end());
    uint64_t mixed = (uint64_t(words[0]) << 32 | words[1]) ^ (s.seed * 0x9E3779B97F4A7C15ULL);
    task_rng_.seed(mixed);
    beat_rng_.seed(mixed ^ 0xD1B54A32D192ED03ULL);
    grpc::ChannelArguments args;
    // Its own TCP connection, as a daemon in its own process has (see SimClient).
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    channel_ = grpc::CreateCustomChannel(s.target, grpc::InsecureChannelCredentials(), args);
    stub_ = fv1::FederationService::NewStub(channel_);
  }

  void start(double delay_s) {
    running++;
    auto self = shared_from_this();
    timers.after(delay_s, [self] { self->join(); });
  }

  // Cancel what is in flight (the parent said stop).
  void cancel() {
    std::lock_guard<std::mutex> lock(ctx_mu_);
    for (auto& weak : in_flight_)
      if (auto ctx = weak.lock()) ctx->TryCancel();
  }

 private:
  template <class Req, class Resp>
  using Start = std::function<void(fv1::FederationService::Stub*, grpc::ClientContext*, const Req*,
                                   Resp*, std::function<void(grpc::Status)>)>;

  // One unary call, timed; UNAVAILABLE/RESOURCE_EXHAUSTED retried with backoff and counted (SimClient.call).
  template <class Req, class Resp>
  void call(const char* name, Start<Req, Resp> start, std::shared_ptr<Req> req, double timeout_s,
            std::function<void(const grpc::Status&, Resp&)> done, int attempt = 0) {
    auto ctx = std::make_shared<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(int64_t(timeout_s * 1e6)));
    auto resp = std::make_shared<Resp>();
    track(ctx);
    auto self = shared_from_this();
    double t0 = now_s();
    start(stub_.get(), ctx.get(), req.get(), resp.get(),
          [=](grpc::Status status) {
            self->untrack(ctx);
            if (status.ok()) {
              double ms = (now_s() - t0) * 1e3;
              std::lock_guard<std::mutex> lock(samples.mu);
              samples.latency_ms[name].push_back(ms);
            } else if (!self->closing_ && !stopping) {
              {
                std::lock_guard<std::mutex> lock(samples.mu);
                samples.errors[std::string(name) + ":" + code_name(status.error_code())]++;
              }
              if (attempt < kRetries && retryable(status.error_code())) {
                std::uniform_real_distribution<double> u(0.0, kRetryBaseS * (1 << attempt));
                double backoff;
                {
                  std::lock_guard<std::mutex> lock(self->rng_mu_);
                  backoff = u(self->beat_rng_);
                }
                timers.after(backoff, [=] {
                  self->template call<Req, Resp>(name, start, req, timeout_s, done, attempt + 1);
                });
                return;
              }
            }
            done(status, *resp);
          });
  }

  void track(const std::shared_ptr<grpc::ClientContext>& ctx) {
    std::lock_guard<std::mutex> lock(ctx_mu_);
    in_flight_.push_back(ctx);
  }
  void untrack(const std::shared_ptr<grpc::ClientContext>& ctx) {
    std::lock_guard<std::mutex> lock(ctx_mu_);
    for (auto it = in_flight_.begin(); it != in_flight_.end(); ++it)
      if (it->lock() == ctx) {
        in_flight_.erase(it);
        return;
      }
  }

  void join() {
    if (stopping) return finish(false);
    auto req = std::make_shared<fv1::JoinRequest>();
    req->set_client_id(id_);
    req->set_manifest_sha256(s_.manifest);
    req->set_rng_spec(s_.rng_spec);
    req->set_num_examples(std::uniform_int_distribution<int>(16, 256)(task_rng_));
    req->set_device("sim");
    req->set_client_version("bench_server");
    auto self = shared_from_this();
    call<fv1::JoinRequest, fv1::JoinResponse>(
        "Join",
        [](auto* stub, auto* ctx, auto* rq, auto* rp, auto cb) { stub->async()->Join(ctx, rq, rp, cb); },
        req, kRpcTimeoutS, [self](const grpc::Status& status, fv1::JoinResponse& resp) {
          if (!status.ok()) return self->finish(true);
          joined++;
          self->version_ = resp.rounds_completed();
          self->fingerprint_ = resp.fingerprint();
          if (self->s_.heartbeat_s > 0) {
            std::uniform_real_distribution<double> u(0.0, self->s_.heartbeat_s);
            double first;
            {
              std::lock_guard<std::mutex> lock(self->rng_mu_);
              first = u(self->beat_rng_);
            }
            double due = now_s() + first;
            timers.at(due, [self, due] { self->heartbeat(due); });
          }
          self->poll();
        });
  }

  // One GetTask and whatever follows (SimClient._one_poll, lean flow).
  void poll() {
    if (stopping) return finish(false);
    auto req = std::make_shared<fv1::GetTaskRequest>();
    req->set_client_id(id_);
    req->set_known_version(version_);
    req->set_wait_s(float(kLongPollS));
    req->set_max_deltas(kMaxDeltas);
    bool unreported = version_ > reported_;
    if (unreported) req->set_fingerprint(fingerprint_);
    polling_ = true;
    auto self = shared_from_this();
    call<fv1::GetTaskRequest, fv1::GetTaskResponse>(
        "GetTask",
        [](auto* stub, auto* ctx, auto* rq, auto* rp, auto cb) { stub->async()->GetTask(ctx, rq, rp, cb); },
        req, kLongPollS + kRpcTimeoutS,
        [self, unreported](const grpc::Status& status, fv1::GetTaskResponse& resp) {
          self->polling_ = false;
          if (!status.ok()) return self->finish(true);
          if (unreported) self->judged(resp.sync_action() != fv1::SYNC_ACTION_RESYNC);
          for (const auto& delta : resp.deltas()) {
            if (delta.round_id() == self->version_ + 1) {
              self->version_ = delta.round_id();
              self->fingerprint_ = delta.fingerprint();
              std::lock_guard<std::mutex> lock(samples.mu);
              samples.delta_at[delta.round_id()].push_back(now_s());
            }
          }
          auto next = [self, resp]() mutable { self->after_poll(resp); };
          if (resp.rounds_completed() > self->version_)  // too far behind for the poll's deltas
            return self->catch_up(resp.rounds_completed(), std::move(next));
          next();
        });
  }

  void after_poll(const fv1::GetTaskResponse& resp) {
    if (resp.status() == fv1::TASK_STATUS_RUN_FINISHED) return report();
    if (resp.status() == fv1::TASK_STATUS_ASSIGNED) {
      {
        std::lock_guard<std::mutex> lock(samples.mu);
        samples.assigned_at[resp.task().round_id()].push_back(now_s());
      }
      return train(resp.task());
    }
    poll();
  }

  void train(const fv1::Task& task) {
    activity_ = fv1::CLIENT_ACTIVITY_TRAINING;
    double seconds = std::uniform_real_distribution<double>(s_.train_lo, s_.train_hi)(task_rng_);
    auto self = shared_from_this();
    timers.after(seconds, [self, task] { self->submit(task); });
  }

  void submit(const fv1::Task& task) {
    if (stopping) return finish(false);
    auto req = std::make_shared<fv1::SubmitUpdateRequest>();
    req->set_client_id(id_);
    req->set_round_id(task.round_id());
    std::normal_distribution<float> grad(0.0f, 1.0f), loss(2.0f, 0.1f);
    uint32_t values = task.local_steps() * std::max<uint32_t>(1, task.perturbations());
    for (uint32_t i = 0; i < values; i++) req->add_projected_grads(grad(task_rng_));
    for (uint32_t i = 0; i < task.local_steps(); i++) req->add_losses(loss(task_rng_));
    req->set_step_time_s(0.5f);
    req->set_peak_memory_bytes(uint64_t(1) << 28);
    req->set_device("sim");
    bool base = version_ > reported_;
    if (base) req->set_base_fingerprint(fingerprint_);
    uint32_t round = task.round_id();
    double t0 = now_s();
    auto self = shared_from_this();
    call<fv1::SubmitUpdateRequest, fv1::SubmitUpdateResponse>(
        "SubmitUpdate",
        [](auto* stub, auto* ctx, auto* rq, auto* rp, auto cb) {
          stub->async()->SubmitUpdate(ctx, rq, rp, cb);
        },
        req, kRpcTimeoutS,
        [self, base, round, t0](const grpc::Status& status, fv1::SubmitUpdateResponse& resp) {
          if (!status.ok()) return self->finish(true);
          double t = now_s();
          bool accepted = resp.status() == fv1::UPDATE_STATUS_ACCEPTED;
          {
            std::lock_guard<std::mutex> lock(samples.mu);
            samples.submitted_at[round].push_back(t);
            samples.submit_ms[round].push_back((t - t0) * 1e3);
            samples.accepted += accepted;
          }
          submitted++;
          if (base && accepted) self->judged(true);  // a base fingerprint that differs is refused
          self->activity_ = fv1::CLIENT_ACTIVITY_IDLE;  // the next poll brings the round
          self->poll();
        });
  }

  void report() {
    auto req = std::make_shared<fv1::ReportFingerprintRequest>();
    req->set_client_id(id_);
    req->set_model_version(version_);
    req->set_fingerprint(fingerprint_);
    auto self = shared_from_this();
    call<fv1::ReportFingerprintRequest, fv1::ReportFingerprintResponse>(
        "ReportFingerprint",
        [](auto* stub, auto* ctx, auto* rq, auto* rp, auto cb) {
          stub->async()->ReportFingerprint(ctx, rq, rp, cb);
        },
        req, kRpcTimeoutS, [self](const grpc::Status& status, fv1::ReportFingerprintResponse& resp) {
          if (!status.ok()) return self->finish(true);
          self->judged(resp.in_sync());
          self->finish(false);
        });
  }

  // The server judged the fingerprint of version_ (version 0 is not a round's: not counted).
  void judged(bool in_sync) {
    if (version_ > 0) {
      {
        std::lock_guard<std::mutex> lock(samples.mu);
        samples.in_sync += in_sync;
      }
      synced++;
    }
    reported_ = version_;
  }

  // StreamRoundDeltas from version_+1 until round `until` (SimClient._follow_deltas, follow=false).
  class CatchUp : public grpc::ClientReadReactor<fv1::StreamRoundDeltasResponse> {
   public:
    CatchUp(std::shared_ptr<Client> client, uint32_t until, std::function<void()> next)
        : client_(std::move(client)), until_(until), next_(std::move(next)), t0_(now_s()) {
      req_.set_client_id(client_->id_);
      req_.set_from_round(client_->version_ + 1);
      req_.set_follow(false);
      ctx_.set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(int64_t(kRoundDeadlineS)));
      client_->stub_->async()->StreamRoundDeltas(&ctx_, &req_, this);
      StartRead(&msg_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      client_->version_ = msg_.round_id();
      client_->fingerprint_ = msg_.fingerprint();
      if (msg_.round_id() >= until_) {
        reached_ = true;
        double t = now_s();
        std::lock_guard<std::mutex> lock(samples.mu);
        samples.delta_at[until_].push_back(t);
        samples.latency_ms["StreamRoundDeltas (catch-up)"].push_back((t - t0_) * 1e3);
        ctx_.TryCancel();
        return;
      }
      StartRead(&msg_);
    }
    void OnDone(const grpc::Status& status) override {
      if (!reached_) {
        {
          std::lock_guard<std::mutex> lock(samples.mu);
          samples.errors[std::string("StreamRoundDeltas:") + code_name(status.error_code())]++;
        }
        client_->finish(true);
      } else {
        next_();
      }
      delete this;
    }

   private:
    std::shared_ptr<Client> client_;
    uint32_t until_;
    std::function<void()> next_;
    double t0_;
    bool reached_ = false;
    grpc::ClientContext ctx_;
    fv1::StreamRoundDeltasRequest req_;
    fv1::StreamRoundDeltasResponse msg_;
  };

  void catch_up(uint32_t until, std::function<void()> next) {
    new CatchUp(shared_from_this(), until, std::move(next));  // deletes itself when done
  }

  // What the daemon's heartbeat thread sends; a waiting GetTask keeps a lean client online. Each beat
  // is due an interval after the previous one was *due*, not after it ran: a timer thread that fell
  // behind (it opens every client's connection at the start) must not bunch every client's later
  // heartbeats into one burst, which independent daemons would not send.
  void heartbeat(double due) {
    if (closing_ || stopping) return;
    auto self = shared_from_this();
    double next = std::max(due + s_.heartbeat_s, now_s());
    if (polling_) {
      timers.at(next, [self, next] { self->heartbeat(next); });
      return;
    }
    auto req = std::make_shared<fv1::HeartbeatRequest>();
    req->set_client_id(id_);
    req->set_model_version(version_);
    req->set_activity(activity_);
    call<fv1::HeartbeatRequest, fv1::HeartbeatResponse>(
        "Heartbeat",
        [](auto* stub, auto* ctx, auto* rq, auto* rp, auto cb) { stub->async()->Heartbeat(ctx, rq, rp, cb); },
        req, kRpcTimeoutS, [self, next](const grpc::Status&, fv1::HeartbeatResponse&) {
          if (!self->closing_ && !stopping) {
            double at = std::max(next, now_s());
            timers.at(at, [self, at] { self->heartbeat(at); });
          }
        });
  }

  void finish(bool failure) {
    if (closing_.exchange(true)) return;
    if (failure && !stopping) {
      {
        std::lock_guard<std::mutex> lock(samples.mu);
        samples.failed_clients.push_back(id_);
      }
      failed++;
    }
    cancel();  // a heartbeat in flight
    running--;
  }

  std::string id_;
  const Settings& s_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<fv1::FederationService::Stub> stub_;
  std::mt19937_64 task_rng_, beat_rng_;
  std::mutex rng_mu_, ctx_mu_;
  std::vector<std::weak_ptr<grpc::ClientContext>> in_flight_;
  // Written by the task chain, read by the heartbeat chain.
  std::atomic<uint32_t> version_{0};
  std::atomic<bool> polling_{false}, closing_{false};
  std::atomic<fv1::ClientActivity> activity_{fv1::CLIENT_ACTIVITY_IDLE};
  std::string fingerprint_;
  int64_t reported_ = -1;
};

// How late the timer thread runs a LAG_TICK_S timer: the delay a sleep-then-call of a client carries.
void lag_probe() {
  double due = now_s() + kLagTickS;
  timers.at(due, [due] {
    double late = std::max(0.0, now_s() - due) * 1e3;
    {
      std::lock_guard<std::mutex> lock(samples.mu);
      samples.loop_lag.emplace_back(due, late);
    }
    if (!stopping) lag_probe();
  });
}

// --- the report: a JSON object with bench_server.Samples' keys ---------------------------------------
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

template <class Key>
void put_series(std::string& out, const std::map<Key, std::vector<double>>& series) {
  out += "{";
  bool first = true;
  for (const auto& [key, values] : series) {
    if (!first) out += ",";
    first = false;
    if constexpr (std::is_same_v<Key, std::string>)
      out += quoted(key);
    else
      out += "\"" + std::to_string(key) + "\"";
    out += ":[";
    char buf[32];
    for (size_t i = 0; i < values.size(); i++) {
      snprintf(buf, sizeof buf, i ? ",%.6f" : "%.6f", values[i]);
      out += buf;
    }
    out += "]";
  }
  out += "}";
}

std::string report_json() {
  std::lock_guard<std::mutex> lock(samples.mu);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
               usage.ru_stime.tv_usec / 1e6;
  std::string out = "{\"latency_ms\":";
  put_series(out, samples.latency_ms);
  out += ",\"submitted_at\":";
  put_series(out, samples.submitted_at);
  out += ",\"submit_ms\":";
  put_series(out, samples.submit_ms);
  out += ",\"assigned_at\":";
  put_series(out, samples.assigned_at);
  out += ",\"delta_at\":";
  put_series(out, samples.delta_at);
  out += ",\"accepted\":" + std::to_string(samples.accepted);
  out += ",\"in_sync\":" + std::to_string(samples.in_sync);
  out += ",\"errors\":{";
  bool first = true;
  for (const auto& [name, count] : samples.errors) {
    out += (first ? "" : ",") + quoted(name) + ":" + std::to_string(count);
    first = false;
  }
  out += "},\"cpu_s\":" + std::to_string(cpu) + ",\"failed_clients\":[";
  for (size_t i = 0; i < samples.failed_clients.size(); i++)
    out += (i ? "," : "") + quoted(samples.failed_clients[i]);
  out += "],\"loop_lag\":[";
  char buf[64];
  for (size_t i = 0; i < samples.loop_lag.size(); i++) {
    snprintf(buf, sizeof buf, i ? ",[%.6f,%.3f]" : "[%.6f,%.3f]", samples.loop_lag[i].first,
             samples.loop_lag[i].second);
    out += buf;
  }
  return out + "]}";
}

int usage_error(const char* what) {
  fprintf(stderr, "loadgen: %s\nusage: loadgen --target HOST:PORT --manifest HEX --rng-spec S "
                  "--train LO HI --heartbeat-s H --seed N  (clients on stdin)\n", what);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; i++) {
    std::string flag = argv[i];
    auto value = [&](int ahead = 1) -> const char* { return i + ahead < argc ? argv[i + ahead] : nullptr; };
    if (flag == "--target" && value()) s.target = argv[++i];
    else if (flag == "--manifest" && value()) {
      std::string hex = argv[++i];
      if (hex.size() % 2) return usage_error("--manifest: odd number of hex digits");
      for (size_t k = 0; k < hex.size(); k += 2) s.manifest.push_back(char(std::stoi(hex.substr(k, 2), nullptr, 16)));
    } else if (flag == "--rng-spec" && value()) s.rng_spec = argv[++i];
    else if (flag == "--train" && value(2)) {
      s.train_lo = std::stod(argv[++i]);
      s.train_hi = std::stod(argv[++i]);
    } else if (flag == "--heartbeat-s" && value()) s.heartbeat_s = std::stod(argv[++i]);
    else if (flag == "--seed" && value()) s.seed = std::stoull(argv[++i]);
    else return usage_error(("unknown or incomplete argument " + flag).c_str());
  }
  if (s.target.empty() || s.manifest.size() != 32 || s.train_lo < 0 || s.train_hi < s.train_lo)
    return usage_error("need --target, a 32-byte --manifest and 0 <= LO <= HI");

  std::vector<std::pair<std::shared_ptr<Client>, double>> clients;
  std::string line;
  while (std::getline(std::cin, line) && line != "end") {
    auto space = line.find(' ');
    if (space == std::string::npos) return usage_error(("bad client line: " + line).c_str());
    clients.emplace_back(std::make_shared<Client>(line.substr(0, space), s), std::stod(line.substr(space + 1)));
  }
  if (line != "end" || clients.empty()) return usage_error("stdin ended before the clients and \"end\"");
  printf("ready\n");
  fflush(stdout);
  if (!std::getline(std::cin, line) || line != "go") return 0;  // the parent gave up before the start

  std::thread(&Timers::run, &timers).detach();
  lag_probe();
  for (auto& [client, delay] : clients) client->start(delay);
  std::thread([] {  // "stop" or EOF from the parent
    std::string command;
    while (std::getline(std::cin, command) && command != "stop") {
    }
    stopping = true;
  }).detach();

  double stop_deadline = 0;
  while (running > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(kProgressS));
    printf("progress %ld %ld %ld %ld\n", joined.load(), submitted.load(), synced.load(), failed.load());
    fflush(stdout);
    if (stopping) {
      if (stop_deadline == 0) {
        stop_deadline = now_s() + kStopGraceS;
        for (auto& entry : clients) entry.first->cancel();
      } else if (now_s() > stop_deadline) {
        break;  // a call that ignored its cancel: report what was measured
      }
    }
  }
  stopping = true;
  printf("result %s\n", report_json().c_str());
  fflush(stdout);
  _exit(0);  // no orderly teardown of thousands of channels: the parent only needs the report
}
