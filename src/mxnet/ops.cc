/*
 * gluon_hmm MXNet glue: an external operator library for MXNet 1.9.x
 * (lib_api.h; loaded by gluon_hmm/_library.py with mx.library.load).
 *
 * Glue only: each function unpacks MXTensors into an hmm_problem_t through
 * hmm_describe (the engine's one home of validation), calls the C ABI of
 * src/hmm/hmm.h, and turns a status into an MXNet error.
 *
 * Operators (inputs are positional; lengths is present when has_lengths=1):
 *   hmm_log_likelihood(log_init, log_trans, log_emit[, lengths]) -> loglik (B,)
 *       differentiable w.r.t. the three float inputs; a stateful operator whose
 *       op state carries the forward variables to the backward pass.
 *   hmm_posterior(...)  -> gamma (B,T,N), trans_counts (shape of log_trans),
 *                           init_counts (shape of log_init), loglik (B,)
 *   hmm_viterbi(...)    -> path (B,T) int32, score (B,)
 *   hmm_sample(..., seed) -> paths (B, num_samples, T) int32; seed: (2,) int32
 *       drawn by the caller from MXNet's generator.
 * The inference ops have zero gradients (they are statistics, not functions
 * to differentiate), so they never break a graph under autograd.
 *
 * MXNet 1.9.1's lib_api keeps every error message it was ever given and
 * repeats them all on each later error (and leaks a string per message read):
 * every entry point clears the list first, and this library supplies its own
 * non-leaking _msgGet (setup.py renames the one in lib_api.cc).
 */
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "hmm/hmm.h"
#include "mxnet/lib_api.h"

using mxnet::ext::MXContext;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

typedef std::unordered_map<std::string, std::string> Attrs;

/* ---- error list housekeeping ------------------------------------------- */
namespace {

// Standard-conforming access to MXerrorMsgs::messages (a private member):
// explicit template instantiation may name private members.
struct MessagesTag {
  typedef std::vector<std::stringstream*> mxnet::ext::MXerrorMsgs::*type;
  friend type member_of(MessagesTag);
};
template <typename Tag, typename Tag::type M>
struct Expose {
  friend typename Tag::type member_of(Tag) { return M; }
};
template struct Expose<MessagesTag, &mxnet::ext::MXerrorMsgs::messages>;

std::mutex g_msg_mu;
std::deque<std::string> g_msg_strings;  // backing store of strings handed to MXNet

void clear_errors() {
  std::lock_guard<std::mutex> lk(g_msg_mu);
  std::vector<std::stringstream*>& v = mxnet::ext::MXerrorMsgs::get()->*member_of(MessagesTag());
  for (std::stringstream* s : v) delete s;
  v.clear();
  g_msg_strings.clear();
}

MXReturnValue error(const std::string& op, const std::string& text) {
  MX_ERROR_MSG << op << ": " << text;
  return MX_FAIL;
}

}  // namespace

extern "C" {
// Replaces lib_api.cc's _msgGet (renamed there at compile time), which
// allocates a string per call and never frees it.
MX_VOID_RET _msgGet(int idx, const char** msg) {
  std::lock_guard<std::mutex> lk(g_msg_mu);
  std::vector<std::stringstream*>& v = mxnet::ext::MXerrorMsgs::get()->*member_of(MessagesTag());
  if (idx < 0 || idx >= static_cast<int>(v.size())) {
    *msg = "";
    return;
  }
  g_msg_strings.push_back(v[idx]->str());
  *msg = g_msg_strings.back().c_str();
}
}

namespace {

/* ---- attribute and tensor helpers ------------------------------------------ */
bool attr_flag(const Attrs& attrs, const char* key, bool dflt) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return dflt;
  return it->second == "1" || it->second == "True" || it->second == "true";
}

bool attr_int(const Attrs& attrs, const char* key, int64_t* out, std::string* err) {
  auto it = attrs.find(key);
  if (it == attrs.end()) { *err = std::string("missing attribute ") + key; return false; }
  char* end = nullptr;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (end == it->second.c_str() || *end != '\0') {
    *err = std::string(key) + " must be an integer, got '" + it->second + "'";
    return false;
  }
  *out = v;
  return true;
}

