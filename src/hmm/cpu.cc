/*
 * gluon_hmm CPU driver: scaled forward/backward, posteriors, Viterbi and
 * posterior sampling over a batch of sequences.
 *
 * Recursions (per sequence b of length L; A' = exp(log_trans - mA) with mA the
 * largest finite entry of the matrix used at that step; u_t = exp(e_t - m_t)
 * with m_t the largest emission at step t; a row with +inf or NaN makes some
 * c_t non-finite, and the sequence falls back as described below):
 *
 *   forward   p_0 = exp(log_init + e_0 - m_0)          c_0 = sum p_0   alpha_0 = p_0 / c_0
 *             v_t = alpha_{t-1} A'   p_t = v_t * u_t    c_t = sum p_t   alpha_t = p_t / c_t
 *             loglik = sum_t (log c_t + m_t + mA_t)     (mA_0 = 0)
 *   backward  beta_{L-1} = 1
 *             r_t = u_t * beta_t / c_t                  beta_{t-1} = A' r_t
 *             gamma_t = alpha_t * beta_t                 (= d loglik / d log_emit[t])
 *             xi_t[i,j] = alpha_{t-1,i} A'_ij r_t,j      (= d loglik / d log_trans[t][i,j])
 *
 * alpha_t and beta_t are the usual scaled variables (sum_j gamma_t = 1).  When
 * a normaliser c_t falls below ScaleLimits<T>::min_norm() (or is not finite),
 * or beta grows past a safe bound, the sequence is recomputed exactly by the
 * float64 log-space recursions instead, so -inf structural zeros, emissions of
 * -1e4 or positive log-densities never lose the answer.
 *
 * Work is spread over a persistent thread pool.  With a shared transition
 * matrix, sequences of similar length run in lockstep groups of up to four so
 * that each step is one small matrix product (G x N) (N x N) whose matrix rows
 * are loaded once for the group.  A sequence that runs alone with one SIMD
 * vector per row (N <= 8 float32, N <= 4 float64) takes forward_small /
 * backward_small instead: there each step is a latency-bound chain, so the
 * state stays in a register and the side work is interleaved with the chain.
 */
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <sched.h>
#include <unistd.h>

#include "common.h"
#include "drivers.h"

#define HMM_INLINE inline __attribute__((always_inline))
// For lambdas inside the per-ISA kernels: one left out of line is compiled once,
// for the baseline instruction set, and called from the AVX2/AVX-512 clones.
#define HMM_LAMBDA_INLINE __attribute__((always_inline))

namespace gluon_hmm {
namespace cpu {

/* ------------------------------------------------------------------------ */
/* Scratch memory: a per-thread bump arena, reused across calls.             */
/* ------------------------------------------------------------------------ */
class Arena {
 public:
  ~Arena() { std::free(base_); }
  // Forget every block; blocks chained past the arena are freed (and the arena
  // grows once to hold them next time), so nothing accumulates across calls.
  void reset() {
    if (!spill_.empty()) release_spill();
    used_ = 0;
  }
  // Returns 64-byte aligned memory; grows (keeping nothing) only when reset.
  void* get(size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    if (used_ + bytes > cap_) {
      if (used_ != 0) {
        // Cannot move live blocks: chain a new block, freed on the next reset.
        void* extra = std::aligned_alloc(64, bytes);
        if (!extra) throw std::bad_alloc();
        spill_.emplace_back(extra, &std::free);
        return extra;
      }
      std::free(base_);
      cap_ = std::max(bytes, cap_ * 2);
      base_ = static_cast<char*>(std::aligned_alloc(64, cap_));
      if (!base_) { cap_ = 0; throw std::bad_alloc(); }
    }
    void* p = base_ + used_;
    used_ += bytes;
    return p;
  }
  template <typename T> T* array(int64_t n) { return static_cast<T*>(get(sizeof(T) * size_t(n))); }
  void release_spill() {
    // Fold chained blocks into one larger arena next time.
    if (!spill_.empty()) {
      size_t want = cap_ * 2;
      spill_.clear();
      std::free(base_);
      base_ = nullptr;
      cap_ = 0;
      base_ = static_cast<char*>(std::aligned_alloc(64, want));
      if (base_) cap_ = want;
    }
    // Do not keep huge scratch alive forever.
    if (cap_ > (size_t(256) << 20)) { std::free(base_); base_ = nullptr; cap_ = 0; }
    used_ = 0;
  }

 private:
  char* base_ = nullptr;
  size_t cap_ = 0, used_ = 0;
  std::vector<std::unique_ptr<void, void (*)(void*)>> spill_;
};

struct ArenaScope {
  Arena& a;
  explicit ArenaScope(Arena& arena) : a(arena) { a.reset(); }
  ~ArenaScope() { a.release_spill(); }
};

Arena& worker_arena() { thread_local Arena a; return a; }
Arena& call_arena() { thread_local Arena a; return a; }

/* ------------------------------------------------------------------------ */
/* Thread pool.                                                              */
/* ------------------------------------------------------------------------ */
class Pool {
 public:
  // Runs job(tid) on the caller (tid 0) and on up to n-1 workers (tids 1..n-1, each at
  // most once); returns when every participant is done.  A worker takes part only if
  // it claims a slot while the job is open: the caller closes the job when its own
  // share is done, so a worker slow to wake (a halted vCPU can take tens of
  // microseconds to milliseconds) neither delays the call nor touches it late.
  // Jobs must therefore pull work dynamically, so that the caller alone can do
  // everything; a second caller while the pool is busy runs its job alone.
  void run(int n, const std::function<void(int)>& job) {
    if (n <= 1 || !busy_.try_lock()) { job(0); return; }
    std::lock_guard<std::mutex> guard(busy_, std::adopt_lock);
    n = std::min(n, kMaxThreads);
    ensure_workers(n - 1);
    job_ = &job;
    // Open: n-1 slots, nobody active (the last job left the word at zero).
    work_.store(int64_t(n - 1) << 32, std::memory_order_release);
    {
      // Under mu_: a worker about to sleep either sees the new generation or is woken.
      std::lock_guard<std::mutex> lk(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job(0);
    // Close: drop the unclaimed slots, then wait for the workers that are in.
    const int64_t left = work_.fetch_and(kActiveMask, std::memory_order_acq_rel);
    if ((left & kActiveMask) != 0 &&
        !spin_until([&] { return work_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return work_.load(std::memory_order_acquire) == 0; });
    }
    job_ = nullptr;
  }

 private:
  static constexpr int64_t kActiveMask = 0xffffffff;

  // Waits up to spin_ns() for pred() without sleeping; true if it held.  Waking a
  // sleeping thread costs tens of microseconds to milliseconds on a virtual machine
  // whose idle vCPU is halted, so workers wait this way for a while after each job
  // (calls come in bursts: forward, then backward), as OpenMP runtimes do.  After
  // the first kPauseNs each check yields the CPU: a runnable thread on this core
  // (MXNet's engine thread, the Python thread between a forward and its backward)
  // runs instead of waiting behind a spinning worker (A/B in benchmarks/NOTES.md).
  template <typename P>
  static bool spin_until(P pred) {
    constexpr int64_t kPauseNs = 2000;
    const int64_t limit = spin_ns();
    const auto start = std::chrono::steady_clock::now();
    bool yielding = false;
    for (int k = 0;; ++k) {
      if (pred()) return true;
      if (yielding || (k & 15) == 15) {
        const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now() - start).count();
        if (ns > limit) return pred();
        yielding = ns > kPauseNs;
      }
      if (yielding) sched_yield(); else cpu_relax();
    }
  }
  // GLUON_HMM_SPIN_US (microseconds, default 200; 0 = sleep at once), read once.
  static int64_t spin_ns() {
    static const int64_t ns = env_int("GLUON_HMM_SPIN_US", 200, 0, 10000000) * 1000;
    return ns;
  }
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  // A new worker starts from the current generation: it waits for the next job.
  void ensure_workers(int k) {
    while (static_cast<int>(count_) < k) {
      count_++;
      const int64_t gen = gen_.load(std::memory_order_acquire);
      std::thread([this, gen] { loop(gen); }).detach();
    }
  }
  // One slot of the open job: its tid (1..n-1), or 0 when the job is closed or full.
  int claim() {
    int64_t w = work_.load(std::memory_order_acquire);
    while ((w >> 32) > 0) {
      if (work_.compare_exchange_weak(w, w - (int64_t(1) << 32) + 1, std::memory_order_acq_rel))
        return static_cast<int>(w >> 32);
    }
    return 0;
  }
  void loop(int64_t seen) {
    for (;;) {
      auto fresh = [&] { return gen_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, fresh);
      }
      seen = gen_.load(std::memory_order_acquire);
      const int tid = claim();
      if (tid == 0) continue;  // closed before this worker got there
      // The job it claimed may be newer than the generation read above (then this
      // worker wakes once more for it and finds it closed or takes a second slot:
      // jobs pull work dynamically, so either is harmless).
      (*job_)(tid);
      if (work_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);  // pairs with the caller's wait
        done_cv_.notify_all();
      }
    }
  }

