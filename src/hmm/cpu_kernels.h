/*
 * gluon_hmm CPU engine: the per-sequence kernels (scaled forward and backward
 * over lockstep groups, and the one-vector kernels), written once for any SIMD
 * width.
 *
 * cpu.cc includes this file once per vector width, with HMM_VEC_BYTES,
 * HMM_ISA (the namespace: v256, v512) and HMM_ISA_ENTRY (the target attribute
 * of the entry points) defined; it brings cpu_simd.h for that width and
 * undefines the three at its end.  The
 * kernels are always-inline into the entry points forward_item_f32/_f64 and
 * backward_item_f32/_f64 of that namespace; cpu.cc picks a namespace per call.
 * Rows are Np entries apart (padded_states): a multiple of the vector width in
 * use, so that every row is whole vectors.
 */
#if !defined(HMM_VEC_BYTES) || !defined(HMM_ISA) || !defined(HMM_ISA_ENTRY)
#error "define HMM_VEC_BYTES, HMM_ISA and HMM_ISA_ENTRY before including cpu_kernels.h"
#endif

#include "cpu_simd.h"

namespace gluon_hmm {
namespace cpu {
namespace HMM_ISA {

using simd::vec_t;
using simd::Vec;
using simd::load;
using simd::store;
using simd::splat;

/* ------------------------------------------------------------------------ */
/* Per-step kernels (always inlined into the entry points below).            */
/* ------------------------------------------------------------------------ */

// dst[0:n] = exp(src - shift) for a padded row (entries >= N hold -inf).
template <typename T>
HMM_INLINE void exp_row(const T* src, T shift, int64_t n, T* dst) {
  constexpr int W = Vec<T>::W;
  for (int64_t j = 0; j < n; j += W) store(dst + j, simd::vexp<T>(load(src + j) - shift));
}

// Largest finite entry of x[0:n] (NaN and +-inf skipped), or 0 when there is
// none; used on whole matrices.  Vector maxima over whole vectors, then the rest.
template <typename T>
HMM_INLINE T finite_max(const T* x, int64_t n) {
  typedef vec_t<T> V;
  constexpr int W = Vec<T>::W;
  const T inf = std::numeric_limits<T>::infinity();
  const V vinf = splat<T>(inf), ninf = splat<T>(-inf);
  V mv = ninf;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const V v = load(x + j);
    const V keep = v < vinf ? v : ninf;  // NaN and +inf compare false: dropped
    mv = keep > mv ? keep : mv;
  }
  T m = simd::hmax<T>(mv);
  for (; j < n; ++j) {
    const T v = x[j];
    if (v > m && v < inf) m = v;
  }
  return m == -inf ? T(0) : m;
}

/* One row of N emissions read in place, as padded vectors (-inf
 * past N): whole vectors straight from the input, the partial last one (if any)
 * by a shifted load and a permute, or from a copy for the first rows of an array. */
template <typename T>
struct EmitRow {
  static constexpr int W = Vec<T>::W;
  typedef typename Vec<T>::itype VI;
  typedef decltype(VI{}[0]) IT;
  const T* e;
  int64_t full;  // entries in whole vectors
  vec_t<T> tail;
  // row lies in the array that starts at base (so W entries ending at the row's
  // end can be read when the row has at least W - N entries before it there).
  HMM_INLINE EmitRow(const T* row, int64_t N, const T* base) : e(row), full(N / W * W) {
    const int r = int(N - full);  // entries in the partial last vector
    if (r == 0) return;
    VI lanes;
    for (int j = 0; j < W; ++j) lanes[j] = IT(j);
    const vec_t<T> ninf = splat<T>(neg_inf<T>());
    if (row + N - W < base) {  // the first rows of the array when N < W
      alignas(HMM_VEC_BYTES) T buf[W];
      for (int j = 0; j < W; ++j) buf[j] = j < r ? row[j] : neg_inf<T>();
      tail = load(buf);
      return;
    }
    // The last W entries up to the row's end, moved down by W - r lanes: one load
    // and one permute (a copy lane by lane would stall the vector load that reads
    // it back: store forwarding does not merge narrow stores).
    const vec_t<T> v = __builtin_shuffle(load(row + N - W), lanes + IT(W - r));
    tail = lanes < IT(r) ? v : ninf;
  }
  HMM_INLINE vec_t<T> vec(int64_t j) const { return j < full ? load(e + j) : tail; }
  // Largest entry, NaN skipped (one max a vector), or 0 when all are -inf or
  // NaN.  A +inf entry gives +inf: exp(x - m) is then NaN or 0 across the row,
  // and the scaled recursions fall back to log space, as for any non-finite
  // normaliser.
  HMM_INLINE T max(int64_t Nx) const {
    typedef vec_t<T> V;
    V m = splat<T>(neg_inf<T>());
    for (int64_t j = 0; j < Nx; j += W) {
      const V v = vec(j);
      m = v > m ? v : m;  // false for NaN: m stays
    }
    const T r = simd::hmax<T>(m);
    return r == neg_inf<T>() ? T(0) : r;
  }
};

/* Running product of step normalisers, kept as mantissa * 2^exponent so that
 * the log is taken once per sequence: more exact than summing T logs, and cheaper. */
struct LogProduct {
  double mant = 1.0;
  int64_t exp2 = 0;
  double shift = 0.0;  // sum of the additive log shifts
  HMM_INLINE void mul(double c) {
    mant *= c;
    if (mant < 1e-150 || mant > 1e150) {
      // frexp by hand (mant is a normal number here): no library call, so the
      // vector registers of the caller's loop survive this branch
      uint64_t bits;
      std::memcpy(&bits, &mant, sizeof bits);
      exp2 += int64_t((bits >> 52) & 0x7ff) - 1022;
      bits = (bits & ~(uint64_t(0x7ff) << 52)) | (uint64_t(1022) << 52);
      std::memcpy(&mant, &bits, sizeof bits);
    }
  }
  double log() const { return std::log(mant) + double(exp2) * 0.69314718055994530942 + shift; }
};

// A' = exp(log_trans - mA) in padded (N x Np) layout, optionally with its transpose
// At (N x Np: At[j][i] = A'[i][j]).  Returns mA.
template <typename T>
HMM_INLINE T prepare_trans(const T* lt, int64_t N, int64_t Np, T* A, T* At) {
  const T mA = finite_max(lt, N * N);
  for (int64_t i = 0; i < N; ++i) {
    T* row = A + i * Np;
    for (int64_t j = 0; j < N; ++j) row[j] = lt[i * N + j];
    for (int64_t j = N; j < Np; ++j) row[j] = neg_inf<T>();
    exp_row(row, mA, Np, row);
  }
  if (At) {
    // in 16 x 16 tiles, so that both matrices are walked a few cache lines at a time
    constexpr int64_t kTile = 16;
    for (int64_t i0 = 0; i0 < N; i0 += kTile)
      for (int64_t j0 = 0; j0 < N; j0 += kTile) {
        const int64_t i1 = std::min(N, i0 + kTile), j1 = std::min(N, j0 + kTile);
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < i1; ++i) At[j * Np + i] = A[i * Np + j];
      }
    for (int64_t j = 0; j < N; ++j)
      for (int64_t i = N; i < Np; ++i) At[j * Np + i] = 0;
  }
  return mA;
}

/* out[g][0:Nx] = sum_{i<N} x[g][i] * M[i][0:Nx] for g < G: a (G x N)(N x Nx)
 * product (rows of M are ld apart), register-blocked: NV vectors of columns, KS independent partial
 * sums over i, so that G*NV*KS FMA chains are in flight. */
template <typename T, int G, int NV, int KS>
HMM_INLINE void gemm_cols(const T* const* x, const T* M, int64_t N, int64_t ld, int64_t c0,
                          T* const* out) {
  typedef vec_t<T> V;
  V acc[KS][G][NV];
  for (int k = 0; k < KS; ++k)
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < NV; ++v) acc[k][g][v] = splat<T>(0);
  int64_t i = 0;
  for (; i + KS <= N; i += KS) {
    for (int k = 0; k < KS; ++k) {
      const T* row = M + (i + k) * ld + c0;
      V a[NV];
      for (int v = 0; v < NV; ++v) a[v] = load(row + v * Vec<T>::W);
      for (int g = 0; g < G; ++g) {
        const V xb = splat<T>(x[g][i + k]);
        for (int v = 0; v < NV; ++v) acc[k][g][v] += xb * a[v];
      }
    }
  }
  for (; i < N; ++i) {
    const T* row = M + i * ld + c0;
    for (int g = 0; g < G; ++g) {
      const V xb = splat<T>(x[g][i]);
      for (int v = 0; v < NV; ++v) acc[0][g][v] += xb * load(row + v * Vec<T>::W);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < NV; ++v) {
      V s = acc[0][g][v];
      for (int k = 1; k < KS; ++k) s += acc[k][g][v];
      store(out[g] + c0 + v * Vec<T>::W, s);
    }
}

// Vector registers of the instruction set the kernels are compiled for: AVX2
// has 16, AVX-512 32 (the 256-bit kernels keep to 16 for their AVX2 clone).
constexpr int kVecRegs = HMM_VEC_BYTES >= 64 ? 32 : 16;
// Partial sums over i for a block of G rows x NV vectors: enough independent
// accumulators (G * NV * KS) to keep two FMA pipes of latency 4 busy with slack
// (12 or more; 16 with 32 registers), as long as they fit in the registers
// beside the NV row vectors and two broadcasts; 1 to 4 partial sums.
constexpr int gemm_partials(int G, int NV) {
  const int want = kVecRegs >= 32 ? 16 : 12;
  int ks = (want + G * NV - 1) / (G * NV);
  const int fit = (kVecRegs - NV - 2) / (G * NV);
  if (ks > fit) ks = fit;
  return ks < 1 ? 1 : (ks > 4 ? 4 : ks);
}

template <typename T, int G>
HMM_INLINE void gemm(const T* const* x, const T* M, int64_t N, int64_t ld, int64_t Nx,
                     T* const* out) {
  constexpr int W = Vec<T>::W;
  // Column blocks of NV vectors: each row of M is loaded once per block and
  // used by all G members.  16 registers: 3 vectors for a group of 4, else 2;
  // 32 registers: 4 vectors (up to 16 accumulators, the rows and broadcasts
  // beside them).  Narrower blocks take the remainder.
  constexpr int NV = kVecRegs >= 32 ? 4 : (G >= 4 ? 3 : 2);
  int64_t c = 0;
  for (; c + NV * W <= Nx; c += NV * W)
    gemm_cols<T, G, NV, gemm_partials(G, NV)>(x, M, N, ld, c, out);
  if (NV >= 4 && c + 3 * W <= Nx) {
    gemm_cols<T, G, 3, gemm_partials(G, 3)>(x, M, N, ld, c, out);
    c += 3 * W;
  }
  if (NV >= 3 && c + 2 * W <= Nx) {
    gemm_cols<T, G, 2, gemm_partials(G, 2)>(x, M, N, ld, c, out);
    c += 2 * W;
  }
  for (; c < Nx; c += W) gemm_cols<T, G, 1, gemm_partials(G, 1)>(x, M, N, ld, c, out);
}

/* S[i][0:Nx] += sum_k X[k][i] * R[k][0:Nx] over K row pairs (rows of S ld
 * apart): the transition statistics as one (N x K)(K x Nx) product per block
 * of steps, register-blocked over RI rows of S and NV vectors of columns: 4 x 3
 * (12 accumulators) within 16 registers, 6 x 4 (24) within 32, which loads 10
 * vectors per 24 FMAs instead of 8 per 16 (AVX-512 on two FMA ports: ~7 %
 * off the backward at 8,50,1000, see benchmarks/NOTES.md). */
template <typename T, int RI, int NV>
HMM_INLINE void gemm_tn_block(const T* const* X, const T* const* R, int64_t K, int64_t i0,
                              int64_t c0, int64_t ld, T* S) {
  typedef vec_t<T> V;
  V acc[RI][NV];
  for (int a = 0; a < RI; ++a)
    for (int v = 0; v < NV; ++v) acc[a][v] = splat<T>(0);
  for (int64_t k = 0; k < K; ++k) {
    V r[NV];
    for (int v = 0; v < NV; ++v) r[v] = load(R[k] + c0 + v * Vec<T>::W);
    const T* x = X[k] + i0;
    for (int a = 0; a < RI; ++a) {
      const V xb = splat<T>(x[a]);
      for (int v = 0; v < NV; ++v) acc[a][v] += xb * r[v];
    }
  }
  for (int a = 0; a < RI; ++a)
    for (int v = 0; v < NV; ++v) {
      T* dst = S + (i0 + a) * ld + c0 + v * Vec<T>::W;
      store(dst, load(dst) + acc[a][v]);
    }
}

// The column blocks of RI rows of S starting at row i: NV vectors, then narrower.
template <typename T, int RI, int NV>
HMM_INLINE void gemm_tn_rows(const T* const* X, const T* const* R, int64_t K, int64_t i,
                             int64_t ld, int64_t Nx, T* S) {
  constexpr int W = Vec<T>::W;
  int64_t c = 0;
  for (; c + NV * W <= Nx; c += NV * W) gemm_tn_block<T, RI, NV>(X, R, K, i, c, ld, S);
  if (NV >= 4 && c + 3 * W <= Nx) { gemm_tn_block<T, RI, 3>(X, R, K, i, c, ld, S); c += 3 * W; }
  if (NV >= 3 && c + 2 * W <= Nx) { gemm_tn_block<T, RI, 2>(X, R, K, i, c, ld, S); c += 2 * W; }
  for (; c < Nx; c += W) gemm_tn_block<T, RI, 1>(X, R, K, i, c, ld, S);
}

template <typename T>
HMM_INLINE void gemm_tn(const T* const* X, const T* const* R, int64_t K, int64_t N, int64_t ld,
                        int64_t Nx, T* S) {
  constexpr int NV = kVecRegs >= 32 ? 4 : 3;
  constexpr int RI = kVecRegs >= 32 ? 6 : 4;
  if (K == 0) return;
  int64_t i = 0;
  for (; i + RI <= N; i += RI) gemm_tn_rows<T, RI, NV>(X, R, K, i, ld, Nx, S);
  if (RI > 4 && i + 4 <= N) { gemm_tn_rows<T, 4, NV>(X, R, K, i, ld, Nx, S); i += 4; }
  if (i + 2 <= N) { gemm_tn_rows<T, 2, NV>(X, R, K, i, ld, Nx, S); i += 2; }
  for (; i < N; ++i) gemm_tn_rows<T, 1, NV>(X, R, K, i, ld, Nx, S);
}

// The columns the kernels run over: the whole vectors that hold N states (rows
// are Np >= this apart).
template <typename T> HMM_INLINE int64_t vec_extent(int64_t N) {
  return (N + Vec<T>::W - 1) / Vec<T>::W * Vec<T>::W;
}

template <typename T>
HMM_INLINE void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * int64_t(sizeof(T)); off += 64) __builtin_prefetch(c + off);
}
constexpr int64_t kAhead = 4;  // steps of look-ahead for the backward pass's prefetches

