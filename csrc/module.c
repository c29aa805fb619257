/* module.c: covidx._core, the CPython face of the engine.
 *
 *   Engine(variant, pooling, bn_epsilon, convs, dense, input_norm_eps=0.0)
 *       convs: 53 tuples (name, kernel HWIO, bias or None, gamma, beta, moving_mean,
 *              moving_variance) in canonical order (conv1, then per block _1, _2, _3, [_0])
 *       dense: tuples (name, kernel (in, out), bias (out,), activation code)
 *       input_norm_eps > 0: each image is standardised before the first convolution
 *   Engine.set_unfamiliar([(offset, basis (d, r), variances (r,), residual_variance, means (k, d),
 *                           threshold), ...]), or set_unfamiliar(None) to drop the statistics
 *   Engine.set_precision('fp32' | 'bf16' | 'int8'), Engine.set_int8_scales(scales (53,) or None),
 *   Engine.activation_histograms(x) -> (53, 32768) counts (the int8 mode's calibration)
 *   Engine.forward(x, output=0, reference=False, unfamiliar=False) -> ndarray, or
 *       (ndarray, scores (n,)) with unfamiliar=True; output 3: the descriptor (resnet50.h)
 *   DESCRIPTOR_FLOATS, DESCRIPTOR_TAP_OFFSETS: its size and where each tap's values start
 *
 * The Python layer converts user input; this layer checks again and never trusts it. All compute
 * runs without the GIL, under one process-wide lock (the thread pool serves one forward at a time). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "cpu.h"
#include "conv_int8.h"
#include "resnet50.h"
#include "threadpool.h"

static pthread_mutex_t g_compute = PTHREAD_MUTEX_INITIALIZER;

/* fork() waits for a running forward pass to finish, so the child never inherits the lock held. */
static void fork_prepare(void) { pthread_mutex_lock(&g_compute); }
static void fork_release(void) { pthread_mutex_unlock(&g_compute); }

typedef struct {
    PyObject_HEAD
    Net net;
    int built;
} EngineObject;

/* Ctrl-C. Python's SIGINT handler only sets a flag that the main thread acts on between bytecodes,
 * after a whole forward pass. While the main thread computes, on_sigint stands in front of it:
 * it stops the engine at its next layer and calls Python's handler, whose exception (or none, and
 * the pass runs again) the main thread then takes up. */
static unsigned long g_main_thread;
static PyOS_sighandler_t g_python_sigint;

static void on_sigint(int sig) {
    resnet50_interrupt = 1;
    g_python_sigint(sig);
}

/* Called holding g_compute, without the GIL: 1 when on_sigint was put in front of Python's handler. */
static int sigint_catch(void) {
    resnet50_interrupt = 0;
    if (PyThread_get_thread_ident() != g_main_thread) return 0;
    PyOS_sighandler_t current = PyOS_getsig(SIGINT);
    if (current == SIG_IGN || current == SIG_DFL || current == SIG_ERR || current == on_sigint) return 0;
    g_python_sigint = current;
    PyOS_setsig(SIGINT, on_sigint);
    return 1;
}

static int find_main_thread(void) {
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main ? PyObject_GetAttrString(main, "ident") : NULL;
    Py_XDECREF(threading);
    Py_XDECREF(main);
    if (!ident) return -1;
    g_main_thread = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    return PyErr_Occurred() ? -1 : 0;
}

/* A float32, C-contiguous array of exactly `ndim` dims from obj, or NULL with an exception
 * naming `what`. */
