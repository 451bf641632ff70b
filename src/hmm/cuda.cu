/*
 * gluon_hmm engine: the CUDA driver (hmm_cuda_*, declared in drivers.h).
 *
 * Same semantics, saved-state layout and random stream as the CPU driver
 * (cpu.cc); see hmm.h for the ABI and common.h for the layout.  All pointers
 * are device pointers; nothing here reads device memory on the host or
 * synchronises: every op is a short sequence of kernel launches on
 * problem->stream, each followed by a cudaGetLastError check.
 *
 * Recursions (sequence b of length L; A'_t = exp(log_trans_t - mA_t) with mA_t
 * the largest finite entry of the matrix used at step t; u_t = exp(e_t - m_t)
 * with m_t the largest finite emission at step t; mi the largest finite entry
 * of log_init):
 *
 *   forward   p_0 = exp(log_init - mi) * u_0            c_0 = sum p_0   alpha_0 = p_0 / c_0
 *             v_t = alpha_{t-1} A'_t   p_t = v_t * u_t   c_t = sum p_t   alpha_t = p_t / c_t
 *             loglik = log c_0 + m_0 + mi + sum_{t>=1} (log c_t + m_t + mA_t)   (float64)
 *             scale[b,t] = c_t; a c_t below ScaleLimits<T>::min_norm() or not finite sets
 *             flag[b] = 1 and the sequence is redone by the float64 log-space recursion.
 *
 *   backward  self-normalised scaled beta: with y_t any positive multiple of beta_t,
 *             n_t = <alpha_t, y_t>, beta_hat_t = y_t / n_t (so sum_j gamma_t = 1):
 *               gamma_t  = alpha_t * y_t / n_t
 *               r_t      = u_t * y_t / n_t        (0 where alpha_t = 0)
 *               y_{t-1}  = A'_t r_t               so n_{t-1} = <alpha_{t-1}, A'_t r_t> = c_t
 *               xi_t[i,j] = alpha_{t-1,i} A'_t[i,j] r_t[j] / n_{t-1}
 *             The scale c_t is recomputed as n_{t-1} instead of read back, so the
 *             posteriors sum to one whatever rounding the forward pass saw.
 *             grad_emit = w gamma; grad_trans = A' (.) sum_t alpha_{t-1}^T (w r_t / c_t),
 *             a GEMM over (b, t) done after the time loop by a separate parallel kernel.
 *
 *   log space (flagged sequences), float64, as the CPU driver:
 *             la_0 = log_init + e_0,  la_t[j] = logsumexp_i(la_{t-1}[i] + lt_t[i,j]) + e_t[j]
 *             lb_{t-1}[i] = logsumexp_j(lt_t[i,j] + e_t[j] + lb_t[j]),  lb_{L-1} = 0.
 *
 *   Viterbi   float64 max-plus with the CPU's strict-greater rule (ties -> lower index).
 *   sample    forward filtering, backward sampling with common.h's counter-based stream.
 *
 * Thread mapping.  One "group" of W threads runs the whole time loop of one
 * sequence (or one time chunk of it) inside a single kernel launch; lane j owns
 * state j.  W is the next power of two >= N for N <= 32 (several sequences per
 * warp, warp-synchronous), else N rounded up to a multiple of 32 (one block per
 * sequence).  Exchange between lanes goes through double-buffered shared
 * vectors: one group barrier per time step; every warp recomputes the step's
 * normaliser and emission maximum from shared memory, so no second barrier is
 * needed.  The shifted transition matrix A' lives in shared memory (rows that do
 * not fit are read from global memory and exponentiated on the fly); a
 * time-varying matrix is read from global memory at each step.
 *
 * Few long sequences (N <= 32, chosen by chunk_length()) use a parallel-in-time
 * variant: the valid steps are split into chunks; phase 1 computes every
 * chunk's row-rescaled product of step matrices A'_t diag(u_t) in parallel;
 * phase 2 scans the chunk boundaries sequentially (one matrix-vector product per
 * chunk); phase 3 reruns the ordinary recursion inside every chunk in parallel
 * from its boundary vector.  The backward pass does the same with beta.
 * GLUON_HMM_CUDA_CHUNK=0 disables it, =K forces chunks of K steps (tests).
 */
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "drivers.h"
#include "hmm.h"

namespace gluon_hmm {
namespace cuda_driver {
namespace {

constexpr int kMaxStates = 1024;        // one state per thread, at most 1024 threads
constexpr int kChunkMaxStates = 32;     // the parallel-in-time variant
constexpr int kRedBytes = 1024;         // shared scratch for block reductions
constexpr int kGemmKc = 256;            // time steps per split of the transition-count GEMM
constexpr double kLn2 = 0.693147180559945309417232121458;

template <typename T> __device__ __forceinline__ T ninf() { return T(-INFINITY); }
template <typename T> __device__ __forceinline__ T qnan() { return T(NAN); }

/* ---------------------------------------------------------------------------
 * Typed view of one call's inputs (device side).
 * ------------------------------------------------------------------------- */
template <typename T>
struct View {
  int64_t B, T_, N;
  int init_mode, trans_mode, lengths_type;
  const T* li;
  const T* lt;
  const T* le;
  const void* lengths;