  std::mutex busy_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  static constexpr int kMaxThreads = 256;
  std::atomic<int64_t> gen_{0};   // job generation
  std::atomic<int64_t> work_{0};  // open slots << 32 | active workers
  std::atomic<int> count_{0};
};

/* The pool is per process: a forked child gets a fresh one (its parent's
 * worker threads do not exist there).  Old pools are leaked on purpose. */
Pool& pool() {
  static std::mutex mu;
  static Pool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(mu);
  if (!p || owner != getpid()) { p = new Pool(); owner = getpid(); }
  return *p;
}

std::atomic<int> g_default_threads{0};

int default_threads() {
  int n = g_default_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  // Read once: hardware_concurrency() costs a few system calls.
  static const int initial = [] {
    const char* env = std::getenv("GLUON_HMM_NUM_THREADS");
    if (env && std::atoi(env) > 0) return std::atoi(env);
    const int hw = static_cast<int>(std::thread::hardware_concurrency());
    return hw > 0 ? hw : 1;
  }();
  return initial;
}

/* Runs body(item, tid) for every item in [0, n) over up to `threads` threads.
 * Work below ~0.2 MFLOP runs on the caller: waking workers costs more. */
template <typename F>
void parallel_for(int64_t n, int threads, double work, F body) {
  int t = threads > 0 ? threads : default_threads();
  if (t > n) t = static_cast<int>(n);
  if (work < 2e5) t = 1;
  if (t <= 1) {
    ArenaScope scope(worker_arena());
    for (int64_t i = 0; i < n; ++i) body(i, 0);
    return;
  }
  // Thread k starts on the k-th of t contiguous blocks of items, then takes what
  // is left of the others' blocks.  So item i of a forward pass and item i of the
  // backward pass after it usually run on the same core, whose cache holds the
  // forward variables of item i; a thread slow to start (or the caller alone, when
  // no worker came) still leaves nothing undone.
  struct alignas(64) Block {
    std::atomic<int64_t> next;
    int64_t end;
  };
  std::unique_ptr<Block[]> blocks(new Block[t]);
  for (int k = 0; k < t; ++k) {
    blocks[k].next.store(n * k / t, std::memory_order_relaxed);
    blocks[k].end = n * (k + 1) / t;
  }
  std::function<void(int)> job = [&](int tid) {
    ArenaScope scope(worker_arena());
    for (int k = 0; k < t; ++k) {
      Block& blk = blocks[(tid + k) % t];
      for (int64_t i; (i = blk.next.fetch_add(1, std::memory_order_relaxed)) < blk.end;)
        body(i, tid);
    }
  };
  pool().run(t, job);
}

int effective_threads(const hmm_problem_t* p) {
  return p->num_threads > 0 ? p->num_threads : default_threads();
}

/* ------------------------------------------------------------------------ */
/* Typed views of one call's inputs.                                          */
/* ------------------------------------------------------------------------ */
template <typename T>
struct Model {
  int64_t B, T_, N, Np;
  const T* init;
  const T* trans;
  const T* emit;
  const void* lengths;
  hmm_init_mode_t init_mode;
  hmm_trans_mode_t trans_mode;
  hmm_lengths_type_t lengths_type;

  Model(const hmm_problem_t* p, const hmm_inputs_t* in)
      : B(p->batch), T_(p->time), N(p->states), Np(padded_states(p->states, p->dtype)),
        init(static_cast<const T*>(in->log_init)), trans(static_cast<const T*>(in->log_trans)),
        emit(static_cast<const T*>(in->log_emit)), lengths(in->lengths),
        init_mode(p->init_mode), trans_mode(p->trans_mode), lengths_type(p->lengths_type) {}