static PyArrayObject *as_f32(PyObject *obj, int ndim, const char *what) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) == NPY_OBJECT ||
        !PyArray_ISNUMBER((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numeric numpy array", what);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT32,
                                                         NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", what, ndim, PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static int check_dim(PyArrayObject *a, int axis, npy_intp want, const char *name, const char *what) {
    if (PyArray_DIM(a, axis) != want) {
        PyErr_Format(PyExc_ValueError, "%s: %s has shape[%d] = %zd, expected %zd", name, what, axis,
                     (Py_ssize_t)PyArray_DIM(a, axis), (Py_ssize_t)want);
        return -1;
    }
    return 0;
}

static int fold_error(int rc, const char *name) {
    if (rc == -1)
        PyErr_NoMemory();
    else
        PyErr_Format(PyExc_ValueError, "%s: weights contain NaN or infinity (after folding batchnorm, in float32)", name);
    return -1;
}

/* Parses and folds one convolution tuple into c. */
static int load_conv(Conv *c, const ConvShape *s, PyObject *item, double eps) {
    const char *name;
    PyObject *ok, *ob, *og, *obeta, *om, *ov;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "sOOOOOO", &name, &ok, &ob, &og, &obeta, &om, &ov)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "conv entry: expected a tuple");
        return -1;
    }
    char what[160];
    PyArrayObject *arr[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    PyObject *objs[6] = {ok, ob, og, obeta, om, ov};
    const char *parts[6] = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"};
    int rc = -1;
    for (int i = 0; i < 6; i++) {
        if (i == 1 && ob == Py_None) continue;
        snprintf(what, sizeof what, "%s/%s", name, parts[i]);
        arr[i] = as_f32(objs[i], i == 0 ? 4 : 1, what);
        if (!arr[i]) goto done;
        if (i == 0) {
            if (check_dim(arr[0], 0, s->k, name, "kernel") || check_dim(arr[0], 1, s->k, name, "kernel") ||
                check_dim(arr[0], 2, s->cin, name, "kernel") || check_dim(arr[0], 3, s->cout, name, "kernel"))
                goto done;
        } else if (check_dim(arr[i], 0, s->cout, name, parts[i])) {
            goto done;
        }
    }
    int frc = conv_fold_bn(c, s, PyArray_DATA(arr[0]), arr[1] ? PyArray_DATA(arr[1]) : NULL,
                           PyArray_DATA(arr[2]), PyArray_DATA(arr[3]), PyArray_DATA(arr[4]),
                           PyArray_DATA(arr[5]), eps);
    rc = frc == 0 ? 0 : fold_error(frc, name);
done:
    for (int i = 0; i < 6; i++) Py_XDECREF(arr[i]);
    return rc;
}

static int load_dense(DenseLayer *d, PyObject *item, int cin) {
    const char *name;
    PyObject *ok, *ob;
    int act;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "sOOi", &name, &ok, &ob, &act)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "dense entry: expected a tuple");
        return -1;
    }
    if (act < ACT_LINEAR || act > ACT_SIGMOID) {
        PyErr_Format(PyExc_ValueError, "%s: unknown activation code %d", name, act);
        return -1;
    }
    char what[160];
    snprintf(what, sizeof what, "%s/kernel", name);
    PyArrayObject *k = as_f32(ok, 2, what), *b = NULL;
    int rc = -1;
    if (!k || check_dim(k, 0, cin, name, "kernel")) goto done;
    snprintf(what, sizeof what, "%s/bias", name);
    if (!(b = as_f32(ob, 1, what)) || check_dim(b, 0, PyArray_DIM(k, 1), name, "bias")) goto done;
    if (PyArray_DIM(k, 1) < 1 || PyArray_DIM(k, 1) > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "%s: unsupported number of units %zd", name, (Py_ssize_t)PyArray_DIM(k, 1));
        goto done;
    }
    int frc = dense_init(d, cin, (int)PyArray_DIM(k, 1), act, PyArray_DATA(k), PyArray_DATA(b));
    rc = frc == 0 ? 0 : fold_error(frc, name);
done:
    Py_XDECREF(k);
    Py_XDECREF(b);
    return rc;
}