  __device__ __forceinline__ int64_t length(int64_t b) const {
    int64_t L = T_;
    if (lengths_type == HMM_LENGTHS_INT32) L = static_cast<const int32_t*>(lengths)[b];
    else if (lengths_type == HMM_LENGTHS_INT64) L = static_cast<const int64_t*>(lengths)[b];
    // Lengths are validated on the host only for CPU calls; clamp so that a bad
    // value can never make a kernel touch memory outside its sequence.
    return L < 0 ? 0 : (L > T_ ? T_ : L);
  }
  __device__ __forceinline__ const T* init(int64_t b) const {
    return init_mode == HMM_INIT_SHARED ? li : li + b * N;
  }
  // The matrix used to move into step t (t >= 1) of sequence b.
  __device__ __forceinline__ const T* trans(int64_t b, int64_t t) const {
    if (trans_mode == HMM_TRANS_SHARED) return lt;
    if (trans_mode == HMM_TRANS_PER_SEQUENCE) return lt + b * N * N;
    return lt + (b * T_ + t) * N * N;
  }
  // Index of that matrix in a per-matrix array (mA).
  __device__ __forceinline__ int64_t mat_id(int64_t b, int64_t t) const {
    if (trans_mode == HMM_TRANS_SHARED) return 0;
    if (trans_mode == HMM_TRANS_PER_SEQUENCE) return b;
    return b * T_ + t;
  }
  __device__ __forceinline__ const T* emit(int64_t b, int64_t t) const {
    return le + (b * T_ + t) * N;
  }
};

/* Chunk c of a sequence of length L, chunk length K (0: none).  Steps 1..L-1
 * are split into Cb >= 2 chunks of at least K steps each, [s, e); with Cb == 1
 * the "chunk" is the whole sequence (s = 1, e = L). */
__device__ __forceinline__ void chunk_range(int64_t L, int64_t K, int64_t c, int64_t* Cb,
                                            int64_t* s, int64_t* e) {
  int64_t n = 1;
  if (K > 0 && L - 1 >= 2 * K) n = (L - 1) / K;
  *Cb = n;
  if (n == 1) { *s = 1; *e = L; return; }
  *s = 1 + c * (L - 1) / n;
  *e = 1 + (c + 1) * (L - 1) / n;
}

/* ---------------------------------------------------------------------------
 * Thread groups and reductions.
 * ------------------------------------------------------------------------- */
struct Group {
  int W;          // threads in the group: a power of two <= 32, or blockDim.x
  int lane;       // 0..W-1
  int U;          // reduction unit: min(W, 32) lanes of one warp
  int ul;         // lane within the unit
  unsigned mask;  // the unit's lanes
  __device__ __forceinline__ void sync() const {
    if (W > 32) __syncthreads(); else __syncwarp(mask);
  }
};

__device__ __forceinline__ Group make_group(int W) {
  Group g;
  g.W = W;
  g.lane = static_cast<int>(threadIdx.x) % W;
  g.U = W < 32 ? W : 32;
  g.ul = static_cast<int>(threadIdx.x) % g.U;
  const int wl = static_cast<int>(threadIdx.x) & 31;
  g.mask = g.U == 32 ? 0xffffffffu : (((1u << g.U) - 1u) << (wl / g.U * g.U));
  return g;
}

template <typename T> __device__ __forceinline__ T max_of(T a, T b) { return b > a ? b : a; }
// NaN-propagating maximum.
__device__ __forceinline__ double nanmax(double a, double b) {
  return (isnan(a) || isnan(b)) ? NAN : (b > a ? b : a);
}
template <typename T> __device__ __forceinline__ T finite_or_ninf(T x) {
  return isfinite(x) ? x : ninf<T>();
}

/* Over k < n: the sum of s_arr[k] and the largest finite m_arr[k] (-inf when
 * none), each lane of the unit ending with the same values (a butterfly over
 * commutative adds gives bit-identical results in every lane and every warp). */
template <typename T>
__device__ __forceinline__ void group_sum_max(const T* s_arr, const T* m_arr, int n,
                                              const Group& g, T* sum, T* mx) {
  T s = 0, m = ninf<T>();
  for (int k = g.ul; k < n; k += g.U) {
    if (s_arr) s += s_arr[k];
    if (m_arr) m = max_of(m, finite_or_ninf(m_arr[k]));
  }
  for (int o = g.U >> 1; o > 0; o >>= 1) {
    s += __shfl_xor_sync(g.mask, s, o);
    m = max_of(m, __shfl_xor_sync(g.mask, m, o));
  }
  *sum = s;
  *mx = m;
}

// Largest finite entry of M[0:nn] over the whole block (0 when none).
template <typename T>
__device__ T block_matrix_max(const T* M, int64_t nn, double* red) {
  T* r = reinterpret_cast<T*>(red);
  T m = ninf<T>();
  for (int64_t k = threadIdx.x; k < nn; k += blockDim.x) m = max_of(m, finite_or_ninf(M[k]));
  for (int o = 16; o > 0; o >>= 1) m = max_of(m, __shfl_xor_sync(0xffffffffu, m, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) r[threadIdx.x >> 5] = m;
  __syncthreads();
  m = ninf<T>();
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) m = max_of(m, r[w]);
  __syncthreads();
  return m == ninf<T>() ? T(0) : m;
}

// The same over one group (a block when W > 32).
template <typename T>
__device__ T group_matrix_max(const T* M, int64_t nn, const Group& g, double* red) {
  if (g.W > 32) return block_matrix_max(M, nn, red);
  T m = ninf<T>();
  for (int64_t k = g.lane; k < nn; k += g.W) m = max_of(m, finite_or_ninf(M[k]));
  for (int o = g.U >> 1; o > 0; o >>= 1) m = max_of(m, __shfl_xor_sync(g.mask, m, o));
  return m == ninf<T>() ? T(0) : m;
}

// As[i*S + j] = exp(M[i*n + j] - mA) for the first R rows.
template <typename T>
__device__ __forceinline__ void stage_exp(T* As, const T* M, T mA, int n, int R, int S,
                                          int start, int stride) {
  const int cnt = R * n;
  for (int k = start; k < cnt; k += stride) {
    const int i = k / n, j = k - i * n;
    As[i * S + j] = exp(M[k] - mA);
  }
}
template <typename T>
__device__ __forceinline__ void stage_raw(T* As, const T* M, int n, int R, int S, int start,
                                          int stride) {
  const int cnt = R * n;
  for (int k = start; k < cnt; k += stride) {
    const int i = k / n, j = k - i * n;
    As[i * S + j] = M[k];
  }
}

/* v_j = sum_i q[i] A'[i][j]: rows < R from shared memory (stride S), the rest
 * exponentiated from global memory. */
template <typename T>
__device__ __forceinline__ T matvec_col(const T* q, const T* As, int R, int S, const T* Mg,
                                        T mA, int n, int j) {
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int i = 0;
  if (As) {
    for (; i + 4 <= R; i += 4) {
      a0 += q[i] * As[i * S + j];
      a1 += q[i + 1] * As[(i + 1) * S + j];
      a2 += q[i + 2] * As[(i + 2) * S + j];
      a3 += q[i + 3] * As[(i + 3) * S + j];
    }
    for (; i < R; ++i) a0 += q[i] * As[i * S + j];
  }
  for (; i + 2 <= n; i += 2) {
    a1 += q[i] * exp(Mg[static_cast<int64_t>(i) * n + j] - mA);
    a2 += q[i + 1] * exp(Mg[static_cast<int64_t>(i + 1) * n + j] - mA);
  }
  for (; i < n; ++i) a3 += q[i] * exp(Mg[static_cast<int64_t>(i) * n + j] - mA);
  return (a0 + a1) + (a2 + a3);
}

// z_i = sum_j A'[i][j] r[j] (row i).
template <typename T>
__device__ __forceinline__ T matvec_row(const T* r, const T* As, int R, int S, const T* Mg,
                                        T mA, int n, int i) {
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int k = 0;
  if (As && i < R) {
    const T* row = As + i * S;
    for (; k + 4 <= n; k += 4) {
      a0 += row[k] * r[k];
      a1 += row[k + 1] * r[k + 1];
      a2 += row[k + 2] * r[k + 2];
      a3 += row[k + 3] * r[k + 3];
    }
    for (; k < n; ++k) a0 += row[k] * r[k];
  } else {
    const T* row = Mg + static_cast<int64_t>(i) * n;
    for (; k + 2 <= n; k += 2) {
      a1 += exp(row[k] - mA) * r[k];
      a2 += exp(row[k + 1] - mA) * r[k + 1];
    }
    for (; k < n; ++k) a3 += exp(row[k] - mA) * r[k];
  }
  return (a0 + a1) + (a2 + a3);
}

/* ---------------------------------------------------------------------------
 * Arguments of the per-sequence kernels.
 * ------------------------------------------------------------------------- */
template <typename T>
struct SeqArgs {
  View<T> v;
  T* alpha;            // saved alpha [B][T][Np]
  T* scale;            // saved scale [B][T]
  T* flag;             // saved flag [B]
  int64_t Np;
  T* loglik;           // forward: (B,)
  const T* mA_ext;     // per-matrix shift (indexed by View::mat_id), or NULL: computed here
  const T* w;          // backward: upstream weights (B,), NULL = all ones
  T* ge;               // backward: grad_emit / gamma (B, T, N)
  T* rp;               // backward: w r_t / c_t, [B][T][Np]
  const T* beta_b;     // backward: chunk boundary betas [B][cmax][N] (chunked only)
  int* bflag;          // backward: 1 = sequence done in log space
  int64_t chunk_k, cmax;
  int W, GPB, S, R, nmats;
  int64_t MS;          // elements per shared matrix
  int grp_off;         // byte offset of the per-group buffers in shared memory
};

constexpr int kGroupVectors = 6;  // per-group shared vectors of W elements

/* Forward pass of one sequence (or one chunk of it, phase 3 of the chunked
 * variant).  See the recursion at the top of the file. */
template <typename T, int MaxThreads>
__global__ void __launch_bounds__(MaxThreads, MaxThreads <= 256 ? 2 : 1) fwd_kernel(const SeqArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* red = reinterpret_cast<double*>(smem);
  T* mats = reinterpret_cast<T*>(smem + kRedBytes);
  const View<T>& v = a.v;
  const int n = static_cast<int>(v.N);
  const int W = a.W;
  const Group g = make_group(W);
  const int gi = static_cast<int>(threadIdx.x) / W;
  T* qb = reinterpret_cast<T*>(smem + a.grp_off) + static_cast<int64_t>(gi) * kGroupVectors * W;
  T* eb = qb + 2 * W;

  T mA = 0;
  const T* As = nullptr;
  if (v.trans_mode == HMM_TRANS_SHARED) {  // once per block
    mA = a.mA_ext ? a.mA_ext[0] : block_matrix_max(v.lt, v.N * v.N, red);
    if (a.R > 0) {
      stage_exp(mats, v.lt, mA, n, a.R, a.S, static_cast<int>(threadIdx.x),
                static_cast<int>(blockDim.x));
      As = mats;
    }
    __syncthreads();
  }
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * a.GPB + gi;
  if (gid >= v.B * a.cmax) return;
  const int64_t b = gid / a.cmax, c = gid - b * a.cmax;
  const int64_t L = v.length(b);
  int64_t Cb, s, e;
  chunk_range(L, a.chunk_k, c, &Cb, &s, &e);
  if (c >= Cb) return;
  const bool whole = Cb == 1;
  if (v.trans_mode == HMM_TRANS_PER_SEQUENCE) {
    const T* M = v.lt + b * v.N * v.N;
    mA = a.mA_ext ? a.mA_ext[b] : group_matrix_max(M, v.N * v.N, g, red);
    if (a.R > 0) {
      T* Ag = mats + gi * a.MS;
      stage_exp(Ag, M, mA, n, a.R, a.S, g.lane, W);
      As = Ag;
    }
    g.sync();
  }
  const int j = g.lane;
  const bool own = j < n;
  const T* le_b = v.le + b * v.T_ * v.N;
  T* al_b = a.alpha + b * v.T_ * a.Np;
  T* sc_b = a.scale + b * v.T_;

  T qv = 0;          // this lane's unnormalised alpha of the previous step
  double shift = 0;  // m + mA of the previous step
  bool fin_first = true;
  if (whole) {
    if (L == 0) {
      if (j == 0) { a.loglik[b] = T(0); a.flag[b] = T(0); }
      return;
    }
    // p_0 = exp(log_init - mi) * exp(e_0 - m_0): shifted separately (as the CPU
    // driver), since log_init + e_0 in float32 could round a small term away.
    const T x = own ? v.init(b)[j] : ninf<T>();
    const T y = own ? le_b[j] : ninf<T>();
    qb[W + j] = x;
    eb[j] = y;
    g.sync();
    T dummy, mi, m0;
    group_sum_max<T>(nullptr, qb + W, n, g, &dummy, &mi);
    group_sum_max<T>(nullptr, eb, n, g, &dummy, &m0);
    if (mi == ninf<T>()) mi = 0;
    if (m0 == ninf<T>()) m0 = 0;
    qv = own ? exp(x - mi) * exp(y - m0) : T(0);
    shift = static_cast<double>(m0) + static_cast<double>(mi);
  } else {
    qv = own ? al_b[(s - 1) * a.Np + j] : T(0);  // boundary alpha from phase 2
    fin_first = false;
  }
  qb[((s - 1) & 1) * W + j] = qv;
  if (s < e) eb[(s & 1) * W + j] = own ? le_b[s * v.N + j] : ninf<T>();
  g.sync();

  // loglik = log(prod c) + shifts, the product kept in float64 as mantissa *
  // 2^pexp (exact renormalisation): no float64 log inside the time loop.
  double prodc = 1.0, shifts = 0.0;
  int64_t pexp = 0;
  bool fail = false;
  for (int64_t t = s;; ++t) {
    const bool step = t < e;
    T e_nx = ninf<T>();
    if (step && t + 1 < e && own) e_nx = le_b[(t + 1) * v.N + j];  // prefetch
    // c_{t-1} = sum of the previous unnormalised alpha; m_t = max finite emission at t
    T csum, mt;
    group_sum_max(qb + ((t - 1) & 1) * W, step ? eb + (t & 1) * W : nullptr, n, g, &csum, &mt);
    if (!(csum >= ScaleLimits<T>::min_norm()) || !isfinite(csum)) { fail = true; break; }
    const T inv = T(1) / csum;
    if (t - 1 >= s || fin_first) {  // finalise step t-1 (not a chunk's starting row)
      if (j == 0) {
        int ex;
        prodc = frexp(prodc * static_cast<double>(csum), &ex);
        pexp += ex;
        shifts += shift;
        sc_b[t - 1] = csum;
      }
      if (own && (whole || t != e)) al_b[(t - 1) * a.Np + j] = qv * inv;
    }
    if (!step) break;
    const T* Mg = v.trans(b, t);
    const T mAt = v.trans_mode == HMM_TRANS_TIME_VARYING ? a.mA_ext[b * v.T_ + t] : mA;
    T acc = 0;
    if (own) acc = matvec_col(qb + ((t - 1) & 1) * W, As, a.R, a.S, Mg, mAt, n, j);
    const T m_t = mt == ninf<T>() ? T(0) : mt;
    const T u = own ? exp(eb[(t & 1) * W + j] - m_t) : T(0);
    qv = own ? (acc * inv) * u : T(0);
    qb[(t & 1) * W + j] = qv;
    if (t + 1 < e) eb[((t + 1) & 1) * W + j] = e_nx;
    shift = static_cast<double>(m_t) + static_cast<double>(mAt);
    g.sync();
  }
  if (whole) {
    if (j == 0) {
      const double ll = log(prodc) + static_cast<double>(pexp) * kLn2 + shifts;
      a.loglik[b] = fail ? qnan<T>() : T(ll);
      a.flag[b] = fail ? T(1) : T(0);
    }
  } else if (fail && j == 0) {
    a.flag[b] = T(1);
  }
}

/* Backward pass of one sequence (or chunk): gamma into ge, w r_t / c_t into rp.
 * Sequences flagged by the forward pass are left to bwd_log_kernel. */
template <typename T, int MaxThreads>
__global__ void __launch_bounds__(MaxThreads, MaxThreads <= 256 ? 2 : 1) bwd_kernel(const SeqArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* red = reinterpret_cast<double*>(smem);
  T* mats = reinterpret_cast<T*>(smem + kRedBytes);
  const View<T>& v = a.v;
  const int n = static_cast<int>(v.N);
  const int W = a.W;
  const Group g = make_group(W);
  const int gi = static_cast<int>(threadIdx.x) / W;
  T* pb = reinterpret_cast<T*>(smem + a.grp_off) + static_cast<int64_t>(gi) * kGroupVectors * W;
  T* rb = pb + 2 * W;
  T* eb = pb + 4 * W;
  (void)red;

  T mA = 0;
  const T* As = nullptr;
  if (v.trans_mode == HMM_TRANS_SHARED) {
    mA = a.mA_ext[0];
    if (a.R > 0) {
      stage_exp(mats, v.lt, mA, n, a.R, a.S, static_cast<int>(threadIdx.x),
                static_cast<int>(blockDim.x));
      As = mats;
    }
    __syncthreads();
  }
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * a.GPB + gi;
  if (gid >= v.B * a.cmax) return;
  const int64_t b = gid / a.cmax, c = gid - b * a.cmax;
  const int64_t L = v.length(b);
  int64_t Cb, s, e;
  chunk_range(L, a.chunk_k, c, &Cb, &s, &e);
  if (c >= Cb) return;
  const int j = g.lane;
  const bool own = j < n;
  T* ge_b = a.ge + b * v.T_ * v.N;
  if (c == 0)
    for (int64_t k = L * v.N + j; k < v.T_ * v.N; k += W) ge_b[k] = T(0);
  if (L == 0) return;
  if (a.flag[b] != T(0)) {
    if (c == 0 && j == 0) a.bflag[b] = 1;
    return;
  }
  // (bflag[b] may be set concurrently by another chunk of b: not read here; a
  // sequence given up on is redone by bwd_log_kernel, which runs after.)
  if (v.trans_mode == HMM_TRANS_PER_SEQUENCE) {
    mA = a.mA_ext[b];
    if (a.R > 0) {
      T* Ag = mats + gi * a.MS;
      stage_exp(Ag, v.lt + b * v.N * v.N, mA, n, a.R, a.S, g.lane, W);
      As = Ag;
    }
    g.sync();
  }
  const bool whole = Cb == 1;
  const int64_t top = e - 1;
  const T w = a.w ? a.w[b] : T(1);
  const T* le_b = v.le + b * v.T_ * v.N;
  const T* al_b = a.alpha + b * v.T_ * a.Np;
  T* rp_b = a.rp + b * v.T_ * a.Np;

  // Start at step top with y = 1 (end of the sequence) or the chunk boundary beta.
  const T y0 = own ? ((whole || c == Cb - 1) ? T(1) : a.beta_b[(b * a.cmax + c) * v.N + j]) : T(0);
  const T e_top = own ? le_b[top * v.N + j] : ninf<T>();
  eb[(top & 1) * W + j] = e_top;
  g.sync();
  T dummy, m_top;
  group_sum_max<T>(nullptr, eb + (top & 1) * W, n, g, &dummy, &m_top);
  if (m_top == ninf<T>()) m_top = 0;
  const T a_top = own ? al_b[top * a.Np + j] : T(0);
  T pp = a_top == T(0) ? T(0) : a_top * y0;
  T ry = a_top == T(0) ? T(0) : exp(e_top - m_top) * y0;
  pb[(top & 1) * W + j] = pp;
  rb[(top & 1) * W + j] = ry;
  T a_next = 0;
  if (top >= 1) {
    eb[((top - 1) & 1) * W + j] = own ? le_b[(top - 1) * v.N + j] : ninf<T>();
    a_next = own ? al_b[(top - 1) * a.Np + j] : T(0);
  }
  g.sync();

  T rn_prev = 0;
  bool bad = false;
  for (int64_t t = top; t >= s; --t) {
    T e_nx = ninf<T>(), a_nx = 0;
    if (t >= 2 && own) {  // prefetch step t-2
      e_nx = le_b[(t - 2) * v.N + j];
      a_nx = al_b[(t - 2) * a.Np + j];
    }
    T nt, mprev;  // n_t and the emission maximum of step t-1
    group_sum_max(pb + (t & 1) * W, eb + ((t - 1) & 1) * W, n, g, &nt, &mprev);
    if (!(nt > T(0)) || !isfinite(nt)) { bad = true; break; }
    const T inv = T(1) / nt;
    if (own) {
      if (t < top) rp_b[(t + 1) * a.Np + j] = w * (rn_prev * inv);  // w r_{t+1} / c_{t+1}
      ge_b[t * v.N + j] = w * (pp * inv);                           // w gamma_t
    }
    rn_prev = ry * inv;
    const T mAt = v.trans_mode == HMM_TRANS_TIME_VARYING ? a.mA_ext[b * v.T_ + t] : mA;
    T z = 0;
    if (own) z = matvec_row(rb + (t & 1) * W, As, a.R, a.S, v.trans(b, t), mAt, n, j) * inv;
    const T mp = mprev == ninf<T>() ? T(0) : mprev;
    const T u = own ? exp(eb[((t - 1) & 1) * W + j] - mp) : T(0);
    const T acur = a_next;
    pp = acur == T(0) ? T(0) : acur * z;
    ry = acur == T(0) ? T(0) : u * z;
    pb[((t - 1) & 1) * W + j] = pp;
    rb[((t - 1) & 1) * W + j] = ry;
    if (t >= 2) eb[((t - 2) & 1) * W + j] = e_nx;
    a_next = a_nx;
    g.sync();
  }
  if (!bad) {
    T n0, mdummy;
    group_sum_max<T>(pb + ((s - 1) & 1) * W, nullptr, n, g, &n0, &mdummy);
    if (!(n0 > T(0)) || !isfinite(n0)) {
      bad = true;
    } else if (own) {
      if (top >= s) rp_b[s * a.Np + j] = w * (rn_prev / n0);
      if (s == 1) ge_b[j] = w * (pp / n0);  // gamma_0 (first chunk or whole sequence)
    }
  }
  if (bad && j == 0) a.bflag[b] = 1;
}

/* ---------------------------------------------------------------------------
 * Float64 log-space recursions (sequences the scaled recursion gave up on).
 * One block of roundup32(N) threads per sequence, thread j owns state j.
 * ------------------------------------------------------------------------- */
template <typename T>
struct LogArgs {
  View<T> v;
  const T* flag;       // saved flag (forward) ...
  const int* bflag;    // ... or the backward's flags
  T* loglik;           // forward: written for flagged sequences
  double* lad;         // forward (sampling): log alpha rows [B][T][N], or NULL
  const T* w;          // backward
  T* ge;               // backward: grad_emit / gamma; also holds normalised log alpha
  T* gt_tv;            // backward: time-varying grad_trans, or NULL
  double* logpart;     // backward: [B][N][N] counts for shared/per-sequence matrices, or NULL
};

// Block reductions in float64 (every thread gets the result; same order everywhere).
__device__ double block_sum(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = red[0];
  for (int k = 1; k < static_cast<int>(blockDim.x >> 5); ++k) r += red[k];
  return r;
}
// Maximum ignoring NaN (the `x > m` rule of the CPU's logsumexp).
__device__ double block_max(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const double u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = red[0];
  for (int k = 1; k < static_cast<int>(blockDim.x >> 5); ++k) r = red[k] > r ? red[k] : r;
  return r;
}
// logsumexp over the block with the CPU's semantics (NaN wins, then +-inf).
__device__ double block_logsumexp(double x, double* red) {
  const double m = block_max(isnan(x) ? -INFINITY : x, red);
  if (__syncthreads_or(isnan(x))) return NAN;
  if (m == -INFINITY || m == INFINITY) return m;
  return m + log(block_sum(isnan(x) ? 0.0 : exp(x - m), red));
}

/* log-space forward of sequence b (double precision, exactly the CPU's
 * formulas); optionally stores log alpha rows as doubles (lad, [T][N]) or
 * normalised by each step's maximum in T (lat, [T][N]). */
template <typename T>
__device__ double log_forward_block(const View<T>& v, int64_t b, int64_t L, double* sa, double* sb,
                                    double* red, double* lad, T* lat) {
  const int n = static_cast<int>(v.N);
  const int j = static_cast<int>(threadIdx.x);
  const bool own = j < n;
  if (L == 0) return 0.0;
  double x = -INFINITY;
  if (own) x = static_cast<double>(v.init(b)[j]) + static_cast<double>(v.emit(b, 0)[j]);
  for (int64_t t = 0;; ++t) {
    if (lad && own) lad[t * v.N + j] = x;
    if (lat) {
      const double m = block_max(isnan(x) ? -INFINITY : x, red);
      const double sh = isfinite(m) ? m : 0.0;
      if (own) lat[t * v.N + j] = T(x - sh);
    }
    if (own) sa[j] = x;
    __syncthreads();
    if (t + 1 >= L) break;
    if (own) {
      const T* M = v.trans(b, t + 1);
      // logsumexp_i(sa[i] + M[i][j]) with the CPU's two passes
      double m = -INFINITY;
      bool nan = false;
      for (int i = 0; i < n; ++i) {
        const double y = sa[i] + static_cast<double>(M[static_cast<int64_t>(i) * n + j]);
        if (y > m) m = y;
        nan |= isnan(y);
      }
      double r;
      if (nan) {
        r = NAN;
      } else if (m == -INFINITY || m == INFINITY) {
        r = m;
      } else {
        double sum = 0;
        for (int i = 0; i < n; ++i)
          sum += exp(sa[i] + static_cast<double>(M[static_cast<int64_t>(i) * n + j]) - m);
        r = m + log(sum);
      }
      x = r + static_cast<double>(v.emit(b, t + 1)[j]);
    }
    __syncthreads();  // everyone has read sa before it is overwritten
  }
  (void)sb;
  return block_logsumexp(own ? sa[j] : -INFINITY, red);
}

template <typename T>
__global__ void __launch_bounds__(1024) fwd_log_kernel(const LogArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* red = reinterpret_cast<double*>(smem);
  double* sa = red + 64;
  double* sb = sa + blockDim.x;
  const int64_t b = blockIdx.x;
  if (a.flag[b] == T(0)) return;
  const int64_t L = a.v.length(b);
  double* lad = a.lad ? a.lad + b * a.v.T_ * a.v.N : nullptr;
  const double ll = log_forward_block<T>(a.v, b, L, sa, sb, red, lad, nullptr);
  if (threadIdx.x == 0) a.loglik[b] = T(ll);
}

/* log-space backward of a flagged sequence, self-normalised per step:
 * gamma_{t-1} = softmax(la_{t-1} + lb_{t-1}), xi_t = exp(la_{t-1,i} + lt_t[i,j] + e_t[j] + lb_t[j] - Z_t)
 * with Z_t the log-normaliser of gamma_{t-1}; lb is shifted by Z_t each step. */
template <typename T>
__global__ void __launch_bounds__(1024) bwd_log_kernel(const LogArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* red = reinterpret_cast<double*>(smem);
  double* sa = red + 64;
  double* sb = sa + blockDim.x;
  double* lb = sb + blockDim.x;
  double* gv = lb + blockDim.x;
  const View<T>& v = a.v;
  const int64_t b = blockIdx.x;
  if (a.bflag[b] == 0) return;
  const int n = static_cast<int>(v.N);
  const int j = static_cast<int>(threadIdx.x);
  const bool own = j < n;
  const int64_t L = v.length(b);
  if (L == 0) return;
  const double w = a.w ? static_cast<double>(a.w[b]) : 1.0;
  T* ge_b = a.ge + b * v.T_ * v.N;
  T* gt_b = a.gt_tv ? a.gt_tv + b * v.T_ * v.N * v.N : nullptr;
  double* part = a.logpart ? a.logpart + b * v.N * v.N : nullptr;
  const int64_t nn = v.N * v.N;
  // normalised log alpha into the gamma rows
  const double ll = log_forward_block<T>(v, b, L, sa, sb, red, nullptr, ge_b);
  __syncthreads();
  if (!isfinite(ll)) {
    // loglik -inf: zero statistics; NaN (or +inf): NaN for this sequence only.
    const T fill = ll == -INFINITY ? T(0) : qnan<T>();
    for (int64_t k = j; k < L * v.N; k += blockDim.x) ge_b[k] = fill;
    if (gt_b)
      for (int64_t k = nn + j; k < L * nn; k += blockDim.x) gt_b[k] = fill;
    if (part)
      for (int64_t k = j; k < nn; k += blockDim.x) part[k] = static_cast<double>(fill);
    return;
  }
  if (part)
    for (int64_t k = j; k < nn; k += blockDim.x) part[k] = 0.0;
  // t = L-1: lb = 0
  double h = own ? static_cast<double>(ge_b[(L - 1) * v.N + j]) : -INFINITY;
  double Z = block_logsumexp(h, red);
  if (own) {
    ge_b[(L - 1) * v.N + j] = T(w * exp(h - Z));
    lb[j] = 0.0;
  }
  __syncthreads();
  for (int64_t t = L - 1; t >= 1; --t) {
    if (own) gv[j] = static_cast<double>(v.emit(b, t)[j]) + lb[j];
    __syncthreads();
    const T* M = v.trans(b, t);
    double lbn = -INFINITY, la = -INFINITY;
    if (own) {
      const T* row = M + static_cast<int64_t>(j) * n;
      double m = -INFINITY;
      bool nan = false;
      for (int k = 0; k < n; ++k) {
        const double y = static_cast<double>(row[k]) + gv[k];
        if (y > m) m = y;
        nan |= isnan(y);
      }
      if (nan) {
        lbn = NAN;
      } else if (m == -INFINITY || m == INFINITY) {
        lbn = m;
      } else {
        double sum = 0;
        for (int k = 0; k < n; ++k) sum += exp(static_cast<double>(row[k]) + gv[k] - m);
        lbn = m + log(sum);
      }
      la = static_cast<double>(ge_b[(t - 1) * v.N + j]);
    }
    h = la + lbn;
    Z = block_logsumexp(h, red);
    if (own) {
      if (gt_b || part) {
        const T* row = M + static_cast<int64_t>(j) * n;
        for (int k = 0; k < n; ++k) {
          const double xi = w * exp(la + static_cast<double>(row[k]) + gv[k] - Z);
          if (gt_b) gt_b[t * nn + static_cast<int64_t>(j) * n + k] = T(xi);
          else part[static_cast<int64_t>(j) * n + k] += xi;
        }
      }
      ge_b[(t - 1) * v.N + j] = T(w * exp(h - Z));
      lb[j] = lbn - Z;
    }
    __syncthreads();
  }
}

/* ---------------------------------------------------------------------------
 * Parallel-in-time variant (N <= 32).
 * ------------------------------------------------------------------------- */
template <typename T>
struct ChunkArgs {
  View<T> v;
  const T* mA_ext;     // per-matrix shift, or NULL (computed here; never NULL when time-varying)
  int64_t chunk_k, cmax;
  // chunk products: in the saved alpha rows of the chunk (forward), or in arrays
  T* alpha;            // saved alpha
  T* scale;            // saved scale
  T* flag;             // saved flag
  int64_t Np;
  T* loglik;
  T* Qws;              // [B][cmax][N][N], or NULL: use the saved rows
  double* logd_ws;     // [B][cmax][N]
  T* beta_b;           // backward boundary betas [B][cmax][N]
  int* bflag;
};

template <typename T>
__device__ __forceinline__ void chunk_storage(const ChunkArgs<T>& a, int64_t b, int64_t c,
                                              int64_t s, T** Q, double** logd) {
  if (a.Qws) {
    *Q = a.Qws + (b * a.cmax + c) * a.v.N * a.v.N;
    *logd = a.logd_ws + (b * a.cmax + c) * a.v.N;
  } else {
    // The chunk's own alpha rows s .. e-2 (at least N+2 of them) are free until
    // phase 3 writes them: N doubles, then the N x N product.
    double* base = reinterpret_cast<double*>(a.alpha + (b * a.v.T_ + s) * a.Np);
    *logd = base;
    *Q = reinterpret_cast<T*>(base + a.v.N);
  }
}

/* Phase 1: Q_c = prod_{t in chunk} A'_t diag(u_t), each row rescaled by a power
 * of two after every step (exact); logd_c[i] = log of row i's total scale plus
 * the sum of the shifts m_t + mA_t.  One block per (sequence, chunk). */
template <typename T>
__global__ void __launch_bounds__(1024) chunk_product_kernel(const ChunkArgs<T> a) {
  __shared__ double red[64];
  __shared__ T P0[kChunkMaxStates * kChunkMaxStates];
  __shared__ T P1[kChunkMaxStates * kChunkMaxStates];
  __shared__ T As[kChunkMaxStates * kChunkMaxStates];
  __shared__ T ev[kChunkMaxStates], uu[kChunkMaxStates], rs[kChunkMaxStates];
  __shared__ int ex[kChunkMaxStates], zr[kChunkMaxStates];
  __shared__ double shift_sh;
  const View<T>& v = a.v;
  const int64_t b = blockIdx.x / a.cmax, c = blockIdx.x % a.cmax;
  const int64_t L = v.length(b);
  int64_t Cb, s, e;
  chunk_range(L, a.chunk_k, c, &Cb, &s, &e);
  if (Cb < 2 || c >= Cb) return;
  const int n = static_cast<int>(v.N), nn = n * n;
  const int tid = static_cast<int>(threadIdx.x);
  const bool tv = v.trans_mode == HMM_TRANS_TIME_VARYING;
  T mA = 0;
  if (!tv) {
    const T* M = v.trans(b, 1);
    mA = a.mA_ext ? a.mA_ext[v.mat_id(b, 1)] : block_matrix_max(M, nn, red);
    for (int k = tid; k < nn; k += blockDim.x) As[k] = exp(M[k] - mA);
  }
  if (tid < n) { ex[tid] = 0; zr[tid] = 0; rs[tid] = T(1); }
  double shift = 0;  // kept by thread 0
  T e_nx = tid < n ? v.emit(b, s)[tid] : ninf<T>();
  __syncthreads();
  T* Pc = P0;
  T* Pn = P1;
  for (int64_t t = s; t < e; ++t) {
    T mAt = mA;
    if (tv) {
      const T* M = v.trans(b, t);
      mAt = a.mA_ext[v.mat_id(b, t)];
      for (int k = tid; k < nn; k += blockDim.x) As[k] = exp(M[k] - mAt);
    }
    if (tid < n) {
      ev[tid] = e_nx;
      if (t + 1 < e) e_nx = v.emit(b, t + 1)[tid];
    }
    __syncthreads();
    if (tid < 32) {
      const T x = tid < n ? ev[tid] : ninf<T>();
      T m = finite_or_ninf(x);
      for (int o = 16; o > 0; o >>= 1) m = max_of(m, __shfl_xor_sync(0xffffffffu, m, o));
      if (m == ninf<T>()) m = 0;
      if (tid < n) uu[tid] = exp(x - m);
      if (tid == 0) shift += static_cast<double>(m) + static_cast<double>(mAt);
    }
    __syncthreads();
    if (tid < nn) {
      const int i = tid / n, jj = tid - i * n;
      T val;
      if (t == s) {
        val = As[tid] * uu[jj];
      } else {
        T acc = 0;
        for (int k = 0; k < n; ++k) acc += Pc[i * n + k] * As[k * n + jj];
        val = rs[i] * acc * uu[jj];
      }
      Pn[tid] = val;
    }
    __syncthreads();
    if (tid < n) {  // rescale row tid by a power of two (applied in the next product)
      T mx = 0;
      bool badrow = false;
      for (int k = 0; k < n; ++k) {
        const T x = Pn[tid * n + k];
        badrow |= !isfinite(x);
        mx = max_of(mx, x);
      }
      if (badrow) {
        zr[tid] = 2;
        rs[tid] = T(1);
      } else if (mx > T(0)) {
        int ee;
        frexp(mx, &ee);
        rs[tid] = ldexp(T(1), -ee);
        ex[tid] += ee;
        zr[tid] = 0;
      } else {
        zr[tid] = 1;
        rs[tid] = T(1);
      }
    }
    __syncthreads();
    T* tmp = Pc; Pc = Pn; Pn = tmp;
  }
  if (tid == 0) shift_sh = shift;
  __syncthreads();
  T* Q;
  double* logd;
  chunk_storage(a, b, c, s, &Q, &logd);
  if (tid < nn) Q[tid] = Pc[tid] * rs[tid / n];
  if (tid < n)
    logd[tid] = zr[tid] == 2 ? NAN
              : (zr[tid] == 1 ? -INFINITY : shift_sh + static_cast<double>(ex[tid]) * kLn2);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double warp_nanmax(double x) {
  for (int o = 16; o > 0; o >>= 1) x = nanmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <typename T>
__device__ __forceinline__ T warp_finite_max(T x) {
  T m = finite_or_ninf(x);
  for (int o = 16; o > 0; o >>= 1) m = max_of(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m == ninf<T>() ? T(0) : m;
}

/* Phase 2, forward: alpha at every chunk end, sequentially over chunks
 * (one warp per sequence; lane j owns state j).  Writes alpha_0, scale_0, the
 * boundary rows e_c - 1, loglik and flag. */
template <typename T>
__global__ void __launch_bounds__(32) fwd_scan_kernel(const ChunkArgs<T> a) {
  const View<T>& v = a.v;
  const int64_t b = blockIdx.x;
  const int64_t L = v.length(b);
  int64_t Cb, s0, e0;
  chunk_range(L, a.chunk_k, 0, &Cb, &s0, &e0);
  if (Cb < 2) return;  // the whole sequence is phase 3's
  const int n = static_cast<int>(v.N);
  const int j = static_cast<int>(threadIdx.x);
  const bool own = j < n;
  T* al_b = a.alpha + b * v.T_ * a.Np;
  const T x = own ? v.init(b)[j] : ninf<T>();
  const T y = own ? v.emit(b, 0)[j] : ninf<T>();
  const T mi = warp_finite_max(x), m0 = warp_finite_max(y);
  const T p = own ? exp(x - mi) * exp(y - m0) : T(0);
  const T c0 = warp_sum(p);
  bool fail = !(c0 >= ScaleLimits<T>::min_norm()) || !isfinite(c0);
  double ll = log(static_cast<double>(c0)) + static_cast<double>(m0) + static_cast<double>(mi);
  T av = own ? p / c0 : T(0);
  if (own) al_b[j] = av;
  if (j == 0) a.scale[b * v.T_] = c0;
  T q[kChunkMaxStates], qn[kChunkMaxStates];
  double ld = -INFINITY, ldn = -INFINITY;
  auto load = [&](int64_t cc, T* dst, double* ldst) {
    int64_t C2, sc, ec;
    chunk_range(L, a.chunk_k, cc, &C2, &sc, &ec);
    T* Q;
    double* logd;
    chunk_storage(a, b, cc, sc, &Q, &logd);
#pragma unroll
    for (int i = 0; i < kChunkMaxStates; ++i) dst[i] = (own && i < n) ? Q[i * n + j] : T(0);
    *ldst = own ? logd[j] : -INFINITY;
  };
  load(0, q, &ld);
  for (int64_t c = 0; c < Cb && !fail; ++c) {
    if (c + 1 < Cb) load(c + 1, qn, &ldn);  // prefetch the next chunk's column
    // w_i = alpha_i * exp(logd_i - M), M = max over the states alpha can be in
    const double key = (own && av > T(0)) ? ld : -INFINITY;
    const double M = warp_nanmax(key);
    if (isnan(M) || M == -INFINITY) { fail = true; break; }
    const T wv = (own && av > T(0) && ld > -INFINITY) ? T(static_cast<double>(av) * exp(ld - M)) : T(0);
    T xj = 0;
#pragma unroll
    for (int i = 0; i < kChunkMaxStates; ++i) {
      const T wi = __shfl_sync(0xffffffffu, wv, i);
      if (i < n) xj += wi * q[i];
    }
    if (!own) xj = 0;
    const T nrm = warp_sum(xj);
    if (!(nrm > T(0)) || !isfinite(nrm)) { fail = true; break; }
    ll += log(static_cast<double>(nrm)) + M;
    av = own ? xj / nrm : T(0);
    int64_t C2, sc, ec;
    chunk_range(L, a.chunk_k, c, &C2, &sc, &ec);
    if (own) al_b[(ec - 1) * a.Np + j] = av;
#pragma unroll
    for (int i = 0; i < kChunkMaxStates; ++i) q[i] = qn[i];
    ld = ldn;
  }
  if (j == 0) {
    a.loglik[b] = fail ? qnan<T>() : T(ll);
    a.flag[b] = fail ? T(1) : T(0);
  }
}

/* Phase 2, backward: beta at every chunk end (normalised so that
 * <alpha, beta> = 1 there), from the last chunk down. */
template <typename T>
__global__ void __launch_bounds__(32) bwd_scan_kernel(const ChunkArgs<T> a) {
  const View<T>& v = a.v;
  const int64_t b = blockIdx.x;
  const int64_t L = v.length(b);
  int64_t Cb, s0, e0;
  chunk_range(L, a.chunk_k, 0, &Cb, &s0, &e0);
  if (Cb < 2 || a.flag[b] != T(0)) return;
  const int n = static_cast<int>(v.N);
  const int j = static_cast<int>(threadIdx.x);
  const bool own = j < n;
  const T* al_b = a.alpha + b * v.T_ * a.Np;
  T y = own ? T(1) : T(0);  // beta at row L-1
  for (int64_t c = Cb - 1; c >= 1; --c) {
    int64_t C2, sc, ec;
    chunk_range(L, a.chunk_k, c, &C2, &sc, &ec);
    T* Q;
    double* logd;
    chunk_storage(a, b, c, sc, &Q, &logd);
    T yq = 0;
    for (int k = 0; k < kChunkMaxStates; ++k) {
      const T yk = __shfl_sync(0xffffffffu, y, k);
      if (own && k < n) yq += Q[j * n + k] * yk;
    }
    const T al = own ? al_b[(sc - 1) * a.Np + j] : T(0);
    const double ldj = own ? logd[j] : -INFINITY;
    double ly = -INFINITY;
    if (own && al > T(0)) {
      if (isnan(ldj) || !isfinite(yq)) ly = NAN;
      else if (yq > T(0)) ly = log(static_cast<double>(yq)) + ldj;
    }
    const double M = warp_nanmax(ly);
    const double xv = ly > -INFINITY ? exp(ly - M) : (isnan(ly) ? NAN : 0.0);
    const double nrm = warp_sum(static_cast<double>(al) * xv);
    if (!(nrm > 0) || !isfinite(nrm) || isnan(M)) {
      if (j == 0) a.bflag[b] = 1;  // give up: the log-space kernel redoes b
      return;
    }
    y = own ? T(xv / nrm) : T(0);
    if (own) a.beta_b[(b * a.cmax + c - 1) * v.N + j] = y;
  }
}

/* ---------------------------------------------------------------------------
 * Transition statistics and initial-state gradients (after the time loops).
 * ------------------------------------------------------------------------- */
template <typename T>
struct TransArgs {
  View<T> v;
  const T* alpha;
  const T* rp;
  int64_t Np;
  const int* bflag;
  const T* mA;         // per-matrix shift
  T* part;             // [B][S][N][N]
  const double* logpart;
  T* out;              // grad_trans
  int64_t S;           // splits per sequence
  int tiles;
};

/* part[b][sp][i][j] = sum_{t in split sp, 1 <= t < L} alpha[b,t-1,i] rp[b,t,j]:
 * a (BM x BM) tile per block, 256 threads, RM x RM outputs per thread. */
template <typename T, int RM>
__global__ void __launch_bounds__(256, 2) trans_gemm_kernel(const TransArgs<T> a) {
  constexpr int BM = 16 * RM, KT = 16;
  __shared__ T Xs[KT][BM];
  __shared__ T Rs[KT][BM];
  const int n = static_cast<int>(a.v.N);
  const int tx = static_cast<int>(threadIdx.x) & 15, ty = static_cast<int>(threadIdx.x) >> 4;
  const int ti = static_cast<int>(blockIdx.y) / a.tiles, tj = static_cast<int>(blockIdx.y) % a.tiles;
  const unsigned bx = blockIdx.x, s32 = static_cast<unsigned>(a.S);  // B*S < 2^31
  const int64_t b = bx / s32, sp = bx % s32;
  const int64_t L = a.v.length(b);
  const int64_t t0 = 1 + sp * kGemmKc;
  int64_t t1 = t0 + kGemmKc < L ? t0 + kGemmKc : L;
  if (a.bflag[b] != 0) t1 = t0;
  T acc[RM][RM];
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int q = 0; q < RM; ++q) acc[r][q] = 0;
  const T* al_b = a.alpha + b * a.v.T_ * a.Np;
  const T* rp_b = a.rp + b * a.v.T_ * a.Np;
  for (int64_t tb = t0; tb < t1; tb += KT) {
    for (int k = threadIdx.x; k < KT * BM; k += 256) {
      const int kk = k / BM, col = k - kk * BM;
      const int64_t t = tb + kk;
      const int i = ti * BM + col, jj = tj * BM + col;
      Xs[kk][col] = (t < t1 && i < n) ? al_b[(t - 1) * a.Np + i] : T(0);
      Rs[kk][col] = (t < t1 && jj < n) ? rp_b[t * a.Np + jj] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      T xr[RM], rr[RM];
#pragma unroll
      for (int r = 0; r < RM; ++r) xr[r] = Xs[kk][ty + 16 * r];
#pragma unroll
      for (int q = 0; q < RM; ++q) rr[q] = Rs[kk][tx + 16 * q];
#pragma unroll
      for (int r = 0; r < RM; ++r)
#pragma unroll
        for (int q = 0; q < RM; ++q) acc[r][q] += xr[r] * rr[q];
    }
    __syncthreads();
  }
  T* out = a.part + (b * a.S + sp) * a.v.N * a.v.N;
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int q = 0; q < RM; ++q) {
      const int i = ti * BM + ty + 16 * r, jj = tj * BM + tx + 16 * q;
      if (i < n && jj < n) out[static_cast<int64_t>(i) * n + jj] = acc[r][q];
    }
}

/* grad_trans (shared or per-sequence matrix) = A' (.) sum of the parts (float64),
 * plus the log-space counts of flagged sequences.  32 outputs x 8 slices per block. */
template <typename T>
__global__ void __launch_bounds__(256) trans_reduce_kernel(const TransArgs<T> a) {
  __shared__ double acc_sh[8][32];
  const int64_t nn = a.v.N * a.v.N;
  const bool shared = a.v.trans_mode == HMM_TRANS_SHARED;
  const int64_t count = shared ? nn : a.v.B * nn;
  const int lane = static_cast<int>(threadIdx.x) & 31, slice = static_cast<int>(threadIdx.x) >> 5;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  double acc = 0;
  if (o < count) {
    const int64_t b = shared ? 0 : o / nn, ij = shared ? o : o - b * nn;
    if (shared) {
      const int64_t parts = a.v.B * a.S;
      for (int64_t q = slice; q < parts; q += 8) acc += static_cast<double>(a.part[q * nn + ij]);
    } else {
      for (int64_t q = slice; q < a.S; q += 8) acc += static_cast<double>(a.part[(b * a.S + q) * nn + ij]);
    }
  }
  acc_sh[slice][lane] = acc;
  __syncthreads();
  if (slice != 0 || o >= count) return;
  double pre = 0;
  for (int k = 0; k < 8; ++k) pre += acc_sh[k][lane];
  const int64_t b = shared ? 0 : o / nn, ij = shared ? o : o - b * nn;
  const T Aij = exp(a.v.lt[o] - a.mA[shared ? 0 : b]);  // o indexes log_trans in both modes
  double g = Aij == T(0) ? 0.0 : static_cast<double>(Aij) * pre;
  if (shared) {
    for (int64_t bb = 0; bb < a.v.B; ++bb)
      if (a.bflag[bb] != 0) g += a.logpart[bb * nn + ij];
  } else if (a.bflag[b] != 0) {
    g = a.logpart[b * nn + ij];
  }
  a.out[o] = T(g);
}

/* Time-varying grad_trans[b,t,i,j] = alpha[b,t-1,i] A'_t[i,j] rp[b,t,j] for
 * 1 <= t < L; 0 at t = 0 and t >= L; flagged sequences are bwd_log_kernel's. */
template <typename T>
__global__ void trans_tv_kernel(const TransArgs<T> a) {
  const int64_t n = a.v.N, nn = n * n, TT = a.v.T_;
  const int64_t total = a.v.B * TT * nn;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = k / (TT * nn), rem = k - b * TT * nn;
    const int64_t t = rem / nn, ij = rem - t * nn;
    const int64_t L = a.v.length(b);
    if (t == 0 || t >= L) { a.out[k] = T(0); continue; }
    if (a.bflag[b] != 0) continue;
    const int64_t i = ij / n, jj = ij - i * n;
    const T A = exp(a.v.lt[k] - a.mA[b * TT + t]);
    a.out[k] = a.alpha[(b * TT + t - 1) * a.Np + i] * A * a.rp[(b * TT + t) * a.Np + jj];
  }
}

// grad_init = gamma_0 (summed over b in float64 when log_init is shared).
template <typename T>
__global__ void init_grad_kernel(T* out, const T* ge, int64_t B, int64_t TT, int64_t N, int shared) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (shared) {
    if (k >= N) return;
    double s = 0;
    if (TT > 0)
      for (int64_t b = 0; b < B; ++b) s += static_cast<double>(ge[b * TT * N + k]);
    out[k] = T(s);
  } else {
    if (k >= B * N) return;
    const int64_t b = k / N, j = k - b * N;
    out[k] = TT > 0 ? ge[b * TT * N + j] : T(0);
  }
}

// out[m] = largest finite entry of matrix m (0 when none); one warp per matrix.
template <typename T>
__global__ void matrix_max_kernel(const T* M, int64_t count, int64_t nn, T* out) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t m = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; m < count;
       m += warps) {
    const T* p = M + m * nn;
    T mx = ninf<T>();
    for (int64_t k = lane; k < nn; k += 32) mx = max_of(mx, finite_or_ninf(p[k]));
    for (int o = 16; o > 0; o >>= 1) mx = max_of(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) out[m] = mx == ninf<T>() ? T(0) : mx;
  }
}

