/*
 * gluon_hmm engine: the C ABI.
 *
 * Framework-free hidden-Markov-model kernels.  The MXNet operator library
 * (src/mxnet/) and the Cython binding (gluon_hmm/_native.pyx) only unpack
 * arrays, fill an hmm_problem_t, call one of these functions and turn the
 * returned status into an exception.  No kernel allocates on behalf of the
 * caller: buffers whose size depends on the problem are sized by the
 * hmm_*_size() queries and owned by the caller (MXNet's per-call scratch,
 * NumPy arrays, CuPy/PyTorch device memory).  hmm_buffer_alloc serves callers
 * whose framework gives only per-call scratch but who must keep a buffer
 * between two calls (the MXNet operator's saved state).
 *
 * Model (see shared DESIGN.md): for sequence b of valid length L = lengths[b]
 *   loglik[b] = log sum_z exp( log_init[z_0] + log_emit[b,0,z_0]
 *                 + sum_{t=1}^{L-1} log_trans[z_{t-1}, z_t] + log_emit[b,t,z_t] )
 * log_trans[..., i, j] is the weight of moving FROM i TO j.
 *
 * All arrays are dense, C-contiguous.  float arrays share one dtype.
 * Every pointer of a call lives on the device named by problem->device.
 */
#ifndef GLUON_HMM_HMM_H_
#define GLUON_HMM_HMM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HMM_ABI_VERSION 1

typedef enum {
  HMM_STATUS_SUCCESS = 0,
  HMM_STATUS_INVALID_VALUE = 1,    /* a field of hmm_problem_t is out of range */
  HMM_STATUS_NULL_POINTER = 2,     /* a required pointer is NULL */
  HMM_STATUS_TOO_LARGE = 3,        /* sizes overflow the supported indexing */
  HMM_STATUS_NO_CUDA = 4,          /* GPU requested from a build without CUDA */
  HMM_STATUS_CUDA_ERROR = 5,       /* a CUDA runtime call or launch failed */
  HMM_STATUS_BAD_LENGTHS = 6       /* some lengths[b] outside [0, T] (checked on the CPU only) */
} hmm_status_t;

typedef enum { HMM_FLOAT32 = 0, HMM_FLOAT64 = 1 } hmm_dtype_t;

typedef enum { HMM_INIT_SHARED = 0, HMM_INIT_PER_SEQUENCE = 1 } hmm_init_mode_t;

typedef enum {
  HMM_TRANS_SHARED = 0,        /* (N, N) */
  HMM_TRANS_PER_SEQUENCE = 1,  /* (B, N, N) */
  HMM_TRANS_TIME_VARYING = 2   /* (B, T, N, N); [b, t] moves into step t, [b, 0] unused */
} hmm_trans_mode_t;

typedef enum {
  HMM_LENGTHS_NONE = 0,   /* lengths == NULL: every sequence has length T */
  HMM_LENGTHS_INT32 = 1,
  HMM_LENGTHS_INT64 = 2
} hmm_lengths_type_t;

typedef enum { HMM_DEVICE_CPU = 0, HMM_DEVICE_CUDA = 1 } hmm_device_t;

/* Zero-initialise, then set the fields (hmm_problem_init does both). */
typedef struct {
  int64_t batch;                   /* B >= 0 */
  int64_t time;                    /* T >= 0 */
  int64_t states;                  /* N >= 1 */
  hmm_dtype_t dtype;
  hmm_init_mode_t init_mode;
  hmm_trans_mode_t trans_mode;
  hmm_lengths_type_t lengths_type;
  hmm_device_t device;
  int num_threads;                 /* CPU: 0 = the library default (hmm_set_num_threads) */
  void* stream;                    /* CUDA: a cudaStream_t, NULL = the default stream */
} hmm_problem_t;

/* The model inputs of one call. lengths may be NULL when lengths_type is NONE. */
typedef struct {
  const void* log_init;
  const void* log_trans;
  const void* log_emit;
  const void* lengths;
} hmm_inputs_t;

void hmm_problem_init(hmm_problem_t* problem);
const char* hmm_status_string(hmm_status_t status);
int hmm_abi_version(void);
int hmm_has_cuda(void);

/* Describes a call from its arrays' shapes and dtypes: the one home of input
 * validation (the MXNet glue and the NumPy binding both use it).
 * Index 0..3 = log_init, log_trans, log_emit, lengths; ndims[3] < 0 means no
 * lengths.  dtypes[k] is an hmm_dtype_code_t.  On failure returns
 * HMM_STATUS_INVALID_VALUE and writes a message naming the argument, the
 * expected and the actual value into message (NUL-terminated, truncated to
 * message_len).  On success fills batch/time/states/dtype/modes/lengths_type
 * of *problem (other fields untouched). */
typedef enum {
  HMM_CODE_FLOAT32 = 0, HMM_CODE_FLOAT64 = 1, HMM_CODE_INT32 = 2, HMM_CODE_INT64 = 3,
  HMM_CODE_OTHER = 9
} hmm_dtype_code_t;
hmm_status_t hmm_describe(const int64_t* const shapes[4], const int ndims[4], const int dtypes[4],
                          const char* const dtype_names[4], hmm_problem_t* problem,
                          char* message, size_t message_len);