/* A failed __init__ leaves no half-built engine: forward then says it is not built. */
static int engine_unbuild(EngineObject *self) {
    net_free(&self->net);
    memset(&self->net, 0, sizeof(self->net));
    self->built = 0;
    return -1;
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"variant", "pooling", "bn_epsilon", "convs", "dense", "input_norm_eps", NULL};
    int variant, pooling;
    double eps, input_norm_eps = 0.0;
    PyObject *convs, *dense_list;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iidOO|d", kwlist, &variant, &pooling, &eps, &convs, &dense_list,
                                     &input_norm_eps))
        return -1;
    if (self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is already built");
        return -1;
    }
    if (variant != VARIANT_V1 && variant != VARIANT_V1_5) {
        PyErr_Format(PyExc_ValueError, "variant: expected 1 (v1) or 2 (v1.5), got %d", variant);
        return -1;
    }
    if (pooling < POOL_NONE || pooling > POOL_MAX) {
        PyErr_Format(PyExc_ValueError, "pooling: expected 0, 1 or 2, got %d", pooling);
        return -1;
    }
    if (!(eps > 0.0 && eps < 1.0)) {
        PyErr_Format(PyExc_ValueError, "bn_epsilon: expected a small positive number, got %g", eps);
        return -1;
    }
    if (!(input_norm_eps == 0.0 || (input_norm_eps > 0.0 && input_norm_eps < 1.0))) {
        PyErr_Format(PyExc_ValueError, "input_norm_eps: expected 0 (no input standardisation) or a small "
                     "positive number, got %g", input_norm_eps);
        return -1;
    }
    if (!PyList_Check(convs) || PyList_GET_SIZE(convs) != RESNET50_NCONV) {
        PyErr_Format(PyExc_ValueError, "convs: expected a list of %d convolutions", RESNET50_NCONV);
        return -1;
    }
    if (!PyList_Check(dense_list) || PyList_GET_SIZE(dense_list) > MAX_DENSE ||
        (pooling == POOL_NONE && PyList_GET_SIZE(dense_list) > 0)) {
        PyErr_Format(PyExc_ValueError, "dense: expected a list of at most %d layers (none without pooling)", MAX_DENSE);
        return -1;
    }
    memset(&self->net, 0, sizeof(self->net));
    self->built = 1; /* from here on, dealloc frees whatever was allocated */
    Net *net = &self->net;
    net->variant = variant;
    net->input_norm_eps = input_norm_eps;
    const char *sub = getenv("COVIDX_SUB_BATCH"); /* a tuning knob for benchmarks */
    net->sub_batch = sub && atoi(sub) > 0 ? atoi(sub) : 0;
    net->pooling = pooling;
    ConvShape shapes[RESNET50_NCONV];
    Conv *slots[RESNET50_NCONV];
    resnet50_conv_shapes(variant, shapes);
    resnet50_conv_slots(net, slots);
    for (int i = 0; i < RESNET50_NCONV; i++)
        if (load_conv(slots[i], &shapes[i], PyList_GET_ITEM(convs, i), eps) != 0) return engine_unbuild(self);
    int cin = 2048;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dense_list); i++) {
        if (load_dense(&net->head[i], PyList_GET_ITEM(dense_list, i), cin) != 0) return engine_unbuild(self);
        net->nhead = (int)i + 1;
        cin = net->head[i].cout;
    }
    return 0;
}

static void Engine_dealloc(EngineObject *self) {
    if (self->built) net_free(&self->net);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_forward(EngineObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "output", "reference", "unfamiliar", NULL};
    PyObject *xo;
    int output = OUT_HEAD, reference = 0, want_scores = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ipp", kwlist, &xo, &output, &reference, &want_scores))
        return NULL;
    if (!self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not built");
        return NULL;
    }
    if (output < OUT_HEAD || output > OUT_DESCRIPTOR) {
        PyErr_Format(PyExc_ValueError, "output: expected 0, 1, 2 or 3, got %d", output);
        return NULL;
    }
    if (want_scores && (self->net.nunfamiliar == 0 || output == OUT_FEATURE_MAP || self->net.pooling == POOL_NONE)) {
        PyErr_SetString(PyExc_ValueError, self->net.nunfamiliar == 0
                                              ? "unfamiliar: this engine has no out-of-distribution statistics"
                                              : "unfamiliar: needs a pooled output (not the feature map)");
        return NULL;
    }
    PyArrayObject *x = as_f32(xo, 4, "input");
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), w = PyArray_DIM(x, 2), c = PyArray_DIM(x, 3);
    if (n < 1 || h < 32 || w < 32 || c != 3) {
        PyErr_Format(PyExc_ValueError,
                     "input: expected shape (batch >= 1, height >= 32, width >= 32, 3), got (%zd, %zd, %zd, %zd)",
                     (Py_ssize_t)n, (Py_ssize_t)h, (Py_ssize_t)w, (Py_ssize_t)c);
        Py_DECREF(x);
        return NULL;
    }
    if ((double)n * h * w * 16.0 > (double)INT_MAX) { /* pixel indices must fit an int */
        PyErr_Format(PyExc_ValueError, "input: batch of %zd images of %zdx%zd is too large; split it",
                     (Py_ssize_t)n, (Py_ssize_t)h, (Py_ssize_t)w);
        Py_DECREF(x);
        return NULL;
    }
    Net *net = &self->net;
    int per_image[3] = {0, 0, 0};
    int ndim = 1 + resnet50_output_shape(net, (int)h, (int)w, output, per_image);
    npy_intp dims[4] = {n, per_image[0], per_image[1], per_image[2]};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
    PyArrayObject *scores = want_scores ? (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT32) : NULL;
    if (!out || (want_scores && !scores)) {
        Py_DECREF(x);
        Py_XDECREF(out);
        Py_XDECREF(scores);
        return NULL;
    }
    int rc;
    do {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&g_compute);
        int caught = sigint_catch();
        rc = resnet50_forward(net, PyArray_DATA(x), (int)n, (int)h, (int)w, output, reference, PyArray_DATA(out),
                              scores ? PyArray_DATA(scores) : NULL);
        if (caught) PyOS_setsig(SIGINT, g_python_sigint);
        pthread_mutex_unlock(&g_compute);
        Py_END_ALLOW_THREADS
    } while (rc == -2 && PyErr_CheckSignals() == 0); /* Python's handler raised nothing: compute again */
    Py_DECREF(x);
    if (rc != 0) {
        Py_DECREF(out);
        Py_XDECREF(scores);
        return rc == -2 ? NULL : PyErr_NoMemory();
    }
    if (!scores) return (PyObject *)out;
    PyObject *pair = PyTuple_Pack(2, (PyObject *)out, (PyObject *)scores);
    Py_DECREF(out);
    Py_DECREF(scores);
    return pair;
}