/* ---------------------------------------------------------------------------
 * Viterbi: float64 max-plus, one group per sequence, back-pointers in the
 * workspace, back-tracking through shared memory in blocks of rows.
 * ------------------------------------------------------------------------- */
template <typename T>
struct VitArgs {
  View<T> v;
  int32_t* path;
  T* score;
  void* psi;           // [B][T][N] of P
  int W, GPB, S, R, nmats;
  int64_t MS;
  int grp_off;         // byte offset of the per-group region
  int grp_bytes;       // bytes per group: 2W doubles, then staging rows
  int rows;            // back-pointer rows staged at a time
};

template <typename T, typename P>
__global__ void __launch_bounds__(1024) viterbi_kernel(const VitArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* mats = reinterpret_cast<T*>(smem + kRedBytes);
  const View<T>& v = a.v;
  const int n = static_cast<int>(v.N);
  const int W = a.W;
  const Group g = make_group(W);
  const int gi = static_cast<int>(threadIdx.x) / W;
  unsigned char* gbase = smem + a.grp_off + static_cast<int64_t>(gi) * a.grp_bytes;
  double* dl = reinterpret_cast<double*>(gbase);             // [2][W]
  P* stg = reinterpret_cast<P*>(dl + 2 * W);                  // [rows][N]
  const T* As = nullptr;
  if (v.trans_mode == HMM_TRANS_SHARED) {
    if (a.R > 0) {
      stage_raw(mats, v.lt, n, a.R, a.S, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
      As = mats;
    }
    __syncthreads();
  }
  const int64_t b = static_cast<int64_t>(blockIdx.x) * a.GPB + gi;
  if (b >= v.B) return;
  const int64_t L = v.length(b);
  const int j = g.lane;
  const bool own = j < n;
  int32_t* path_b = a.path + b * v.T_;
  for (int64_t t = L + j; t < v.T_; t += W) path_b[t] = -1;
  if (L == 0) {
    if (j == 0) a.score[b] = T(0);
    return;
  }
  if (v.trans_mode == HMM_TRANS_PER_SEQUENCE && L > 1) {
    if (a.R > 0) {
      T* Ag = mats + gi * a.MS;
      stage_raw(Ag, v.lt + b * v.N * v.N, n, a.R, a.S, g.lane, W);
      As = Ag;
    }
    g.sync();
  }
  P* psi_b = static_cast<P*>(a.psi) + b * v.T_ * v.N;
  bool nan_seen = false;
  double d = -INFINITY;
  if (own) {
    d = static_cast<double>(v.init(b)[j]) + static_cast<double>(v.emit(b, 0)[j]);
    nan_seen |= isnan(d);
  }
  dl[j] = d;
  g.sync();
  for (int64_t t = 1; t < L; ++t) {
    const double* dp = dl + ((t - 1) & 1) * W;
    if (own) {
      const T* Mg = v.trans(b, t);
      double best = -INFINITY;
      int arg = 0;
      int i = 0;
      if (As) {
        for (; i < a.R; ++i) {
          const T lt = As[i * a.S + j];
          const double cand = dp[i] + static_cast<double>(lt);
          nan_seen |= isnan(cand);  // NaN weight, or -inf + inf (0 * inf)
          if (cand > best) { best = cand; arg = i; }  // strict: the lower i wins ties
        }
      }
      for (; i < n; ++i) {
        const T lt = Mg[static_cast<int64_t>(i) * n + j];
        const double cand = dp[i] + static_cast<double>(lt);
        nan_seen |= isnan(cand);  // NaN weight, or -inf + inf (0 * inf)
        if (cand > best) { best = cand; arg = i; }
      }
      d = best + static_cast<double>(v.emit(b, t)[j]);
      nan_seen |= isnan(d);
      psi_b[t * v.N + j] = static_cast<P>(arg);
    }
    dl[(t & 1) * W + j] = d;
    g.sync();
  }
  const bool any_nan = W > 32 ? (__syncthreads_or(nan_seen) != 0) : (__any_sync(g.mask, nan_seen) != 0);
  int z = 0;
  if (j == 0) {
    const double* dlast = dl + ((L - 1) & 1) * W;
    double bs = -INFINITY;
    for (int k = 0; k < n; ++k)
      if (dlast[k] > bs) { bs = dlast[k]; z = k; }
    a.score[b] = any_nan ? qnan<T>() : T(bs);
    path_b[L - 1] = z;
  }
  for (int64_t hi = L - 1; hi >= 1;) {
    const int64_t lo = hi - a.rows + 1 > 1 ? hi - a.rows + 1 : 1;
    const int64_t cnt = (hi - lo + 1) * v.N;
    g.sync();  // the previous block of rows has been used
    for (int64_t k = j; k < cnt; k += W) stg[k] = psi_b[lo * v.N + k];
    g.sync();
    if (j == 0)
      for (int64_t t = hi; t >= lo; --t) {
        z = static_cast<int>(stg[(t - lo) * v.N + z]);
        path_b[t - 1] = z;
      }
    hi = lo - 1;
  }
}

/* ---------------------------------------------------------------------------
 * Sampling: one thread per (sequence, sample), exactly the CPU's draws.
 * ------------------------------------------------------------------------- */
template <typename T>
struct SampleArgs {
  View<T> v;
  const T* alpha;
  const T* flag;
  const T* loglik;
  const double* lad;   // log alpha rows of flagged sequences [B][T][N]
  int64_t Np, S;
  const int32_t* seed;
  int32_t* paths;
};

/* The smallest k with cumsum_{0..k}(w) > u * sum(w) and w_k > 0 (the CPU's
 * draw); -1 when the total is not positive and finite.  Explicitly rounded
 * adds and multiplies (no FMA contraction), as the CPU driver computes them. */
template <typename F>
__device__ __forceinline__ int32_t draw(F wfn, int n, double u) {
  double total = 0;
  for (int i = 0; i < n; ++i) total = __dadd_rn(total, wfn(i));
  if (!(total > 0) || !isfinite(total)) return -1;
  const double target = __dmul_rn(u, total);
  double c = 0;
  int32_t last = -1;
  for (int i = 0; i < n; ++i) {
    const double wi = wfn(i);
    if (wi > 0) last = i;
    c = __dadd_rn(c, wi);
    if (c > target && wi > 0) return i;
  }
  return last;
}

template <typename T>
__global__ void sample_kernel(const SampleArgs<T> a) {
  const View<T>& v = a.v;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= v.B * a.S) return;
  const int64_t b = idx / a.S, s = idx - b * a.S;
  const int n = static_cast<int>(v.N);
  const int64_t L = v.length(b);
  int32_t* ps = a.paths + idx * v.T_;
  for (int64_t t = L; t < v.T_; ++t) ps[t] = -1;
  if (L == 0) return;
  const bool logspace = a.flag[b] != T(0);
  const double* la = a.lad + b * v.T_ * v.N;
  if (logspace && static_cast<double>(a.loglik[b]) == -INFINITY) {
    for (int64_t t = 0; t < L; ++t) ps[t] = -1;
    return;
  }
  const T* al = a.alpha + b * v.T_ * a.Np;
  const uint64_t key = stream_key(a.seed[0], a.seed[1], b, s);
  int32_t z;
  if (logspace) {
    const double* row = la + (L - 1) * v.N;
    double mx = -INFINITY;
    for (int i = 0; i < n; ++i) mx = mx < row[i] ? row[i] : mx;
    z = draw([&](int i) { return exp(row[i] - mx); }, n, uniform01(key, L - 1));
  } else {
    const T* row = al + (L - 1) * a.Np;
    z = draw([&](int i) { return static_cast<double>(row[i]); }, n, uniform01(key, L - 1));
  }
  ps[L - 1] = z;
  for (int64_t t = L - 1; t >= 1 && z >= 0; --t) {
    const T* lt = v.trans(b, t);
    const double u = uniform01(key, t - 1);
    if (logspace) {
      const double* row = la + (t - 1) * v.N;
      double m2 = -INFINITY;
      for (int i = 0; i < n; ++i) {
        const double x = row[i] + static_cast<double>(lt[static_cast<int64_t>(i) * n + z]);
        m2 = m2 < x ? x : m2;
      }
      z = draw([&](int i) {
        return exp(row[i] + static_cast<double>(lt[static_cast<int64_t>(i) * n + z]) - m2);
      }, n, u);
    } else {
      double mx = -INFINITY;
      for (int i = 0; i < n; ++i) {
        const double x = static_cast<double>(lt[static_cast<int64_t>(i) * n + z]);
        mx = mx < x ? x : mx;
      }
      if (mx == -INFINITY) mx = 0;
      const T* row = al + (t - 1) * a.Np;
      z = draw([&](int i) {
        return __dmul_rn(static_cast<double>(row[i]),
                         exp(static_cast<double>(lt[static_cast<int64_t>(i) * n + z]) - mx));
      }, n, u);
    }
    ps[t - 1] = z;
  }
  if (z < 0)  // numerically impossible (NaN inputs): the whole sample is -1
    for (int64_t t = 0; t < L; ++t) ps[t] = -1;
}