// out[j] = w * a[j] * beta[j] for j < N, 0 where a[j] == 0 whatever beta holds.
// The backward passes keep beta finite (row_bounded), so a finite w needs no
// select: w * 0 * beta is already 0 (its sign aside).
template <typename T>
HMM_INLINE void gamma_row(const T* __restrict a, const T* __restrict beta, T w, int64_t N,
                          T* __restrict out) {
  typedef vec_t<T> V;
  const V zero = splat<T>(0), wv = splat<T>(w);
  int64_t j = 0;
  if (finite(w)) {
    for (; j + Vec<T>::W <= N; j += Vec<T>::W) store(out + j, wv * load(a + j) * load(beta + j));
  } else {
    for (; j + Vec<T>::W <= N; j += Vec<T>::W) {
      const V av = load(a + j);
      store(out + j, av == zero ? zero : wv * av * load(beta + j));
    }
  }
  for (; j < N; ++j) out[j] = a[j] == T(0) ? T(0) : w * a[j] * beta[j];
}

// All of x[0:Nx] <= bound (false on NaN).
template <typename T>
HMM_INLINE bool row_bounded(const T* x, int64_t Nx, T bound) {
  typedef vec_t<T> V;
  // 1 in the lanes that fail, then one shuffle-tree maximum (a lane-by-lane
  // test of the mask cost W extracts and branches a row)
  const V one = splat<T>(1), lim = splat<T>(bound);
  V bad = splat<T>(0);
  for (int64_t j = 0; j < Nx; j += Vec<T>::W) bad = load(x + j) <= lim ? bad : one;
  return simd::hmax<T>(bad) == T(0);
}