int code_of(int mx_dtype) {
  switch (mx_dtype) {
    case mxnet::ext::kFloat32: return HMM_CODE_FLOAT32;
    case mxnet::ext::kFloat64: return HMM_CODE_FLOAT64;
    case mxnet::ext::kInt32: return HMM_CODE_INT32;
    case mxnet::ext::kInt64: return HMM_CODE_INT64;
    default: return HMM_CODE_OTHER;
  }
}

const char* name_of(int mx_dtype) {
  switch (mx_dtype) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "an unsupported dtype";
  }
}

/* Problem of a call from shapes (and dtypes when known). */
bool describe(const std::vector<std::vector<int64_t>>& shapes, const int* dtypes, bool has_lengths,
              hmm_problem_t* p, std::string* err) {
  const int64_t* sp[4];
  int nd[4];
  int codes[4] = {HMM_CODE_FLOAT32, HMM_CODE_FLOAT32, HMM_CODE_FLOAT32, HMM_CODE_INT64};
  const char* names[4] = {"float32", "float32", "float32", "int64"};
  static const int64_t none = 0;
  for (int k = 0; k < 4; ++k) {
    if (k == 3 && !has_lengths) { sp[k] = &none; nd[k] = -1; continue; }
    sp[k] = shapes[k].data();
    nd[k] = static_cast<int>(shapes[k].size());
    if (dtypes) { codes[k] = code_of(dtypes[k]); names[k] = name_of(dtypes[k]); }
  }
  if (!dtypes) {
    // Shape inference runs before types are known: describe with placeholder types.
    codes[0] = codes[1] = codes[2] = HMM_CODE_FLOAT32;
    codes[3] = HMM_CODE_INT64;
  }
  char msg[512];
  hmm_problem_init(p);
  const hmm_status_t st = hmm_describe(sp, nd, codes, names, p, msg, sizeof(msg));
  if (st == HMM_STATUS_SUCCESS) return true;
  *err = st == HMM_STATUS_INVALID_VALUE ? std::string(msg) : hmm_status_string(st);
  return false;
}

bool check_types(const std::vector<int>& in, bool has_lengths, std::string* err) {
  // Reuse hmm_describe's dtype rules with a trivially valid shape.
  std::vector<std::vector<int64_t>> shapes = {{1}, {1, 1}, {1, 1, 1}, {1}};
  int dt[4] = {in[0], in[1], in[2], has_lengths ? in[3] : mxnet::ext::kInt64};
  hmm_problem_t p;
  return describe(shapes, dt, has_lengths, &p, err);
}

std::vector<std::vector<int64_t>> shapes_of(const std::vector<std::vector<unsigned int>>& in,
                                            size_t n) {
  std::vector<std::vector<int64_t>> out(4);
  for (size_t k = 0; k < n && k < 4; ++k) out[k].assign(in[k].begin(), in[k].end());
  return out;
}

std::vector<std::vector<int64_t>> shapes_of(const std::vector<MXTensor>& in, size_t first,
                                            size_t n) {
  std::vector<std::vector<int64_t>> out(4);
  for (size_t k = 0; k < n && k < 4; ++k) out[k] = in[first + k].shape;
  return out;
}

/* Everything a compute function needs: problem, inputs, device and scratch. */
struct Call {
  hmm_problem_t p;
  hmm_inputs_t in;
};

bool prepare(const char* op, const Attrs& attrs, const std::vector<MXTensor>& t, size_t first,
             const OpResource& res, Call* c, std::string* err) {
  const bool has_lengths = attr_flag(attrs, "has_lengths", false);
  const size_t n = has_lengths ? 4 : 3;
  int dt[4];
  for (size_t k = 0; k < n; ++k) dt[k] = t[first + k].dtype;
  if (!describe(shapes_of(t, first, n), dt, has_lengths, &c->p, err)) return false;
  c->in.log_init = t[first].data_ptr;
  c->in.log_trans = t[first + 1].data_ptr;
  c->in.log_emit = t[first + 2].data_ptr;
  c->in.lengths = has_lengths ? t[first + 3].data_ptr : nullptr;
  const MXContext& ctx = t[first + 2].ctx;
  if (ctx.dev_type == "gpu") {
    c->p.device = HMM_DEVICE_CUDA;
    c->p.stream = static_cast<void*>(res.get_cuda_stream());
  } else {
    c->p.device = HMM_DEVICE_CPU;
    if (has_lengths) {
      int64_t bad = -1;
      if (hmm_check_lengths(&c->p, c->in.lengths, &bad) != HMM_STATUS_SUCCESS) {
        const int64_t L = c->p.lengths_type == HMM_LENGTHS_INT32
                              ? static_cast<const int32_t*>(c->in.lengths)[bad]
                              : static_cast<const int64_t*>(c->in.lengths)[bad];
        *err = "lengths must lie in [0, T] with T=" + std::to_string(c->p.time) + ", got lengths[" +
               std::to_string(bad) + "]=" + std::to_string(L);
        return false;
      }
    }
  }
  (void)op;
  return true;
}