  int64_t length(int64_t b) const {
    if (lengths_type == HMM_LENGTHS_INT32) return static_cast<const int32_t*>(lengths)[b];
    if (lengths_type == HMM_LENGTHS_INT64) return static_cast<const int64_t*>(lengths)[b];
    return T_;
  }
  const T* init_of(int64_t b) const { return init_mode == HMM_INIT_SHARED ? init : init + b * N; }
  // The matrix used to move into step t (t >= 1) of sequence b.
  const T* trans_of(int64_t b, int64_t t) const {
    if (trans_mode == HMM_TRANS_SHARED) return trans;
    if (trans_mode == HMM_TRANS_PER_SEQUENCE) return trans + b * N * N;
    return trans + (b * T_ + t) * N * N;
  }
  const T* emit_of(int64_t b, int64_t t) const { return emit + (b * T_ + t) * N; }
};

template <typename T>
struct Saved {
  T* base;
  int64_t T_, Np;
  T* scales;  // section starts, computed once (the offsets cost a division)
  T* flags;
  T* emits;
  Saved(T* saved, int64_t B, int64_t T__, int64_t Np_, int dtype, int64_t N)
      : base(saved), T_(T__), Np(Np_),
        scales(saved + saved_scale_offset(B, T__, N, dtype)),
        flags(saved + saved_flag_offset(B, T__, N, dtype)),
        emits(saved + saved_emit_offset(B, T__, N, dtype)) {}
  T* alpha(int64_t b, int64_t t) const { return base + (b * T_ + t) * Np; }
  // u_t = exp(e_t - m_t), as the forward pass computed it (common.h)
  T* emit(int64_t b, int64_t t) const { return emits + (b * T_ + t) * Np; }
  T& scale(int64_t b, int64_t t) const { return scales[b * T_ + t]; }
  T& flag(int64_t b) const { return flags[b]; }
};

template <typename T> constexpr int dtype_of();
template <> constexpr int dtype_of<float>() { return HMM_FLOAT32; }
template <> constexpr int dtype_of<double>() { return HMM_FLOAT64; }

template <typename T> HMM_INLINE bool finite(T x) { return std::isfinite(x); }
template <typename T> HMM_INLINE T neg_inf() { return -std::numeric_limits<T>::infinity(); }
template <typename T> HMM_INLINE T beta_limit() { return std::numeric_limits<T>::max() / T(1e8); }

/* ------------------------------------------------------------------------ */
/* Exact float64 log-space recursions (the fallback).                         */
/* ------------------------------------------------------------------------ */
inline double logsumexp(const double* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) if (x[i] > m) m = x[i];
  if (std::isnan(m)) return m;
  for (int64_t i = 0; i < n; ++i) if (std::isnan(x[i])) return x[i];
  if (m == -INFINITY || m == INFINITY) return m;
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

// la[t*N + j] = log alpha_t(j) for t < L; returns loglik.
template <typename T>
double log_forward(const Model<T>& M, int64_t b, int64_t L, double* la, double* tmp) {
  const int64_t N = M.N;
  if (L == 0) return 0.0;
  const T* li = M.init_of(b);
  const T* e0 = M.emit_of(b, 0);
  for (int64_t j = 0; j < N; ++j) la[j] = double(li[j]) + double(e0[j]);
  for (int64_t t = 1; t < L; ++t) {
    const T* lt = M.trans_of(b, t);
    const T* e = M.emit_of(b, t);
    const double* prev = la + (t - 1) * N;
    double* cur = la + t * N;
    for (int64_t j = 0; j < N; ++j) {
      for (int64_t i = 0; i < N; ++i) tmp[i] = prev[i] + double(lt[i * N + j]);
      cur[j] = logsumexp(tmp, N) + double(e[j]);
    }
  }
  return logsumexp(la + (L - 1) * N, N);
}

struct GradSinks {
  // Destinations of one sequence's statistics, each scaled by w:
  double* trans_acc;  // shared or per-sequence (N x N, row-major, float64); or NULL
  void* trans_step;   // time-varying: grad_trans + b*T*N*N (dtype), or NULL
  double* init_acc;   // N float64 accumulators (shared init), or NULL
  void* init_row;     // per-sequence init gradient row (dtype), or NULL
  void* emit_rows;    // grad_emit + b*T*N (dtype), or NULL
};

// Log-space backward of sequence b, scaled by w; adds (not writes) into trans_acc/init_acc.
template <typename T>
void log_backward(const Model<T>& M, int64_t b, int64_t L, double w, const GradSinks& out,
                  double* la, double* tmp, double* lb_cur, double* lb_prev) {
  const int64_t N = M.N, TT = M.T_;
  T* ge = static_cast<T*>(out.emit_rows);
  T* gts = static_cast<T*>(out.trans_step);
  if (ge) std::fill(ge, ge + TT * N, T(0));
  if (gts) std::fill(gts, gts + TT * N * N, T(0));
  if (out.init_row) std::fill(static_cast<T*>(out.init_row), static_cast<T*>(out.init_row) + N, T(0));
  if (L == 0) return;
  const double ll = log_forward(M, b, L, la, tmp);
  if (ll == -INFINITY) return;  // impossible sequence: zero statistics
  for (int64_t j = 0; j < N; ++j) lb_cur[j] = 0.0;
  for (int64_t t = L - 1; t >= 0; --t) {
    const double* lat = la + t * N;
    for (int64_t j = 0; j < N; ++j) {
      const double g = w * std::exp(lat[j] + lb_cur[j] - ll);
      if (ge) ge[t * N + j] = T(g);
      if (t == 0) {
        if (out.init_acc) out.init_acc[j] += g;
        if (out.init_row) static_cast<T*>(out.init_row)[j] = T(g);
      }
    }
    if (t == 0) break;
    const T* lt = M.trans_of(b, t);
    const T* e = M.emit_of(b, t);
    const double* lap = la + (t - 1) * N;
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        tmp[j] = double(lt[i * N + j]) + double(e[j]) + lb_cur[j];
        const double xi = w * std::exp(lap[i] + tmp[j] - ll);
        if (out.trans_acc) out.trans_acc[i * N + j] += xi;
        if (gts) gts[t * N * N + i * N + j] = T(xi);
      }
      lb_prev[i] = logsumexp(tmp, N);
    }
    std::swap(lb_cur, lb_prev);
  }
}

/* ------------------------------------------------------------------------ */
/* What the forward and backward kernels share across a call.             */
/* ------------------------------------------------------------------------ */
template <typename T>
struct FwdShared {
  const Model<T>* M;
  Saved<T> S;
  T* loglik;           // (B,) or NULL
  const T* A;          // shared A' (N x Np), or NULL when it varies
  T mA;
};


template <typename T>
struct BwdShared {
  const Model<T>* M;
  Saved<T> S;
  const T* w;          // (B,) upstream weights
  T* grad_init;        // or NULL
  T* grad_trans;       // or NULL
  T* grad_emit;        // or NULL (posterior needs gamma: never NULL there)
  const T* A;          // shared A' and A'^T (N x Np), or NULL
  const T* At;
  T mA;
};

// float64 accumulators for the sums over the batch of shared-parameter
// gradients, one set per chunk of work items (backward_impl).
struct ChunkAcc {
  double* trans_pre;   // sum of alpha^T r, to be multiplied by A' (N x N)
  double* init;        // N
  double* trans_direct;  // log-space counts (N x N): zeroed on first use only
  bool direct_used;    // (the fallback is rare; most calls never touch it)
};

// Transition statistics are summed in float for at most this many steps, then
// added to float64 accumulators (keeps float32 sums accurate at long T).
constexpr int64_t kFlush = 128;

// Zeros the gradients the backward pass of member b (length L) does not write
// otherwise: grad_emit past L and a per-sequence grad_init row.
template <typename T>
HMM_INLINE void backward_zero_padding(const BwdShared<T>& Bw, int64_t b, int64_t L) {
  const Model<T>& M = *Bw.M;
  const int64_t N = M.N, TT = M.T_;
  if (Bw.grad_emit) std::fill(Bw.grad_emit + (b * TT + L) * N, Bw.grad_emit + (b + 1) * TT * N, T(0));
  if (Bw.grad_init && M.init_mode == HMM_INIT_PER_SEQUENCE)
    std::fill(Bw.grad_init + b * N, Bw.grad_init + (b + 1) * N, T(0));
}