/* ------------------------------------------------------------------------ */
/* Scaled forward over a lockstep group of G sequences.                      */
/* ------------------------------------------------------------------------ */

// Per-sequence transition state for non-shared matrices.
template <typename T>
struct TransCursor {
  const Model<T>& M;
  int64_t b;
  T* A;       // scratch N x Np
  T* At;      // scratch N x Np (backward only)
  const T* shared_A;
  const T* shared_At;
  T shared_mA;
  int64_t loaded = -1;
  T mA = 0;
  // A' (and A'^T) for moving into step t; returns mA.
  HMM_INLINE const T* get(int64_t t, bool transpose, const T** at_out) {
    if (M.trans_mode == HMM_TRANS_SHARED) {
      if (at_out) *at_out = shared_At;
      mA = shared_mA;
      return shared_A;
    }
    const int64_t key = M.trans_mode == HMM_TRANS_PER_SEQUENCE ? 0 : t;
    if (loaded != key) {
      mA = prepare_trans(M.trans_of(b, t), M.N, M.Np, A, transpose ? At : nullptr);
      loaded = key;
    }
    if (at_out) *at_out = At;
    return A;
  }
};

// Steps of emission factors the forward pass computes ahead of its recursion, per block.
constexpr int64_t kPre = 16;

template <typename T, int G>
HMM_INLINE void forward_group(const FwdShared<T>& F, const int64_t* seq, Arena& ar) {
  const Model<T>& M = *F.M;
  const int64_t N = M.N, Np = M.Np;
  const int64_t Nx = vec_extent<T>(N);
  int64_t L[G];
  int64_t maxL = 0;
  LogProduct ll[G];
  bool ok[G];
  T* zero_row = ar.array<T>(Np);
  T* junk[G];
  std::fill(zero_row, zero_row + Np, T(0));
  T* A = nullptr;
  if (M.trans_mode != HMM_TRANS_SHARED) A = ar.array<T>(N * Np);
  TransCursor<T> cur{M, seq[0], A, nullptr, F.A, nullptr, F.mA};
  for (int g = 0; g < G; ++g) {
    L[g] = M.length(seq[g]);
    maxL = std::max(maxL, L[g]);
    ok[g] = true;
    junk[g] = ar.array<T>(Np);
  }
  // Lazy normalisation: the alpha slot of step t first holds p_t unnormalised (its sum
  // c_t is added up while it is written); the product for step t+1 starts from p_t at
  // once, while 1/c_t is computed beside it (off the critical path) and folded into
  // p_{t+1} = (p_t A') * u_{t+1} / c_t = (alpha_t A') * u_{t+1}.  Then p_t is scaled
  // to alpha_t in place.  p_t <= N (alpha_{t-1} sums to 1, A' and u are <= 1), so
  // deferring the division cannot overflow.
  T inv_prev[G] = {};  // 1 / c_{t-1}, to fold into step t
  T sum[G] = {};   // sum(p_t), added up while p_t is written
  // Normalises slot t of member g (p_t -> alpha_t); false when c_t is unusable.
  auto settle = [&](int g, int64_t t) HMM_LAMBDA_INLINE {
    const int64_t b = seq[g];
    const T c = sum[g];
    if (!(c >= ScaleLimits<T>::min_norm()) || !finite(c)) return false;
    const T inv = T(1) / c;
    inv_prev[g] = inv;
    F.S.scale(b, t) = c;
    ll[g].mul(double(c));
    return true;
  };
  auto scale_row = [&](int g, int64_t t) HMM_LAMBDA_INLINE {
    T* a = F.S.alpha(seq[g], t);
    const vec_t<T> inv = splat<T>(inv_prev[g]);
    for (int64_t j = 0; j < Nx; j += Vec<T>::W) store(a + j, load(a + j) * inv);
  };
  // t = 0
  for (int g = 0; g < G; ++g) {
    if (L[g] == 0) continue;
    const int64_t b = seq[g];
    // p_0 = exp(log_init - mi) * exp(e_0 - m): shifted separately, since adding a
    // small log_init to an emission of -1e4 in float32 would round it away.
    const EmitRow<T> ei(M.init_of(b), N, M.init), e0(M.emit_of(b, 0), N, M.emit);
    const T mi = ei.max(Nx), m = e0.max(Nx);
    T* a = F.S.alpha(b, 0);
    vec_t<T> s = splat<T>(0);
    for (int64_t j = 0; j < Nx; j += Vec<T>::W) {
      const vec_t<T> p = simd::vexp<T>(ei.vec(j) - mi) * simd::vexp<T>(e0.vec(j) - m);
      store(a + j, p);
      s += p;
    }
    sum[g] = simd::hsum<T>(s);
    ll[g].shift += double(m) + double(mi);
  }
  // The emission factors u_s = exp(e_s - m_s) do not depend on the recursion:
  // they are computed kPre steps at a time in a pass of their own (independent
  // work that pipelines freely), so that each step's chain is the product and
  // one multiply.  They go to the saved state, where the backward pass reads
  // them (whole rows of Np: zero past the vectors this width computes).
  int64_t pre_end = 1;  // u is computed for steps < pre_end
  for (int64_t t = 1; t < maxL; ++t) {
    if (t == pre_end) {
      pre_end = std::min(maxL, t + kPre);
      for (int g = 0; g < G; ++g) {
        if (!ok[g]) continue;
        const int64_t b = seq[g], end = std::min(pre_end, L[g]);
        for (int64_t s = t; s < end; ++s) {
          const EmitRow<T> er(M.emit_of(b, s), N, M.emit);
          const T m = er.max(Nx);
          T* u = F.S.emit(b, s);
          for (int64_t j = 0; j < Nx; j += Vec<T>::W) store(u + j, simd::vexp<T>(er.vec(j) - m));
          for (int64_t j = Nx; j < Np; j += Vec<T>::W) store(u + j, splat<T>(0));
          ll[g].shift += double(m);
        }
      }
    }
    const T* x[G];
    T* y[G];
    bool act[G];
    for (int g = 0; g < G; ++g) {
      act[g] = ok[g] && t < L[g];
      // c_{t-1} first in program order: its reduction overlaps the product below
      if (act[g] && !settle(g, t - 1)) { ok[g] = false; act[g] = false; }
      x[g] = act[g] ? F.S.alpha(seq[g], t - 1) : zero_row;
      y[g] = act[g] ? F.S.alpha(seq[g], t) : junk[g];
    }
    const T* Am = cur.get(t, false, nullptr);
    gemm<T, G>(x, Am, N, Np, Nx, y);
    for (int g = 0; g < G; ++g) {
      if (!act[g]) continue;
      scale_row(g, t - 1);  // alpha_{t-1}, after the product has read p_{t-1}
      const T* u = F.S.emit(seq[g], t);
      T* a = y[g];
      const vec_t<T> inv = splat<T>(inv_prev[g]);
      vec_t<T> s = splat<T>(0);
      for (int64_t j = 0; j < Nx; j += Vec<T>::W) {
        const vec_t<T> p = load(a + j) * (load(u + j) * inv);
        store(a + j, p);
        s += p;
      }
      sum[g] = simd::hsum<T>(s);
      ll[g].shift += double(cur.mA);
    }
  }
  // the last step of each member
  for (int g = 0; g < G; ++g) {
    if (!ok[g] || L[g] == 0) continue;
    if (!settle(g, L[g] - 1)) { ok[g] = false; continue; }
    scale_row(g, L[g] - 1);
  }
  for (int g = 0; g < G; ++g) {
    const int64_t b = seq[g];
    F.S.flag(b) = ok[g] ? T(0) : T(1);
    double value = L[g] == 0 ? 0.0 : ll[g].log();
    if (!ok[g]) {
      double* la = ar.array<double>(L[g] * N);
      double* tmp = ar.array<double>(N);
      value = log_forward(M, b, L[g], la, tmp);
    }
    if (F.loglik) F.loglik[b] = T(value);
  }
}