/* ---------------------------------------------------------------------------
 * Host side: geometry, workspace layout, launches.
 * ------------------------------------------------------------------------- */
#define HMM_CUDA_CHECK(call)                                        \
  do {                                                              \
    if ((call) != cudaSuccess) return HMM_STATUS_CUDA_ERROR;        \
  } while (0)
#define HMM_LAUNCH_CHECK() HMM_CUDA_CHECK(cudaGetLastError())

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
constexpr int64_t kMaxGrid = 2147483647;  // gridDim.x limit (sm_30 and newer)
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }
inline int next_pow2(int64_t x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

template <typename T>
View<T> make_view(const hmm_problem_t* p, const hmm_inputs_t* in) {
  View<T> v;
  v.B = p->batch;
  v.T_ = p->time;
  v.N = p->states;
  v.init_mode = p->init_mode;
  v.trans_mode = p->trans_mode;
  v.lengths_type = p->lengths_type;
  v.li = static_cast<const T*>(in->log_init);
  v.lt = static_cast<const T*>(in->log_trans);
  v.le = static_cast<const T*>(in->log_emit);
  v.lengths = in->lengths;
  return v;
}

int64_t num_matrices(const hmm_problem_t* p) {
  if (p->trans_mode == HMM_TRANS_SHARED) return 1;
  if (p->trans_mode == HMM_TRANS_PER_SEQUENCE) return p->batch;
  return p->batch * p->time;
}

/* Chunk length of the parallel-in-time variant, 0 for the plain time loop.
 * Chosen from (B, T, N) only, so that workspace sizes do not depend on the
 * device.  Rule: estimated latency of the plain loop, T (80 + 4N) cycles,
 * against 3 sqrt(T) (150 + 8N) cycles of latency plus 2.5 B T N^3 / 8000
 * cycles of throughput for the chunked passes; chunk when that is less than
 * half.  GLUON_HMM_CUDA_CHUNK: 0 = never, K > 0 = chunks of K steps. */
int64_t chunk_length(const hmm_problem_t* p) {
  const int64_t B = p->batch, T = p->time, N = p->states;
  if (N > kChunkMaxStates || T < 3) return 0;
  int64_t K = 0;
  const char* env = getenv("GLUON_HMM_CUDA_CHUNK");
  if (env && *env) {
    const long long val = atoll(env);
    if (val == 0) return 0;
    if (val > 0) K = val;
  }
  if (K == 0) {
    if (T < 1024) return 0;
    const double Td = static_cast<double>(T), Nd = static_cast<double>(N);
    const double serial = Td * (80.0 + 4.0 * Nd);
    const double par = 3.0 * sqrt(Td) * (150.0 + 8.0 * Nd) +
                       2.5 * static_cast<double>(B) * Td * Nd * Nd * Nd / 8000.0;
    if (!(par < 0.5 * serial)) return 0;
    K = static_cast<int64_t>(ceil(sqrt(Td)));
  }
  if (K < N + 3) K = N + 3;  // room for a chunk's product in its own saved rows
  if ((T - 1) / K < 2) return 0;
  return K;
}

/* Workspace carving: the same code sizes (base == NULL) and splits buffers. */
struct Carver {
  char* base;
  size_t off;
  explicit Carver(void* ws)
      : base(ws ? reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(ws), 256)) : nullptr),
        off(0) {}
  template <typename X> X* take(int64_t count) {
    off = static_cast<size_t>(round_up(static_cast<int64_t>(off), 256));
    X* r = base ? reinterpret_cast<X*>(base + off) : nullptr;
    off += static_cast<size_t>(count < 0 ? 0 : count) * sizeof(X);
    return r;
  }
  size_t bytes() const { return off + 256; }  // slack for aligning the base
};