/* One part of the statistics from (offset, basis (d, r), variances (r,), residual_variance,
 * means (k, d), threshold), and for a projected part (unfamiliar.h) also (projection (cin, cout),
 * projection_mean (cin,), cells) with cells * cout == d. 0, or -1 with a Python exception set. */
static int unfamiliar_part_from(PyObject *item, int index, Unfamiliar *u) {
    int offset = 0, cells = 0;
    PyObject *ob, *ov, *om, *op = NULL, *opm = NULL;
    double resid = 0.0, threshold = 0.0;
    if (!PyTuple_Check(item) ||
        !PyArg_ParseTuple(item, "iOOdOd|OOi", &offset, &ob, &ov, &resid, &om, &threshold, &op, &opm, &cells) ||
        (op && !cells)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "unfamiliar part %d: expected (offset, basis, variances, residual_variance, "
                     "means, threshold[, projection, projection_mean, cells])", index);
        return -1;
    }
    PyArrayObject *basis = as_f32(ob, 2, "unfamiliar basis"), *var = NULL, *means = NULL, *proj = NULL, *pmean = NULL;
    int result = -1;
    if (!basis) return -1;
    if (!PyArray_Check(ov)) {
        PyErr_Format(PyExc_TypeError, "unfamiliar part %d variances: expected a numeric numpy array", index);
        goto done;
    }
    var = (PyArrayObject *)PyArray_FROM_OTF(ov, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!var || !(means = as_f32(om, 2, "unfamiliar means"))) goto done;
    if (op && (!(proj = as_f32(op, 2, "unfamiliar projection")) || !(pmean = as_f32(opm, 1, "unfamiliar projection mean"))))
        goto done;
    npy_intp d = PyArray_DIM(basis, 0), r = PyArray_DIM(basis, 1), k = PyArray_DIM(means, 0);
    npy_intp cin = proj ? PyArray_DIM(proj, 0) : d, cout = proj ? PyArray_DIM(proj, 1) : d;
    npy_intp span = proj ? (npy_intp)cells * cin : d;
    if (offset < 0 || d < 1 || span > DESCRIPTOR_FLOATS - offset || PyArray_NDIM(var) != 1 ||
        PyArray_DIM(var, 0) != r || PyArray_DIM(means, 1) != d || k < 1 || k > (1 << 20) || r > d || r > 2048) {
        PyErr_Format(PyExc_ValueError, "unfamiliar part %d: expected offset + d <= %d, basis (d, r <= min(d, 2048)), "
                     "variances (r,) and means (classes, d), got offset %d, basis (%zd, %zd), variances of %zd and "
                     "means (%zd, %zd)", index, DESCRIPTOR_FLOATS, offset, (Py_ssize_t)d, (Py_ssize_t)r,
                     (Py_ssize_t)PyArray_DIM(var, 0), (Py_ssize_t)k, (Py_ssize_t)PyArray_DIM(means, 1));
        goto done;
    }
    if (proj && (cells < 1 || cells > DESCRIPTOR_FLOATS || cin < 1 || (npy_intp)cells * cout != d ||
                 d > UNFAMILIAR_MAX_PROJECTED || PyArray_DIM(pmean, 0) != cin)) {
        PyErr_Format(PyExc_ValueError, "unfamiliar part %d: expected a projection (cin, cout) with cells * cout == d "
                     "<= %d and a mean of cin values, got %d cells, projection (%zd, %zd), mean of %zd, d %zd", index,
                     UNFAMILIAR_MAX_PROJECTED, cells, (Py_ssize_t)cin, (Py_ssize_t)cout,
                     (Py_ssize_t)PyArray_DIM(pmean, 0), (Py_ssize_t)d);
        goto done;
    }
    int rc = unfamiliar_init(u, offset, (int)d, (int)r, (int)k, PyArray_DATA(basis), PyArray_DATA(var), resid,
                             PyArray_DATA(means), threshold);
    if (rc == 0 && proj) {
        rc = unfamiliar_project(u, cells, (int)cin, PyArray_DATA(proj), PyArray_DATA(pmean));
        if (rc != 0) unfamiliar_free(u);
    }
    if (rc == -1) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc != 0) {
        PyErr_Format(PyExc_ValueError, "unfamiliar part %d: values must be finite, variances and the threshold "
                     "positive", index);
        goto done;
    }
    result = 0;