void* scratch(const OpResource& res, const hmm_problem_t& p, size_t bytes) {
  if (bytes == 0) return nullptr;
  if (bytes > static_cast<size_t>(INT32_MAX)) return nullptr;
  return p.device == HMM_DEVICE_CUDA ? res.alloc_gpu(static_cast<int>(bytes))
                                     : res.alloc_cpu(static_cast<int>(bytes));
}

MXReturnValue status(const char* op, hmm_status_t st) {
  if (st == HMM_STATUS_SUCCESS) return MX_SUCCESS;
  return error(op, hmm_status_string(st));
}

/* Per-call scratch of the size size(p, &bytes) asks for; false with *rv set when
 * it cannot be had. */
template <typename Size>
bool workspace(const char* op, const hmm_problem_t& p, const OpResource& res, Size size,
               void** ws, MXReturnValue* rv) {
  size_t bytes = 0;
  const hmm_status_t st = size(p, &bytes);
  if (st != HMM_STATUS_SUCCESS) { *rv = status(op, st); return false; }
  *ws = scratch(res, p, bytes);
  if (bytes && !*ws) {
    *rv = error(op, "could not allocate " + std::to_string(bytes) + " bytes of workspace");
    return false;
  }
  return true;
}

/* Zeros a host tensor (the gradient of an input that is not differentiated). */
void zero_host(MXTensor& g) {
  const size_t elem = g.dtype == mxnet::ext::kFloat64 || g.dtype == mxnet::ext::kInt64 ? 8 : 4;
  std::memset(g.data_ptr, 0, static_cast<size_t>(g.size()) * elem);
}

/* The common shape of a compute function: describe the call, size and take the
 * per-call scratch, run.  size(p, &bytes) and run(call, workspace) wrap one ABI pair. */
template <typename Size, typename Run>
MXReturnValue compute(const char* op, const Attrs& a, const std::vector<MXTensor>& in,
                      size_t first, const OpResource& res, Size size, Run run) {
  clear_errors();
  Call c;
  std::string err;
  if (!prepare(op, a, in, first, res, &c, &err)) return error(op, err);
  void* ws = nullptr;
  MXReturnValue rv;
  if (!workspace(op, c.p, res, size, &ws, &rv)) return rv;
  return status(op, run(c, ws));
}

/* ---- shared attribute / type callbacks -------------------------------------- */
MXReturnValue parse_model_attrs(const Attrs& attrs, int* num_in, int* num_out, int extra_in,
                                int outs) {
  clear_errors();
  *num_in = (attr_flag(attrs, "has_lengths", false) ? 4 : 3) + extra_in;
  *num_out = outs;
  return MX_SUCCESS;
}

MXReturnValue infer_float_outputs(const char* op, const Attrs& attrs, std::vector<int>* in,
                                  std::vector<int>* out, const std::vector<bool>& int_out) {
  clear_errors();
  std::string err;
  const bool has_lengths = attr_flag(attrs, "has_lengths", false);
  if (!check_types(*in, has_lengths, &err)) return error(op, err);
  for (size_t k = 0; k < out->size(); ++k)
    (*out)[k] = int_out[k] ? mxnet::ext::kInt32 : (*in)[2];
  return MX_SUCCESS;
}

bool infer_problem(const char* op, const Attrs& attrs,
                   const std::vector<std::vector<unsigned int>>& in, hmm_problem_t* p,
                   MXReturnValue* rv) {
  clear_errors();
  std::string err;
  const bool has_lengths = attr_flag(attrs, "has_lengths", false);
  if (!describe(shapes_of(in, has_lengths ? 4 : 3), nullptr, has_lengths, p, &err)) {
    *rv = error(op, err);
    return false;
  }
  return true;
}

std::vector<unsigned int> u(std::initializer_list<int64_t> dims) {
  std::vector<unsigned int> v;
  for (int64_t d : dims) v.push_back(static_cast<unsigned int>(d));
  return v;
}