template <typename T>
struct BwdWs {
  int* bflag;
  T* mA;
  T* rp;
  T* part;
  double* logpart;
  T* Q;
  double* logd;
  T* beta_b;
  int64_t S, K, cmax;
};

template <typename T>
BwdWs<T> carve_backward(const hmm_problem_t* p, Carver& cv) {
  BwdWs<T> w;
  const int64_t B = p->batch, TT = p->time, N = p->states, nn = N * N;
  const int64_t Np = padded_states(N, p->dtype);
  const bool tv = p->trans_mode == HMM_TRANS_TIME_VARYING;
  w.S = TT > 1 ? ceil_div(TT - 1, kGemmKc) : 0;
  w.K = chunk_length(p);
  w.cmax = w.K > 0 ? (TT - 1) / w.K : 1;
  if (w.cmax < 1) w.cmax = 1;
  w.bflag = cv.take<int>(B);
  w.mA = cv.take<T>(num_matrices(p));
  w.rp = cv.take<T>(B * TT * Np);
  w.part = cv.take<T>(tv ? 0 : B * w.S * nn);
  w.logpart = cv.take<double>(tv ? 0 : B * nn);
  const int64_t nc = w.K > 0 ? B * w.cmax : 0;
  w.Q = cv.take<T>(nc * nn);
  w.logd = cv.take<double>(nc * N);
  w.beta_b = cv.take<T>(nc * N);
  return w;
}