/* ------------------------------------------------------------------------ */
/* Scaled backward over a lockstep group.                                     */
/* ------------------------------------------------------------------------ */

/* Returns false (having written nothing to the shared accumulators) when the
 * scaled recursion cannot be trusted for some member; the caller then redoes
 * the members one at a time. */
template <typename T, int G>
HMM_INLINE bool backward_group(const BwdShared<T>& Bw, const int64_t* seq, ChunkAcc* acc,
                               Arena& ar) {
  const Model<T>& M = *Bw.M;
  const int64_t N = M.N, Np = M.Np, TT = M.T_;
  const int64_t Nx = vec_extent<T>(N);
  const bool shared = M.trans_mode == HMM_TRANS_SHARED;
  const bool tv = M.trans_mode == HMM_TRANS_TIME_VARYING;
  int64_t L[G];
  int64_t maxL = 0;
  T w[G];
  T* beta[G];
  T* beta_next[G];
  T* r[G];
  T* xa[G];
  T* junk[G];
  T* zero_row = ar.array<T>(Np);
  std::fill(zero_row, zero_row + Np, T(0));
  for (int g = 0; g < G; ++g) {
    L[g] = M.length(seq[g]);
    maxL = std::max(maxL, L[g]);
    w[g] = Bw.w[seq[g]];
    beta[g] = ar.array<T>(Np);
    beta_next[g] = ar.array<T>(Np);
    r[g] = ar.array<T>(Np);
    xa[g] = tv ? ar.array<T>(Np) : nullptr;  // only time-varying matrices use it
    junk[g] = ar.array<T>(Np);
    backward_zero_padding(Bw, seq[g], L[g]);
    if (tv && Bw.grad_trans && TT > 0) {
      T* gt = Bw.grad_trans + seq[g] * TT * N * N;
      std::fill(gt, gt + N * N, T(0));  // [b, 0] is unused
      std::fill(gt + std::max<int64_t>(L[g], 1) * N * N, gt + TT * N * N, T(0));
    }
  }
  const bool want_trans = Bw.grad_trans != nullptr;
  // Local accumulators for the pre-A' transition statistics: float blocks
  // flushed to float64 every kFlush steps.
  constexpr int64_t kBlock = 32;  // steps per transition-statistics product
  T* Sf = nullptr;
  double* Sd = nullptr;
  T* Rbuf = nullptr;
  const T** Xrows = nullptr;
  const T** Rrows = nullptr;
  int64_t nrows = 0;
  if (want_trans && !tv) {
    Sf = ar.array<T>(N * Np);
    Sd = ar.array<double>(N * N);
    std::fill(Sf, Sf + N * Np, T(0));
    std::fill(Sd, Sd + N * N, 0.0);
    Rbuf = ar.array<T>(G * kBlock * Np);
    Xrows = static_cast<const T**>(ar.get(sizeof(T*) * G * kBlock));
    Rrows = static_cast<const T**>(ar.get(sizeof(T*) * G * kBlock));
  }
  T* A = nullptr;
  T* At = nullptr;
  if (!shared) { A = ar.array<T>(N * Np); At = ar.array<T>(N * Np); }
  TransCursor<T> cur{M, seq[0], A, At, Bw.A, Bw.At, Bw.mA};
  const T big = beta_limit<T>();
  // With one weight for the whole group (the usual case: the loss sums the
  // log-likelihoods), r_t goes straight into the block buffer, the beta product
  // reads it there, and the weight multiplies the float64 sums at each flush;
  // otherwise (or for an infinite weight, whose products with 0 must stay per
  // element) r_t has a row of its own and the buffer gets w * r_t.
  bool one_weight = finite(w[0]);
  for (int g = 1; g < G; ++g) one_weight = one_weight && w[g] == w[0];
  const double flush_w = one_weight ? double(w[0]) : 1.0;
  int64_t since_flush = 0;
  auto flush = [&]() HMM_LAMBDA_INLINE {
    if (!Sf) return;
    gemm_tn(Xrows, Rrows, nrows, N, Np, Nx, Sf);
    nrows = 0;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        Sd[i * N + j] += flush_w * double(Sf[i * Np + j]);
        Sf[i * Np + j] = 0;
      }
    since_flush = 0;
  };
  for (int64_t t = maxL - 1; t >= 1; --t) {
    const T* rr[G];
    T* y[G];
    bool act[G];
    for (int g = 0; g < G; ++g) {
      const int64_t b = seq[g];
      act[g] = t < L[g];
      if (!act[g]) { rr[g] = zero_row; y[g] = junk[g]; continue; }
      if (t >= kAhead) {
        // The backward pass walks time downwards through rows the forward pass
        // left in L2/L3: fetch a few steps ahead.
        prefetch_row(Bw.S.alpha(b, t - kAhead), Nx);
        prefetch_row(Bw.S.emit(b, t - kAhead), Nx);
        if (Bw.grad_emit) prefetch_row(Bw.grad_emit + (b * TT + t - kAhead) * N, N);
      }
      if (t == L[g] - 1) {
        for (int64_t j = 0; j < Np; ++j) beta[g][j] = j < N ? T(1) : T(0);
      }
      const T* a = Bw.S.alpha(b, t);
      // gamma_t = alpha_t * beta_t (0 where alpha is 0, whatever beta holds)
      if (Bw.grad_emit) gamma_row(a, beta[g], w[g], N, Bw.grad_emit + (b * TT + t) * N);
      // r_t = u_t * beta_t / c_t, u_t as the forward pass saved it
      const T* u = Bw.S.emit(b, t);
      const vec_t<T> sc = splat<T>(T(1) / Bw.S.scale(b, t));
      T* dst = Rbuf ? Rbuf + nrows * Np : nullptr;
      T* rt = dst && one_weight ? dst : r[g];
      for (int64_t j = 0; j < Nx; j += Vec<T>::W)
        store(rt + j, load(u + j) * sc * load(beta[g] + j));
      const T* ap = Bw.S.alpha(b, t - 1);
      if (dst) {
        // (w *) r_t joins the block product with alpha_{t-1} (read in place)
        if (rt != dst)
          for (int64_t j = 0; j < Nx; j += Vec<T>::W) store(dst + j, load(rt + j) * w[g]);
        Xrows[nrows] = ap;
        Rrows[nrows] = dst;
        ++nrows;
      } else if (tv) {
        for (int64_t j = 0; j < Nx; j += Vec<T>::W) store(xa[g] + j, load(ap + j) * w[g]);
      }
      rr[g] = rt;
      y[g] = beta_next[g];
    }
    const T* Atm = nullptr;
    const T* Am = cur.get(t, true, &Atm);
    if (want_trans) {
      if (tv) {
        // xi_t written straight to grad_trans[b, t] (G == 1 here).
        for (int g = 0; g < G; ++g) {
          if (!act[g]) continue;
          T* gt = Bw.grad_trans + (seq[g] * TT + t) * N * N;
          for (int64_t i = 0; i < N; ++i) {
            const T xi_i = xa[g][i];
            const T* arow = Am + i * Np;
            for (int64_t j = 0; j < N; ++j) gt[i * N + j] = xi_i * arow[j] * r[g][j];
          }
        }
      } else if (nrows + G > G * kBlock) {
        gemm_tn(Xrows, Rrows, nrows, N, Np, Nx, Sf);
        nrows = 0;
        since_flush += kBlock;
        if (since_flush >= kFlush) flush();
      }
    }
    gemm<T, G>(rr, Atm, N, Np, Nx, y);
    for (int g = 0; g < G; ++g) {
      if (!act[g]) continue;
      // overflow or NaN: let the caller redo it exactly
      if (!row_bounded(y[g], Nx, big)) return false;
      std::swap(beta[g], beta_next[g]);
    }
  }
  // t = 0
  for (int g = 0; g < G; ++g) {
    if (L[g] == 0) continue;
    if (L[g] == 1) {
      for (int64_t j = 0; j < Np; ++j) beta[g][j] = j < N ? T(1) : T(0);
    }
    backward_step0(Bw, seq[g], w[g], beta[g], acc);
  }
  if (Sf) {
    flush();
    // a per-sequence matrix has groups of one member
    backward_trans_done(Bw, seq[0], L[0], shared ? nullptr : cur.get(1, false, nullptr), Np,
                        Sd, acc);
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* One-vector states (Np == W: N <= 8 in float32, N <= 4 in float64), one     */
/* sequence per item.  There the recursions are chains of dependent steps, so */
/* the chain is kept short: the state stays in a register, the step's matrix */
/* product is a tree over the W lanes (simd::matvec), and all work that does  */
/* not feed the next step (emission exponentials a few steps ahead, stores of */
/* alpha, gamma rows, transition statistics) is interleaved with the chain,   */
/* so that it fills the chain's latency instead of adding to it.             */
/* Same recursions, scalings, fallbacks and saved layout as the group kernels.*/
/* ------------------------------------------------------------------------ */
constexpr int64_t kRing = 16;        // emission ring buffer, steps
constexpr int64_t kAheadSmall = 8;   // how far ahead of the chain its emissions are computed

template <typename T>
HMM_INLINE bool small_applies(const Model<T>& M, int g) {
  return g == 1 && M.Np == Vec<T>::W && M.trans_mode != HMM_TRANS_TIME_VARYING;
}

// u = exp(e - m) for one row of N <= W emissions, m (returned in *m) as
// EmitRow::max gives it (one vector).
template <typename T>
HMM_INLINE vec_t<T> small_emission(const T* e, int64_t N, const T* base, T* m) {
  const EmitRow<T> er(e, N, base);
  *m = er.max(Vec<T>::W);
  return simd::vexp<T>(er.vec(0) - *m);
}

// The W rows of a one-vector matrix as registers, zero rows past N.
template <typename T>
HMM_INLINE void small_rows(const T* A, int64_t N, vec_t<T>* rows) {
  for (int i = 0; i < Vec<T>::W; ++i) rows[i] = i < N ? load(A + i * Vec<T>::W) : splat<T>(0);
}

template <typename T>
HMM_INLINE void forward_small(const FwdShared<T>& F, int64_t b, Arena& ar) {
  typedef vec_t<T> V;
  constexpr int W = Vec<T>::W;
  const Model<T>& M = *F.M;
  const int64_t N = M.N, L = M.length(b);
  T* u = ar.array<T>(kRing * W);  // u_t at slot t % kRing, kAheadSmall steps ahead
  const T* A = F.A;
  T mA = F.mA;
  if (M.trans_mode != HMM_TRANS_SHARED) {
    T* Ab = ar.array<T>(N * W);
    mA = prepare_trans(M.trans_of(b, 1), N, W, Ab, static_cast<T*>(nullptr));
    A = Ab;
  }
  V rows[W];
  small_rows(A, N, rows);
  LogProduct ll;
  bool ok = true;
  if (L > 0) {
    T mi, m0;
    V p = small_emission(M.init_of(b), N, M.init, &mi);
    p = p * small_emission(M.emit_of(b, 0), N, M.emit, &m0);
    ll.shift += double(m0) + double(mi);
    // u_t for the first steps; then step t computes u_{t + kAheadSmall} beside the chain
    // (the shifts are added in the order of t all the same)
    auto emission = [&](int64_t t) HMM_LAMBDA_INLINE {
      T m;
      const V ut = small_emission(M.emit_of(b, t), N, M.emit, &m);
      store(u + (t % kRing) * W, ut);
      store(F.S.emit(b, t), ut);  // for the backward pass
      ll.shift += double(m) + double(mA);
    };
    for (int64_t t = 1; t < L && t <= kAheadSmall; ++t) emission(t);
    T* sc = &F.S.scale(b, 0);
    for (int64_t t = 1; t < L; ++t) {
      // p holds p_{t-1}; c_{t-1} and the product both start from it
      const T c = simd::hsum<T>(p);
      const V q = simd::matvec<T>(p, rows);
      if (!(c >= ScaleLimits<T>::min_norm()) || !finite(c)) { ok = false; break; }
      const V vinv = splat<T>(T(1) / c);
      sc[t - 1] = c;
      ll.mul(double(c));
      store(F.S.alpha(b, t - 1), p * vinv);
      p = q * (load(u + (t % kRing) * W) * vinv);
      if (t + kAheadSmall < L) emission(t + kAheadSmall);
    }
    // the last step (kept out of a shared helper: in one, the chain above ran 8 % slower)
    if (ok) {
      const T c = simd::hsum<T>(p);
      if (!(c >= ScaleLimits<T>::min_norm()) || !finite(c)) {
        ok = false;
      } else {
        sc[L - 1] = c;
        ll.mul(double(c));
        store(F.S.alpha(b, L - 1), p * splat<T>(T(1) / c));
      }
    }
  }
  F.S.flag(b) = ok ? T(0) : T(1);
  double value = L == 0 ? 0.0 : ll.log();
  if (!ok) {
    double* la = ar.array<double>(L * N);
    double* tmp = ar.array<double>(N);
    value = log_forward(M, b, L, la, tmp);
  }
  if (F.loglik) F.loglik[b] = T(value);
}

template <typename T>
HMM_INLINE bool backward_small(const BwdShared<T>& Bw, int64_t b, ChunkAcc* acc, Arena& ar) {
  typedef vec_t<T> V;
  typedef typename Vec<T>::itype VI;
  constexpr int W = Vec<T>::W;
  const Model<T>& M = *Bw.M;
  const int64_t N = M.N, TT = M.T_, L = M.length(b);
  const bool shared = M.trans_mode == HMM_TRANS_SHARED;
  const T w = Bw.w[b];
  T* ge = Bw.grad_emit ? Bw.grad_emit + b * TT * N : nullptr;
  backward_zero_padding(Bw, b, L);
  const T* A = Bw.A;
  const T* At = Bw.At;
  if (!shared) {
    T* Ab = ar.array<T>(N * W);
    T* Atb = ar.array<T>(N * W);
    prepare_trans(M.trans_of(b, 1), N, W, Ab, Atb);
    A = Ab;
    At = Atb;
  }
  V rows[W];
  small_rows(At, N, rows);
  const bool want_trans = Bw.grad_trans != nullptr;
  T* us = ar.array<T>(kRing * W);  // u_t / c_t at slot t % kRing, kAheadSmall steps ahead
  // Transition statistics S[i] += alpha_{t-1}[i] (w r_t), in float for up to
  // kFlush steps, then added to float64.
  T* Sf = ar.array<T>(W * W);
  double* Sd = ar.array<double>(N * N);
  std::fill(Sf, Sf + W * W, T(0));
  std::fill(Sd, Sd + N * N, 0.0);
  auto flush = [&]() HMM_LAMBDA_INLINE {
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) { Sd[i * N + j] += double(Sf[i * W + j]); Sf[i * W + j] = 0; }
  };
  const T* sc = &Bw.S.scale(b, 0);
  auto emission = [&](int64_t t) HMM_LAMBDA_INLINE {
    store(us + (t % kRing) * W, load(Bw.S.emit(b, t)) * splat<T>(T(1) / sc[t]));
  };
  V beta;
  for (int j = 0; j < W; ++j) beta[j] = j < N ? T(1) : T(0);
  const V big = splat<T>(beta_limit<T>());
  const V wv = splat<T>(w);
  const V zero = splat<T>(0);
  for (int64_t t = L - 1; t >= 1 && t >= L - kAheadSmall; --t) emission(t);
  VI bad = VI{};
  int64_t since_flush = 0;
  for (int64_t t = L - 1; t >= 1; --t) {
    const V r = load(us + (t % kRing) * W) * beta;
    const V a = load(Bw.S.alpha(b, t));
    const V gam = a == zero ? zero : wv * a * beta;  // gamma_t, 0 where alpha is 0
    beta = simd::matvec<T>(r, rows);                 // beta_{t-1}
    bad |= ~(beta <= big);                           // overflow or NaN
    if (ge) {
      if (N == W) {
        store(ge + t * N, gam);
      } else {
        for (int64_t j = 0; j < N; ++j) ge[t * N + j] = gam[j];
      }
    }
    if (want_trans) {
      const T* ap = Bw.S.alpha(b, t - 1);
      const V wr = r * wv;
      for (int64_t i = 0; i < N; ++i) store(Sf + i * W, load(Sf + i * W) + splat<T>(ap[i]) * wr);
      if (++since_flush == kFlush) { flush(); since_flush = 0; }
    }
    if (t - kAheadSmall >= 1) emission(t - kAheadSmall);
  }
  for (int j = 0; j < W; ++j)
    if (bad[j]) return false;  // nothing shared written yet: the caller redoes it exactly
  if (L > 0) {
    T bz[W];
    store(bz, beta);
    backward_step0(Bw, b, w, bz, acc);
  }
  if (want_trans) {
    flush();
    backward_trans_done(Bw, b, L, A, W, Sd, acc);
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Entry points, compiled for this width's instruction set(s).               */
/* ------------------------------------------------------------------------ */
#define HMM_DEFINE_ITEMS(T, suffix)                                                         \
  HMM_ISA_ENTRY void forward_item_##suffix(const FwdShared<T>& F, const int64_t* seq, int g, \
                                        Arena& ar) {                                      \
    if (small_applies(*F.M, g)) return forward_small<T>(F, seq[0], ar);                  \
    switch (g) {                                                                          \
      case 4: forward_group<T, 4>(F, seq, ar); break;                                     \
      case 3: forward_group<T, 3>(F, seq, ar); break;                                     \
      case 2: forward_group<T, 2>(F, seq, ar); break;                                     \
      default: forward_group<T, 1>(F, seq, ar); break;                                    \
    }                                                                                     \
  }                                                                                       \
  HMM_ISA_ENTRY bool backward_item_##suffix(const BwdShared<T>& Bw, const int64_t* seq,      \
                                         int g, ChunkAcc* acc, Arena& ar) {              \
    if (small_applies(*Bw.M, g)) return backward_small<T>(Bw, seq[0], acc, ar);          \
    switch (g) {                                                                          \
      case 4: return backward_group<T, 4>(Bw, seq, acc, ar);                              \
      case 3: return backward_group<T, 3>(Bw, seq, acc, ar);                              \
      case 2: return backward_group<T, 2>(Bw, seq, acc, ar);                              \
      default: return backward_group<T, 1>(Bw, seq, acc, ar);                             \
    }                                                                                     \
  }