// t = 0 of member b: gamma_0 = w alpha_0 beta_0 into grad_emit[b, 0] and the
// initial-state gradient (summed into the chunk's accumulator when shared).
template <typename T>
HMM_INLINE void backward_step0(const BwdShared<T>& Bw, int64_t b, T w, const T* beta,
                               ChunkAcc* acc) {
  const Model<T>& M = *Bw.M;
  const int64_t N = M.N;
  const T* a = Bw.S.alpha(b, 0);
  T* ge = Bw.grad_emit ? Bw.grad_emit + b * M.T_ * N : nullptr;
  for (int64_t j = 0; j < N; ++j) {
    const T gam = a[j] == T(0) ? T(0) : w * a[j] * beta[j];
    if (ge) ge[j] = gam;
    if (Bw.grad_init) {
      if (M.init_mode == HMM_INIT_SHARED) acc->init[j] += double(gam);
      else Bw.grad_init[b * N + j] = gam;
    }
  }
}

// The float64 transition statistics Sd (N x N, before the factor A') of one
// work item: into the chunk's accumulator (shared matrix), or, for the
// per-sequence matrix of member b (length L), grad_trans[b] = A' * Sd.
template <typename T>
HMM_INLINE void backward_trans_done(const BwdShared<T>& Bw, int64_t b, int64_t L, const T* A,
                                    int64_t Np, const double* Sd, ChunkAcc* acc) {
  const int64_t N = Bw.M->N;
  if (Bw.M->trans_mode == HMM_TRANS_SHARED) {
    for (int64_t k = 0; k < N * N; ++k) acc->trans_pre[k] += Sd[k];
    return;
  }
  T* gt = Bw.grad_trans + b * N * N;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) gt[i * N + j] = T(double(A[i * Np + j]) * Sd[i * N + j]);
  if (L <= 1) std::fill(gt, gt + N * N, T(0));
}

template <typename T>
void backward_log_one(const BwdShared<T>& Bw, int64_t b, ChunkAcc* acc, Arena& ar) {
  const Model<T>& M = *Bw.M;
  const int64_t N = M.N, TT = M.T_, L = M.length(b);
  const double w = double(Bw.w[b]);
  double* direct = nullptr;
  if (Bw.grad_trans && M.trans_mode == HMM_TRANS_SHARED) {
    direct = acc->trans_direct;
    if (!acc->direct_used) {
      std::fill(direct, direct + N * N, 0.0);
      acc->direct_used = true;
    }
  }
  if (Bw.grad_trans && M.trans_mode == HMM_TRANS_PER_SEQUENCE) {
    direct = ar.array<double>(N * N);
    std::fill(direct, direct + N * N, 0.0);
  }
  GradSinks sinks{direct,
                  Bw.grad_trans && M.trans_mode == HMM_TRANS_TIME_VARYING
                      ? Bw.grad_trans + b * TT * N * N : nullptr,
                  Bw.grad_init && M.init_mode == HMM_INIT_SHARED ? acc->init : nullptr,
                  Bw.grad_init && M.init_mode == HMM_INIT_PER_SEQUENCE ? Bw.grad_init + b * N
                                                                       : nullptr,
                  Bw.grad_emit ? Bw.grad_emit + b * TT * N : nullptr};
  double* la = ar.array<double>(std::max<int64_t>(L, 1) * N);
  double* tmp = ar.array<double>(N);
  double* lb0 = ar.array<double>(N);
  double* lb1 = ar.array<double>(N);
  log_backward(M, b, L, w, sinks, la, tmp, lb0, lb1);
  if (direct && M.trans_mode == HMM_TRANS_PER_SEQUENCE) {
    T* gt = Bw.grad_trans + b * N * N;
    for (int64_t k = 0; k < N * N; ++k) gt[k] = T(direct[k]);
  }
}

}  // namespace cpu
}  // namespace gluon_hmm

/* ------------------------------------------------------------------------ */
/* The kernels, once per vector width.                                        */
/* ------------------------------------------------------------------------ */
#if defined(__x86_64__) && !defined(GLUON_HMM_NO_CLONES)
#define HMM_HAVE_V512 1
#else
#define HMM_HAVE_V512 0
#endif

// 256-bit vectors, in clones for AVX-512 (VL), AVX2+FMA and the baseline.
#define HMM_VEC_BYTES 32
#define HMM_ISA v256
#if HMM_HAVE_V512
#define HMM_ISA_ENTRY __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HMM_ISA_ENTRY
#endif
#include "cpu_kernels.h"

#if HMM_HAVE_V512
// 512-bit vectors, for CPUs with AVX-512 (F, VL, BW, DQ, CD: x86-64-v4) only.
#define HMM_VEC_BYTES 64
#define HMM_ISA v512
#define HMM_ISA_ENTRY __attribute__((target("arch=x86-64-v4")))
#include "cpu_kernels.h"
#endif