int smem_optin_limit() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 48 * 1024;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v <= 0)
    return 48 * 1024;
  return v;
}

// Threads per sequence: the next power of two (N <= 32) or N rounded up to a warp.
inline int group_width(int64_t N) {
  return N <= 32 ? next_pow2(N) : static_cast<int>(round_up(N, 32));
}
// Bytes of a group's shared vectors in fwd_kernel / bwd_kernel.
template <typename T> size_t group_bytes(int64_t N) {
  return static_cast<size_t>(kGroupVectors) * sizeof(T) * static_cast<size_t>(group_width(N));
}

struct SeqGeom {
  int W, GPB, threads, S, R, nmats, grp_off;
  int64_t MS, blocks;
  size_t smem;
};

/* Threads per sequence, sequences per block, and the shared-memory plan:
 * [reduction scratch][nmats matrices of R rows x S][GPB x group_bytes]. */
SeqGeom seq_geometry(int64_t N, int trans_mode, size_t tsize, size_t group_bytes, int64_t groups) {
  SeqGeom g;
  g.W = group_width(N);
  g.GPB = g.W >= 64 ? 1 : 128 / g.W;
  g.threads = g.W * g.GPB;
  g.S = static_cast<int>(N | 1);  // odd row stride: conflict-free row and column walks
  g.nmats = trans_mode == HMM_TRANS_SHARED ? 1 : (trans_mode == HMM_TRANS_PER_SEQUENCE ? g.GPB : 0);
  const int64_t limit = smem_optin_limit() - 1024;  // keep a little for the runtime
  const int64_t fixed = kRedBytes + static_cast<int64_t>(group_bytes) * g.GPB + 16;
  g.R = 0;
  if (g.nmats > 0) {
    const int64_t per_row = static_cast<int64_t>(g.nmats) * g.S * static_cast<int64_t>(tsize);
    const int64_t rows = (limit - fixed) / per_row;
    g.R = static_cast<int>(rows < 0 ? 0 : (rows > N ? N : rows));
  }
  g.MS = static_cast<int64_t>(g.R) * g.S;
  g.grp_off = static_cast<int>(round_up(kRedBytes + g.nmats * g.MS * static_cast<int64_t>(tsize), 16));
  g.smem = static_cast<size_t>(g.grp_off) + group_bytes * g.GPB;
  g.blocks = ceil_div(groups, g.GPB);
  return g;
}