/* ======================== hmm_log_likelihood ================================ */
// A stateful operator: the forward keeps the forward variables the backward
// reads (hmm_saved_size elements) in its op state, which MXNet hands to the
// backward of the same graph node.  (As a second output, that buffer cost a
// zero-filled head gradient of its size in every backward, which MXNet's
// autograd adds for an output the loss does not use: 0.3-0.7 ms per call at
// B,N,T = 8,50,1000, a sixth of the round trip.)
const char* kLL = "gluon_hmm.log_likelihood";

MXReturnValue ll_parse(const Attrs& a, int* ni, int* no) { return parse_model_attrs(a, ni, no, 0, 1); }

MXReturnValue ll_type(const Attrs& a, std::vector<int>* in, std::vector<int>* out) {
  return infer_float_outputs(kLL, a, in, out, {false});
}

MXReturnValue ll_shape(const Attrs& a, std::vector<std::vector<unsigned int>>* in,
                       std::vector<std::vector<unsigned int>>* out) {
  hmm_problem_t p;
  MXReturnValue rv;
  if (!infer_problem(kLL, a, *in, &p, &rv)) return rv;
  (*out)[0] = u({p.batch});
  return MX_SUCCESS;
}

bool same_problem(const hmm_problem_t& a, const hmm_problem_t& b) {
  return a.batch == b.batch && a.time == b.time && a.states == b.states && a.dtype == b.dtype &&
         a.init_mode == b.init_mode && a.trans_mode == b.trans_mode &&
         a.lengths_type == b.lengths_type && a.device == b.device;
}

class LogLikelihoodState : public mxnet::ext::CustomStatefulOp {
 public:
  explicit LogLikelihoodState(const Attrs& attrs) : attrs_(attrs) {}
  ~LogLikelihoodState() override { release(); }

  // inputs: log_init, log_trans, log_emit[, lengths]; output: loglik
  MXReturnValue Forward(std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                        const OpResource& res) override {
    clear_errors();
    saved_valid_ = false;
    Call c;
    std::string err;
    if (!prepare(kLL, attrs_, *in, 0, res, &c, &err)) return error(kLL, err);
    int64_t elems = 0;
    hmm_status_t st = hmm_saved_size(&c.p, &elems);
    if (st != HMM_STATUS_SUCCESS) return status(kLL, st);
    const size_t bytes = static_cast<size_t>(elems) * (c.p.dtype == HMM_FLOAT64 ? 8 : 4);
    if (bytes > capacity_ || c.p.device != device_) {
      release();
      device_ = c.p.device;
      st = hmm_buffer_alloc(device_, c.p.stream, bytes, &saved_);
      if (st == HMM_STATUS_TOO_LARGE)
        return error(kLL, "could not allocate " + std::to_string(bytes) +
                              " bytes for the forward variables kept for the backward pass");
      if (st != HMM_STATUS_SUCCESS) return status(kLL, st);
      capacity_ = bytes;
    }
    stream_ = c.p.stream;
    st = hmm_forward(&c.p, &c.in, (*out)[0].data_ptr, saved_);
    if (st != HMM_STATUS_SUCCESS) return status(kLL, st);
    problem_ = c.p;
    saved_valid_ = true;
    return MX_SUCCESS;
  }

  // inputs: ograd(loglik), the forward's inputs, loglik; outputs: their gradients
  MXReturnValue Backward(std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                         const OpResource& res) override {
    clear_errors();
    if (!saved_valid_)
      return error(kLL, "backward pass without a successful forward pass on this operator state");
    Call c;
    std::string err;
    if (!prepare(kLL, attrs_, *in, 1, res, &c, &err)) return error(kLL, err);
    if (!same_problem(c.p, problem_))
      return error(kLL, "backward pass on inputs of other shapes, dtypes or device than its forward pass");
    void* ws = nullptr;
    MXReturnValue rv;
    auto size = [](const hmm_problem_t& p, size_t* b) { return hmm_backward_workspace_size(&p, b); };
    if (!workspace(kLL, c.p, res, size, &ws, &rv)) return rv;
    stream_ = c.p.stream;
    const hmm_status_t st = hmm_backward(&c.p, &c.in, saved_, (*in)[0].data_ptr, (*out)[0].data_ptr,
                      (*out)[1].data_ptr, (*out)[2].data_ptr, ws);
    if (st != HMM_STATUS_SUCCESS) return status(kLL, st);
    // lengths is an integer input: its gradient is zero
    if (c.p.lengths_type != HMM_LENGTHS_NONE && c.p.device == HMM_DEVICE_CPU) zero_host((*out)[3]);
    return MX_SUCCESS;
  }

