/*
 * gluon_hmm engine: the C ABI front.  Checks a problem once, then hands it to
 * the CPU driver or (in CUDA builds) the CUDA driver.
 */
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "drivers.h"
#include "hmm.h"

extern "C" {
void hmm_cpu_set_default_threads(int n);
int hmm_cpu_default_threads(void);
int hmm_cpu_set_vector_bits(int bits);
int hmm_cpu_vector_bits(void);
}

namespace {

// Largest element count any single array may have: indices are int64, and
// the CUDA kernels index within one sequence with 32-bit-safe strides.
constexpr int64_t kMaxElems = (int64_t(1) << 46);

bool mul_ok(int64_t a, int64_t b, int64_t* out) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > kMaxElems / a) return false;
  *out = a * b;
  return *out <= kMaxElems;
}

// The first size limit *p breaks, as text for an error message, or NULL.
const char* size_violation(const hmm_problem_t* p) {
  int64_t bt, btn, nn, btnn;
  if (p->time > std::numeric_limits<int32_t>::max()) return "T must stay below 2**31";
  if (p->states > (int64_t(1) << 20)) return "N must be at most 2**20";
  if (!mul_ok(p->batch, p->time, &bt) || !mul_ok(p->states, p->states, &nn) ||
      !mul_ok(bt, nn, &btnn))
    return "B*T*N*N must stay below 2**46";
  if (!mul_ok(bt, p->states + 8, &btn)) return "B*T*(N+8) must stay below 2**46";
  return nullptr;
}

hmm_status_t check_problem(const hmm_problem_t* p) {
  if (!p) return HMM_STATUS_NULL_POINTER;
  if (p->batch < 0 || p->time < 0 || p->states < 1) return HMM_STATUS_INVALID_VALUE;
  if (p->dtype != HMM_FLOAT32 && p->dtype != HMM_FLOAT64) return HMM_STATUS_INVALID_VALUE;
  if (p->init_mode != HMM_INIT_SHARED && p->init_mode != HMM_INIT_PER_SEQUENCE)
    return HMM_STATUS_INVALID_VALUE;
  if (p->trans_mode < HMM_TRANS_SHARED || p->trans_mode > HMM_TRANS_TIME_VARYING)
    return HMM_STATUS_INVALID_VALUE;
  if (p->lengths_type < HMM_LENGTHS_NONE || p->lengths_type > HMM_LENGTHS_INT64)
    return HMM_STATUS_INVALID_VALUE;
  if (p->device != HMM_DEVICE_CPU && p->device != HMM_DEVICE_CUDA) return HMM_STATUS_INVALID_VALUE;
  if (p->num_threads < 0) return HMM_STATUS_INVALID_VALUE;
  return size_violation(p) ? HMM_STATUS_TOO_LARGE : HMM_STATUS_SUCCESS;
}

hmm_status_t check_inputs(const hmm_problem_t* p, const hmm_inputs_t* in) {
  if (!in) return HMM_STATUS_NULL_POINTER;
  const bool empty = p->batch == 0;
  // Zero-size arrays may come with a NULL data pointer (MXNet does that).
  const bool trans_empty = p->trans_mode == HMM_TRANS_TIME_VARYING && p->time == 0;
  if (!empty && (!in->log_init || (!in->log_trans && !trans_empty))) return HMM_STATUS_NULL_POINTER;
  if (!empty && p->time > 0 && !in->log_emit) return HMM_STATUS_NULL_POINTER;
  if (p->lengths_type != HMM_LENGTHS_NONE && !in->lengths && !empty) return HMM_STATUS_NULL_POINTER;
  return HMM_STATUS_SUCCESS;
}

#define HMM_TRY(expr)                              \
  do {                                             \
    hmm_status_t _s = (expr);                      \
    if (_s != HMM_STATUS_SUCCESS) return _s;       \
  } while (0)

