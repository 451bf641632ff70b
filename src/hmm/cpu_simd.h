/*
 * gluon_hmm CPU engine: small SIMD building blocks.
 *
 * Written with GCC/Clang vector extensions on 32-byte vectors (8 floats or 4
 * doubles).  Every function is always-inline, so it takes the instruction set
 * of the function it is inlined into: cpu.cc compiles its per-sequence kernels
 * with target_clones (AVX-512, AVX2+FMA, baseline) and the loader picks one at
 * run time.
 */
#ifndef GLUON_HMM_CPU_SIMD_H_
#define GLUON_HMM_CPU_SIMD_H_

#include <stdint.h>
#include <string.h>

#include <limits>

#define HMM_INLINE inline __attribute__((always_inline))
// For lambdas inside the per-ISA kernels: one left out of line is compiled once,
// for the baseline instruction set, and called from the AVX2/AVX-512 clones.
#define HMM_LAMBDA_INLINE __attribute__((always_inline))

namespace gluon_hmm {
namespace simd {

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float utype __attribute__((vector_size(32), aligned(4)));   // unaligned access
  typedef int32_t itype __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double utype __attribute__((vector_size(32), aligned(8)));
  typedef int64_t itype __attribute__((vector_size(32)));
  static constexpr int W = 4;
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

// Horizontal sum as a tree of shuffles (3 dependent adds for 8 lanes, not 7).
template <typename T> HMM_INLINE T hsum(vec_t<T> v);
template <> HMM_INLINE float hsum<float>(vec_t<float> v) {
  typedef Vec<float>::itype VI;
  v += __builtin_shuffle(v, VI{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, VI{2, 3, 0, 1, 6, 7, 4, 5});
  v += __builtin_shuffle(v, VI{1, 0, 3, 2, 5, 4, 7, 6});
  return v[0];
}
template <> HMM_INLINE double hsum<double>(vec_t<double> v) {
  typedef Vec<double>::itype VI;
  v += __builtin_shuffle(v, VI{2, 3, 0, 1});
  v += __builtin_shuffle(v, VI{1, 0, 3, 2});
  return v[0];
}

// Horizontal maximum, the same tree (no NaN handling: callers filter NaN first).
template <typename T> HMM_INLINE T hmax(vec_t<T> v);
template <> HMM_INLINE float hmax<float>(vec_t<float> v) {
  typedef Vec<float>::itype VI;
  vec_t<float> s = __builtin_shuffle(v, VI{4, 5, 6, 7, 0, 1, 2, 3});
  v = s > v ? s : v;
  s = __builtin_shuffle(v, VI{2, 3, 0, 1, 6, 7, 4, 5});
  v = s > v ? s : v;
  s = __builtin_shuffle(v, VI{1, 0, 3, 2, 5, 4, 7, 6});
  v = s > v ? s : v;
  return v[0];
}
template <> HMM_INLINE double hmax<double>(vec_t<double> v) {
  typedef Vec<double>::itype VI;
  vec_t<double> s = __builtin_shuffle(v, VI{2, 3, 0, 1});
  v = s > v ? s : v;
  s = __builtin_shuffle(v, VI{1, 0, 3, 2});
  v = s > v ? s : v;
  return v[0];
}

// Lane I of v in every lane (one permute, from a register).
template <typename T, int I> HMM_INLINE vec_t<T> lane(vec_t<T> v) {
  typedef typename Vec<T>::itype VI;
  return __builtin_shuffle(v, VI{} + I);
}

/* sum_i v[i] * M[i] over the W lanes of v (M: W row vectors), as a tree:
 * pairs of (multiply, FMA) side by side, then two or one levels of adds, so
 * that the latency is a few operations rather than a chain of W FMAs. */
template <typename T> HMM_INLINE vec_t<T> matvec(vec_t<T> v, const vec_t<T>* M);
template <> HMM_INLINE vec_t<float> matvec<float>(vec_t<float> v, const vec_t<float>* M) {
  const vec_t<float> s0 = lane<float, 0>(v) * M[0] + lane<float, 1>(v) * M[1];
  const vec_t<float> s1 = lane<float, 2>(v) * M[2] + lane<float, 3>(v) * M[3];
  const vec_t<float> s2 = lane<float, 4>(v) * M[4] + lane<float, 5>(v) * M[5];
  const vec_t<float> s3 = lane<float, 6>(v) * M[6] + lane<float, 7>(v) * M[7];
  return (s0 + s1) + (s2 + s3);
}
template <> HMM_INLINE vec_t<double> matvec<double>(vec_t<double> v, const vec_t<double>* M) {
  const vec_t<double> s0 = lane<double, 0>(v) * M[0] + lane<double, 1>(v) * M[1];
  const vec_t<double> s1 = lane<double, 2>(v) * M[2] + lane<double, 3>(v) * M[3];
  return s0 + s1;
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
}  // namespace gluon_hmm

#endif  // GLUON_HMM_CPU_SIMD_H_