namespace gluon_hmm {
namespace cpu {

/* Which width runs a call: 512 bits when the CPU has AVX-512, the caller has not
 * capped the width at 256 (hmm_set_cpu_vector_bits, GLUON_HMM_CPU_VECTOR_BITS),
 * and the rows are whole 512-bit vectors (padded_states: all but the smallest
 * N); else 256 bits.  A row of one 256-bit vector (N <= 8 float32, N <= 4
 * float64) stays on 256 bits: its kernels are latency-bound chains. */
bool cpu_has_v512() {
#if HMM_HAVE_V512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd");
  }();
  return has;
#else
  return false;
#endif
}

int env_vector_bits() {
  const char* env = std::getenv("GLUON_HMM_CPU_VECTOR_BITS");
  if (!env) return 0;
  const int v = std::atoi(env);
  return (v == 256 || v == 512) ? v : 0;
}
std::atomic<int> g_vector_bits{env_vector_bits()};  // 0: the widest the CPU runs

int vector_bits() {
  const int widest = cpu_has_v512() ? 512 : 256;
  const int cap = g_vector_bits.load(std::memory_order_relaxed);
  return cap == 0 ? widest : std::min(cap, widest);
}

template <typename T> HMM_INLINE bool use_v512(const Model<T>& M) {
  return HMM_HAVE_V512 && M.Np % (64 / int64_t(sizeof(T))) == 0 && vector_bits() >= 512;
}

#if HMM_HAVE_V512
#define HMM_DISPATCH(M, call) (use_v512(M) ? v512::call : v256::call)
#else
#define HMM_DISPATCH(M, call) (v256::call)
#endif

inline void forward_item(const FwdShared<float>& F, const int64_t* s, int g, Arena& a) { HMM_DISPATCH(*F.M, forward_item_f32(F, s, g, a)); }
inline void forward_item(const FwdShared<double>& F, const int64_t* s, int g, Arena& a) { HMM_DISPATCH(*F.M, forward_item_f64(F, s, g, a)); }
inline bool backward_item(const BwdShared<float>& B, const int64_t* s, int g, ChunkAcc* c, Arena& a) { return HMM_DISPATCH(*B.M, backward_item_f32(B, s, g, c, a)); }
inline bool backward_item(const BwdShared<double>& B, const int64_t* s, int g, ChunkAcc* c, Arena& a) { return HMM_DISPATCH(*B.M, backward_item_f64(B, s, g, c, a)); }
// A' (and A'^T) of a matrix shared by the call, at the width the call runs:
// the drivers themselves are compiled for the baseline instruction set.
inline float prepare_matrix(const Model<float>& M, const float* lt, float* A, float* At) {
  return HMM_DISPATCH(M, prepare_trans_f32(lt, M.N, M.Np, A, At));
}
inline double prepare_matrix(const Model<double>& M, const double* lt, double* A, double* At) {
  return HMM_DISPATCH(M, prepare_trans_f64(lt, M.N, M.Np, A, At));
}
inline void shared_trans_grad(const Model<float>& M, const float* A, const double* pre,
                              const double* direct, float* out) {
  HMM_DISPATCH(M, shared_trans_grad_f32(A, M.N, M.Np, pre, direct, out));
}
inline void shared_trans_grad(const Model<double>& M, const double* A, const double* pre,
                              const double* direct, double* out) {
  HMM_DISPATCH(M, shared_trans_grad_f64(A, M.N, M.Np, pre, direct, out));
}

// A' of a matrix shared by the call (and A'^T when At is given) in scratch from
// arena ca; nothing when the matrix varies by sequence or step.
template <typename T>
void prepare_shared(const Model<T>& M, Arena& ca, const T** A, T* mA, const T** At = nullptr) {
  if (M.trans_mode != HMM_TRANS_SHARED) return;
  T* a = ca.array<T>(M.N * M.Np);
  T* at = At ? ca.array<T>(M.N * M.Np) : nullptr;
  *mA = prepare_matrix(M, M.trans, a, at);
  *A = a;
  if (At) *At = at;
}

/* ------------------------------------------------------------------------ */
/* Batch drivers.                                                             */
/* ------------------------------------------------------------------------ */

// Sequences in lockstep groups: with a shared matrix, sorted by length (longest
// first) and grouped by up to 4; otherwise one sequence per group.
struct Groups {
  std::vector<int64_t> order;
  std::vector<int64_t> start;  // group k = order[start[k] .. start[k+1])
};

template <typename T>
Groups make_groups(const Model<T>& M, bool skip_flagged, const Saved<T>* S) {
  Groups gr;
  std::vector<int64_t> all;
  all.reserve(M.B);
  for (int64_t b = 0; b < M.B; ++b) {
    if (skip_flagged && S->flag(b) != T(0)) continue;
    all.push_back(b);
  }
  const int gmax = M.trans_mode == HMM_TRANS_SHARED ? 4 : 1;
  if (gmax > 1)
    std::stable_sort(all.begin(), all.end(),
                     [&](int64_t a, int64_t b) { return M.length(a) > M.length(b); });
  gr.order = all;
  for (size_t k = 0; k < all.size(); k += gmax) gr.start.push_back(static_cast<int64_t>(k));
  gr.start.push_back(static_cast<int64_t>(all.size()));
  return gr;
}

template <typename T>
double flops_estimate(const Model<T>& M) {
  return 2.0 * double(M.B) * double(M.T_) * double(M.N) * double(M.N) + 1.0;
}

template <typename T>
void forward_impl(const hmm_problem_t* p, const hmm_inputs_t* in, T* loglik, T* saved) {
  Model<T> M(p, in);
  ArenaScope scope(call_arena());
  Arena& ca = call_arena();
  FwdShared<T> F{&M, Saved<T>{saved, M.B, M.T_, M.Np, dtype_of<T>(), M.N}, loglik, nullptr, 0};
  prepare_shared(M, ca, &F.A, &F.mA);
  Groups gr = make_groups(M, false, &F.S);
  const int64_t ng = static_cast<int64_t>(gr.start.size()) - 1;
  parallel_for(ng, effective_threads(p), flops_estimate(M), [&](int64_t k, int) {
    Arena& ar = worker_arena();
    ar.reset();
    forward_item(F, gr.order.data() + gr.start[k], int(gr.start[k + 1] - gr.start[k]), ar);
  });
}

/* Chunks of backward work items with their own accumulators for sums over the
 * batch: up to 16 (enough to balance 16 threads), fewer when their float64
 * accumulators (2 N^2 + N each) would pass 256 MiB.  A function of the
 * problem only, never of the thread count. */
int64_t accumulator_chunks(int64_t nitems, int64_t acc_len) {
  constexpr int64_t kMaxChunks = 16;
  constexpr int64_t kBudgetBytes = int64_t(256) << 20;
  const int64_t by_memory = std::max<int64_t>(1, kBudgetBytes / (acc_len * int64_t(sizeof(double))));
  return std::min({nitems, kMaxChunks, by_memory});
}

/* The backward pass over a batch, in three steps that the separate backward call
 * and the fused forward-backward call share: the plan (groups of the sequences
 * the scaled forward pass could trust, the flagged ones alone, chunks and their
 * accumulators), the chunks (any thread, any order), and the end (the chunks'
 * sums, in chunk order, into the shared gradients). */
template <typename T>
struct BackwardPlan {
  const Model<T>& M;
  const BwdShared<T>& Bw;
  Groups gr;
  std::vector<int64_t> flagged;
  int64_t ng = 0, nitems = 0, nchunks = 0, nacc = 0;
  int64_t acc_len = 0, eager_len = 0;
  bool sums = false;
  double* acc_mem = nullptr;
  std::vector<ChunkAcc> accs;

  // Groups from the forward's flags: flagged sequences run alone in log space.
  BackwardPlan(const Model<T>& m, const BwdShared<T>& bw, Arena& ca)
      : BackwardPlan(m, bw, make_groups(m, true, &bw.S)) {
    for (int64_t b = 0; b < M.B; ++b) if (Bw.S.flag(b) != T(0)) flagged.push_back(b);
    set_chunks(ca);
  }
  // Groups given, nothing flagged (the fused call's optimistic plan).
  BackwardPlan(const Model<T>& m, const BwdShared<T>& bw, Arena& ca, Groups groups)
      : BackwardPlan(m, bw, std::move(groups)) { set_chunks(ca); }

  // Item k of this plan: group k, or a flagged sequence (k >= ng).
  void item(int64_t k, ChunkAcc* acc, Arena& ar) const {
    ar.reset();
    if (k >= ng) { backward_log_one(Bw, flagged[k - ng], acc, ar); return; }
    const int64_t* seq = gr.order.data() + gr.start[k];
    const int g = int(gr.start[k + 1] - gr.start[k]);
    if (backward_item(Bw, seq, g, acc, ar)) return;
    // The group could not be trusted: redo its members one at a time, exactly where needed.
    for (int m = 0; m < g; ++m) {
      ar.reset();
      if (g > 1 && backward_item(Bw, seq + m, 1, acc, ar)) continue;
      ar.reset();
      backward_log_one(Bw, seq[m], acc, ar);
    }
  }
  int64_t chunk_begin(int64_t c) const { return c * nitems / nchunks; }
  int64_t chunk_end(int64_t c) const { return (c + 1) * nitems / nchunks; }
  // Chunk c's accumulators, zeroed by the thread that runs the chunk (off the
  // call's serial path, into that core's cache); NULL-filled when nothing is summed.
  ChunkAcc* open_chunk(int64_t c) {
    ChunkAcc* acc = &accs[sums ? c : 0];
    if (sums) std::fill(acc->trans_pre, acc->trans_pre + eager_len, 0.0);
    return acc;
  }
  void run_chunk(int64_t c, Arena& ar) {
    ChunkAcc* acc = open_chunk(c);
    for (int64_t k = chunk_begin(c); k < chunk_end(c); ++k) item(k, acc, ar);
  }
  // The chunks' sums, in chunk order, into chunk 0 and out to the shared gradients;
  // the log-space counts only when some chunk has them (the others' are zeroed
  // first: the same sums, in order).
  void finish() {
    if (!sums) return;
    const int64_t N = M.N;
    bool any_direct = false;
    for (int64_t k = 0; k < nacc; ++k) any_direct = any_direct || accs[k].direct_used;
    if (any_direct)
      for (int64_t k = 0; k < nacc; ++k)
        if (!accs[k].direct_used) std::fill(accs[k].trans_direct, accs[k].trans_direct + N * N, 0.0);
    HMM_DISPATCH(M, sum_chunks(acc_mem, nacc, acc_len, any_direct ? acc_len : eager_len));
    if (Bw.grad_init && M.init_mode == HMM_INIT_SHARED)
      for (int64_t j = 0; j < N; ++j) Bw.grad_init[j] = T(accs[0].init[j]);
    if (Bw.grad_trans && M.trans_mode == HMM_TRANS_SHARED)
      shared_trans_grad(M, Bw.A, accs[0].trans_pre, any_direct ? accs[0].trans_direct : nullptr,
                        Bw.grad_trans);
  }

