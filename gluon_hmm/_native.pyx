# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython binding of the engine's C ABI (src/hmm/hmm.h) for NumPy arrays.

Glue only: it checks arrays through ``hmm_describe`` (the engine's one home of
validation), allocates outputs, calls the C ABI without the GIL and turns a
status into an exception.  The public NumPy API is :mod:`gluon_hmm.numpy`.
"""
from libc.stdint cimport int32_t, int64_t
import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "hmm.h":
    ctypedef enum hmm_status_t:
        HMM_STATUS_SUCCESS
        HMM_STATUS_INVALID_VALUE
        HMM_STATUS_BAD_LENGTHS
    ctypedef enum hmm_dtype_t:
        HMM_FLOAT32
        HMM_FLOAT64
    ctypedef enum hmm_init_mode_t:
        HMM_INIT_SHARED
        HMM_INIT_PER_SEQUENCE
    ctypedef enum hmm_trans_mode_t:
        HMM_TRANS_SHARED
        HMM_TRANS_PER_SEQUENCE
        HMM_TRANS_TIME_VARYING
    ctypedef enum hmm_lengths_type_t:
        HMM_LENGTHS_NONE
        HMM_LENGTHS_INT32
        HMM_LENGTHS_INT64
    ctypedef enum hmm_device_t:
        HMM_DEVICE_CPU
    ctypedef struct hmm_problem_t:
        int64_t batch
        int64_t time
        int64_t states
        hmm_dtype_t dtype
        hmm_init_mode_t init_mode
        hmm_trans_mode_t trans_mode
        hmm_lengths_type_t lengths_type
        hmm_device_t device
        int num_threads
        void* stream
    ctypedef struct hmm_inputs_t:
        const void* log_init
        const void* log_trans
        const void* log_emit
        const void* lengths

    void hmm_problem_init(hmm_problem_t* problem)
    const char* hmm_status_string(hmm_status_t status)
    int hmm_abi_version()
    int hmm_has_cuda()
    void hmm_set_num_threads(int n)
    int hmm_get_num_threads()
    int hmm_set_cpu_vector_bits(int bits)
    int hmm_get_cpu_vector_bits()
    hmm_status_t hmm_describe(const int64_t* const* shapes, const int* ndims, const int* dtypes,
                              const char* const* dtype_names, hmm_problem_t* problem,
                              char* message, size_t message_len)
    hmm_status_t hmm_check_lengths(const hmm_problem_t* p, const void* lengths, int64_t* bad) nogil
    hmm_status_t hmm_saved_size(const hmm_problem_t* p, int64_t* elems)
    hmm_status_t hmm_forward(const hmm_problem_t* p, const hmm_inputs_t* inp, void* loglik,
                             void* saved) nogil
    hmm_status_t hmm_backward(const hmm_problem_t* p, const hmm_inputs_t* inp, const void* saved,
                              const void* grad_loglik, void* grad_init, void* grad_trans,
                              void* grad_emit, void* workspace) nogil
    hmm_status_t hmm_forward_backward(const hmm_problem_t* p, const hmm_inputs_t* inp,
                                      const void* grad_loglik, void* loglik, void* saved,
                                      void* grad_init, void* grad_trans, void* grad_emit,
                                      void* workspace) nogil
    hmm_status_t hmm_posterior(const hmm_problem_t* p, const hmm_inputs_t* inp, void* gamma,
                               void* trans_counts, void* loglik, void* init_counts,
                               void* workspace) nogil
    hmm_status_t hmm_viterbi(const hmm_problem_t* p, const hmm_inputs_t* inp, int32_t* path,
                             void* score, void* workspace) nogil
    hmm_status_t hmm_sample(const hmm_problem_t* p, const hmm_inputs_t* inp, int64_t num_samples,
                            const int32_t* seed, int32_t* paths, void* workspace) nogil


_NAMES = ("log_init", "log_trans", "log_emit", "lengths")


cdef int _code_num(int t):
    # NumPy type number -> hmm_dtype_code_t
    if t == cnp.NPY_FLOAT32:
        return 0
    if t == cnp.NPY_FLOAT64:
        return 1
    if t == cnp.NPY_INT32:
        return 2
    if t == cnp.NPY_INT64:
        return 3
    return 9


cdef int _code(cnp.ndarray a):
    return _code_num(cnp.PyArray_TYPE(a))


def abi_version():
    return hmm_abi_version()


def has_cuda():
    return bool(hmm_has_cuda())


def set_num_threads(int n):
    hmm_set_num_threads(n)


def get_num_threads():
    return hmm_get_num_threads()


def set_cpu_vector_bits(int bits):
    return hmm_set_cpu_vector_bits(bits)


def get_cpu_vector_bits():
    return hmm_get_cpu_vector_bits()


cdef struct _Desc:
    # the shapes, ranks (-1: no lengths) and dtype codes hmm_describe reads
    int64_t shape_store[4][4]
    const int64_t* shapes[4]
    int ndims[4]
    int codes[4]


cdef _describe_or_raise(_Desc* d, dtypes, hmm_problem_t* problem):
    """hmm_describe on d; on invalid inputs, ValueError with the engine's message.  The
    dtype names it needs come from dtypes: arrays or anything np.dtype takes (None: none)."""
    cdef const char* names[4]
    cdef char message[512]
    cdef int k
    for k in range(4):
        d.shapes[k] = d.shape_store[k]
        names[k] = NULL
    st = hmm_describe(d.shapes, d.ndims, d.codes, names, problem, message, sizeof(message))
    if st == HMM_STATUS_SUCCESS:
        return
    name_bytes = [b"none" if x is None else
                  (x.dtype if isinstance(x, np.ndarray) else np.dtype(x)).name.encode()
                  for x in dtypes]
    for k in range(4):
        names[k] = name_bytes[k]
    st = hmm_describe(d.shapes, d.ndims, d.codes, names, problem, message, sizeof(message))
    if st == HMM_STATUS_INVALID_VALUE:
        raise ValueError(message.decode())
    _raise(st, "describe")


def describe(shapes, dtypes):
    """Validates a call from its arrays' shapes and dtypes alone; returns T.

    For frameworks whose arrays live elsewhere (the MXNet frontend builds its error
    messages with it).  shapes[k] is a tuple or None (no lengths), dtypes[k]
    anything ``np.dtype`` takes.  Raises ValueError with the engine's message
    naming the argument.
    """
    cdef _Desc desc
    cdef hmm_problem_t problem
    cdef int k, d
    for k in range(4):
        s = shapes[k]
        if s is None:
            desc.ndims[k] = -1
            desc.codes[k] = 9
            continue
        if len(s) > 4:
            raise ValueError("%s must have at most 4 dimensions, got shape %s"
                             % (_NAMES[k], tuple(s)))
        desc.ndims[k] = len(s)
        for d in range(desc.ndims[k]):
            desc.shape_store[k][d] = s[d]
        desc.codes[k] = _code_num(np.dtype(dtypes[k]).num)
    hmm_problem_init(&problem)
    _describe_or_raise(&desc, dtypes, &problem)
    return problem.time


# MXNet's C API (include/mxnet/c_api.h of the wheel), bound at run time by
# gluon_hmm.ops: reading an NDArray's shape and dtype through Python costs
# ~1.5 us per attribute, through these pointers a few nanoseconds.
ctypedef int (*mx_shape32_fn)(void* handle, int* ndim, const int** dims)
ctypedef int (*mx_shape64_fn)(void* handle, int* ndim, const int64_t** dims)
ctypedef int (*mx_dtype_fn)(void* handle, int* dtype)
cdef mx_shape32_fn _mx_shape32 = NULL
cdef mx_shape64_fn _mx_shape64 = NULL
cdef mx_dtype_fn _mx_dtype = NULL


def bind_mxnet_api(size_t get_shape, bint shape64, size_t get_dtype):
    """Addresses of MXNDArrayGetShapeEx (or ...Ex64 when shape64) and MXNDArrayGetDType."""
    global _mx_shape32, _mx_shape64, _mx_dtype
    _mx_shape32 = NULL
    _mx_shape64 = NULL
    if shape64:
        _mx_shape64 = <mx_shape64_fn>get_shape
    else:
        _mx_shape32 = <mx_shape32_fn>get_shape
    _mx_dtype = <mx_dtype_fn>get_dtype


cdef int _mx_code(int mx_dtype):
    # MXNet type flags: 0 float32, 1 float64, 4 int32, 6 int64 (others unsupported)
    if mx_dtype == 0:
        return 0
    if mx_dtype == 1:
        return 1
    if mx_dtype == 4:
        return 2
    if mx_dtype == 6:
        return 3
    return 9


def describe_ndarrays(size_t h0, size_t h1, size_t h2, size_t h3):
    """hmm_describe on NDArray handles (h3 = 0: no lengths): T, or -1 if the inputs are
    invalid (the caller then gets the message from describe()).  Needs bind_mxnet_api."""
    cdef _Desc desc
    cdef void* handles[4]
    cdef const int* d32
    cdef const int64_t* d64
    cdef int nd, dt, k, d
    cdef char message[8]
    cdef hmm_problem_t problem
    if _mx_dtype == NULL:
        raise RuntimeError("gluon_hmm: bind_mxnet_api was not called")
    handles[0] = <void*>h0
    handles[1] = <void*>h1
    handles[2] = <void*>h2
    handles[3] = <void*>h3
    for k in range(4):
        desc.shapes[k] = desc.shape_store[k]
        if handles[k] == NULL:
            desc.ndims[k] = -1
            desc.codes[k] = 9
            continue
        if _mx_shape64 != NULL:
            if _mx_shape64(handles[k], &nd, &d64) != 0 or nd < 0 or nd > 4:
                return -1
            for d in range(nd):
                desc.shape_store[k][d] = d64[d]
        else:
            if _mx_shape32(handles[k], &nd, &d32) != 0 or nd < 0 or nd > 4:
                return -1
            for d in range(nd):
                desc.shape_store[k][d] = d32[d]
        if _mx_dtype(handles[k], &dt) != 0:
            return -1
        desc.ndims[k] = nd
        desc.codes[k] = _mx_code(dt)
    hmm_problem_init(&problem)
    if hmm_describe(desc.shapes, desc.ndims, desc.codes, NULL, &problem, message,
                    0) != HMM_STATUS_SUCCESS:
        return -1
    return problem.time


cdef _check_lengths(hmm_problem_t* problem, cnp.ndarray lengths):
    cdef int64_t bad = -1
    st = hmm_check_lengths(problem, cnp.PyArray_DATA(lengths), &bad)
    if st == HMM_STATUS_BAD_LENGTHS:
        raise ValueError("lengths must lie in [0, T] with T=%d, got lengths[%d]=%d"
                         % (problem.time, bad, int(lengths[bad])))
    elif st != HMM_STATUS_SUCCESS:
        _raise(st, "lengths check")


def check_lengths(lengths, int64_t T):
    """Raises ValueError unless every entry of the int32/int64 array lengths lies in [0, T]."""
    cdef cnp.ndarray a = np.ascontiguousarray(lengths)
    cdef hmm_problem_t problem
    if a.ndim != 1:
        raise ValueError("lengths must have shape (B,), got %s" % (np.shape(lengths),))
    hmm_problem_init(&problem)
    problem.batch = a.shape[0]
    problem.time = T
    if a.dtype == np.int32:
        problem.lengths_type = HMM_LENGTHS_INT32
    elif a.dtype == np.int64:
        problem.lengths_type = HMM_LENGTHS_INT64
    else:
        raise ValueError("lengths must have dtype int32 or int64, got %s" % a.dtype)
    _check_lengths(&problem, a)


cdef _raise(hmm_status_t status, what):
    raise RuntimeError("gluon_hmm: %s failed: %s" % (what, hmm_status_string(status).decode()))


cdef class _Call:
    """Checked, contiguous views of one call's inputs and the problem they describe."""
    cdef hmm_problem_t problem
    cdef hmm_inputs_t inputs
    cdef public object arrays   # keeps the contiguous arrays alive
    cdef public object dtype
    cdef int typenum             # NPY_FLOAT32 or NPY_FLOAT64, for PyArray_EMPTY

    def __init__(self, log_init, log_trans, log_emit, lengths, int num_threads):
        cdef _Desc desc
        cdef cnp.ndarray a
        cdef int k, d
        arrays = [log_init, log_trans, log_emit, lengths]
        for k in range(4):
            x = arrays[k]
            if x is None:
                desc.ndims[k] = -1
                desc.codes[k] = 9
                continue
            if type(x) is not np.ndarray:
                if hasattr(x, "asnumpy"):
                    raise TypeError("%s must be a NumPy array, got %s: use gluon_hmm's MXNet "
                                    "functions for NDArrays, or .asnumpy()"
                                    % (_NAMES[k], type(x).__name__))
                x = np.asarray(x)
                if k == 3 and x.dtype.kind in "ui" and _code(x) == 9:
                    x = x.astype(np.int64)
            if not x.dtype.isnative:  # e.g. big-endian data from np.load
                x = x.astype(x.dtype.newbyteorder("="))
            a = x
            if a.ndim > 4:
                raise ValueError("%s must have at most 4 dimensions, got shape %s"
                                 % (_NAMES[k], tuple(x.shape)))
            desc.ndims[k] = a.ndim
            for d in range(a.ndim):
                desc.shape_store[k][d] = a.shape[d]
            desc.codes[k] = _code(a)
            arrays[k] = a
        hmm_problem_init(&self.problem)
        _describe_or_raise(&desc, arrays, &self.problem)
        self.problem.num_threads = num_threads
        self.dtype = np.float32 if self.problem.dtype == HMM_FLOAT32 else np.float64
        self.typenum = cnp.NPY_FLOAT32 if self.problem.dtype == HMM_FLOAT32 else cnp.NPY_FLOAT64
        for k in range(4):  # copies only after the shapes are known to be valid
            if arrays[k] is not None and not cnp.PyArray_IS_C_CONTIGUOUS(arrays[k]):
                arrays[k] = np.ascontiguousarray(arrays[k])  # strided / Fortran order welcome
        self.arrays = arrays
        self.inputs.log_init = cnp.PyArray_DATA(arrays[0])
        self.inputs.log_trans = cnp.PyArray_DATA(arrays[1])
        self.inputs.log_emit = cnp.PyArray_DATA(arrays[2])
        self.inputs.lengths = NULL if arrays[3] is None else cnp.PyArray_DATA(arrays[3])
        if arrays[3] is not None:
            _check_lengths(&self.problem, arrays[3])

    @property
    def shape(self):
        return (self.problem.batch, self.problem.time, self.problem.states)

    cdef cnp.ndarray _empty_like_input(self, int k):
        """An uninitialised array of the call's float dtype shaped like input k."""
        cdef cnp.ndarray a = self.arrays[k]
        return cnp.PyArray_EMPTY(a.ndim, a.shape, self.typenum, 0)

    cdef cnp.ndarray _empty1(self, cnp.npy_intp n):
        return cnp.PyArray_EMPTY(1, &n, self.typenum, 0)

    cdef tuple _forward_outputs(self):
        """Uninitialised loglik (B,) and saved state (hmm_saved_size elements)."""
        cdef int64_t elems = 0
        st = hmm_saved_size(&self.problem, &elems)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "saved_size")
        return self._empty1(self.problem.batch), self._empty1(elems)

    cdef tuple _forward(self):
        cdef cnp.ndarray loglik, saved
        loglik, saved = self._forward_outputs()
        with nogil:
            st = hmm_forward(&self.problem, &self.inputs, cnp.PyArray_DATA(loglik),
                             cnp.PyArray_DATA(saved))
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "forward")
        return loglik, saved

    cdef cnp.ndarray _weights(self, grad_loglik):
        """grad_loglik as a contiguous (B,) array of the call's dtype (default: ones)."""
        cdef cnp.ndarray w
        if grad_loglik is None:
            w = self._empty1(self.problem.batch)
            w.fill(1)  # np.ones costs ~1.5 us more: it shows at tiny sizes
        elif type(grad_loglik) is np.ndarray and grad_loglik.dtype == self.dtype and \
                cnp.PyArray_IS_C_CONTIGUOUS(grad_loglik):
            w = grad_loglik
        else:
            w = np.ascontiguousarray(grad_loglik, dtype=self.dtype)
        if w.ndim != 1 or w.shape[0] != self.problem.batch:
            raise ValueError("grad_loglik must have shape (B,) with B=%d, got %s"
                             % (self.problem.batch, tuple(np.shape(grad_loglik))))
        return w

    cdef tuple _grad_outputs(self):
        """Uninitialised gradients shaped like log_init, log_trans, log_emit."""
        return self._empty_like_input(0), self._empty_like_input(1), self._empty_like_input(2)

    cdef tuple _backward(self, cnp.ndarray saved, grad_loglik):
        cdef cnp.ndarray w = self._weights(grad_loglik)
        cdef cnp.ndarray gi, gt, ge
        gi, gt, ge = self._grad_outputs()
        with nogil:
            st = hmm_backward(&self.problem, &self.inputs, cnp.PyArray_DATA(saved),
                              cnp.PyArray_DATA(w), cnp.PyArray_DATA(gi), cnp.PyArray_DATA(gt),
                              cnp.PyArray_DATA(ge), NULL)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "backward")
        return gi, gt, ge

    def forward(self):
        """loglik (B,) and the saved state the backward pass reads."""
        return self._forward()

    def backward(self, cnp.ndarray saved, grad_loglik):
        """Gradients (log_init, log_trans, log_emit) of sum(grad_loglik * loglik)."""
        return self._backward(saved, grad_loglik)

    def value_and_grad(self, grad_loglik):
        """loglik and the gradients of sum(grad_loglik * loglik) in one engine call
        (hmm_forward_backward: the same numbers as forward then backward)."""
        cdef cnp.ndarray w = self._weights(grad_loglik)
        cdef cnp.ndarray loglik, saved
        loglik, saved = self._forward_outputs()
        cdef cnp.ndarray gi, gt, ge
        gi, gt, ge = self._grad_outputs()
        with nogil:
            st = hmm_forward_backward(&self.problem, &self.inputs, cnp.PyArray_DATA(w),
                                      cnp.PyArray_DATA(loglik), cnp.PyArray_DATA(saved),
                                      cnp.PyArray_DATA(gi), cnp.PyArray_DATA(gt),
                                      cnp.PyArray_DATA(ge), NULL)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "forward_backward")
        return loglik, (gi, gt, ge)

    def posterior(self):
        cdef cnp.ndarray gamma = np.empty(self.arrays[2].shape, self.dtype)
        cdef cnp.ndarray counts = np.empty(self.arrays[1].shape, self.dtype)
        cdef cnp.ndarray init_counts = np.empty(self.arrays[0].shape, self.dtype)
        cdef cnp.ndarray loglik = np.empty(self.problem.batch, self.dtype)
        with nogil:
            st = hmm_posterior(&self.problem, &self.inputs, cnp.PyArray_DATA(gamma),
                               cnp.PyArray_DATA(counts), cnp.PyArray_DATA(loglik),
                               cnp.PyArray_DATA(init_counts), NULL)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "posterior")
        return gamma, counts, init_counts, loglik

    def viterbi(self):
        cdef cnp.ndarray path = np.empty((self.problem.batch, self.problem.time), np.int32)
        cdef cnp.ndarray score = np.empty(self.problem.batch, self.dtype)
        with nogil:
            st = hmm_viterbi(&self.problem, &self.inputs, <int32_t*>cnp.PyArray_DATA(path),
                             cnp.PyArray_DATA(score), NULL)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "viterbi")
        return path, score

    def sample(self, int64_t num_samples, seed):
        cdef cnp.ndarray s = np.ascontiguousarray(np.asarray(seed, dtype=np.int64)
                                                  .astype(np.uint32).view(np.int32))
        if s.shape[0] != 2:
            raise ValueError("seed must hold two 32-bit integers, got %r" % (seed,))
        cdef cnp.ndarray paths = np.empty((self.problem.batch, num_samples, self.problem.time),
                                          np.int32)
        with nogil:
            st = hmm_sample(&self.problem, &self.inputs, num_samples,
                            <const int32_t*>cnp.PyArray_DATA(s),
                            <int32_t*>cnp.PyArray_DATA(paths), NULL)
        if st != HMM_STATUS_SUCCESS:
            _raise(st, "sample")
        return paths