template <typename K>
hmm_status_t allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    HMM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  return HMM_STATUS_SUCCESS;
}

#define HMM_TRY_STATUS(expr)                         \
  do {                                               \
    const hmm_status_t _st = (expr);                 \
    if (_st != HMM_STATUS_SUCCESS) return _st;       \
  } while (0)

/* Launches a per-sequence kernel: the instantiation bounded to 256 threads
 * (registers to spare) when the block fits, else the 1024-thread one. */
template <typename K, typename A>
hmm_status_t launch_seq(K small, K big, const SeqGeom& g, cudaStream_t st, const A& args) {
  K kernel = g.threads <= 256 ? small : big;
  HMM_TRY_STATUS(allow_smem(kernel, g.smem));
  kernel<<<static_cast<unsigned>(g.blocks), g.threads, g.smem, st>>>(args);
  HMM_LAUNCH_CHECK();
  return HMM_STATUS_SUCCESS;
}

/* Forward: loglik and the saved state.  lad (sampling) receives the log alpha
 * rows of sequences that fall back to log space. */
template <typename T>
hmm_status_t forward_impl(const hmm_problem_t* p, const hmm_inputs_t* in, T* loglik, T* saved,
                          double* lad) {
  cudaStream_t st = static_cast<cudaStream_t>(p->stream);
  const View<T> v = make_view<T>(p, in);
  const int64_t B = p->batch, TT = p->time, N = p->states;
  if (B == 0) return HMM_STATUS_SUCCESS;
  const int64_t Np = padded_states(N, p->dtype);
  T* alpha = saved;
  T* scale = saved + saved_scale_offset(B, TT, N, p->dtype);
  T* flag = saved + saved_flag_offset(B, TT, N, p->dtype);
  const T* mA_ext = nullptr;
  if (p->trans_mode == HMM_TRANS_TIME_VARYING && TT > 0) {
    // mA of every step's matrix, parked in the scale slots (each is read at its
    // step before the forward pass overwrites it with c_t).
    const int64_t count = B * TT;
    const int64_t grid = ceil_div(count, 8) < 65536 ? ceil_div(count, 8) : 65536;
    matrix_max_kernel<T><<<static_cast<unsigned>(grid), 256, 0, st>>>(v.lt, count, N * N, scale);
    HMM_LAUNCH_CHECK();
    mA_ext = scale;
  }
  if (B > kMaxGrid) return HMM_STATUS_TOO_LARGE;
  int64_t K = chunk_length(p);
  if (K > 0 && (reinterpret_cast<uintptr_t>(saved) & 7) != 0) K = 0;  // logd needs 8-byte rows
  int64_t cmax = 1;
  if (K > 0) {
    cmax = (TT - 1) / K;
    ChunkArgs<T> ca{};
    ca.v = v;
    ca.mA_ext = mA_ext;
    ca.chunk_k = K;
    ca.cmax = cmax;
    ca.alpha = alpha;
    ca.scale = scale;
    ca.flag = flag;
    ca.Np = Np;
    ca.loglik = loglik;
    const int threads = static_cast<int>(round_up(N * N > 32 ? N * N : 32, 32));
    chunk_product_kernel<T><<<static_cast<unsigned>(B * cmax), threads, 0, st>>>(ca);
    HMM_LAUNCH_CHECK();
    fwd_scan_kernel<T><<<static_cast<unsigned>(B), 32, 0, st>>>(ca);
    HMM_LAUNCH_CHECK();
  }
  const SeqGeom g = seq_geometry(N, p->trans_mode, sizeof(T), group_bytes<T>(N), B * cmax);
  SeqArgs<T> a{};
  a.v = v;
  a.alpha = alpha;
  a.scale = scale;
  a.flag = flag;
  a.Np = Np;
  a.loglik = loglik;
  a.mA_ext = mA_ext;
  a.chunk_k = K;
  a.cmax = cmax;
  a.W = g.W;
  a.GPB = g.GPB;
  a.S = g.S;
  a.R = p->trans_mode == HMM_TRANS_TIME_VARYING ? 0 : g.R;
  a.nmats = g.nmats;
  a.MS = g.MS;
  a.grp_off = g.grp_off;
  HMM_TRY_STATUS(launch_seq(fwd_kernel<T, 256>, fwd_kernel<T, kMaxStates>, g, st, a));
  LogArgs<T> la{};
  la.v = v;
  la.flag = flag;
  la.loglik = loglik;
  la.lad = lad;
  const int lt = static_cast<int>(round_up(N, 32));
  const size_t lsmem = (64 + 2 * static_cast<size_t>(lt)) * sizeof(double);
  HMM_TRY_STATUS(allow_smem(fwd_log_kernel<T>, lsmem));
  fwd_log_kernel<T><<<static_cast<unsigned>(B), lt, lsmem, st>>>(la);
  HMM_LAUNCH_CHECK();
  return HMM_STATUS_SUCCESS;
}

/* Backward of sum_b w_b loglik_b (w == NULL: all ones). */
template <typename T>
hmm_status_t backward_impl(const hmm_problem_t* p, const hmm_inputs_t* in, const T* saved,
                           const T* w, T* grad_init, T* grad_trans, T* grad_emit, void* workspace) {
  cudaStream_t st = static_cast<cudaStream_t>(p->stream);
  const View<T> v = make_view<T>(p, in);
  const int64_t B = p->batch, TT = p->time, N = p->states, nn = N * N;
  if (B == 0) {
    if (grad_init && p->init_mode == HMM_INIT_SHARED)
      HMM_CUDA_CHECK(cudaMemsetAsync(grad_init, 0, sizeof(T) * N, st));
    if (grad_trans && p->trans_mode == HMM_TRANS_SHARED)
      HMM_CUDA_CHECK(cudaMemsetAsync(grad_trans, 0, sizeof(T) * nn, st));
    return HMM_STATUS_SUCCESS;
  }
  if (!workspace) return HMM_STATUS_NULL_POINTER;
  const int64_t Np = padded_states(N, p->dtype);
  Carver cv(workspace);
  const BwdWs<T> ws = carve_backward<T>(p, cv);
  if (B > kMaxGrid || B * ws.S > kMaxGrid || ceil_div(B * nn, 32) > kMaxGrid)
    return HMM_STATUS_TOO_LARGE;
  const T* alpha = saved;
  T* flag = const_cast<T*>(saved) + saved_flag_offset(B, TT, N, p->dtype);
  const bool tv = p->trans_mode == HMM_TRANS_TIME_VARYING;

  HMM_CUDA_CHECK(cudaMemsetAsync(ws.bflag, 0, sizeof(int) * B, st));
  const int64_t nm = num_matrices(p);
  if (nm > 0) {
    const int64_t grid = ceil_div(nm, 8) < 65536 ? ceil_div(nm, 8) : 65536;
    matrix_max_kernel<T><<<static_cast<unsigned>(grid), 256, 0, st>>>(v.lt, nm, nn, ws.mA);
    HMM_LAUNCH_CHECK();
  }
  if (ws.K > 0) {
    ChunkArgs<T> ca{};
    ca.v = v;
    ca.mA_ext = ws.mA;
    ca.chunk_k = ws.K;
    ca.cmax = ws.cmax;
    ca.alpha = const_cast<T*>(alpha);
    ca.flag = flag;
    ca.Np = Np;
    ca.Qws = ws.Q;
    ca.logd_ws = ws.logd;
    ca.beta_b = ws.beta_b;
    ca.bflag = ws.bflag;
    const int threads = static_cast<int>(round_up(nn > 32 ? nn : 32, 32));
    chunk_product_kernel<T><<<static_cast<unsigned>(B * ws.cmax), threads, 0, st>>>(ca);
    HMM_LAUNCH_CHECK();
    bwd_scan_kernel<T><<<static_cast<unsigned>(B), 32, 0, st>>>(ca);
    HMM_LAUNCH_CHECK();
  }
  const SeqGeom g = seq_geometry(N, p->trans_mode, sizeof(T), group_bytes<T>(N), B * ws.cmax);
  SeqArgs<T> a{};
  a.v = v;
  a.alpha = const_cast<T*>(alpha);
  a.flag = flag;
  a.Np = Np;
  a.mA_ext = ws.mA;
  a.w = w;
  a.ge = grad_emit;
  a.rp = ws.rp;
  a.beta_b = ws.beta_b;
  a.bflag = ws.bflag;
  a.chunk_k = ws.K;
  a.cmax = ws.cmax;
  a.W = g.W;
  a.GPB = g.GPB;
  a.S = g.S;
  a.R = tv ? 0 : g.R;
  a.nmats = g.nmats;
  a.MS = g.MS;
  a.grp_off = g.grp_off;
  HMM_TRY_STATUS(launch_seq(bwd_kernel<T, 256>, bwd_kernel<T, kMaxStates>, g, st, a));

  LogArgs<T> la{};
  la.v = v;
  la.bflag = ws.bflag;
  la.w = w;
  la.ge = grad_emit;
  la.gt_tv = (grad_trans && tv) ? grad_trans : nullptr;
  la.logpart = (grad_trans && !tv) ? ws.logpart : nullptr;
  const int lt = static_cast<int>(round_up(N, 32));
  const size_t lsmem = (64 + 4 * static_cast<size_t>(lt)) * sizeof(double);
  HMM_TRY_STATUS(allow_smem(bwd_log_kernel<T>, lsmem));
  bwd_log_kernel<T><<<static_cast<unsigned>(B), lt, lsmem, st>>>(la);
  HMM_LAUNCH_CHECK();

  TransArgs<T> ta{};
  ta.v = v;
  ta.alpha = alpha;
  ta.rp = ws.rp;
  ta.Np = Np;
  ta.bflag = ws.bflag;
  ta.mA = ws.mA;
  ta.part = ws.part;
  ta.logpart = ws.logpart;
  ta.out = grad_trans;
  ta.S = ws.S;
  if (grad_trans) {
    if (tv) {
      const int64_t total = B * TT * nn;
      if (total > 0) {
        const int64_t grid = ceil_div(total, 256) < (1 << 20) ? ceil_div(total, 256) : (1 << 20);
        trans_tv_kernel<T><<<static_cast<unsigned>(grid), 256, 0, st>>>(ta);
        HMM_LAUNCH_CHECK();
      }
    } else {
      if (ws.S > 0) {
        if (N <= 16) {
          ta.tiles = static_cast<int>(ceil_div(N, 16));
          trans_gemm_kernel<T, 1><<<dim3(static_cast<unsigned>(B * ws.S), ta.tiles * ta.tiles), 256, 0, st>>>(ta);
        } else if (N <= 32) {
          ta.tiles = static_cast<int>(ceil_div(N, 32));
          trans_gemm_kernel<T, 2><<<dim3(static_cast<unsigned>(B * ws.S), ta.tiles * ta.tiles), 256, 0, st>>>(ta);
        } else {
          ta.tiles = static_cast<int>(ceil_div(N, 64));
          trans_gemm_kernel<T, 4><<<dim3(static_cast<unsigned>(B * ws.S), ta.tiles * ta.tiles), 256, 0, st>>>(ta);
        }
        HMM_LAUNCH_CHECK();
      }
      const int64_t count = p->trans_mode == HMM_TRANS_SHARED ? nn : B * nn;
      trans_reduce_kernel<T><<<static_cast<unsigned>(ceil_div(count, 32)), 256, 0, st>>>(ta);
      HMM_LAUNCH_CHECK();
    }
  }
  if (grad_init) {
    const int shared = p->init_mode == HMM_INIT_SHARED;
    const int64_t count = shared ? N : B * N;
    init_grad_kernel<T><<<static_cast<unsigned>(ceil_div(count, 256)), 256, 0, st>>>(
        grad_init, grad_emit, B, TT, N, shared);
    HMM_LAUNCH_CHECK();
  }
  return HMM_STATUS_SUCCESS;
}