done:
    Py_DECREF(basis);
    Py_XDECREF(var);
    Py_XDECREF(means);
    Py_XDECREF(proj);
    Py_XDECREF(pmean);
    return result;
}

static PyObject *Engine_set_unfamiliar(EngineObject *self, PyObject *arg) {
    if (!self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not built");
        return NULL;
    }
    if (arg == Py_None) {
        pthread_mutex_lock(&g_compute);
        net_set_unfamiliar(&self->net, NULL, 0);
        pthread_mutex_unlock(&g_compute);
        Py_RETURN_NONE;
    }
    if (!PyList_Check(arg) || PyList_GET_SIZE(arg) < 1 || PyList_GET_SIZE(arg) > UNFAMILIAR_MAX_PARTS) {
        PyErr_Format(PyExc_TypeError, "set_unfamiliar: expected None or a list of 1 to %d parts (offset, basis, "
                     "variances, residual_variance, means, threshold)", UNFAMILIAR_MAX_PARTS);
        return NULL;
    }
    Unfamiliar parts[UNFAMILIAR_MAX_PARTS];
    int nparts = (int)PyList_GET_SIZE(arg);
    for (int i = 0; i < nparts; i++) {
        if (unfamiliar_part_from(PyList_GET_ITEM(arg, i), i, &parts[i]) != 0) {
            for (int j = 0; j < i; j++) unfamiliar_free(&parts[j]);
            return NULL;
        }
    }
    pthread_mutex_lock(&g_compute); /* never swapped under a running forward pass */
    net_set_unfamiliar(&self->net, parts, nparts);
    pthread_mutex_unlock(&g_compute);
    Py_RETURN_NONE;
}

/* set_precision('fp32' | 'bf16' | 'int8') -> (kernel name, note or None). bf16: the convolutions'
 * weights (all but the stem's) are rounded to bf16 and packed for the bf16 kernel gemm_dispatch.c
 * picks (asking Linux for AMX the first time); int8: quantised per output channel and packed for
 * the int8 kernel, with the input scales of set_int8_scales (a ValueError without them). Where
 * there is no such kernel, or the request fails, the engine stays in fp32 and the note says why. */