/* Default CPU thread count for calls with num_threads == 0 (initially the
 * GLUON_HMM_NUM_THREADS environment variable, else the number of cores). */
void hmm_set_num_threads(int num_threads);
int hmm_get_num_threads(void);

/* Widest SIMD vectors the CPU driver may use, in bits: 256, 512, or 0 for the
 * widest this CPU runs (the default; initially the GLUON_HMM_CPU_VECTOR_BITS
 * environment variable when it says 256 or 512).  512 needs AVX-512 (F, VL,
 * BW, DQ, CD) on an x86-64 build.  Results agree across widths to rounding,
 * not bit for bit (sums run in another order).  Returns the widest width now
 * in effect, or -1 (changing nothing) for any other argument. */
int hmm_set_cpu_vector_bits(int bits);
int hmm_get_cpu_vector_bits(void);

/* Number of dtype elements of the forward pass's saved state (what the
 * backward pass needs; it depends on p->device: the CPU driver also keeps the
 * emission factors, see common.h), and byte sizes of per-call scratch buffers. */
hmm_status_t hmm_saved_size(const hmm_problem_t* p, int64_t* elems);
hmm_status_t hmm_backward_workspace_size(const hmm_problem_t* p, size_t* bytes);
hmm_status_t hmm_posterior_workspace_size(const hmm_problem_t* p, size_t* bytes);
hmm_status_t hmm_viterbi_workspace_size(const hmm_problem_t* p, size_t* bytes);
hmm_status_t hmm_sample_workspace_size(const hmm_problem_t* p, int64_t num_samples,
                                       size_t* bytes);

/* Memory that outlives a call, for the caller to own and pass back to
 * hmm_buffer_free.  CPU: 64-byte aligned host memory (stream ignored).
 * CUDA: stream-ordered device memory (cudaMallocAsync / cudaFreeAsync on
 * stream): usable by work queued on stream after the call, freed after the
 * work queued on stream before the free.  bytes == 0 gives NULL; freeing NULL
 * does nothing.  HMM_STATUS_TOO_LARGE when the memory is not there.  Freed host
 * buffers are kept for reuse (up to GLUON_HMM_HOST_CACHE_MIB MiB, default 256,
 * 0 = none), so a buffer per call does not fault in fresh pages every call;
 * freeing a host pointer hmm_buffer_alloc did not give (or freeing it twice)
 * is refused with HMM_STATUS_INVALID_VALUE where the tag in front of it shows
 * it. */
hmm_status_t hmm_buffer_alloc(hmm_device_t device, void* stream, size_t bytes, void** ptr);
hmm_status_t hmm_buffer_free(hmm_device_t device, void* stream, void* ptr);

/* Checks lengths (host memory) lie in [0, T]; *bad_index gets the first bad b or -1. */
hmm_status_t hmm_check_lengths(const hmm_problem_t* p, const void* lengths, int64_t* bad_index);

/* Forward pass: loglik (B,) and the saved state (hmm_saved_size elements). */
hmm_status_t hmm_forward(const hmm_problem_t* p, const hmm_inputs_t* in, void* loglik,
                         void* saved);

/* Backward pass of sum_b grad_loglik[b] * loglik[b].  Gradients have the shapes of
 * their inputs; grad_init / grad_trans may be NULL when not wanted. */
hmm_status_t hmm_backward(const hmm_problem_t* p, const hmm_inputs_t* in, const void* saved,
                          const void* grad_loglik, void* grad_init, void* grad_trans,
                          void* grad_emit, void* workspace);

/* hmm_forward followed by hmm_backward, with the same results bit for bit:
 * loglik (B,), the saved state (saved: hmm_saved_size elements, as for
 * hmm_forward) and the gradients of sum_b grad_loglik[b] * loglik[b] (the
 * weights are known before the forward pass runs).  On the CPU it is one pass
 * over the batch: each group of sequences runs its backward right after its
 * forward, while its forward variables are in cache, with one parallel loop
 * and no serial work between the passes.  workspace: as for hmm_backward. */
hmm_status_t hmm_forward_backward(const hmm_problem_t* p, const hmm_inputs_t* in,
                                  const void* grad_loglik, void* loglik, void* saved,
                                  void* grad_init, void* grad_trans, void* grad_emit,
                                  void* workspace);

/* Posterior marginals gamma (B,T,N), expected transition counts (shape of
 * log_trans), and optionally loglik (B,) and expected initial counts (shape of
 * log_init; NULL to skip). */
hmm_status_t hmm_posterior(const hmm_problem_t* p, const hmm_inputs_t* in, void* gamma,
                           void* trans_counts, void* loglik, void* init_counts,
                           void* workspace);

/* MAP path (B,T) int32, -1 beyond each length, and its joint log score (B,).
 * Ties go to the lower state index. */
hmm_status_t hmm_viterbi(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path,
                         void* score, void* workspace);

/* Exact posterior samples (B, num_samples, T) int32, -1 beyond each length.
 * Randomness from a counter-based generator keyed by seed[0..1] (two int32
 * values in the device memory of the call), so CPU and GPU agree for a seed. */
hmm_status_t hmm_sample(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t num_samples,
                        const int32_t* seed, int32_t* paths, void* workspace);

#ifdef __cplusplus
}
#endif

#endif  /* GLUON_HMM_HMM_H_ */
