/*
 * gluon_hmm engine: the drivers behind the C ABI.
 *
 * capi.cc validates an hmm_problem_t once, then calls the CPU driver
 * (cpu.cc) or, in builds with CUDA (GLUON_HMM_WITH_CUDA), the CUDA driver
 * (cuda.cu).  Both implement the same functions with the semantics documented
 * in hmm.h and the saved-state layout of common.h.  Arguments arrive checked:
 * non-NULL where required, sizes within range.
 */
#ifndef GLUON_HMM_DRIVERS_H_
#define GLUON_HMM_DRIVERS_H_

#include <stdlib.h>

#include "hmm.h"

#define HMM_DECLARE_DRIVER(prefix)                                                         \
  hmm_status_t prefix##_backward_workspace_size(const hmm_problem_t* p, size_t* bytes);     \
  hmm_status_t prefix##_posterior_workspace_size(const hmm_problem_t* p, size_t* bytes);    \
  hmm_status_t prefix##_viterbi_workspace_size(const hmm_problem_t* p, size_t* bytes);      \
  hmm_status_t prefix##_sample_workspace_size(const hmm_problem_t* p, int64_t num_samples,  \
                                              size_t* bytes);                               \
  hmm_status_t prefix##_forward(const hmm_problem_t* p, const hmm_inputs_t* in,             \
                                void* loglik, void* saved);                                 \
  hmm_status_t prefix##_backward(const hmm_problem_t* p, const hmm_inputs_t* in,            \
                                 const void* saved, const void* grad_loglik,                \
                                 void* grad_init, void* grad_trans, void* grad_emit,        \
                                 void* workspace);                                          \
  hmm_status_t prefix##_posterior(const hmm_problem_t* p, const hmm_inputs_t* in,           \
                                  void* gamma, void* trans_counts, void* loglik,            \
                                  void* init_counts, void* workspace);                      \
  hmm_status_t prefix##_viterbi(const hmm_problem_t* p, const hmm_inputs_t* in,             \
                                int32_t* path, void* score, void* workspace);               \
  hmm_status_t prefix##_sample(const hmm_problem_t* p, const hmm_inputs_t* in,              \
                               int64_t num_samples, const int32_t* seed, int32_t* paths,    \
                               void* workspace);

extern "C" {
HMM_DECLARE_DRIVER(hmm_cpu)
HMM_DECLARE_DRIVER(hmm_cuda)
/* hmm_forward then hmm_backward in one pass over the batch (CPU only: on CUDA the
 * C ABI runs the two drivers in turn). */
hmm_status_t hmm_cpu_forward_backward(const hmm_problem_t* p, const hmm_inputs_t* in,
                                      const void* grad_loglik, void* loglik, void* saved,
                                      void* grad_init, void* grad_trans, void* grad_emit,
                                      void* workspace);
hmm_status_t hmm_cuda_buffer_alloc(void* stream, size_t bytes, void** ptr);
hmm_status_t hmm_cuda_buffer_free(void* stream, void* ptr);
}

namespace gluon_hmm {
/* An integer setting from the environment: the variable's value when it is a
 * whole decimal number in [lo, hi], else fallback (unset, empty, trailing
 * characters or out of range: ignored rather than half-read). */
inline long long env_int(const char* name, long long fallback, long long lo, long long hi) {
  const char* v = getenv(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long long x = strtoll(v, &end, 10);
  return (end != v && *end == '\0' && x >= lo && x <= hi) ? x : fallback;
}
}  // namespace gluon_hmm

#endif  // GLUON_HMM_DRIVERS_H_