static PyObject *Engine_set_precision(EngineObject *self, PyObject *arg) {
    if (!self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not built");
        return NULL;
    }
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "precision: expected 'fp32', 'bf16' or 'int8'");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    int bf16 = strcmp(name, "bf16") == 0, int8 = strcmp(name, "int8") == 0;
    if (!bf16 && !int8 && strcmp(name, "fp32") != 0) {
        PyErr_Format(PyExc_ValueError, "precision: expected 'fp32', 'bf16' or 'int8', got %R", arg);
        return NULL;
    }
    if (int8 && !self->net.int8_scales) {
        PyErr_SetString(PyExc_ValueError, "precision 'int8': this engine has no activation scales (set_int8_scales); "
                        "calibrate the model on training images first");
        return NULL;
    }
    const char *why = NULL;
    int kernel = 0, rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_compute); /* never under a running forward pass */
    if (bf16) {
        kernel = gemm_bf16_kernel(&why);
        if (gemm_kernel_is_bf16(kernel)) kernel = gemm_bf16_enable(kernel, &why);
    } else if (int8) {
        kernel = gemm_int8_kernel(&why);
    }
    rc = net_set_bf16(&self->net, gemm_kernel_is_bf16(kernel) ? kernel : 0);
    if (rc == 0) rc = net_set_int8(&self->net, gemm_kernel_is_int8(kernel) ? kernel : 0);
    pthread_mutex_unlock(&g_compute);
    Py_END_ALLOW_THREADS
    if (rc != 0) return PyErr_NoMemory();
    int used = self->net.bf16_kernel ? self->net.bf16_kernel : self->net.int8_kernel ? self->net.int8_kernel
                                                                                     : gemm_fp32_kernel();
    return Py_BuildValue("(sz)", gemm_kernel_name(used), why);
}

/* set_int8_scales(scales (53,) or None): the scale of each convolution's input for the int8 mode
 * (entry 0, the stem's, is not used; 0: that convolution stays fp32). Takes effect at the next set_precision('int8'); None drops
 * them (and the int8 mode: the engine runs fp32). */
static PyObject *Engine_set_int8_scales(EngineObject *self, PyObject *arg) {
    if (!self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not built");
        return NULL;
    }
    float *scales = NULL;
    if (arg != Py_None) {
        PyArrayObject *a = as_f32(arg, 1, "int8 scales");
        if (!a) return NULL;
        if (PyArray_DIM(a, 0) != RESNET50_NCONV) {
            PyErr_Format(PyExc_ValueError, "int8 scales: expected %d values, got %zd", RESNET50_NCONV,
                         (Py_ssize_t)PyArray_DIM(a, 0));
            Py_DECREF(a);
            return NULL;
        }
        const float *v = PyArray_DATA(a);
        for (int i = 1; i < RESNET50_NCONV; i++)
            if (!(v[i] == 0.0f || (v[i] > 0.0f && v[i] <= 1e30f && 1.0f / v[i] <= 1e30f))) {
                PyErr_Format(PyExc_ValueError, "int8 scales: value %d is %g; expected a positive finite number "
                             "(or 0: that convolution stays fp32)", i, (double)v[i]);
                Py_DECREF(a);
                return NULL;
            }
        scales = malloc(sizeof(float) * RESNET50_NCONV);
        if (!scales) {
            Py_DECREF(a);
            return PyErr_NoMemory();
        }
        memcpy(scales, v, sizeof(float) * RESNET50_NCONV);
        Py_DECREF(a);
    }
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_compute);
    free(self->net.int8_scales);
    self->net.int8_scales = scales;
    if (!scales && self->net.int8_kernel) rc = net_set_int8(&self->net, 0);
    pthread_mutex_unlock(&g_compute);
    Py_END_ALLOW_THREADS
    if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* activation_histograms(x) -> uint64 (53, INT8_HIST_BINS): a forward pass over x (to the last
 * feature map) counting each convolution's input values by the upper 16 bits of their float32
 * (conv_int8.h); row 0, the stem's, is zeros. The int8 mode is calibrated from these. */
static PyObject *Engine_activation_histograms(EngineObject *self, PyObject *xo) {
    if (!self->built) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is not built");
        return NULL;
    }
    PyArrayObject *x = as_f32(xo, 4, "input");
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), w = PyArray_DIM(x, 2), c = PyArray_DIM(x, 3);
    if (n < 1 || h < 32 || w < 32 || c != 3 || (double)n * h * w * 16.0 > (double)INT_MAX) {
        PyErr_Format(PyExc_ValueError, "input: expected shape (batch >= 1, height >= 32, width >= 32, 3) of a "
                     "moderate size, got (%zd, %zd, %zd, %zd)", (Py_ssize_t)n, (Py_ssize_t)h, (Py_ssize_t)w,
                     (Py_ssize_t)c);
        Py_DECREF(x);
        return NULL;
    }
    int ho, wo;
    resnet50_feature_map_size(self->net.variant, (int)h, (int)w, &ho, &wo);
    npy_intp hdims[2] = {RESNET50_NCONV, INT8_HIST_BINS};
    PyArrayObject *hist = (PyArrayObject *)PyArray_SimpleNew(2, hdims, NPY_UINT64);
    float *fmap = malloc(sizeof(float) * (size_t)n * ho * wo * 2048);
    if (!hist || !fmap) {
        Py_DECREF(x);
        Py_XDECREF(hist);
        free(fmap);
        return hist ? PyErr_NoMemory() : NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_compute);
    rc = net_int8_observe(&self->net, 1, NULL);
    if (rc == 0) {
        resnet50_interrupt = 0;
        rc = resnet50_forward(&self->net, PyArray_DATA(x), (int)n, (int)h, (int)w, OUT_FEATURE_MAP, 0, fmap, NULL);
    }
    net_int8_observe(&self->net, 0, PyArray_DATA(hist));
    pthread_mutex_unlock(&g_compute);
    Py_END_ALLOW_THREADS
    free(fmap);
    Py_DECREF(x);
    if (rc != 0) {
        Py_DECREF(hist);
        return PyErr_NoMemory();
    }
    return (PyObject *)hist;
}