#ifdef GLUON_HMM_WITH_CUDA
#define HMM_DISPATCH(p, fn, ...) \
  ((p)->device == HMM_DEVICE_CUDA ? hmm_cuda_##fn(__VA_ARGS__) : hmm_cpu_##fn(__VA_ARGS__))
#else
#define HMM_DISPATCH(p, fn, ...) \
  ((p)->device == HMM_DEVICE_CUDA ? HMM_STATUS_NO_CUDA : hmm_cpu_##fn(__VA_ARGS__))
#endif

std::string shape_str(const int64_t* shape, int ndim) {
  std::string s = "(";
  for (int k = 0; k < ndim; ++k) {
    if (k) s += ", ";
    s += std::to_string(shape[k]);
  }
  if (ndim == 1) s += ",";
  return s + ")";
}

hmm_status_t fail(char* message, size_t len, const std::string& text) {
  if (message && len > 0) {
    std::strncpy(message, text.c_str(), len - 1);
    message[len - 1] = '\0';
  }
  return HMM_STATUS_INVALID_VALUE;
}

/* Host buffers (hmm_buffer_alloc on the CPU) and a small cache of freed ones.
 * The MXNet op keeps its forward variables in such a buffer from the forward
 * to the backward pass, and MXNet makes a new op state, so a new buffer, for
 * every call.  Freshly allocated, a buffer of a few MiB comes from pages the
 * C library has handed back to the kernel, and the first touch of each 4 KiB
 * page faults: 134 faults, about a third of a millisecond, per 1.1 ms forward
 * at B, N, T = 8, 50, 1000 (benchmarks/NOTES.md).  A freed buffer is therefore
 * kept, resident, for the next allocation it fits: at most kCacheBlocks
 * buffers and GLUON_HMM_HOST_CACHE_MIB MiB (default 256; 0 turns the cache
 * off) in all, oldest dropped first.  A buffer is reused only for a request of
 * at least half its size, so a small call never holds a large block.
 *
 * Each block has a 64-byte header (its usable size and a tag) in front of the
 * pointer handed out, so hmm_buffer_free needs nothing but the pointer; a
 * pointer without the tag is refused (HMM_STATUS_INVALID_VALUE), not freed. */
constexpr size_t kHeader = 64;
constexpr uint64_t kTag = 0x676c756f6e686d6dULL;  // "gluonhmm": handed out
constexpr uint64_t kTagCached = kTag ^ 1;           // in the cache: a second free is refused
constexpr size_t kCacheBlocks = 8;

struct HostCache {
  std::mutex mu;
  std::vector<std::pair<size_t, char*>> blocks;  // (usable bytes, base), oldest first
  size_t bytes = 0;
};

// Never destroyed: an op state may be freed while the process exits, after
// this file's static objects would have been.
HostCache& host_cache() {
  static HostCache* c = new HostCache;
  return *c;
}

size_t host_cache_limit() {
  static const size_t limit =
      static_cast<size_t>(gluon_hmm::env_int("GLUON_HMM_HOST_CACHE_MIB", 256, 0, int64_t(1) << 30))
      << 20;
  return limit;
}

hmm_status_t host_alloc(size_t bytes, void** ptr) {
  if (bytes > std::numeric_limits<size_t>::max() - kHeader - 63) return HMM_STATUS_TOO_LARGE;
  const size_t usable = (bytes + 63) / 64 * 64;
  {
    HostCache& c = host_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    size_t best = c.blocks.size();
    for (size_t i = 0; i < c.blocks.size(); ++i) {
      const size_t have = c.blocks[i].first;
      if (have >= usable && have / 2 <= usable &&
          (best == c.blocks.size() || have < c.blocks[best].first))
        best = i;
    }
    if (best != c.blocks.size()) {
      char* base = c.blocks[best].second;
      c.bytes -= c.blocks[best].first;
      c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(best));
      std::memcpy(base + sizeof(size_t), &kTag, sizeof kTag);
      *ptr = base + kHeader;
      return HMM_STATUS_SUCCESS;
    }
  }
  char* base = static_cast<char*>(std::aligned_alloc(64, usable + kHeader));
  if (!base) return HMM_STATUS_TOO_LARGE;
  std::memcpy(base, &usable, sizeof usable);
  std::memcpy(base + sizeof usable, &kTag, sizeof kTag);
  *ptr = base + kHeader;
  return HMM_STATUS_SUCCESS;
}

hmm_status_t host_free(void* ptr) {
  char* base = static_cast<char*>(ptr) - kHeader;
  size_t usable;
  uint64_t tag;
  std::memcpy(&usable, base, sizeof usable);
  std::memcpy(&tag, base + sizeof usable, sizeof tag);
  if (tag != kTag) return HMM_STATUS_INVALID_VALUE;
  const size_t limit = host_cache_limit();
  if (usable <= limit) {
    HostCache& c = host_cache();
    std::vector<char*> drop;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      while (!c.blocks.empty() && (c.blocks.size() >= kCacheBlocks || c.bytes + usable > limit)) {
        drop.push_back(c.blocks.front().second);
        c.bytes -= c.blocks.front().first;
        c.blocks.erase(c.blocks.begin());
      }
      std::memcpy(base + sizeof usable, &kTagCached, sizeof kTagCached);
      c.blocks.emplace_back(usable, base);
      c.bytes += usable;
    }
    for (char* d : drop) std::free(d);
    return HMM_STATUS_SUCCESS;
  }
  std::memset(base + sizeof usable, 0, sizeof tag);  // a second free is refused
  std::free(base);
  return HMM_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

hmm_status_t hmm_describe(const int64_t* const shapes[4], const int ndims[4], const int dtypes[4],
                          const char* const dtype_names[4], hmm_problem_t* p, char* message,
                          size_t message_len) {
  if (!shapes || !ndims || !dtypes || !p) return HMM_STATUS_NULL_POINTER;
  auto name = [&](int k) { return std::string(dtype_names && dtype_names[k] ? dtype_names[k] : "?"); };
  // log_emit fixes B, T, N
  const int64_t* es = shapes[2];
  if (ndims[2] != 3)
    return fail(message, message_len,
                "log_emit must have shape (B, T, N) (3 dimensions), got " + shape_str(es, ndims[2]));
  const int64_t B = es[0], T = es[1], N = es[2];
  if (N < 1)
    return fail(message, message_len,
                "log_emit must have at least one state (N >= 1), got shape " + shape_str(es, 3));
  if (dtypes[2] != HMM_CODE_FLOAT32 && dtypes[2] != HMM_CODE_FLOAT64)
    return fail(message, message_len,
                "log_emit must have dtype float32 or float64, got " + name(2));
  const std::string dims = " with B=" + std::to_string(B) + ", T=" + std::to_string(T) +
                           ", N=" + std::to_string(N);
  // log_init
  const int64_t* is = shapes[0];
  hmm_init_mode_t im;
  if (ndims[0] == 1 && is[0] == N) im = HMM_INIT_SHARED;
  else if (ndims[0] == 2 && is[0] == B && is[1] == N) im = HMM_INIT_PER_SEQUENCE;
  else
    return fail(message, message_len,
                "log_init must have shape (N,) or (B, N)" + dims + ", got " + shape_str(is, ndims[0]));
  // log_trans
  const int64_t* ts = shapes[1];
  hmm_trans_mode_t tm;
  if (ndims[1] == 2 && ts[0] == N && ts[1] == N) tm = HMM_TRANS_SHARED;
  else if (ndims[1] == 3 && ts[0] == B && ts[1] == N && ts[2] == N) tm = HMM_TRANS_PER_SEQUENCE;
  else if (ndims[1] == 4 && ts[0] == B && ts[1] == T && ts[2] == N && ts[3] == N)
    tm = HMM_TRANS_TIME_VARYING;
  else
    return fail(message, message_len,
                "log_trans must have shape (N, N), (B, N, N) or (B, T, N, N)" + dims + ", got " +
                    shape_str(ts, ndims[1]));
  for (int k = 0; k < 2; ++k) {
    if (dtypes[k] != dtypes[2])
      return fail(message, message_len,
                  std::string(k == 0 ? "log_init" : "log_trans") + " must have the dtype of log_emit (" +
                      name(2) + "), got " + name(k));
  }
  hmm_lengths_type_t lt = HMM_LENGTHS_NONE;
  if (ndims[3] >= 0) {
    const int64_t* ls = shapes[3];
    if (ndims[3] != 1 || ls[0] != B)
      return fail(message, message_len,
                  "lengths must have shape (B,) with B=" + std::to_string(B) + ", got " +
                      shape_str(ls, ndims[3]));
    if (dtypes[3] == HMM_CODE_INT32) lt = HMM_LENGTHS_INT32;
    else if (dtypes[3] == HMM_CODE_INT64) lt = HMM_LENGTHS_INT64;
    else
      return fail(message, message_len, "lengths must have dtype int32 or int64, got " + name(3));
  }
  p->batch = B;
  p->time = T;
  p->states = N;
  p->dtype = dtypes[2] == HMM_CODE_FLOAT32 ? HMM_FLOAT32 : HMM_FLOAT64;
  p->init_mode = im;
  p->trans_mode = tm;
  p->lengths_type = lt;
  const hmm_status_t s = check_problem(p);
  if (s == HMM_STATUS_TOO_LARGE)
    return fail(message, message_len,
                std::string("inputs too large: ") + size_violation(p) + dims);
  if (s != HMM_STATUS_SUCCESS) return fail(message, message_len, hmm_status_string(s));
  return HMM_STATUS_SUCCESS;
}

void hmm_problem_init(hmm_problem_t* problem) {
  if (!problem) return;
  *problem = hmm_problem_t();
  problem->states = 1;
}

const char* hmm_status_string(hmm_status_t status) {
  switch (status) {
    case HMM_STATUS_SUCCESS: return "success";
    case HMM_STATUS_INVALID_VALUE: return "invalid problem description (a size, mode or dtype out of range)";
    case HMM_STATUS_NULL_POINTER: return "a required array pointer is NULL";
    case HMM_STATUS_TOO_LARGE: return "the problem is too large for the supported indexing or for memory";
    case HMM_STATUS_NO_CUDA: return "a GPU context was requested, but gluon_hmm was built without CUDA (reinstall with GLUON_HMM_CUDA=1)";
    case HMM_STATUS_CUDA_ERROR: return "a CUDA call failed";
    case HMM_STATUS_BAD_LENGTHS: return "lengths must lie in [0, T]";
  }
  return "unknown status";
}

int hmm_abi_version(void) { return HMM_ABI_VERSION; }

int hmm_has_cuda(void) {
#ifdef GLUON_HMM_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

hmm_status_t hmm_buffer_alloc(hmm_device_t device, void* stream, size_t bytes, void** ptr) {
  if (!ptr) return HMM_STATUS_NULL_POINTER;
  *ptr = nullptr;
  if (device != HMM_DEVICE_CPU && device != HMM_DEVICE_CUDA) return HMM_STATUS_INVALID_VALUE;
  if (bytes == 0) return HMM_STATUS_SUCCESS;
  if (device == HMM_DEVICE_CUDA) {
#ifdef GLUON_HMM_WITH_CUDA
    return hmm_cuda_buffer_alloc(stream, bytes, ptr);
#else
    return HMM_STATUS_NO_CUDA;
#endif
  }
  (void)stream;
  return host_alloc(bytes, ptr);
}

hmm_status_t hmm_buffer_free(hmm_device_t device, void* stream, void* ptr) {
  if (device != HMM_DEVICE_CPU && device != HMM_DEVICE_CUDA) return HMM_STATUS_INVALID_VALUE;
  if (!ptr) return HMM_STATUS_SUCCESS;
  if (device == HMM_DEVICE_CUDA) {
#ifdef GLUON_HMM_WITH_CUDA
    return hmm_cuda_buffer_free(stream, ptr);
#else
    return HMM_STATUS_NO_CUDA;
#endif
  }
  (void)stream;
  return host_free(ptr);
}

void hmm_set_num_threads(int num_threads) { hmm_cpu_set_default_threads(num_threads); }
int hmm_get_num_threads(void) { return hmm_cpu_default_threads(); }
int hmm_set_cpu_vector_bits(int bits) { return hmm_cpu_set_vector_bits(bits); }
int hmm_get_cpu_vector_bits(void) { return hmm_cpu_vector_bits(); }

hmm_status_t hmm_saved_size(const hmm_problem_t* p, int64_t* elems) {
  HMM_TRY(check_problem(p));
  if (!elems) return HMM_STATUS_NULL_POINTER;
  *elems = p->device == HMM_DEVICE_CPU
               ? gluon_hmm::saved_elems_cpu(p->batch, p->time, p->states, p->dtype)
               : gluon_hmm::saved_elems(p->batch, p->time, p->states, p->dtype);
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_backward_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  HMM_TRY(check_problem(p));
  if (!bytes) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, backward_workspace_size, p, bytes);
}
hmm_status_t hmm_posterior_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  HMM_TRY(check_problem(p));
  if (!bytes) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, posterior_workspace_size, p, bytes);
}
hmm_status_t hmm_viterbi_workspace_size(const hmm_problem_t* p, size_t* bytes) {
  HMM_TRY(check_problem(p));
  if (!bytes) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, viterbi_workspace_size, p, bytes);
}
hmm_status_t hmm_sample_workspace_size(const hmm_problem_t* p, int64_t num_samples, size_t* bytes) {
  HMM_TRY(check_problem(p));
  if (!bytes) return HMM_STATUS_NULL_POINTER;
  if (num_samples < 0) return HMM_STATUS_INVALID_VALUE;
  return HMM_DISPATCH(p, sample_workspace_size, p, num_samples, bytes);
}