 private:
  // Stream-ordered on the GPU: freed after the work last queued with this state.
  void release() {
    if (saved_) hmm_buffer_free(device_, stream_, saved_);
    saved_ = nullptr;
    capacity_ = 0;
    saved_valid_ = false;
  }

  Attrs attrs_;
  void* saved_ = nullptr;      // the forward variables (hmm_forward's `saved`)
  size_t capacity_ = 0;        // bytes at saved_ (kept across calls of a reused state)
  hmm_device_t device_ = HMM_DEVICE_CPU;
  void* stream_ = nullptr;     // CUDA stream of the last call
  hmm_problem_t problem_{};    // the forward's problem, checked by the backward
  bool saved_valid_ = false;
};

MXReturnValue ll_create(const Attrs& a, const MXContext&, const std::vector<std::vector<unsigned int>>&,
                        const std::vector<int>, mxnet::ext::CustomStatefulOp** op) {
  clear_errors();
  *op = mxnet::ext::CustomStatefulOp::create<LogLikelihoodState>(a);
  return MX_SUCCESS;
}

/* ========================== _hmm_posterior ================================== */
const char* kPost = "gluon_hmm.posterior";

MXReturnValue post_parse(const Attrs& a, int* ni, int* no) { return parse_model_attrs(a, ni, no, 0, 4); }
MXReturnValue post_type(const Attrs& a, std::vector<int>* in, std::vector<int>* out) {
  return infer_float_outputs(kPost, a, in, out, {false, false, false, false});
}
MXReturnValue post_shape(const Attrs& a, std::vector<std::vector<unsigned int>>* in,
                         std::vector<std::vector<unsigned int>>* out) {
  hmm_problem_t p;
  MXReturnValue rv;
  if (!infer_problem(kPost, a, *in, &p, &rv)) return rv;
  (*out)[0] = (*in)[2];
  (*out)[1] = (*in)[1];
  (*out)[2] = (*in)[0];
  (*out)[3] = u({p.batch});
  return MX_SUCCESS;
}
MXReturnValue post_forward(const Attrs& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                           const OpResource& res) {
  return compute(kPost, a, *in, 0, res,
                 [](const hmm_problem_t& p, size_t* b) { return hmm_posterior_workspace_size(&p, b); },
                 [&](Call& c, void* ws) {
                   return hmm_posterior(&c.p, &c.in, (*out)[0].data_ptr, (*out)[1].data_ptr,
                                        (*out)[3].data_ptr, (*out)[2].data_ptr, ws);
                 });
}

/* =========================== _hmm_viterbi =================================== */
const char* kVit = "gluon_hmm.viterbi";

MXReturnValue vit_parse(const Attrs& a, int* ni, int* no) { return parse_model_attrs(a, ni, no, 0, 2); }
MXReturnValue vit_type(const Attrs& a, std::vector<int>* in, std::vector<int>* out) {
  return infer_float_outputs(kVit, a, in, out, {true, false});
}
MXReturnValue vit_shape(const Attrs& a, std::vector<std::vector<unsigned int>>* in,
                        std::vector<std::vector<unsigned int>>* out) {
  hmm_problem_t p;
  MXReturnValue rv;
  if (!infer_problem(kVit, a, *in, &p, &rv)) return rv;
  (*out)[0] = u({p.batch, p.time});
  (*out)[1] = u({p.batch});
  return MX_SUCCESS;
}
MXReturnValue vit_forward(const Attrs& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                          const OpResource& res) {
  return compute(kVit, a, *in, 0, res,
                 [](const hmm_problem_t& p, size_t* b) { return hmm_viterbi_workspace_size(&p, b); },
                 [&](Call& c, void* ws) {
                   return hmm_viterbi(&c.p, &c.in, static_cast<int32_t*>((*out)[0].data_ptr),
                                      (*out)[1].data_ptr, ws);
                 });
}

/* ============================ _hmm_sample =================================== */
const char* kSam = "gluon_hmm.sample";