template <typename T>
struct PostWs {
  T* saved;
  T* loglik;
  void* bwd;
};
template <typename T>
PostWs<T> carve_posterior(const hmm_problem_t* p, Carver& cv) {
  PostWs<T> w;
  w.saved = cv.take<T>(saved_elems(p->batch, p->time, p->states, p->dtype));
  w.loglik = cv.take<T>(p->batch);
  // the backward workspace follows, itself carved from an aligned start
  cv.off = static_cast<size_t>(round_up(static_cast<int64_t>(cv.off), 256));
  w.bwd = cv.base ? cv.base + cv.off : nullptr;
  Carver sub(nullptr);
  carve_backward<T>(p, sub);
  cv.off += sub.bytes();
  return w;
}

template <typename T>
hmm_status_t posterior_impl(const hmm_problem_t* p, const hmm_inputs_t* in, T* gamma, T* counts,
                            T* loglik, T* init_counts, void* workspace) {
  if (p->batch == 0) return backward_impl<T>(p, in, nullptr, nullptr, init_counts, counts, gamma, nullptr);
  if (!workspace) return HMM_STATUS_NULL_POINTER;
  Carver cv(workspace);
  const PostWs<T> ws = carve_posterior<T>(p, cv);
  HMM_TRY_STATUS(forward_impl<T>(p, in, loglik ? loglik : ws.loglik, ws.saved, nullptr));
  return backward_impl<T>(p, in, ws.saved, nullptr, init_counts, counts, gamma, ws.bwd);
}

template <typename T>
struct SampleWs {
  T* saved;
  T* loglik;
  double* lad;
};
template <typename T>
SampleWs<T> carve_sample(const hmm_problem_t* p, Carver& cv) {
  SampleWs<T> w;
  w.saved = cv.take<T>(saved_elems(p->batch, p->time, p->states, p->dtype));
  w.loglik = cv.take<T>(p->batch);
  w.lad = cv.take<double>(p->batch * p->time * p->states);
  return w;
}

template <typename T>
hmm_status_t sample_impl(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t S,
                         const int32_t* seed, int32_t* paths, void* workspace) {
  if (p->batch == 0 || S == 0) return HMM_STATUS_SUCCESS;
  if (!workspace) return HMM_STATUS_NULL_POINTER;
  Carver cv(workspace);
  const SampleWs<T> ws = carve_sample<T>(p, cv);
  HMM_TRY_STATUS(forward_impl<T>(p, in, ws.loglik, ws.saved, ws.lad));
  SampleArgs<T> a{};
  a.v = make_view<T>(p, in);
  a.alpha = ws.saved;
  a.flag = ws.saved + saved_flag_offset(p->batch, p->time, p->states, p->dtype);
  a.loglik = ws.loglik;
  a.lad = ws.lad;
  a.Np = padded_states(p->states, p->dtype);
  a.S = S;
  a.seed = seed;
  a.paths = paths;
  const int64_t count = p->batch * S;
  if (ceil_div(count, 128) > kMaxGrid) return HMM_STATUS_TOO_LARGE;
  sample_kernel<T><<<static_cast<unsigned>(ceil_div(count, 128)), 128, 0,
                     static_cast<cudaStream_t>(p->stream)>>>(a);
  HMM_LAUNCH_CHECK();
  return HMM_STATUS_SUCCESS;
}

inline size_t psi_size(int64_t N) { return N <= 256 ? 1 : 2; }

template <typename T, typename P>
hmm_status_t viterbi_typed(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path, T* score,
                           void* psi) {
  const int64_t N = p->states;
  // Back-pointer rows staged per group: 16 KB for a block-wide group, 8 KB
  // shared by the groups of a block otherwise; at least one row.
  const int W = group_width(N);
  const int gpb = W >= 64 ? 1 : 128 / W;
  const int64_t stage_bytes = W > 32 ? 16384 : 8192 / gpb;
  int rows = static_cast<int>(stage_bytes / (N * static_cast<int64_t>(sizeof(P))));
  if (rows < 1) rows = 1;
  const size_t grp = static_cast<size_t>(round_up(
      static_cast<int64_t>(2 * sizeof(double)) * W + static_cast<int64_t>(rows) * N * static_cast<int64_t>(sizeof(P)), 16));
  const SeqGeom g = seq_geometry(N, p->trans_mode, sizeof(T), grp, p->batch);
  VitArgs<T> a{};
  a.v = make_view<T>(p, in);
  a.path = path;
  a.score = score;
  a.psi = psi;
  a.W = g.W;
  a.GPB = g.GPB;
  a.S = g.S;
  a.R = p->trans_mode == HMM_TRANS_TIME_VARYING ? 0 : g.R;
  a.nmats = g.nmats;
  a.MS = g.MS;
  a.grp_off = g.grp_off;
  a.grp_bytes = static_cast<int>(grp);
  a.rows = rows;
  HMM_TRY_STATUS(allow_smem(viterbi_kernel<T, P>, g.smem));
  viterbi_kernel<T, P><<<static_cast<unsigned>(g.blocks), g.threads, g.smem,
                         static_cast<cudaStream_t>(p->stream)>>>(a);
  HMM_LAUNCH_CHECK();
  return HMM_STATUS_SUCCESS;
}

template <typename T>
hmm_status_t viterbi_impl(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path, T* score,
                          void* workspace) {
  if (p->batch == 0) return HMM_STATUS_SUCCESS;
  if (p->batch > kMaxGrid) return HMM_STATUS_TOO_LARGE;
  if (!workspace && p->time > 0) return HMM_STATUS_NULL_POINTER;
  Carver cv(workspace);
  void* psi = cv.take<unsigned char>(p->batch * p->time * p->states * static_cast<int64_t>(psi_size(p->states)));
  if (p->states <= 256) return viterbi_typed<T, uint8_t>(p, in, path, score, psi);
  return viterbi_typed<T, uint16_t>(p, in, path, score, psi);
}

inline bool too_large(const hmm_problem_t* p) { return p->states > kMaxStates; }

/* Stale, non-sticky errors of earlier unrelated calls would otherwise be
 * reported as ours by the first launch check. */
inline void clear_stale_error() { (void)cudaGetLastError(); }

}  // namespace
}  // namespace cuda_driver
}  // namespace gluon_hmm

using namespace gluon_hmm::cuda_driver;

extern "C" {

hmm_status_t hmm_cuda_backward_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  Carver cv(nullptr);
  if (p->dtype == HMM_FLOAT32) carve_backward<float>(p, cv);
  else carve_backward<double>(p, cv);
  *bytes = cv.bytes();
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_cuda_posterior_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  Carver cv(nullptr);
  if (p->dtype == HMM_FLOAT32) carve_posterior<float>(p, cv);
  else carve_posterior<double>(p, cv);
  *bytes = cv.bytes();
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_cuda_viterbi_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  Carver cv(nullptr);
  cv.take<unsigned char>(p->batch * p->time * p->states * static_cast<int64_t>(psi_size(p->states)));
  *bytes = cv.bytes();
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_cuda_sample_workspace_size(const hmm_problem_t* p, int64_t num_samples,
                                            size_t* bytes) {
  (void)num_samples;
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  Carver cv(nullptr);
  if (p->dtype == HMM_FLOAT32) carve_sample<float>(p, cv);
  else carve_sample<double>(p, cv);
  *bytes = cv.bytes();
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_cuda_forward(const hmm_problem_t* p, const hmm_inputs_t* in, void* loglik,
                              void* saved) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  clear_stale_error();
  if (p->dtype == HMM_FLOAT32)
    return forward_impl<float>(p, in, static_cast<float*>(loglik), static_cast<float*>(saved), nullptr);
  return forward_impl<double>(p, in, static_cast<double*>(loglik), static_cast<double*>(saved), nullptr);
}

hmm_status_t hmm_cuda_backward(const hmm_problem_t* p, const hmm_inputs_t* in, const void* saved,
                               const void* grad_loglik, void* grad_init, void* grad_trans,
                               void* grad_emit, void* workspace) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  clear_stale_error();
  if (p->dtype == HMM_FLOAT32)
    return backward_impl<float>(p, in, static_cast<const float*>(saved),
                                static_cast<const float*>(grad_loglik), static_cast<float*>(grad_init),
                                static_cast<float*>(grad_trans), static_cast<float*>(grad_emit),
                                workspace);
  return backward_impl<double>(p, in, static_cast<const double*>(saved),
                               static_cast<const double*>(grad_loglik),
                               static_cast<double*>(grad_init), static_cast<double*>(grad_trans),
                               static_cast<double*>(grad_emit), workspace);
}

hmm_status_t hmm_cuda_posterior(const hmm_problem_t* p, const hmm_inputs_t* in, void* gamma,
                                void* trans_counts, void* loglik, void* init_counts,
                                void* workspace) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  clear_stale_error();
  if (p->dtype == HMM_FLOAT32)
    return posterior_impl<float>(p, in, static_cast<float*>(gamma), static_cast<float*>(trans_counts),
                                 static_cast<float*>(loglik), static_cast<float*>(init_counts),
                                 workspace);
  return posterior_impl<double>(p, in, static_cast<double*>(gamma), static_cast<double*>(trans_counts),
                                static_cast<double*>(loglik), static_cast<double*>(init_counts),
                                workspace);
}

hmm_status_t hmm_cuda_viterbi(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path,
                              void* score, void* workspace) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  clear_stale_error();
  if (p->dtype == HMM_FLOAT32)
    return viterbi_impl<float>(p, in, path, static_cast<float*>(score), workspace);
  return viterbi_impl<double>(p, in, path, static_cast<double*>(score), workspace);
}

hmm_status_t hmm_cuda_sample(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t num_samples,
                             const int32_t* seed, int32_t* paths, void* workspace) {
  if (too_large(p)) return HMM_STATUS_TOO_LARGE;
  clear_stale_error();
  if (p->dtype == HMM_FLOAT32)
    return sample_impl<float>(p, in, num_samples, seed, paths, workspace);
  return sample_impl<double>(p, in, num_samples, seed, paths, workspace);
}

hmm_status_t hmm_cuda_buffer_alloc(void* stream, size_t bytes, void** ptr) {
  clear_stale_error();
  const cudaError_t e = cudaMallocAsync(ptr, bytes, static_cast<cudaStream_t>(stream));
  if (e == cudaSuccess) return HMM_STATUS_SUCCESS;
  *ptr = nullptr;
  (void)cudaGetLastError();
  return e == cudaErrorMemoryAllocation ? HMM_STATUS_TOO_LARGE : HMM_STATUS_CUDA_ERROR;
}

hmm_status_t hmm_cuda_buffer_free(void* stream, void* ptr) {
  clear_stale_error();
  return cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)) == cudaSuccess
             ? HMM_STATUS_SUCCESS : HMM_STATUS_CUDA_ERROR;
}

}  // extern "C"
