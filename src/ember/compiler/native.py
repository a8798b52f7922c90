"""Two things numba kernels cannot otherwise do without the GIL: call BLAS, and wait for each
other.

A kernel that runs a whole recurrence on several threads (ops/rnn.py) calls one GEMM and one
elementwise loop per time step, then waits until every thread has finished that step. Done
from Python, each step would take the GIL back several times, and on these VMs a thread
woken for the GIL takes tens of microseconds to run: more than a step's whole work. So the
threads stay in nopython code for all the steps:

  ``blas_gemm``     calls ``cblas_sgemm``/``cblas_dgemm`` of NumPy's own OpenBLAS through its
                    address (ops.threads.gemm_address), so each thread runs its own one-thread
                    GEMM, as the convolution workers do through NumPy;
  ``spin_barrier``  one shared int64 counter, incremented atomically; every thread spins until
                    the count reaches (threads x steps done). A second slot is an abort flag:
                    a thread that failed sets it, and the others stop waiting.

The addresses are arguments, not constants, so kernels using them stay in numba's disk cache.
Importing this module imports numba: only kernel modules do.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def _element_pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index])


@intrinsic
def atomic_add(typingctx, counters, index, value):
    """counters[index] += value atomically (sequentially consistent); returns the old value."""
    sig = types.int64(counters, index, value)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, counters, index):
    """counters[index], read with acquire ordering (never hoisted out of a spin loop)."""
    sig = types.int64(counters, index)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def spin_barrier(counters, target):
    """Arrive, then wait until counters[0] >= target (threads x steps). False if a thread
    aborted (counters[1] != 0): the caller stops then."""
    atomic_add(counters, 0, 1)
    while atomic_load(counters, 0) < target:
        if atomic_load(counters, 1) != 0:
            return False
    return atomic_load(counters, 1) == 0


def _gemm_intrinsic(int_bits):
    @intrinsic
    def gemm(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        sig = types.void(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, args):
            blas_int, enum = ir.IntType(int_bits), ir.IntType(32)
            real = context.get_value_type(signature.args[6])
            void_p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [enum, enum, enum, blas_int, blas_int, blas_int, real,
                                                   void_p, blas_int, void_p, blas_int, real, void_p, blas_int])
            fn = builder.inttoptr(args[0], fnty.as_pointer())

            def data(i):
                ary = context.make_array(signature.args[i])(context, builder, args[i])
                return builder.bitcast(ary.data, void_p)

            def integer(i, ty):  # numba's int64 (or a narrower literal) to the C type
                value = args[i]
                if value.type.width > ty.width:
                    return builder.trunc(value, ty)
                return builder.sext(value, ty) if value.type.width < ty.width else value

            builder.call(fn, [ir.Constant(enum, CBLAS_ROW_MAJOR), integer(1, enum), integer(2, enum),
                              integer(3, blas_int), integer(4, blas_int), integer(5, blas_int), args[6], data(7),
                              integer(8, blas_int), data(9), integer(10, blas_int), args[11], data(12),
                              integer(13, blas_int)])
            return context.get_dummy_value()

        return sig, codegen

    return gemm


_gemm_int64 = _gemm_intrinsic(64)
_gemm_int32 = _gemm_intrinsic(32)


@numba.njit(nogil=True, cache=True)
def blas_gemm(address, int64_api, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
    """c = op(a) @ op(b), row major, through the cblas ?gemm at ``address`` (alpha 1, beta 0).
    a, b, c: arrays whose first element starts each matrix; lda/ldb/ldc: row strides in
    elements; trans_*: CBLAS_NO_TRANS or CBLAS_TRANS."""
    one, zero = c.dtype.type(1), c.dtype.type(0)
    if int64_api:
        _gemm_int64(address, trans_a, trans_b, m, n, k, one, a, lda, b, ldb, zero, c, ldc)
    else:
        _gemm_int32(address, trans_a, trans_b, m, n, k, one, a, lda, b, ldb, zero, c, ldc)