static PyObject *Engine_workspace_bytes(EngineObject *self, PyObject *Py_UNUSED(ignored)) {
    const Plan *p = &self->net.plan;
    size_t floats = 4 * p->act_floats;
    return PyLong_FromSize_t(floats * sizeof(float));
}

static PyMethodDef Engine_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Engine_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(x, output=0, reference=False, unfamiliar=False): x float32 (n, h, w, 3) -> outputs.\n"
     "output: 0 head, 1 pooled features, 2 last feature map, 3 descriptor (pooled features, then the mean\n"
     "and std of each channel after the stem and each stage, the last feature map on a 3x3 grid and an\n"
     "8x8 thumbnail of the input). reference: run the plain layers.\n"
     "unfamiliar: also return each image's out-of-distribution score, (outputs, scores)."},
    {"set_unfamiliar", (PyCFunction)Engine_set_unfamiliar, METH_O,
     "set_unfamiliar([(offset, basis, variances, residual_variance, means, threshold[, projection,\n"
     "projection_mean, cells]), ...]) or set_unfamiliar(None):\n"
     "the out-of-distribution statistics, a Gaussian per part over descriptor[offset:offset + d]."},
    {"set_precision", (PyCFunction)Engine_set_precision, METH_O,
     "set_precision('fp32' | 'bf16' | 'int8') -> (kernel, note or None): the convolutions' arithmetic."},
    {"set_int8_scales", (PyCFunction)Engine_set_int8_scales, METH_O,
     "set_int8_scales(scales (53,) float32 or None): each convolution's input scale for the int8 mode."},
    {"activation_histograms", (PyCFunction)Engine_activation_histograms, METH_O,
     "activation_histograms(x) -> uint64 (53, 32768): each convolution's input values over x, binned by\n"
     "the upper 16 bits of their float32 (values <= 0 in bin 0); for calibrating the int8 mode."},
    {"workspace_bytes", (PyCFunction)Engine_workspace_bytes, METH_NOARGS,
     "Bytes held by the activation buffers of the current plan."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "covidx._core.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ResNet50 + Dense head inference engine (batchnorm folded, NHWC float32).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* --- module functions --------------------------------------------------------------------------- */

static PyObject *set_num_threads(PyObject *Py_UNUSED(m), PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 64) {
        PyErr_Format(PyExc_ValueError, "num_threads: expected 1..64, got %ld", n);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_compute);
    rc = pool_set_threads((int)n);
    pthread_mutex_unlock(&g_compute);
    Py_END_ALLOW_THREADS
    if (rc != 0) return PyErr_Format(PyExc_OSError, "could not start %ld threads; running with %d", n, pool_get_threads());
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    return PyLong_FromLong(pool_get_threads());
}

static PyObject *blas_info(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    const char *config = BLAS_FN(openblas_get_config)();
    const char *core = BLAS_FN(openblas_get_corename)();
    return Py_BuildValue("{s:s,s:s,s:i,s:O}", "config", config ? config : "", "corename", core ? core : "",
                         "num_threads", BLAS_FN(openblas_get_num_threads)(), "packed_gemm",
                         gemm_available() ? Py_True : Py_False);
}

/* The kernel each precision would use now: {'fp32': name, 'bf16': name, 'bf16_note': str or None,
 * 'int8': name, 'int8_note': str or None}. Reads COVIDX_GEMM; does not ask Linux for AMX. */