HMM_DEFINE_ITEMS(float, f32)
HMM_DEFINE_ITEMS(double, f64)

// The end of a backward call with sums over the batch, at this width's instruction
// set (the drivers are baseline-compiled): the chunks' float64 sums added, in chunk
// order, into chunk 0 (each element's additions in the same order whatever the
// width or thread count), then grad_trans = A' * pre + direct for a shared matrix
// (direct NULL: no log-space counts).
// Chunk k's accumulators start at acc + k * stride; the first len of each are summed.
HMM_ISA_ENTRY void sum_chunks(double* acc, int64_t nacc, int64_t stride, int64_t len) {
  for (int64_t k = 1; k < nacc; ++k) {
    const double* __restrict src = acc + k * stride;
    double* __restrict dst = acc;
    for (int64_t e = 0; e < len; ++e) dst[e] += src[e];
  }
}
template <typename T>
HMM_INLINE void shared_trans_grad(const T* A, int64_t N, int64_t Np, const double* pre,
                                  const double* direct, T* out) {
  for (int64_t i = 0; i < N; ++i) {
    const T* __restrict a_row = A + i * Np;
    const double* __restrict p_row = pre + i * N;
    T* __restrict o_row = out + i * N;
    if (direct) {
      const double* __restrict d_row = direct + i * N;
      for (int64_t j = 0; j < N; ++j) {
        const double a = double(a_row[j]);
        o_row[j] = T((a == 0.0 ? 0.0 : a * p_row[j]) + d_row[j]);
      }
    } else {
      for (int64_t j = 0; j < N; ++j) {
        const double a = double(a_row[j]);
        o_row[j] = T(a == 0.0 ? 0.0 : a * p_row[j]);
      }
    }
  }
}
HMM_ISA_ENTRY void shared_trans_grad_f32(const float* A, int64_t N, int64_t Np, const double* pre,
                                         const double* direct, float* out) {
  shared_trans_grad<float>(A, N, Np, pre, direct, out);
}
HMM_ISA_ENTRY void shared_trans_grad_f64(const double* A, int64_t N, int64_t Np,
                                         const double* pre, const double* direct, double* out) {
  shared_trans_grad<double>(A, N, Np, pre, direct, out);
}

// A call's shared matrix (prepare_trans), at this width's instruction set.
HMM_ISA_ENTRY float prepare_trans_f32(const float* lt, int64_t N, int64_t Np, float* A,
                                      float* At) {
  return prepare_trans<float>(lt, N, Np, A, At);
}
HMM_ISA_ENTRY double prepare_trans_f64(const double* lt, int64_t N, int64_t Np, double* A,
                                       double* At) {
  return prepare_trans<double>(lt, N, Np, A, At);
}

}  // namespace HMM_ISA
}  // namespace cpu
}  // namespace gluon_hmm

#undef HMM_VEC_BYTES
#undef HMM_ISA
#undef HMM_ISA_ENTRY