hmm_status_t hmm_check_lengths(const hmm_problem_t* p, const void* lengths, int64_t* bad_index) {
  HMM_TRY(check_problem(p));
  if (bad_index) *bad_index = -1;
  if (p->lengths_type == HMM_LENGTHS_NONE) return HMM_STATUS_SUCCESS;
  if (!lengths && p->batch > 0) return HMM_STATUS_NULL_POINTER;
  for (int64_t b = 0; b < p->batch; ++b) {
    const int64_t L = p->lengths_type == HMM_LENGTHS_INT32
                          ? static_cast<const int32_t*>(lengths)[b]
                          : static_cast<const int64_t*>(lengths)[b];
    if (L < 0 || L > p->time) {
      if (bad_index) *bad_index = b;
      return HMM_STATUS_BAD_LENGTHS;
    }
  }
  return HMM_STATUS_SUCCESS;
}

hmm_status_t hmm_forward(const hmm_problem_t* p, const hmm_inputs_t* in, void* loglik,
                         void* saved) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (p->batch > 0 && (!loglik || !saved)) return HMM_STATUS_NULL_POINTER;
  if (p->batch == 0) return HMM_STATUS_SUCCESS;
  return HMM_DISPATCH(p, forward, p, in, loglik, saved);
}

hmm_status_t hmm_backward(const hmm_problem_t* p, const hmm_inputs_t* in, const void* saved,
                          const void* grad_loglik, void* grad_init, void* grad_trans,
                          void* grad_emit, void* workspace) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (p->batch == 0) {
    // Nothing flows; shared gradients are still written (zeros) by the caller's choice.
    return HMM_DISPATCH(p, backward, p, in, saved, grad_loglik, grad_init, grad_trans,
                        grad_emit, workspace);
  }
  if (!saved || !grad_loglik || (!grad_emit && p->time > 0)) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, backward, p, in, saved, grad_loglik, grad_init, grad_trans, grad_emit,
                      workspace);
}