 private:
  BackwardPlan(const Model<T>& m, const BwdShared<T>& bw, Groups groups)
      : M(m), Bw(bw), gr(std::move(groups)) {}
  // Sums over the batch (the gradients of a shared log_init / log_trans) are
  // reproducible bit for bit whatever the thread count or the scheduling: the
  // work items are cut into contiguous chunks, as many as the problem alone
  // says; each chunk adds its items, in order, into its own float64
  // accumulators, and the chunks are summed in order at the end.
  void set_chunks(Arena& ca) {
    const int64_t N = M.N;
    ng = static_cast<int64_t>(gr.start.size()) - 1;
    nitems = ng + static_cast<int64_t>(flagged.size());
    sums = (Bw.grad_init && M.init_mode == HMM_INIT_SHARED) ||
           (Bw.grad_trans && M.trans_mode == HMM_TRANS_SHARED);
    acc_len = 2 * N * N + N;
    nchunks = sums ? accumulator_chunks(nitems, acc_len) : nitems;
    // Without sums nothing reads or writes an accumulator: none is allocated.
    nacc = sums ? std::max<int64_t>(nchunks, 1) : 0;  // nchunks is 0 for B = 0
    acc_mem = sums ? ca.array<double>(acc_len * nacc) : nullptr;
    // Per chunk: [trans_pre N*N][init N] zeroed before its items, [trans_direct N*N]
    // zeroed by the log-space fallback when it first adds to it.
    eager_len = N * N + N;
    accs.assign(static_cast<size_t>(std::max<int64_t>(nacc, 1)),
                ChunkAcc{nullptr, nullptr, nullptr, false});
    for (int64_t k = 0; k < nacc; ++k)
      accs[k] = ChunkAcc{acc_mem + k * acc_len, acc_mem + k * acc_len + N * N,
                         acc_mem + k * acc_len + eager_len, false};
    if (sums && nchunks == 0) std::fill(acc_mem, acc_mem + eager_len, 0.0);  // B = 0: zero sums
  }
};

// Every chunk of the plan over the call's threads, then the chunks' sums.
template <typename T>
void run_plan(BackwardPlan<T>& plan, const hmm_problem_t* p) {
  parallel_for(plan.nchunks, std::max(1, effective_threads(p)), 2 * flops_estimate(plan.M),
               [&](int64_t c, int) { plan.run_chunk(c, worker_arena()); });
  plan.finish();
}

template <typename T>
void backward_impl(const hmm_problem_t* p, const hmm_inputs_t* in, const T* saved,
                   const T* w, T* grad_init, T* grad_trans, T* grad_emit) {
  Model<T> M(p, in);
  ArenaScope scope(call_arena());
  Arena& ca = call_arena();
  BwdShared<T> Bw{&M, Saved<T>{const_cast<T*>(saved), M.B, M.T_, M.Np, dtype_of<T>(), M.N},
                  w, grad_init, grad_trans, grad_emit, nullptr, nullptr, 0};
  prepare_shared(M, ca, &Bw.A, &Bw.mA, &Bw.At);
  BackwardPlan<T> plan(M, Bw, ca);
  run_plan(plan, p);
}

/* Forward and backward in one pass over the batch: each chunk of groups runs
 * its backward right after its forward, while the group's forward variables
 * are still in that core's cache, with one parallel loop, one preparation of
 * the shared matrix and no serial work in between.  The plan assumes the
 * scaled forward pass trusts every sequence, so that the backward's groups
 * and chunks are the forward's, and the results are those of forward_impl
 * then backward_impl, bit for bit.  When some sequence is flagged (its
 * likelihood needed log space), the chunks stop their backward work and the
 * separate backward pass runs afterwards on the finished forward state. */
template <typename T>
void forward_backward_impl(const hmm_problem_t* p, const hmm_inputs_t* in, const T* w,
                           T* loglik, T* saved, T* grad_init, T* grad_trans, T* grad_emit) {
  Model<T> M(p, in);
  ArenaScope scope(call_arena());
  Arena& ca = call_arena();
  const Saved<T> S{saved, M.B, M.T_, M.Np, dtype_of<T>(), M.N};
  BwdShared<T> Bw{&M, S, w, grad_init, grad_trans, grad_emit, nullptr, nullptr, 0};
  prepare_shared(M, ca, &Bw.A, &Bw.mA, &Bw.At);
  FwdShared<T> F{&M, S, loglik, Bw.A, Bw.mA};
  BackwardPlan<T> plan(M, Bw, ca, make_groups(M, false, &S));
  const Groups& gr = plan.gr;
  std::atomic<bool> flagged{false};
  parallel_for(plan.nchunks, std::max(1, effective_threads(p)), 3 * flops_estimate(M),
               [&](int64_t c, int) {
    Arena& ar = worker_arena();
    ChunkAcc* acc = plan.open_chunk(c);
    for (int64_t k = plan.chunk_begin(c); k < plan.chunk_end(c); ++k) {
      const int64_t* seq = gr.order.data() + gr.start[k];
      const int g = int(gr.start[k + 1] - gr.start[k]);
      ar.reset();
      forward_item(F, seq, g, ar);
      for (int m = 0; m < g; ++m)
        if (S.flag(seq[m]) != T(0)) flagged.store(true, std::memory_order_relaxed);
      if (flagged.load(std::memory_order_relaxed)) continue;  // forward only from here on
      plan.item(k, acc, ar);
    }
  });
  if (flagged.load()) {
    BackwardPlan<T> full(M, Bw, ca);
    run_plan(full, p);
    return;
  }
  plan.finish();
}

template <typename T>
void posterior_impl(const hmm_problem_t* p, const hmm_inputs_t* in, T* gamma, T* counts,
                    T* loglik, T* init_counts) {
  Model<T> M(p, in);
  std::vector<T> saved(static_cast<size_t>(saved_elems_cpu(M.B, M.T_, M.N, dtype_of<T>())));
  std::vector<T> ll(static_cast<size_t>(std::max<int64_t>(M.B, 1)));
  std::vector<T> ones(static_cast<size_t>(std::max<int64_t>(M.B, 1)), T(1));
  forward_backward_impl<T>(p, in, ones.data(), ll.data(), saved.data(), init_counts, counts,
                           gamma);
  if (loglik) std::copy(ll.begin(), ll.begin() + M.B, loglik);
}

/* ------------------------------------------------------------------------ */
/* Viterbi (float64 max-plus) and posterior sampling.                         */
/* ------------------------------------------------------------------------ */
template <typename T>
void viterbi_one(const Model<T>& M, int64_t b, int32_t* path, T* score, const double* shared_lt,
                 Arena& ar) {
  const int64_t N = M.N, TT = M.T_, L = M.length(b);
  int32_t* pb = path + b * TT;
  for (int64_t t = L; t < TT; ++t) pb[t] = -1;
  if (L == 0) { score[b] = T(0); return; }
  double* delta = ar.array<double>(N);
  double* next = ar.array<double>(N);
  double* lt = shared_lt ? nullptr : ar.array<double>(N * N);
  int32_t* bp = ar.array<int32_t>(L * N);
  bool nan_seen = false;
  const T* li = M.init_of(b);
  const T* e0 = M.emit_of(b, 0);
  for (int64_t j = 0; j < N; ++j) {
    delta[j] = double(li[j]) + double(e0[j]);
    nan_seen |= std::isnan(delta[j]);
  }
  int64_t loaded = -1;
  for (int64_t t = 1; t < L; ++t) {
    const double* m = shared_lt;
    if (!m) {
      const int64_t key = M.trans_mode == HMM_TRANS_PER_SEQUENCE ? 0 : t;
      if (key != loaded) {
        const T* src = M.trans_of(b, t);
        for (int64_t k = 0; k < N * N; ++k) lt[k] = double(src[k]);
        loaded = key;
      }
      m = lt;
    }
    int32_t* bpt = bp + t * N;
    for (int64_t j = 0; j < N; ++j) { next[j] = -INFINITY; bpt[j] = 0; }
    // A NaN candidate (a NaN weight, or -inf + inf: an infinite weight out of an
    // unreachable state, 0 * inf in the forward pass) makes the score NaN, as it
    // makes the log-likelihood NaN; the max itself would silently drop it.
    bool cand_nan = false;
    for (int64_t i = 0; i < N; ++i) {
      const double di = delta[i];
      const double* row = m + i * N;
      for (int64_t j = 0; j < N; ++j) {
        const double cand = di + row[j];
        const bool better = cand > next[j];  // strict: the lower i wins ties
        cand_nan |= cand != cand;
        next[j] = better ? cand : next[j];
        bpt[j] = better ? int32_t(i) : bpt[j];
      }
    }
    nan_seen |= cand_nan;
    const T* e = M.emit_of(b, t);
    for (int64_t j = 0; j < N; ++j) {
      delta[j] = next[j] + double(e[j]);
      nan_seen |= std::isnan(delta[j]);
    }
  }
  int32_t best = 0;
  double bs = -INFINITY;
  for (int64_t j = 0; j < N; ++j)
    if (delta[j] > bs) { bs = delta[j]; best = int32_t(j); }
  pb[L - 1] = best;
  for (int64_t t = L - 1; t >= 1; --t) pb[t - 1] = bp[t * N + pb[t]];
  score[b] = nan_seen ? T(NAN) : T(bs);
}

template <typename T>
void viterbi_impl(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path, T* score) {
  Model<T> M(p, in);
  ArenaScope scope(call_arena());
  double* shared_lt = nullptr;
  if (M.trans_mode == HMM_TRANS_SHARED) {
    shared_lt = call_arena().array<double>(M.N * M.N);
    for (int64_t k = 0; k < M.N * M.N; ++k) shared_lt[k] = double(M.trans[k]);
  }
  parallel_for(M.B, effective_threads(p), flops_estimate(M), [&](int64_t b, int) {
    Arena& ar = worker_arena();
    ar.reset();
    viterbi_one(M, b, path, score, shared_lt, ar);
  });
}

// Index k of the first cumulative weight exceeding u * total; -1 when total is not positive.
inline int32_t draw(const double* wts, int64_t n, double u) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += wts[i];
  if (!(total > 0) || !std::isfinite(total)) return -1;
  const double target = u * total;
  double c = 0;
  int32_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (wts[i] > 0) last = int32_t(i);
    c += wts[i];
    if (c > target && wts[i] > 0) return int32_t(i);
  }
  return last;
}

