/* int8_epilogue.h: the int8 GEMM's one floating-point step (see gemm_int8.h), for one task's rows
 * of one 32-column panel:
 *
 *     c[i][j] = relu?( float(acc[i][j]) * scale[j] + bias[j] (+ residual[i][j]) )   j < nr <= 32
 *
 * acc has rows of 32 int32 (I8_NR); c and residual have rows of ldc floats. Each operation is
 * rounded once, in that order. c is written where given; with cq given, the value is also quantised
 * for the next convolution, as conv_int8.c quantises a layer's input:
 *
 *     cq[i][j] = rint(clamp(c[i][j] * out_inv, 0, 127))       uint8, rows of ldc bytes
 *
 * (both: a block's output, float32 for the residual it carries and uint8 for the next block).
 * The plain loop is the reference; the AVX2 and AVX-512 versions do
 * the same operations on 8 and 16 columns at a time (VCVTDQ2PS rounds as C's conversion does in
 * the default rounding mode, MAXPS(v, 0) is C's v > 0 ? v : 0 for NaN and -0 too, and nothing is
 * contracted into an FMA), so every version gives the same bits. A kernel file names the version
 * for its instruction set; its emulated build uses the plain one. */
#ifndef COVIDX_INT8_EPILOGUE_H
#define COVIDX_INT8_EPILOGUE_H

#include <stddef.h>
#include <stdint.h>

#define I8_EPILOGUE_ARGS                                                                                   \
    const int32_t *acc, int rows, int nr, const float *scale, const float *bias, const float *residual, size_t ldc, \
        int relu, float *c, uint8_t *cq, float out_inv

typedef void (*I8EpilogueFn)(I8_EPILOGUE_ARGS);

void int8_epilogue_plain(I8_EPILOGUE_ARGS);
/* Only where the CPU has the instructions: AVX2 (the AVX2 and AVX-VNNI kernels), AVX-512F. */
void int8_epilogue_avx2(I8_EPILOGUE_ARGS);
void int8_epilogue_avx512(I8_EPILOGUE_ARGS);

#endif