static PyObject *gemm_kernels(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    const char *why = NULL, *why8 = NULL;
    int bf16 = gemm_bf16_kernel(&why), int8 = gemm_int8_kernel(&why8);
    return Py_BuildValue("{s:s,s:s,s:z,s:s,s:z}", "fp32", gemm_kernel_name(gemm_fp32_kernel()), "bf16",
                         gemm_kernel_name(bf16), "bf16_note", why, "int8", gemm_kernel_name(int8), "int8_note", why8);
}

/* The dispatch table's rows, in its order: [{'name', 'precision', 'about', 'emulated', 'runs',
 * 'covidx_gemm'}], 'runs' whether the kernel runs on this CPU, 'covidx_gemm' whether COVIDX_GEMM
 * accepts the name. The only list of kernels: Python derives its sets from it. */
static PyObject *gemm_kernel_table(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    PyObject *rows = PyList_New(GEMM_NKERNELS);
    if (!rows) return NULL;
    for (int k = 0; k < GEMM_NKERNELS; k++) {
        PyObject *row = Py_BuildValue("{s:s,s:s,s:s,s:O,s:O,s:O}", "name", gemm_kernel_name(k), "precision",
                                      gemm_kernel_precision(k), "about", gemm_kernel_about(k), "emulated",
                                      gemm_kernel_emulated(k) ? Py_True : Py_False, "runs",
                                      gemm_kernel_runs(k) ? Py_True : Py_False, "covidx_gemm",
                                      gemm_kernel_env(k) ? Py_True : Py_False);
        if (!row) {
            Py_DECREF(rows);
            return NULL;
        }
        PyList_SET_ITEM(rows, k, row);
    }
    return rows;
}

static PyObject *cpu_info(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    CpuFeatures f = cpu_features();
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:i}", "avx2", f.avx2 ? Py_True : Py_False, "fma",
                         f.fma ? Py_True : Py_False, "avx512f", f.avx512f ? Py_True : Py_False,
                         "avx512_bf16", f.avx512_bf16 ? Py_True : Py_False, "amx_bf16",
                         f.amx_bf16 ? Py_True : Py_False, "amx_tile", f.amx_tile ? Py_True : Py_False,
                         "amx_palette", f.amx_palette ? Py_True : Py_False, "avx512_vnni",
                         f.avx512_vnni ? Py_True : Py_False, "avx_vnni", f.avx_vnni ? Py_True : Py_False,
                         "cpus", cpu_count_online());
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", set_num_threads, METH_O, "Threads used by the engine (caller included)."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "Threads used by the engine."},
    {"blas_info", blas_info, METH_NOARGS, "OpenBLAS configuration and kernel (core name)."},
    {"cpu_info", cpu_info, METH_NOARGS, "CPU features detected at run time."},
    {"gemm_kernels", gemm_kernels, METH_NOARGS, "The GEMM kernel each precision uses on this CPU."},
    {"gemm_kernel_table", gemm_kernel_table, METH_NOARGS, "The GEMM dispatch table's rows."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "covidx._core",
    .m_doc = "covidx's C core: the ResNet50 inference engine.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    if (PyType_Ready(&EngineType) < 0 || find_main_thread() < 0) return NULL;
    if (pthread_atfork(fork_prepare, fork_release, fork_release) != 0) {
        PyErr_SetString(PyExc_OSError, "covidx: pthread_atfork failed");
        return NULL;
    }
    /* The engine parallelises itself; OpenBLAS runs single-threaded inside each task so the two
     * never multiply (this is covidx's own OpenBLAS copy: NumPy's is not affected). */
    BLAS_FN(openblas_set_num_threads)(1);
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    /* where each tap's channel statistics start in the descriptor (output 3) */
    PyObject *offsets = PyTuple_New(DESCRIPTOR_TAPS);
    if (!offsets) {
        Py_DECREF(m);
        return NULL;
    }
    for (int t = 0; t < DESCRIPTOR_TAPS; t++) {
        PyObject *v = PyLong_FromLong(resnet50_descriptor_offset(t));
        if (!v) {
            Py_DECREF(offsets);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(offsets, t, v);
    }
    if (PyModule_AddObject(m, "DESCRIPTOR_TAP_OFFSETS", offsets) < 0) {
        Py_DECREF(offsets);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "DESCRIPTOR_FLOATS", DESCRIPTOR_FLOATS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