template <typename T>
void sample_one(const Model<T>& M, int64_t b, int64_t S, const int32_t* seed, int32_t* paths,
                const T* sharedA, T sharedmA, Arena& ar) {
  const int64_t N = M.N, Np = M.Np, TT = M.T_, L = M.length(b);
  for (int64_t s = 0; s < S; ++s) {
    int32_t* ps = paths + (b * S + s) * TT;
    for (int64_t t = L; t < TT; ++t) ps[t] = -1;
  }
  if (L == 0) return;
  // Forward filter into a one-sequence saved buffer.
  const int64_t selems = saved_elems_cpu(1, L, N, dtype_of<T>());
  T* sbuf = ar.array<T>(selems);
  Saved<T> sv{sbuf, 1, L, Np, dtype_of<T>(), N};
  Model<T> M1 = M;
  // View sequence b as a batch of one of length L.
  M1.B = 1;
  M1.T_ = L;
  const int64_t len = L;
  M1.lengths = &len;
  M1.lengths_type = HMM_LENGTHS_INT64;
  M1.emit = M.emit_of(b, 0);
  M1.init = M.init_of(b);
  M1.init_mode = HMM_INIT_SHARED;
  if (M.trans_mode == HMM_TRANS_PER_SEQUENCE) { M1.trans = M.trans_of(b, 0); M1.trans_mode = HMM_TRANS_SHARED; }
  if (M.trans_mode == HMM_TRANS_TIME_VARYING) M1.trans = M.trans + b * TT * N * N;
  T* A = nullptr;
  T mA = sharedmA;
  if (M.trans_mode == HMM_TRANS_SHARED) {
    A = const_cast<T*>(sharedA);
  } else if (M.trans_mode == HMM_TRANS_PER_SEQUENCE) {
    A = ar.array<T>(N * Np);
    mA = prepare_matrix(M1, M1.trans, A, static_cast<T*>(nullptr));
  }
  FwdShared<T> F{&M1, sv, nullptr, A, mA};
  const int64_t zero = 0;
  forward_item(F, &zero, 1, ar);
  const bool logspace = sv.flag(0) != T(0);
  double* la = nullptr;
  double* tmp = ar.array<double>(N);
  double* wts = ar.array<double>(N);
  if (logspace) {
    la = ar.array<double>(L * N);
    if (log_forward(M1, 0, L, la, tmp) == -INFINITY) {
      for (int64_t s = 0; s < S; ++s) {
        int32_t* ps = paths + (b * S + s) * TT;
        for (int64_t t = 0; t < L; ++t) ps[t] = -1;
      }
      return;
    }
  }
  for (int64_t s = 0; s < S; ++s) {
    int32_t* ps = paths + (b * S + s) * TT;
    const uint64_t key = stream_key(seed[0], seed[1], b, s);
    // z_{L-1} ~ alpha_{L-1}
    if (logspace) {
      const double* row = la + (L - 1) * N;
      double mx = -INFINITY;
      for (int64_t i = 0; i < N; ++i) mx = std::max(mx, row[i]);
      for (int64_t i = 0; i < N; ++i) wts[i] = std::exp(row[i] - mx);
    } else {
      const T* a = sv.alpha(0, L - 1);
      for (int64_t i = 0; i < N; ++i) wts[i] = double(a[i]);
    }
    int32_t z = draw(wts, N, uniform01(key, L - 1));
    ps[L - 1] = z;
    for (int64_t t = L - 1; t >= 1 && z >= 0; --t) {
      const T* lt = M1.trans_of(0, t);
      double mx = -INFINITY;
      for (int64_t i = 0; i < N; ++i) mx = std::max(mx, double(lt[i * N + z]));
      if (mx == -INFINITY) mx = 0;
      for (int64_t i = 0; i < N; ++i) {
        const double tr = std::exp(double(lt[i * N + z]) - mx);
        if (logspace) {
          tmp[i] = la[(t - 1) * N + i];
        } else {
          wts[i] = double(sv.alpha(0, t - 1)[i]) * tr;
        }
        if (logspace) tmp[i] += double(lt[i * N + z]);
      }
      if (logspace) {
        double m2 = -INFINITY;
        for (int64_t i = 0; i < N; ++i) m2 = std::max(m2, tmp[i]);
        for (int64_t i = 0; i < N; ++i) wts[i] = std::exp(tmp[i] - m2);
      }
      z = draw(wts, N, uniform01(key, t - 1));
      ps[t - 1] = z;
    }
    if (z < 0)  // numerically impossible path (NaN inputs): mark the whole sample
      for (int64_t t = 0; t < L; ++t) ps[t] = -1;
  }
}

