/*
 * gluon_hmm engine: definitions shared by the CPU and CUDA drivers.
 *
 * Everything here compiles for host and device (HMM_HD), so the two drivers
 * agree on memory layouts, on the random stream and on the scalar maths.
 */
#ifndef GLUON_HMM_COMMON_H_
#define GLUON_HMM_COMMON_H_

#include <stdint.h>
#include <math.h>

#include "hmm.h"

#if defined(__CUDACC__)
#define HMM_HD __host__ __device__ __forceinline__
#else
#define HMM_HD inline
#endif

namespace gluon_hmm {

/* ---- the forward pass's saved state -------------------------------------
 * hmm_forward writes, and hmm_backward reads, one buffer of dtype elements:
 *
 *   alpha[B][T][Np]   normalised forward variables alpha_hat[b,t,j]
 *                     (sum_j = 1 for t < L; entries j >= N and t >= L unspecified)
 *   scale[B][T]       c_t, the normaliser of step t of the scaled recursion
 *                     (stored raw, not as a log: the backward pass divides by it,
 *                     and log c_t + shifts would lose digits when shifts are large)
 *   flag[B]           0: the scaled recursion held for sequence b;
 *                     1: it underflowed, the sequence was computed in log space
 *                        (float64) and alpha/scale of b are unspecified: the
 *                        backward pass recomputes that sequence in log space.
 *   CPU only, from saved_emit_offset (a multiple of 16 elements):
 *   emit[B][T][Np]    u_t[j] = exp(log_emit[b,t,j] - m_t) with m_t the row's
 *                     largest entry (0 past N; t >= L unspecified): the
 *                     forward pass computes these factors anyway, and the
 *                     backward pass reads them instead of computing them again.
 *
 * Np rounds N up to whole SIMD vectors of either width the CPU driver uses: to
 * one 32-byte vector when N fits in one (N <= 8 float32, N <= 4 float64), else
 * to a multiple of 64 bytes (16 float32, 8 float64), so that the 512-bit
 * kernels see whole vectors and the 256-bit ones whole pairs.  The layout
 * depends on (B, T, N, dtype) and the device, never on the CPU (a saved state
 * stays valid whichever vector width reads it).  The MXNet op keeps the buffer
 * in its op state, allocated in the forward pass, where the device is known.
 */
HMM_HD int64_t padded_states(int64_t n, int dtype) {
  const int64_t w = (dtype == HMM_FLOAT64) ? 4 : 8;  // lanes of a 32-byte vector
  if (n <= w) return w;
  return (n + 2 * w - 1) / (2 * w) * (2 * w);
}
HMM_HD int64_t saved_alpha_offset(int64_t, int64_t, int64_t, int) { return 0; }
HMM_HD int64_t saved_scale_offset(int64_t b, int64_t t, int64_t n, int dtype) {
  return b * t * padded_states(n, dtype);
}
HMM_HD int64_t saved_flag_offset(int64_t b, int64_t t, int64_t n, int dtype) {
  return saved_scale_offset(b, t, n, dtype) + b * t;
}
// The sections every device has (the CUDA driver's whole layout).
HMM_HD int64_t saved_elems(int64_t b, int64_t t, int64_t n, int dtype) {
  return saved_flag_offset(b, t, n, dtype) + b;
}
HMM_HD int64_t saved_emit_offset(int64_t b, int64_t t, int64_t n, int dtype) {
  return (saved_elems(b, t, n, dtype) + 15) / 16 * 16;
}
// The CPU driver's layout: the above, then the emission factors.
HMM_HD int64_t saved_elems_cpu(int64_t b, int64_t t, int64_t n, int dtype) {
  return saved_emit_offset(b, t, n, dtype) + b * t * padded_states(n, dtype);
}

/* The scaled recursion gives up on a sequence (and recomputes it in log space)
 * when a step's normaliser c_t falls below this (or is not finite): below it,
 * terms that matter could be subnormal. */
template <typename T> struct ScaleLimits;
template <> struct ScaleLimits<float> { HMM_HD static float min_norm() { return 1e-20f; } };
template <> struct ScaleLimits<double> { HMM_HD static double min_norm() { return 1e-280; } };

/* ---- randomness ---------------------------------------------------------
 * A counter-based generator: the u-th uniform of (sample s of sequence b) is a
 * pure function of (seed, b, s, u), so CPU and GPU draw the same numbers and a
 * thread needs no state.  splitmix64's finaliser over a Weyl sequence. */
HMM_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
HMM_HD uint64_t stream_key(int32_t seed0, int32_t seed1, int64_t b, int64_t s) {
  uint64_t k = (static_cast<uint64_t>(static_cast<uint32_t>(seed0)) << 32) |
               static_cast<uint32_t>(seed1);
  k = mix64(k + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(b + 1));
  return mix64(k + 0xD1B54A32D192ED03ULL * static_cast<uint64_t>(s + 1));
}
/* Uniform in [0, 1) with 53 random bits. */
HMM_HD double uniform01(uint64_t key, int64_t counter) {
  const uint64_t z = mix64(key + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(counter + 1));
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace gluon_hmm

#endif  // GLUON_HMM_COMMON_H_