MXReturnValue sam_parse(const Attrs& a, int* ni, int* no) {
  MXReturnValue rv = parse_model_attrs(a, ni, no, 1, 1);
  int64_t s = 0;
  std::string err;
  if (!attr_int(a, "num_samples", &s, &err)) return error(kSam, err);
  if (s < 0 || s > INT32_MAX)
    return error(kSam, "num_samples must lie in [0, 2**31 - 1], got " + std::to_string(s));
  return rv;
}
MXReturnValue sam_type(const Attrs& a, std::vector<int>* in, std::vector<int>* out) {
  clear_errors();
  const bool has_lengths = attr_flag(a, "has_lengths", false);
  const int seed_type = (*in)[has_lengths ? 4 : 3];
  if (seed_type != mxnet::ext::kInt32)
    return error(kSam, std::string("seed must have dtype int32, got ") + name_of(seed_type));
  std::string err;
  if (!check_types(*in, has_lengths, &err)) return error(kSam, err);
  (*out)[0] = mxnet::ext::kInt32;
  return MX_SUCCESS;
}
MXReturnValue sam_shape(const Attrs& a, std::vector<std::vector<unsigned int>>* in,
                        std::vector<std::vector<unsigned int>>* out) {
  hmm_problem_t p;
  MXReturnValue rv;
  if (!infer_problem(kSam, a, *in, &p, &rv)) return rv;
  const std::vector<unsigned int>& seed = (*in)[attr_flag(a, "has_lengths", false) ? 4 : 3];
  if (seed.size() != 1 || seed[0] != 2) return error(kSam, "seed must have shape (2,)");
  int64_t s = 0;
  std::string err;
  if (!attr_int(a, "num_samples", &s, &err)) return error(kSam, err);
  (*out)[0] = u({p.batch, s, p.time});
  return MX_SUCCESS;
}
MXReturnValue sam_forward(const Attrs& a, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                          const OpResource& res) {
  int64_t s = 0;
  std::string err;
  if (!attr_int(a, "num_samples", &s, &err)) return error(kSam, err);
  const MXTensor& seed = (*in)[attr_flag(a, "has_lengths", false) ? 4 : 3];
  return compute(kSam, a, *in, 0, res,
                 [s](const hmm_problem_t& p, size_t* b) { return hmm_sample_workspace_size(&p, s, b); },
                 [&](Call& c, void* ws) {
                   return hmm_sample(&c.p, &c.in, s, static_cast<const int32_t*>(seed.data_ptr),
                                     static_cast<int32_t*>((*out)[0].data_ptr), ws);
                 });
}

/* Inference ops: zero gradients for every input (they are not differentiated). */
MXReturnValue zero_backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>* out,
                            const OpResource& res) {
  clear_errors();
  for (MXTensor& g : *out) {
    if (g.ctx.dev_type == "gpu") {
      // No host access to device memory here: the Python API blocks gradients
      // before they reach these ops (BlockGrad), so this path is not taken.
      continue;
    }
    zero_host(g);
  }
  (void)res;
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(hmm_log_likelihood)
    .setParseAttrs(ll_parse)
    .setInferType(ll_type)
    .setInferShape(ll_shape)
    .setCreateOpState(ll_create, "cpu")
    .setCreateOpState(ll_create, "gpu");

REGISTER_OP(hmm_posterior)
    .setParseAttrs(post_parse)
    .setInferType(post_type)
    .setInferShape(post_shape)
    .setForward(post_forward, "cpu")
    .setBackward(zero_backward, "cpu")
    .setForward(post_forward, "gpu")
    .setBackward(zero_backward, "gpu");

REGISTER_OP(hmm_viterbi)
    .setParseAttrs(vit_parse)
    .setInferType(vit_type)
    .setInferShape(vit_shape)
    .setForward(vit_forward, "cpu")
    .setBackward(zero_backward, "cpu")
    .setForward(vit_forward, "gpu")
    .setBackward(zero_backward, "gpu");

REGISTER_OP(hmm_sample)
    .setParseAttrs(sam_parse)
    .setInferType(sam_type)
    .setInferShape(sam_shape)
    .setForward(sam_forward, "cpu")
    .setBackward(zero_backward, "cpu")
    .setForward(sam_forward, "gpu")
    .setBackward(zero_backward, "gpu");

MXReturnValue initialize(int version) {
  clear_errors();
  if (version < 10700) {
    MX_ERROR_MSG << "gluon_hmm needs MXNet >= 1.7 (lib_api); this MXNet reports version " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