hmm_status_t hmm_forward_backward(const hmm_problem_t* p, const hmm_inputs_t* in,
                                  const void* grad_loglik, void* loglik, void* saved,
                                  void* grad_init, void* grad_trans, void* grad_emit,
                                  void* workspace) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (p->batch > 0 && (!loglik || !saved || !grad_loglik || (!grad_emit && p->time > 0)))
    return HMM_STATUS_NULL_POINTER;
  if (p->device == HMM_DEVICE_CPU)
    return hmm_cpu_forward_backward(p, in, grad_loglik, loglik, saved, grad_init, grad_trans,
                                    grad_emit, workspace);
  HMM_TRY(hmm_forward(p, in, loglik, saved));
  return hmm_backward(p, in, saved, grad_loglik, grad_init, grad_trans, grad_emit, workspace);
}

hmm_status_t hmm_posterior(const hmm_problem_t* p, const hmm_inputs_t* in, void* gamma,
                           void* trans_counts, void* loglik, void* init_counts,
                           void* workspace) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (!gamma && p->batch > 0 && p->time > 0) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, posterior, p, in, gamma, trans_counts, loglik, init_counts, workspace);
}

hmm_status_t hmm_viterbi(const hmm_problem_t* p, const hmm_inputs_t* in, int32_t* path,
                         void* score, void* workspace) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (p->batch == 0) return HMM_STATUS_SUCCESS;
  if ((!path && p->time > 0) || !score) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, viterbi, p, in, path, score, workspace);
}

hmm_status_t hmm_sample(const hmm_problem_t* p, const hmm_inputs_t* in, int64_t num_samples,
                        const int32_t* seed, int32_t* paths, void* workspace) {
  HMM_TRY(check_problem(p));
  HMM_TRY(check_inputs(p, in));
  if (num_samples < 0) return HMM_STATUS_INVALID_VALUE;
  if (p->batch == 0 || num_samples == 0 || p->time == 0) return HMM_STATUS_SUCCESS;
  if (!paths || !seed) return HMM_STATUS_NULL_POINTER;
  return HMM_DISPATCH(p, sample, p, in, num_samples, seed, paths, workspace);
}

}  // extern "C"