template <typename T>
void sample_impl(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t S, const int32_t* seed,
                 int32_t* paths) {
  Model<T> M(p, in);
  ArenaScope scope(call_arena());
  const T* A = nullptr;
  T mA = 0;
  prepare_shared(M, call_arena(), &A, &mA);
  parallel_for(M.B, effective_threads(p), flops_estimate(M) * (1 + 0.1 * double(S)),
               [&](int64_t b, int) {
                 Arena& ar = worker_arena();
                 ar.reset();
                 sample_one(M, b, S, seed, paths, A, mA, ar);
               });
}

template <typename F>
hmm_status_t guarded(F f) {
  try {
    f();
    return HMM_STATUS_SUCCESS;
  } catch (const std::bad_alloc&) {
    return HMM_STATUS_TOO_LARGE;
  }
}

}  // namespace cpu
}  // namespace gluon_hmm

using namespace gluon_hmm::cpu;

extern "C" {

void hmm_cpu_set_default_threads(int n) { g_default_threads.store(n > 0 ? n : 0); }
int hmm_cpu_default_threads(void) { return default_threads(); }
int hmm_cpu_set_vector_bits(int bits) {
  if (bits != 0 && bits != 256 && bits != 512) return -1;
  g_vector_bits.store(bits);
  return vector_bits();
}
int hmm_cpu_vector_bits(void) { return vector_bits(); }

hmm_status_t hmm_cpu_backward_workspace_size(const hmm_problem_t*, size_t* bytes) {
  *bytes = 0;  // the CPU driver uses per-thread arenas
  return HMM_STATUS_SUCCESS;
}
hmm_status_t hmm_cpu_posterior_workspace_size(const hmm_problem_t*, size_t* bytes) {
  *bytes = 0;
  return HMM_STATUS_SUCCESS;
}
hmm_status_t hmm_cpu_viterbi_workspace_size(const hmm_problem_t*, size_t* bytes) {
  *bytes = 0;
  return HMM_STATUS_SUCCESS;
}
hmm_status_t hmm_cpu_sample_workspace_size(const hmm_problem_t*, int64_t, size_t* bytes) {
  *bytes = 0;
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_cpu_forward(const hmm_problem_t* p, const hmm_inputs_t* in, void* loglik,
                             void* saved) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      forward_impl<float>(p, in, static_cast<float*>(loglik), static_cast<float*>(saved));
    else
      forward_impl<double>(p, in, static_cast<double*>(loglik), static_cast<double*>(saved));
  });
}

hmm_status_t hmm_cpu_backward(const hmm_problem_t* p, const hmm_inputs_t* in, const void* saved,
                              const void* grad_loglik, void* grad_init, void* grad_trans,
                              void* grad_emit, void*) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      backward_impl<float>(p, in, static_cast<const float*>(saved),
                           static_cast<const float*>(grad_loglik), static_cast<float*>(grad_init),
                           static_cast<float*>(grad_trans), static_cast<float*>(grad_emit));
    else
      backward_impl<double>(p, in, static_cast<const double*>(saved),
                            static_cast<const double*>(grad_loglik),
                            static_cast<double*>(grad_init), static_cast<double*>(grad_trans),
                            static_cast<double*>(grad_emit));
  });
}

hmm_status_t hmm_cpu_forward_backward(const hmm_problem_t* p, const hmm_inputs_t* in,
                                      const void* grad_loglik, void* loglik, void* saved,
                                      void* grad_init, void* grad_trans, void* grad_emit, void*) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      forward_backward_impl<float>(p, in, static_cast<const float*>(grad_loglik),
                                   static_cast<float*>(loglik), static_cast<float*>(saved),
                                   static_cast<float*>(grad_init), static_cast<float*>(grad_trans),
                                   static_cast<float*>(grad_emit));
    else
      forward_backward_impl<double>(p, in, static_cast<const double*>(grad_loglik),
                                    static_cast<double*>(loglik), static_cast<double*>(saved),
                                    static_cast<double*>(grad_init),
                                    static_cast<double*>(grad_trans),
                                    static_cast<double*>(grad_emit));
  });
}

hmm_status_t hmm_cpu_posterior(const hmm_problem_t* p, const hmm_inputs_t* in, void* gamma,
                               void* trans_counts, void* loglik, void* init_counts, void*) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      posterior_impl<float>(p, in, static_cast<float*>(gamma), static_cast<float*>(trans_counts),
                            static_cast<float*>(loglik), static_cast<float*>(init_counts));
    else
      posterior_impl<double>(p, in, static_cast<double*>(gamma),
                             static_cast<double*>(trans_counts), static_cast<double*>(loglik),
                             static_cast<double*>(init_counts));
  });
}

hmm_status_t hmm_cpu_viterbi(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path,
                             void* score, void*) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      viterbi_impl<float>(p, in, path, static_cast<float*>(score));
    else
      viterbi_impl<double>(p, in, path, static_cast<double*>(score));
  });
}

hmm_status_t hmm_cpu_sample(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t num_samples,
                            const int32_t* seed, int32_t* paths, void*) {
  return guarded([&] {
    if (p->dtype == HMM_FLOAT32)
      sample_impl<float>(p, in, num_samples, seed, paths);
    else
      sample_impl<double>(p, in, num_samples, seed, paths);
  });
}

}  // extern "C"
