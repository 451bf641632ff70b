/*
 * gluon_hmm CPU engine: small SIMD building blocks, for one vector width.
 *
 * Written with GCC/Clang vector extensions on HMM_VEC_BYTES-byte vectors (32:
 * 8 floats or 4 doubles; 64: 16 floats or 8 doubles).  cpu_kernels.h includes
 * this file, once per width, with HMM_VEC_BYTES and HMM_ISA (the namespace
 * that holds that width's code: v256, v512) defined, so the two widths never
 * share a symbol.  Every function is always-inline, so it takes the instruction
 * set of the function it is inlined into: the per-ISA entry points of
 * cpu_kernels.h (target_clones for 256 bits, an AVX-512 target for 512).
 */
#if !defined(HMM_VEC_BYTES) || !defined(HMM_ISA) || !defined(HMM_INLINE)
#error "cpu_simd.h is included by cpu_kernels.h, with HMM_VEC_BYTES, HMM_ISA and HMM_INLINE defined"
#endif

#include <stdint.h>
#include <string.h>

#include <limits>
#include <type_traits>
#include <utility>

namespace gluon_hmm {
namespace cpu {
namespace HMM_ISA {
namespace simd {

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(HMM_VEC_BYTES)));
  typedef float utype __attribute__((vector_size(HMM_VEC_BYTES), aligned(4)));  // unaligned access
  typedef int32_t itype __attribute__((vector_size(HMM_VEC_BYTES)));
  static constexpr int W = HMM_VEC_BYTES / 4;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(HMM_VEC_BYTES)));
  typedef double utype __attribute__((vector_size(HMM_VEC_BYTES), aligned(8)));
  typedef int64_t itype __attribute__((vector_size(HMM_VEC_BYTES)));
  static constexpr int W = HMM_VEC_BYTES / 8;
};

template <typename T> using vec_t = typename Vec<T>::type;

template <typename T> HMM_INLINE vec_t<T> load(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::utype*>(p);
}
template <typename T> HMM_INLINE void store(T* p, vec_t<T> v) {
  *reinterpret_cast<typename Vec<T>::utype*>(p) = v;
}
// Broadcast.  Written as a shuffle of lane 0: GCC turns that into one
// vbroadcast, whereas a brace list {x, x, ...} or `vec{} + x` inside a
// target_clones function becomes a chain of lane inserts.
template <typename T> HMM_INLINE vec_t<T> splat(T x) {
  typedef typename Vec<T>::itype VI;
  return __builtin_shuffle(vec_t<T>{x}, VI{});
}

// The lane permutation j -> j ^ S (S a power of two below W): swaps blocks of S
// lanes.  A constant once inlined, so each shuffle is one permute instruction.
template <typename T, int S> HMM_INLINE typename Vec<T>::itype xor_lanes() {
  typedef typename Vec<T>::itype VI;
  typedef typename std::remove_reference<decltype(VI{}[0])>::type IT;
  VI m{};
  for (int j = 0; j < Vec<T>::W; ++j) m[j] = IT(j ^ S);
  return m;
}

// Horizontal sum as a tree of shuffles (log2 W dependent adds, not W - 1).
template <typename T> HMM_INLINE T hsum(vec_t<T> v) {
  constexpr int W = Vec<T>::W;
  if constexpr (W >= 16) v += __builtin_shuffle(v, xor_lanes<T, 8>());
  if constexpr (W >= 8) v += __builtin_shuffle(v, xor_lanes<T, 4>());
  v += __builtin_shuffle(v, xor_lanes<T, 2>());
  v += __builtin_shuffle(v, xor_lanes<T, 1>());
  return v[0];
}

// Horizontal maximum, the same tree (no NaN handling: callers filter NaN first).
template <typename T> HMM_INLINE T hmax(vec_t<T> v) {
  constexpr int W = Vec<T>::W;
  vec_t<T> s;
  if constexpr (W >= 16) { s = __builtin_shuffle(v, xor_lanes<T, 8>()); v = s > v ? s : v; }
  if constexpr (W >= 8) { s = __builtin_shuffle(v, xor_lanes<T, 4>()); v = s > v ? s : v; }
  s = __builtin_shuffle(v, xor_lanes<T, 2>());
  v = s > v ? s : v;
  s = __builtin_shuffle(v, xor_lanes<T, 1>());
  v = s > v ? s : v;
  return v[0];
}

// Lane I of v in every lane (one permute, from a register).
template <typename T, int I> HMM_INLINE vec_t<T> lane(vec_t<T> v) {
  typedef typename Vec<T>::itype VI;
  return __builtin_shuffle(v, VI{} + I);
}

/* sum_i v[i] * M[i] over the W lanes of v (M: W row vectors), as a tree:
 * pairs of (multiply, FMA) side by side, then log2(W) - 1 levels of adds, so
 * that the latency is a few operations rather than a chain of W FMAs. */
template <typename T, int... K>
HMM_INLINE void matvec_pairs(vec_t<T> v, const vec_t<T>* M, vec_t<T>* s,
                             std::integer_sequence<int, K...>) {
  ((s[K] = lane<T, 2 * K>(v) * M[2 * K] + lane<T, 2 * K + 1>(v) * M[2 * K + 1]), ...);
}
template <typename T> HMM_INLINE vec_t<T> matvec(vec_t<T> v, const vec_t<T>* M) {
  constexpr int H = Vec<T>::W / 2;
  vec_t<T> s[H];
  matvec_pairs<T>(v, M, s, std::make_integer_sequence<int, H>{});
#pragma GCC unroll 8
  for (int n = H; n > 1; n /= 2)
#pragma GCC unroll 8
    for (int k = 0; k < n / 2; ++k) s[k] = s[2 * k] + s[2 * k + 1];
  return s[0];
}

/* exp(x) for the arguments the engine passes: x <= 0 (values minus their
 * maximum), -inf (-> 0 exactly), NaN (-> NaN) and +inf (-> +inf).  Finite
 * x <= ln(max) - 0.35 are exact to ~1 ulp; larger finite x may give +inf early.
 * Range reduction x = n ln2 + r, |r| <= ln2/2, then a polynomial in r.  Below
 * `lo` the result is 0 by one select; no other special case costs an
 * instruction: the upper clamp `hi` sits just past the overflow threshold, so
 * +inf becomes 2^(bias+1) = +inf through the exponent field, and NaN stays NaN
 * through the arithmetic. */
template <typename T> struct ExpConst;
template <> struct ExpConst<float> {
  static constexpr float lo = -87.0f, hi = 89.0f;
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  static constexpr int mant = 23, bias = 127;
  // Degree-6 fit of e^r on [-ln2/2, ln2/2] for relative error (iteratively
  // reweighted least squares): 1.9e-9 before rounding, one term fewer than Taylor.
  static constexpr float coef[7] = {1.000000000554169f, 1.000000036323188f,
                                    0.49999992079787026f, 0.16666420169880083f,
                                    0.04166822557619066f, 0.008374815802240823f,
                                    0.0013836845616966654f};
};
template <> struct ExpConst<double> {
  static constexpr double lo = -708.0, hi = 710.0;
  static constexpr double ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10;
  static constexpr int mant = 52, bias = 1023;
  // Taylor coefficients 1/k!, rounded once from the exact fractions
  static constexpr double coef[13] = {
      1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
      1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600};
};

template <typename T> HMM_INLINE vec_t<T> vexp(vec_t<T> x) {
  typedef ExpConst<T> C;
  typedef typename Vec<T>::itype vi;
  // Only the upper clamp: lanes below lo compute garbage and are zeroed at the end.
  const vec_t<T> xc = x > C::hi ? splat<T>(C::hi) : x;
  // n = round(x / ln2) via the add-magic-number trick
  const T magic = static_cast<T>(1.5) * static_cast<T>(1ull << C::mant);
  vec_t<T> n = xc * static_cast<T>(1.4426950408889634) + magic;
  n = n - magic;
  const vec_t<T> r = (xc - n * C::ln2_hi) - n * C::ln2_lo;
  // the polynomial by Horner's rule (one FMA a term)
  constexpr int terms = sizeof(C::coef) / sizeof(C::coef[0]);
  vec_t<T> p = splat<T>(C::coef[terms - 1]);
  for (int k = terms - 2; k >= 0; --k) p = p * r + C::coef[k];
  // 2^n by building the exponent field
  const vi ni = __builtin_convertvector(n, vi);
  const vi bits = (ni + C::bias) << C::mant;
  vec_t<T> scale;
  memcpy(&scale, &bits, sizeof(scale));
  const vec_t<T> y = p * scale;
  return x < C::lo ? splat<T>(0) : y;  // NaN compares false: stays NaN
}

}  // namespace simd
}  // namespace HMM_ISA
}  // namespace cpu
}  // namespace gluon_hmm
