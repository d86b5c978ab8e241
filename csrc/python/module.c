/*
 * module.c -- fairattack._core: the CPython + NumPy face of the C core and the LibTorch shim.
 * The only file that includes Python.h / numpy. The Python package validates arguments first
 * (naming them); this layer checks types and shapes again and maps fa_status to exceptions in
 * one place (raise_status). Long work runs without the GIL; the attack's stop check takes it
 * briefly for PyErr_CheckSignals so Ctrl-C stops a run cleanly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <numpy/arrayobject.h>

#include "fa_backend.h" /* backend_op: the backend table, for the conformance suite */
#include "fa_torch.h"
#include "fairattack.h"
#ifdef FA_WITH_CUDA
#include "../cuda/fa_cuda_check.h"
#endif

/* ------------------------------------------------------------------ errors */

static PyObject *raise_status(fa_status status) {
    PyObject *type;
    switch (status) {
    case FA_ERR_ARGUMENT: type = PyExc_ValueError; break;
    case FA_ERR_TYPE: type = PyExc_TypeError; break;
    case FA_ERR_MEMORY: type = PyExc_MemoryError; break;
    case FA_ERR_IO: type = PyExc_OSError; break;
    case FA_ERR_INTERRUPTED: type = PyExc_KeyboardInterrupt; break;
    default: type = PyExc_RuntimeError; break;
    }
    const char *msg = fa_last_error();
    PyErr_SetString(type, msg[0] ? msg : fa_status_name(status));
    return NULL;
}

/* A C-contiguous aligned array of `type` and rank `ndim`, or NULL with TypeError/ValueError. */
static PyArrayObject *as_array(PyObject *obj, int type, int ndim, const char *name) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != type || PyArray_NDIM(arr) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-d array of %s", name, ndim,
                     type == NPY_FLOAT32 ? "float32" : "int64");
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROMANY(obj, type, ndim, ndim, NPY_ARRAY_IN_ARRAY);
}

/* ------------------------------------------------------------------ config <-> dict */

typedef enum { F_INT, F_FLOAT, F_U64, F_I64 } field_kind;
typedef struct {
    const char *name;
    size_t offset;
    field_kind kind;
} field;

#define FIELD(n, k) {#n, offsetof(fa_config, n), k}
static const field config_fields[] = {
    FIELD(optimizer, F_INT),         FIELD(eps, F_FLOAT),         FIELD(max_iter, F_INT),
    FIELD(first_step_rmse, F_FLOAT), FIELD(alpha, F_FLOAT),       FIELD(stop_loss, F_FLOAT),
    FIELD(stop_rmse, F_FLOAT),       FIELD(rmse_weight, F_FLOAT), FIELD(momentum, F_FLOAT),
    FIELD(beta1, F_FLOAT),           FIELD(beta2, F_FLOAT),       FIELD(delta, F_FLOAT),
    FIELD(ladam_lambda, F_FLOAT),    FIELD(adamw_decay, F_FLOAT), FIELD(msvag_beta, F_FLOAT),
    FIELD(rmsprop_rho, F_FLOAT),     FIELD(nesterov, F_INT),      FIELD(random_start, F_INT),
    FIELD(seed, F_U64),              FIELD(skip_misclassified, F_INT),
    FIELD(index_offset, F_I64),      FIELD(returns, F_INT),       FIELD(max_rmse, F_FLOAT),
    FIELD(vmi_neighbours, F_INT),    FIELD(vmi_beta, F_FLOAT),
};
#undef FIELD
#define N_FIELDS (sizeof config_fields / sizeof config_fields[0])

static PyObject *config_to_dict(const fa_config *cfg) {
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const char *p = (const char *)cfg + config_fields[i].offset;
        PyObject *v = config_fields[i].kind == F_INT     ? PyLong_FromLong(*(const int *)p)
                      : config_fields[i].kind == F_FLOAT ? PyFloat_FromDouble(*(const float *)p)
                      : config_fields[i].kind == F_I64   ? PyLong_FromLongLong(*(const int64_t *)p)
                                                         : PyLong_FromUnsignedLongLong(
                                                               *(const uint64_t *)p);
        if (!v || PyDict_SetItemString(d, config_fields[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

/* Every key of the dict must be a known field; missing fields keep the optimizer's default. */
static int dict_to_config(PyObject *d, fa_config *cfg) {
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "config must be a dict");
        return -1;
    }
    PyObject *opt = PyDict_GetItemString(d, "optimizer");
    if (!opt) {
        PyErr_SetString(PyExc_ValueError, "config['optimizer'] is required");
        return -1;
    }
    long o = PyLong_AsLong(opt);
    if (o == -1 && PyErr_Occurred())
        return -1;
    if (fa_config_default((int)o, cfg) != FA_OK) {
        raise_status(FA_ERR_ARGUMENT);
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &key, &value)) {
        const char *name = PyUnicode_AsUTF8(key);
        if (!name)
            return -1;
        size_t i = 0;
        while (i < N_FIELDS && strcmp(config_fields[i].name, name) != 0)
            i++;
        if (i == N_FIELDS) {
            PyErr_Format(PyExc_ValueError, "unknown config field '%s'", name);
            return -1;
        }
        char *p = (char *)cfg + config_fields[i].offset;
        if (config_fields[i].kind == F_FLOAT) {
            double x = PyFloat_AsDouble(value);
            if (x == -1.0 && PyErr_Occurred())
                return -1;
            *(float *)p = (float)x;
        } else if (config_fields[i].kind == F_INT) {
            long x = PyLong_AsLong(value);
            if (x == -1 && PyErr_Occurred())
                return -1;
            if (x < -2147483647L || x > 2147483647L) {
                PyErr_Format(PyExc_ValueError, "config['%s']=%ld out of range", name, x);
                return -1;
            }
            *(int *)p = (int)x;
        } else if (config_fields[i].kind == F_I64) {
            long long x = PyLong_AsLongLong(value);
            if (x == -1 && PyErr_Occurred())
                return -1;
            *(int64_t *)p = (int64_t)x;
        } else {
            unsigned long long x = PyLong_AsUnsignedLongLongMask(value);
            if (PyErr_Occurred())
                return -1;
            *(uint64_t *)p = (uint64_t)x;
        }
    }
    return 0;
}

static PyObject *py_default_config(PyObject *self, PyObject *arg) {
    (void)self;
    long o = PyLong_AsLong(arg);
    if (o == -1 && PyErr_Occurred())
        return NULL;
    fa_config cfg;
    fa_status s = fa_config_default((int)o, &cfg);
    if (s != FA_OK)
        return raise_status(s);
    return config_to_dict(&cfg);
}

static PyObject *py_check_config(PyObject *self, PyObject *arg) {
    (void)self;
    fa_config cfg;
    if (dict_to_config(arg, &cfg) < 0)
        return NULL;
    fa_status s = fa_config_check(&cfg);
    if (s != FA_OK)
        return raise_status(s);
    return config_to_dict(&cfg);
}

/* ------------------------------------------------------------------ Model */

typedef struct {
    PyObject_HEAD fa_model *model;
    int device;
} ModelObject;

static void Model_dealloc(ModelObject *self) {
    fa_model_free(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"source", "device", "index", NULL};
    PyObject *source;
    int device = FA_DEVICE_CPU, index = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|ii", kwlist, &source, &device, &index))
        return -1;
    fa_model *model = NULL;
    fa_status s;
    if (PyBytes_Check(source)) {
        char *data;
        Py_ssize_t size;
        if (PyBytes_AsStringAndSize(source, &data, &size) < 0)
            return -1;
        Py_BEGIN_ALLOW_THREADS s = fa_model_load_buffer(data, (size_t)size, device, index, &model);
        Py_END_ALLOW_THREADS
    } else {
        PyObject *path = NULL;
        if (!PyUnicode_FSConverter(source, &path))
            return -1;
        const char *p = PyBytes_AS_STRING(path);
        Py_BEGIN_ALLOW_THREADS s = fa_model_load(p, device, index, &model);
        Py_END_ALLOW_THREADS Py_DECREF(path);
    }
    if (s != FA_OK) {
        raise_status(s);
        return -1;
    }
    fa_model_free(self->model);
    self->model = model;
    self->device = device;
    return 0;
}

static PyObject *Model_num_classes(ModelObject *self, PyObject *args) {
    long long h, w, c;
    if (!PyArg_ParseTuple(args, "LLL", &h, &w, &c))
        return NULL;
    int64_t k = 0;
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_model_num_classes(self->model, h, w, c, &k);
    Py_END_ALLOW_THREADS if (s != FA_OK) return raise_status(s);
    return PyLong_FromLongLong(k);
}

static int parse_transform(PyObject *d, fa_transform *t, npy_intp h, npy_intp w, npy_intp c);

/* The arrays of one model call (Model.run, ensemble_run): the inputs x float32 [N,H,W,C] and
 * labels int64 [N] (or NULL), and the outputs it allocates: loss [N] (with labels), logits
 * [N, k] (k > 0), pred [N], grad [N,H,W,C] (want_grad). Owns a reference to each. */
typedef struct {
    PyArrayObject *x, *labels, *loss, *logits, *pred, *grad;
} call_arrays;

/* Fills *a from the Python inputs; -1 with an exception set (the arrays made so far stay in *a
 * for call_arrays_release). */
static int call_arrays_open(call_arrays *a, PyObject *xo, PyObject *lo, int want_grad,
                            long long k) {
    memset(a, 0, sizeof *a);
    if (!(a->x = as_array(xo, NPY_FLOAT32, 4, "x")))
        return -1;
    if (lo != Py_None && !(a->labels = as_array(lo, NPY_INT64, 1, "labels")))
        return -1;
    npy_intp *shape = PyArray_DIMS(a->x);
    npy_intp n = shape[0];
    if (a->labels && PyArray_DIM(a->labels, 0) != n) {
        PyErr_Format(PyExc_ValueError, "labels has %zd entries, expected %zd",
                     (Py_ssize_t)PyArray_DIM(a->labels, 0), (Py_ssize_t)n);
        return -1;
    }
    if (want_grad && !a->labels) {
        PyErr_SetString(PyExc_ValueError, "want_grad needs labels");
        return -1;
    }
    npy_intp logit_shape[2] = {n, (npy_intp)k};
    if (!(a->pred = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT64)) ||
        (a->labels && !(a->loss = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32))) ||
        (k > 0 &&
         !(a->logits = (PyArrayObject *)PyArray_SimpleNew(2, logit_shape, NPY_FLOAT32))) ||
        (want_grad && !(a->grad = (PyArrayObject *)PyArray_SimpleNew(4, shape, NPY_FLOAT32))))
        return -1;
    return 0;
}

/* The call's result tuple (loss or None, logits or None, pred, grad or None): new reference. */
static PyObject *call_arrays_result(const call_arrays *a) {
    return Py_BuildValue("(OOOO)", a->loss ? (PyObject *)a->loss : Py_None,
                         a->logits ? (PyObject *)a->logits : Py_None, (PyObject *)a->pred,
                         a->grad ? (PyObject *)a->grad : Py_None);
}

static void call_arrays_release(call_arrays *a) {
    Py_XDECREF(a->x);
    Py_XDECREF(a->labels);
    Py_XDECREF(a->loss);
    Py_XDECREF(a->logits);
    Py_XDECREF(a->pred);
    Py_XDECREF(a->grad);
}

/* Data pointers of a call's arrays (NULL for those it has not). */
#define FA_DATA(type, array) ((array) ? (type *)PyArray_DATA(array) : NULL)

/* run(x float32 [N,H,W,C], labels int64 [N] or None, want_grad, num_classes or 0[, objective,
 *     transform dict or None, index int64 [N] or None, call]) -> (loss or None, logits or None,
 * pred, grad or None); grad is that of the fa_loss `objective` (0: CE; loss stays CE), the
 * transform, index and call as fa_model_run takes them (the tests run one gradient pass of a
 * transform with them). Host memory only: a CUDA model copies its inputs to the GPU inside the
 * shim. */
static PyObject *Model_run(ModelObject *self, PyObject *args) {
    PyObject *xo, *lo, *tro = Py_None, *io = Py_None;
    int want_grad, objective = FA_LOSS_CE;
    long long k, call = 0;
    if (!PyArg_ParseTuple(args, "OOpL|iOOL", &xo, &lo, &want_grad, &k, &objective, &tro, &io,
                          &call))
        return NULL;
    call_arrays a;
    PyArrayObject *index = NULL;
    PyObject *result = NULL;
    fa_transform transform;
    if (call_arrays_open(&a, xo, lo, want_grad, k) < 0)
        goto done;
    npy_intp *shape = PyArray_DIMS(a.x);
    if (parse_transform(tro, &transform, shape[1], shape[2], shape[3]) < 0)
        goto done;
    if (io != Py_None && !(index = as_array(io, NPY_INT64, 1, "index")))
        goto done;
    if (index && PyArray_DIM(index, 0) != shape[0]) {
        PyErr_SetString(PyExc_ValueError, "index must have one entry per image of x");
        goto done;
    }
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_model_run_loss(
        self->model, shape[0], shape[1], shape[2], shape[3], FA_DATA(const float, a.x),
        FA_DATA(const int64_t, a.labels), want_grad, FA_DATA(float, a.loss),
        FA_DATA(float, a.logits), k, FA_DATA(int64_t, a.pred), FA_DATA(float, a.grad), 0,
        tro != Py_None ? &transform : NULL, FA_DATA(const int64_t, index), call, objective);
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        raise_status(s);
        goto done;
    }
    result = call_arrays_result(&a);
done:
    call_arrays_release(&a);
    Py_XDECREF(index);
    return result;
}

/* An ensemble (members tuple of Models, weights float32 [k], fuse) -> borrowed handles in
 * handles[k] (at most max), the weights' array (new reference) and fuse; -1 with an exception
 * naming the part. */
#define MAX_MEMBERS 64
static PyTypeObject ModelType; /* defined below (a tentative definition) */
static int parse_ensemble(PyObject *spec, fa_model **handles, int *count, PyArrayObject **weights,
                          int *fuse, int *device) {
    PyObject *members, *wo;
    if (!PyArg_ParseTuple(spec, "OOi", &members, &wo, fuse))
        return -1;
    if (!PyTuple_Check(members) || PyTuple_GET_SIZE(members) < 1 ||
        PyTuple_GET_SIZE(members) > MAX_MEMBERS) {
        PyErr_Format(PyExc_ValueError, "members must be a tuple of 1 to %d fairattack Models",
                     MAX_MEMBERS);
        return -1;
    }
    *count = (int)PyTuple_GET_SIZE(members);
    for (int i = 0; i < *count; i++) {
        PyObject *m = PyTuple_GET_ITEM(members, i);
        if (!PyObject_TypeCheck(m, &ModelType)) {
            PyErr_Format(PyExc_TypeError, "members[%d] must be a fairattack Model", i);
            return -1;
        }
        handles[i] = ((ModelObject *)m)->model;
        if (i == 0)
            *device = ((ModelObject *)m)->device;
    }
    if (!(*weights = as_array(wo, NPY_FLOAT32, 1, "weights")))
        return -1;
    if (PyArray_DIM(*weights, 0) != *count) {
        PyErr_Format(PyExc_ValueError, "weights has %zd entries, expected %d (one per member)",
                     (Py_ssize_t)PyArray_DIM(*weights, 0), *count);
        Py_CLEAR(*weights);
        return -1;
    }
    return 0;
}

/* ensemble_run((members, weights, fuse), x, labels or None, want_grad, num_classes, objective=0)
 * -> (loss or None, fused output or None, pred, grad or None), as Model.run. */
static PyObject *py_ensemble_run(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec, *xo, *lo;
    int want_grad, objective = FA_LOSS_CE, count = 0, fuse = 0, device = 0;
    long long k;
    if (!PyArg_ParseTuple(args, "OOOpL|i", &spec, &xo, &lo, &want_grad, &k, &objective))
        return NULL;
    fa_model *handles[MAX_MEMBERS];
    PyArrayObject *weights = NULL;
    PyObject *result = NULL;
    call_arrays a;
    memset(&a, 0, sizeof a);
    if (parse_ensemble(spec, handles, &count, &weights, &fuse, &device) < 0 ||
        call_arrays_open(&a, xo, lo, want_grad, k) < 0)
        goto done;
    npy_intp *shape = PyArray_DIMS(a.x);
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_ensemble_run(
        handles, FA_DATA(const float, weights), count, fuse, shape[0], shape[1], shape[2],
        shape[3], FA_DATA(const float, a.x), FA_DATA(const int64_t, a.labels), want_grad,
        FA_DATA(float, a.loss), FA_DATA(float, a.logits), k, FA_DATA(int64_t, a.pred),
        FA_DATA(float, a.grad), 0, NULL, NULL, 0, objective);
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        raise_status(s);
        goto done;
    }
    result = call_arrays_result(&a);
done:
    Py_XDECREF(weights);
    call_arrays_release(&a);
    return result;
}

static PyObject *Model_get_device(ModelObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->device);
}

static PyObject *Model_get_index(ModelObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(fa_model_device_index(self->model));
}

static PyMethodDef Model_methods[] = {
    {"num_classes", (PyCFunction)Model_num_classes, METH_VARARGS,
     "num_classes(h, w, c) -> K, from one forward of a zero image"},
    {"run", (PyCFunction)Model_run, METH_VARARGS,
     "run(x, labels, want_grad, num_classes, objective=0) -> (loss, logits, pred, grad)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"device", (getter)Model_get_device, NULL, "0: cpu, 1: cuda", NULL},
    {"index", (getter)Model_get_index, NULL, "the GPU ordinal of a cuda model, -1 on the cpu", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fairattack._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(source, device=0): a TorchScript classifier loaded by the LibTorch shim",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* ------------------------------------------------------------------ oracles */

/* Ctrl-C: take the GIL for a moment and let Python look at its signals. */
static int stop_requested(void *ctx) {
    (void)ctx;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0;
    if (stop)
        PyErr_Clear(); /* the module raises KeyboardInterrupt from FA_ERR_INTERRUPTED */
    PyGILState_Release(g);
    return stop;
}

/* A Python callable as the oracle: fn(x [n,H,W,C] float32, labels int64 [n], want_grad) ->
 * (loss [n], pred [n], grad [n,H,W,C] or None) on host arrays (on device=cuda x and grad are
 * staged through the host). Lets tests drive the core
 * with a NumPy model and users plug in any framework. */
typedef struct {
    PyObject *fn;
    npy_intp h, w, c;
    PyObject *error; /* the exception raised by fn, kept to re-raise it unchanged */
    /* what the attack spends (SPEC 12), per image index - index_base: the rows asked for a
     * gradient, and the rows asked for loss or prediction only */
    int64_t index_base;
    int64_t *grad_evals, *forward_evals;
    /* targeted (SPEC 10): fn is asked about each row's target (targets[index - index_base])
     * and its CE and gradient are negated for the core, which ascends -CE(z, target) */
    const int64_t *targets;
    /* device='cuda' (the conformance suite's attack loop on the CUDA backend): x and grad are
     * device memory, staged through these host buffers (grown on demand) */
    const fa_backend *be;
    float *stage_x, *stage_g;
    size_t stage_bytes;
} py_oracle;

/* Copy the oracle's output `what` into dst (skipped when dst is NULL: the core does not need
 * it). The shape must be exactly `want` (ndim values); float outputs of any precision (and
 * integer ones for loss/grad) are cast to float32, pred must be integers. Every error names the
 * output. */
static int copy_out(PyObject *obj, int type, int ndim, const npy_intp *want, void *dst,
                    const char *what) {
    if (!dst)
        return 0;
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!raw) {
        PyErr_Format(PyExc_TypeError, "oracle output '%s' must be an array, got %s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    char kind = PyArray_DESCR(raw)->kind;
    int ok_kind = type == NPY_INT64 ? (kind == 'i' || kind == 'u') : (kind == 'f' || kind == 'i' || kind == 'u');
    if (!ok_kind) {
        PyErr_Format(PyExc_TypeError, "oracle output '%s' has dtype %s, expected %s", what,
                     PyArray_DESCR(raw)->typeobj->tp_name,
                     type == NPY_INT64 ? "integers (int64)" : "float32 (or another real dtype)");
        Py_DECREF(raw);
        return -1;
    }
    int same = PyArray_NDIM(raw) == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = PyArray_DIM(raw, i) == want[i];
    if (!same) {
        char got[160] = "(", expect[160] = "(";
        for (int i = 0; i < PyArray_NDIM(raw) && strlen(got) < 120; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%zd", i ? ", " : "",
                     (Py_ssize_t)PyArray_DIM(raw, i));
        for (int i = 0; i < ndim; i++)
            snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "%s%zd",
                     i ? ", " : "", (Py_ssize_t)want[i]);
        PyErr_Format(PyExc_ValueError, "oracle output '%s' has shape %s%s), expected %s%s)%s",
                     what, got, PyArray_NDIM(raw) == 1 ? "," : "", expect, ndim == 1 ? "," : "",
                     ndim == 4 ? " (NHWC, like x)" : "");
        Py_DECREF(raw);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)raw, type,
                                                         NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(raw);
    if (!a)
        return -1;
    memcpy(dst, PyArray_DATA(a), (size_t)PyArray_NBYTES(a));
    Py_DECREF(a);
    return 0;
}

/* The pending exception as one object (with its traceback), cleared; PyErr_Fetch is deprecated
 * from Python 3.12 on. */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static fa_status py_oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                                const float *x, int want_grad, float *loss, int64_t *pred,
                                float *grad) {
    py_oracle *o = ctx;
    fa_status status = FA_OK;
    float *device_grad = NULL;
    const size_t bytes = (size_t)(n * o->h * o->w * o->c) * sizeof(float);
    if (o->be != NULL) { /* device memory: through the host */
        if (bytes > o->stage_bytes) {
            free(o->stage_x), free(o->stage_g);
            o->stage_x = malloc(bytes), o->stage_g = malloc(bytes);
            o->stage_bytes = o->stage_x && o->stage_g ? bytes : 0;
            if (!o->stage_bytes)
                return fa_set_error(FA_ERR_MEMORY, "the oracle's host staging: out of memory");
        }
        if ((status = o->be->copy(o->stage_x, x, bytes, FA_COPY_D2H)) != FA_OK)
            return status;
        x = o->stage_x;
        device_grad = grad;
        grad = want_grad ? o->stage_g : NULL;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    npy_intp shape[4] = {(npy_intp)n, o->h, o->w, o->c};
    npy_intp ln = (npy_intp)n;
    PyObject *xa = PyArray_SimpleNew(4, shape, NPY_FLOAT32);
    PyObject *la = PyArray_SimpleNew(1, &ln, NPY_INT64);
    PyObject *out = NULL;
    if (!xa || !la)
        goto error;
    memcpy(PyArray_DATA((PyArrayObject *)xa), x, bytes);
    if (o->targets)
        for (int64_t r = 0; r < n; r++)
            ((int64_t *)PyArray_DATA((PyArrayObject *)la))[r] = o->targets[index[r] - o->index_base];
    else
        memcpy(PyArray_DATA((PyArrayObject *)la), labels, (size_t)n * sizeof(int64_t));
    out = PyObject_CallFunction(o->fn, "OOO", xa, la, want_grad ? Py_True : Py_False);
    if (!out)
        goto error;
    if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != 3) {
        PyErr_SetString(PyExc_TypeError, "oracle must return a tuple (loss, pred, grad)");
        goto error;
    }
    if (copy_out(PyTuple_GET_ITEM(out, 0), NPY_FLOAT32, 1, &ln, loss, "loss") < 0 ||
        copy_out(PyTuple_GET_ITEM(out, 1), NPY_INT64, 1, &ln, pred, "pred") < 0)
        goto error;
    if (want_grad && copy_out(PyTuple_GET_ITEM(out, 2), NPY_FLOAT32, 4, shape, grad, "grad") < 0)
        goto error;
    if (o->targets) {
        for (int64_t r = 0; loss && r < n; r++)
            loss[r] = -loss[r];
        for (int64_t j = 0; want_grad && j < n * o->h * o->w * o->c; j++)
            grad[j] = -grad[j];
    }
    for (int64_t r = 0; o->grad_evals && r < n; r++) {
        if (want_grad)
            o->grad_evals[index[r] - o->index_base]++;
        else if (loss || pred)
            o->forward_evals[index[r] - o->index_base]++;
    }
    if (want_grad && device_grad != NULL &&
        (status = o->be->copy(device_grad, grad, bytes, FA_COPY_H2D)) != FA_OK)
        goto done;
    goto done;
error:
    status = fa_set_error(FA_ERR_MODEL, "the oracle raised an exception");
    Py_XSETREF(o->error, take_exception());
done:
    Py_XDECREF(xa);
    Py_XDECREF(la);
    Py_XDECREF(out);
    PyGILState_Release(g);
    return status;
}

/* ------------------------------------------------------------------ attack */

/* transform["admix_pool"] (float32 [P, h, w, c]) and ["admix_pool_labels"] (int64 [P]), both
 * C-contiguous, borrowed from the dict for the call (the caller holds it). */
static int parse_admix_pool(PyObject *d, fa_transform *t, npy_intp h, npy_intp w, npy_intp c) {
    PyObject *pool = PyDict_GetItemString(d, "admix_pool");
    PyObject *labels = PyDict_GetItemString(d, "admix_pool_labels");
    if (pool == NULL && labels == NULL)
        return 0;
    if (pool == NULL || labels == NULL || !PyArray_Check(pool) || !PyArray_Check(labels)) {
        PyErr_SetString(PyExc_TypeError, "transform: admix_pool and admix_pool_labels must both "
                        "be numpy arrays");
        return -1;
    }
    PyArrayObject *p = (PyArrayObject *)pool, *l = (PyArrayObject *)labels;
    if (PyArray_TYPE(p) != NPY_FLOAT32 || PyArray_NDIM(p) != 4 || !PyArray_IS_C_CONTIGUOUS(p) ||
        (h >= 0 && (PyArray_DIM(p, 1) != h || PyArray_DIM(p, 2) != w || PyArray_DIM(p, 3) != c))) {
        PyErr_Format(PyExc_ValueError, "transform: admix_pool must be C-contiguous float32 "
                     "[P, %zd, %zd, %zd] (the images' shape)", (Py_ssize_t)h, (Py_ssize_t)w,
                     (Py_ssize_t)c);
        return -1;
    }
    if (PyArray_TYPE(l) != NPY_INT64 || PyArray_NDIM(l) != 1 || !PyArray_IS_C_CONTIGUOUS(l) ||
        PyArray_DIM(l, 0) != PyArray_DIM(p, 0)) {
        PyErr_SetString(PyExc_ValueError, "transform: admix_pool_labels must be C-contiguous "
                        "int64 with one label per admix_pool image");
        return -1;
    }
    t->admix_pool = (const float *)PyArray_DATA(p);
    t->admix_pool_labels = (const int64_t *)PyArray_DATA(l);
    t->admix_pool_n = (int64_t)PyArray_DIM(p, 0);
    return 0;
}

static int parse_int(PyObject *d, const char *key, int *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (v && (*out = (int)PyLong_AsLong(v)) == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

static int parse_int64(PyObject *d, const char *key, int64_t *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (v && (*out = (int64_t)PyLong_AsLongLong(v)) == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

static int parse_float(PyObject *d, const char *key, float *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (v && (*out = (float)PyFloat_AsDouble(v)) == -1.0f && PyErr_Occurred())
        return -1;
    return 0;
}

static int parse_transform(PyObject *d, fa_transform *t, npy_intp h, npy_intp w, npy_intp c) {
    memset(t, 0, sizeof *t);
    t->di_min_scale = 0.9f;
    t->admix_scales = 5, t->admix_eta = 0.2f;
    t->bsr_blocks = 3, t->bsr_angle = 24.0f, t->sia_blocks = 3;
    if (d == Py_None)
        return 0;
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "transform must be a dict or None");
        return -1;
    }
    PyObject *v;
    if ((v = PyDict_GetItemString(d, "di_prob")) && (t->di_prob = (float)PyFloat_AsDouble(v)) == -1.0f && PyErr_Occurred())
        return -1;
    if ((v = PyDict_GetItemString(d, "di_min_scale")) && (t->di_min_scale = (float)PyFloat_AsDouble(v)) == -1.0f && PyErr_Occurred())
        return -1;
    if ((v = PyDict_GetItemString(d, "si_copies")) && (t->si_copies = (int)PyLong_AsLong(v)) == -1 && PyErr_Occurred())
        return -1;
    if ((v = PyDict_GetItemString(d, "ti_kernel")) && (t->ti_kernel = (int)PyLong_AsLong(v)) == -1 && PyErr_Occurred())
        return -1;
    if ((v = PyDict_GetItemString(d, "seed")) && (t->seed = PyLong_AsUnsignedLongLongMask(v), PyErr_Occurred()))
        return -1;
    if (parse_int(d, "admix_copies", &t->admix_copies) < 0 ||
        parse_int(d, "admix_scales", &t->admix_scales) < 0 ||
        parse_float(d, "admix_eta", &t->admix_eta) < 0 ||
        parse_int(d, "bsr_copies", &t->bsr_copies) < 0 ||
        parse_int(d, "bsr_blocks", &t->bsr_blocks) < 0 ||
        parse_float(d, "bsr_angle", &t->bsr_angle) < 0 ||
        parse_int(d, "sia_copies", &t->sia_copies) < 0 ||
        parse_int(d, "sia_blocks", &t->sia_blocks) < 0 ||
        parse_int64(d, "pass_rows", &t->pass_rows) < 0)
        return -1;
    return parse_admix_pool(d, t, h, w, c);
}

/* transform_draws(transform dict, kind, h, w, label, index, call, copy) -> list of floats: the
 * draws of one transformed copy (fa_transform_draws), for the tests' reference. */
static PyObject *py_transform_draws(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *d;
    const char *kind;
    long long h, w, label, index, call, copy;
    if (!PyArg_ParseTuple(args, "OsLLLLLL", &d, &kind, &h, &w, &label, &index, &call, &copy))
        return NULL;
    fa_transform t;
    if (parse_transform(d, &t, -1, -1, -1) < 0) /* -1: the pool's image shape is not checked */
        return NULL;
    int64_t count = 0;
    fa_status s = fa_transform_draws(&t, kind, h, w, label, index, call, copy, NULL, 0, &count);
    double *out = NULL;
    if (s == FA_ERR_ARGUMENT && count > 0) {
        if (!(out = malloc((size_t)count * sizeof *out)))
            return PyErr_NoMemory();
        s = fa_transform_draws(&t, kind, h, w, label, index, call, copy, out, count, &count);
    }
    if (s != FA_OK) {
        free(out);
        return raise_status(s);
    }
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (int64_t i = 0; list && i < count; i++)
        PyList_SET_ITEM(list, (Py_ssize_t)i, PyFloat_FromDouble(out[i]));
    free(out);
    return list;
}

/* attack(model_or_callable, x0 float32 [N,H,W,C], labels int64 [N], config dict, device,
 *        transform dict or None) -> dict of result arrays */
static PyObject *py_attack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *model_obj, *xo, *lo, *cfg_obj, *tr_obj, *to = Py_None;
    int device, objective = FA_LOSS_CE;
    if (!PyArg_ParseTuple(args, "OOOOiO|iO", &model_obj, &xo, &lo, &cfg_obj, &device, &tr_obj,
                          &objective, &to))
        return NULL;
    PyArrayObject *x = NULL, *labels = NULL;
    PyArrayObject *adv = NULL, *loss = NULL, *closs = NULL, *cpred = NULL, *iters = NULL,
                  *alpha = NULL, *status = NULL, *gevals = NULL, *fevals = NULL;
    PyObject *result = NULL;
    py_oracle po = {.fn = NULL}; /* every field zero */
    PyArrayObject *targets = NULL, *weights = NULL;
    fa_model *handles[MAX_MEMBERS];
    fa_model_oracle mo;
    memset(&mo, 0, sizeof mo);
    fa_config cfg;
    if (dict_to_config(cfg_obj, &cfg) < 0)
        goto done;
    if (!(x = as_array(xo, NPY_FLOAT32, 4, "images")) ||
        !(labels = as_array(lo, NPY_INT64, 1, "labels")))
        goto done;
    npy_intp *shape = PyArray_DIMS(x);
    npy_intp n = shape[0];
    if (PyArray_DIM(labels, 0) != n) {
        PyErr_Format(PyExc_ValueError, "labels has %zd entries, expected %zd", (Py_ssize_t)PyArray_DIM(labels, 0), (Py_ssize_t)n);
        goto done;
    }
    if (to != Py_None) {
        if (!(targets = as_array(to, NPY_INT64, 1, "targets")))
            goto done;
        if (PyArray_DIM(targets, 0) != n) {
            PyErr_Format(PyExc_ValueError, "targets has %zd entries, expected %zd",
                         (Py_ssize_t)PyArray_DIM(targets, 0), (Py_ssize_t)n);
            goto done;
        }
    }
    fa_oracle oracle = {NULL, stop_requested, NULL};
    /* per-image counters of what the attack spends, filled by the oracle (SPEC 12) */
    if (!(gevals = (PyArrayObject *)PyArray_ZEROS(1, &n, NPY_INT64, 0)) ||
        !(fevals = (PyArrayObject *)PyArray_ZEROS(1, &n, NPY_INT64, 0)))
        goto done;
    if (PyObject_TypeCheck(model_obj, &ModelType) || PyTuple_Check(model_obj)) {
        int model_device = 0;
        if (PyTuple_Check(model_obj)) { /* an ensemble: (members, weights, fuse) */
            if (parse_ensemble(model_obj, handles, &mo.n_members, &weights, &mo.fuse,
                               &model_device) < 0)
                goto done;
            mo.members = handles, mo.weights = PyArray_DATA(weights), mo.model = handles[0];
        } else {
            mo.model = ((ModelObject *)model_obj)->model;
            model_device = ((ModelObject *)model_obj)->device;
        }
        if (device == FA_DEVICE_CUDA && model_device != FA_DEVICE_CUDA) {
            PyErr_SetString(PyExc_ValueError,
                            "device='cuda' needs a model loaded on cuda; this one is on the cpu");
            goto done;
        }
        mo.device_io = device == FA_DEVICE_CUDA;
        mo.h = shape[1], mo.w = shape[2], mo.c = shape[3];
        mo.index_base = cfg.index_offset;
        mo.grad_evals = PyArray_DATA(gevals), mo.forward_evals = PyArray_DATA(fevals);
        mo.objective = objective;
        mo.targets = targets ? PyArray_DATA(targets) : NULL;
        if (parse_transform(tr_obj, &mo.transform, shape[1], shape[2], shape[3]) < 0)
            goto done;
        oracle.grad = fa_model_oracle_grad;
        oracle.ctx = &mo;
    } else if (PyCallable_Check(model_obj)) {
        if (device == FA_DEVICE_CUDA) { /* the loop on the GPU, the callable on the host */
            po.be = fa_backend_cuda();
            if (po.be == NULL || !fa_cuda_available()) {
                PyErr_SetString(PyExc_ValueError, "device='cuda': no CUDA backend or device");
                goto done;
            }
        }
        po.fn = model_obj;
        po.h = shape[1], po.w = shape[2], po.c = shape[3];
        po.index_base = cfg.index_offset;
        po.grad_evals = PyArray_DATA(gevals), po.forward_evals = PyArray_DATA(fevals);
        if (objective != (targets ? FA_LOSS_TARGET_CE : FA_LOSS_CE)) {
            PyErr_Format(PyExc_ValueError, "loss '%s': a Python callable oracle gives the "
                         "cross-entropy only (untargeted 'ce', or targeted 'ce' to the target)",
                         fa_loss_name(objective) ? fa_loss_name(objective) : "?");
            goto done;
        }
        po.targets = targets ? PyArray_DATA(targets) : NULL;
        oracle.grad = py_oracle_grad;
        oracle.ctx = &po;
    } else {
        PyErr_SetString(PyExc_TypeError, "model must be a fairattack model or a callable");
        goto done;
    }
    if (!(adv = (PyArrayObject *)PyArray_SimpleNew(4, shape, NPY_FLOAT32)) ||
        !(loss = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)) ||
        !(closs = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)) ||
        !(cpred = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT64)) ||
        !(iters = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32)) ||
        !(alpha = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)) ||
        !(status = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32)))
        goto done;
    fa_result out = {PyArray_DATA(adv),   PyArray_DATA(loss),  PyArray_DATA(closs),
                     PyArray_DATA(cpred), PyArray_DATA(iters), PyArray_DATA(alpha),
                     PyArray_DATA(status)};
    int64_t dim = (int64_t)shape[1] * shape[2] * shape[3];
    fa_status s = FA_OK;
    /* the core's kernels on the model's GPU and torch's current stream there (this thread) */
    if (device == FA_DEVICE_CUDA &&
        (s = fa_cuda_set_context(fa_model_device_index(mo.model),
                                 fa_model_cuda_stream(mo.model))) != FA_OK) {
        raise_status(s);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS s = fa_attack(&cfg, device, n, dim, PyArray_DATA(x),
                                         PyArray_DATA(labels), &oracle, &out);
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        if (po.error) {
            PyErr_SetObject((PyObject *)Py_TYPE(po.error), po.error);
        } else {
            raise_status(s);
        }
        goto done;
    }
    result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "adv", adv, "loss", loss,
                           "clean_loss", closs, "clean_pred", cpred, "iterations", iters, "alpha",
                           alpha, "status", status, "grad_evals", gevals, "forward_evals",
                           fevals);
done:
    free(po.stage_x), free(po.stage_g);
    Py_XDECREF(po.error);
    Py_XDECREF(x);
    Py_XDECREF(labels);
    Py_XDECREF(adv);
    Py_XDECREF(loss);
    Py_XDECREF(closs);
    Py_XDECREF(cpred);
    Py_XDECREF(iters);
    Py_XDECREF(alpha);
    Py_XDECREF(status);
    Py_XDECREF(gevals);
    Py_XDECREF(fevals);
    Py_XDECREF(targets);
    Py_XDECREF(weights);
    return result;
}

/* ------------------------------------------------------------------ metrics */

static PyObject *py_metrics(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *co;
    if (!PyArg_ParseTuple(args, "OO", &ao, &co))
        return NULL;
    static const char *names[] = {"rmse", "linf", "l2", "l1", "l0", "psnr", "ssim"};
    PyArrayObject *adv = NULL, *clean = NULL, *arrays[7] = {NULL};
    PyObject *result = NULL;
    if (!(adv = as_array(ao, NPY_FLOAT32, 4, "adv")) ||
        !(clean = as_array(co, NPY_FLOAT32, 4, "clean")))
        goto done;
    if (!PyArray_SAMESHAPE(adv, clean)) {
        PyErr_SetString(PyExc_ValueError, "adv and clean must have the same shape");
        goto done;
    }
    npy_intp *shape = PyArray_DIMS(adv);
    npy_intp n = shape[0];
    float *ptrs[7];
    for (int i = 0; i < 7; i++) {
        if (!(arrays[i] = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)))
            goto done;
        ptrs[i] = PyArray_DATA(arrays[i]);
    }
    fa_metrics m = {ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5], ptrs[6]};
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_metrics_compute(n, shape[1], shape[2], shape[3],
                                                  PyArray_DATA(adv), PyArray_DATA(clean), &m);
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        raise_status(s);
        goto done;
    }
    if (!(result = PyDict_New()))
        goto done;
    for (int i = 0; i < 7; i++)
        if (PyDict_SetItemString(result, names[i], (PyObject *)arrays[i]) < 0) {
            Py_CLEAR(result);
            goto done;
        }
done:
    Py_XDECREF(adv);
    Py_XDECREF(clean);
    for (int i = 0; i < 7; i++)
        Py_XDECREF(arrays[i]);
    return result;
}

/* ------------------------------------------------------------------ fair budgets (SPEC 8) */

/* project_rmse(clean float32 [N,H,W,C], y float32 same shape, eps, max_rmse) -> projected */
static PyObject *py_project_rmse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *yo;
    float eps, max_rmse;
    if (!PyArg_ParseTuple(args, "OOff", &co, &yo, &eps, &max_rmse))
        return NULL;
    PyArrayObject *clean = NULL, *y = NULL, *out = NULL;
    PyObject *result = NULL;
    if (!(clean = as_array(co, NPY_FLOAT32, 4, "clean")) || !(y = as_array(yo, NPY_FLOAT32, 4, "y")))
        goto done;
    if (!PyArray_SAMESHAPE(clean, y)) {
        PyErr_SetString(PyExc_ValueError, "clean and y must have the same shape");
        goto done;
    }
    npy_intp *shape = PyArray_DIMS(clean);
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(4, shape, NPY_FLOAT32)))
        goto done;
    const int64_t dim = (int64_t)shape[1] * shape[2] * shape[3];
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_project_rmse(shape[0], dim, PyArray_DATA(clean), PyArray_DATA(y),
                                               eps, max_rmse, PyArray_DATA(out));
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        raise_status(s);
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(clean);
    Py_XDECREF(y);
    Py_XDECREF(out);
    return result;
}

/* match_rmse(clean, adv float32 [N,H,W,C], target float32 [N], eps, mode, tol)
 * -> (matched float32, reached bool [N], scale float32 [N], rmse float32 [N]) */
static PyObject *py_match_rmse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *ao, *to;
    float eps, tol;
    int quantize;
    if (!PyArg_ParseTuple(args, "OOOfif", &co, &ao, &to, &eps, &quantize, &tol))
        return NULL;
    PyArrayObject *clean = NULL, *adv = NULL, *target = NULL, *out = NULL, *scale = NULL,
                  *rmse = NULL, *reached = NULL;
    PyObject *result = NULL, *reached_bool = NULL;
    if (!(clean = as_array(co, NPY_FLOAT32, 4, "clean")) ||
        !(adv = as_array(ao, NPY_FLOAT32, 4, "adv")) ||
        !(target = as_array(to, NPY_FLOAT32, 1, "target")))
        goto done;
    if (!PyArray_SAMESHAPE(clean, adv)) {
        PyErr_SetString(PyExc_ValueError, "clean and adv must have the same shape");
        goto done;
    }
    npy_intp *shape = PyArray_DIMS(clean);
    npy_intp n = shape[0];
    if (PyArray_DIM(target, 0) != n) {
        PyErr_Format(PyExc_ValueError, "target has %zd entries, expected %zd",
                     (Py_ssize_t)PyArray_DIM(target, 0), (Py_ssize_t)n);
        goto done;
    }
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(4, shape, NPY_FLOAT32)) ||
        !(scale = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)) ||
        !(rmse = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)) ||
        !(reached = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32)))
        goto done;
    const int64_t dim = (int64_t)shape[1] * shape[2] * shape[3];
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_match_rmse(n, dim, PyArray_DATA(clean), PyArray_DATA(adv),
                                             PyArray_DATA(target), eps, quantize, tol,
                                             PyArray_DATA(out), PyArray_DATA(scale),
                                             PyArray_DATA(rmse), PyArray_DATA(reached));
    Py_END_ALLOW_THREADS if (s != FA_OK) {
        raise_status(s);
        goto done;
    }
    if (!(reached_bool = PyArray_Cast(reached, NPY_BOOL)))
        goto done;
    result = Py_BuildValue("(OOOO)", out, reached_bool, scale, rmse);
done:
    Py_XDECREF(clean);
    Py_XDECREF(adv);
    Py_XDECREF(target);
    Py_XDECREF(out);
    Py_XDECREF(scale);
    Py_XDECREF(rmse);
    Py_XDECREF(reached);
    Py_XDECREF(reached_bool);
    return result;
}

static PyObject *py_cuda_available(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyBool_FromLong(fa_cuda_available());
}

#ifdef FA_WITH_CUDA
/* cuda_check_device(index) -> None, or RuntimeError when the kernels have no image for it. */
static PyObject *py_cuda_check_device(PyObject *self, PyObject *arg) {
    (void)self;
    int index = (int)PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    fa_status s;
    Py_BEGIN_ALLOW_THREADS s = fa_cuda_check_device(index);
    Py_END_ALLOW_THREADS if (s != FA_OK) return raise_status(s);
    Py_RETURN_NONE;
}
#endif

/* ------------------------------------------------------------------ the backend table (tests) */

/*
 * backend_op(device, op, args) -> the result of one entry of the backend table
 * (core/fa_backend.h) on DEVICE_CPU or DEVICE_CUDA, with host NumPy arrays in and out: the
 * conformance suite (tests/test_conformance.py) drives both backends with identical inputs.
 * Rows are float32 [n, dim] arrays (copied to the backend's memory and back); per-image
 * arrays are 1-D host arrays, as the table takes them. On CUDA the work runs on the current
 * device's legacy default stream. Not part of the Python API.
 *   "direction" (config, k, x, x0, g, gnorm|None, pcoef|None, m|None, v|None) -> (d, m, v)
 *   "step"      (x, x0, d, alpha, scale, eps, max_rmse, in_place)           -> out
 *   "step_rmse" (x, x0, ref, d, alpha, eps, max_rmse)                       -> [n]
 *   "rmse"      (x, x0|None)  -> [n]          "abs_sum" (g,) -> [n]
 *   "random_start" (x0, eps, seed, index int64)                             -> out
 *   "compact"   (buf, src int64)        -> the first len(src) rows of buf afterwards
 *   "copy_rows" (dst, src, rows int64)  -> dst afterwards
 *   "fetch_rows" (buf, rows int64)      -> [len(rows), dim]
 *   "calibrate" (x, x0, d, eps, max_rmse, r1)          -> alpha [n] (fa_calibrate)
 *   "shorten"   (x, x0, d, eps, max_rmse, target, alpha) -> alpha [n] (fa_shorten)
 */
typedef struct {
    const fa_backend *be;
    void *dev[12];
    PyArrayObject *host[12];
    int ndev, nhost;
    int64_t n, dim; /* of the first rows array; -1 before it */
} op_ctx;

static void op_free(op_ctx *c) {
    for (int i = 0; i < c->ndev; i++)
        c->be->free(c->dev[i]);
    for (int i = 0; i < c->nhost; i++)
        Py_DECREF(c->host[i]);
}

static int op_status(fa_status s) {
    if (s != FA_OK) {
        raise_status(s);
        return -1;
    }
    return 0;
}

/* A host 1-D array of `type` with `count` entries (count < 0: any), kept until op_free. */
static int op_host(op_ctx *c, PyObject *obj, int type, npy_intp count, const char *name,
                   void **out) {
    *out = NULL;
    if (obj == Py_None)
        return 0;
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, 1, 1, NPY_ARRAY_IN_ARRAY |
                                                                             NPY_ARRAY_FORCECAST);
    if (!a)
        return -1;
    c->host[c->nhost++] = a;
    if (count >= 0 && PyArray_DIM(a, 0) != count) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, expected %zd", name,
                     (Py_ssize_t)PyArray_DIM(a, 0), (Py_ssize_t)count);
        return -1;
    }
    *out = PyArray_DATA(a);
    return 0;
}

/* Rows [n, dim] (float32) copied into backend memory; the first one fixes n and dim. */
static int op_rows(op_ctx *c, PyObject *obj, const char *name, float **out) {
    *out = NULL;
    if (obj == Py_None)
        return 0;
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 2, 2,
                                                        NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!a)
        return -1;
    const int64_t n = PyArray_DIM(a, 0), dim = PyArray_DIM(a, 1);
    if (c->n >= 0 && dim != c->dim) {
        PyErr_Format(PyExc_ValueError, "%s has rows of %lld values, expected %lld", name,
                     (long long)dim, (long long)c->dim);
        Py_DECREF(a);
        return -1;
    }
    if (c->n < 0)
        c->n = n, c->dim = dim;
    const size_t bytes = (size_t)(n * dim) * sizeof(float);
    void *p = NULL;
    fa_status s = c->be->alloc(&p, bytes);
    if (s == FA_OK)
        c->dev[c->ndev++] = p;
    if (s == FA_OK)
        s = c->be->copy(p, PyArray_DATA(a), bytes, FA_COPY_H2D);
    Py_DECREF(a);
    *out = p;
    return op_status(s);
}

static PyObject *op_fetch(op_ctx *c, const float *dev, int64_t rows) {
    npy_intp shape[2] = {(npy_intp)rows, (npy_intp)c->dim};
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    if (!a)
        return NULL;
    const fa_status s = c->be->copy(PyArray_DATA(a), dev, (size_t)(rows * c->dim) * sizeof(float),
                                    FA_COPY_D2H);
    if (s != FA_OK) {
        Py_DECREF(a);
        return raise_status(s);
    }
    return (PyObject *)a;
}

static PyObject *op_per_image(int64_t n, PyArrayObject **out) {
    npy_intp count = (npy_intp)n;
    *out = (PyArrayObject *)PyArray_SimpleNew(1, &count, NPY_FLOAT32);
    return (PyObject *)*out;
}

static PyObject *py_backend_op(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t given = PyTuple_GET_SIZE(args);
    if (given < 3) {
        PyErr_SetString(PyExc_TypeError, "backend_op(device, op, args)");
        return NULL;
    }
    int device = (int)PyLong_AsLong(PyTuple_GET_ITEM(args, 0));
    const char *op = PyUnicode_AsUTF8(PyTuple_GET_ITEM(args, 1));
    PyObject *a = PyTuple_GET_ITEM(args, 2);
    if ((device == -1 && PyErr_Occurred()) || op == NULL)
        return NULL;
    if (!PyTuple_Check(a)) {
        PyErr_SetString(PyExc_TypeError, "backend_op: args must be a tuple");
        return NULL;
    }
    op_ctx c;
    memset(&c, 0, sizeof c);
    c.n = c.dim = -1;
    c.be = device == FA_DEVICE_CUDA ? fa_backend_cuda() : fa_backend_cpu();
    if (device != FA_DEVICE_CPU && device != FA_DEVICE_CUDA) {
        PyErr_Format(PyExc_ValueError, "device=%d must be DEVICE_CPU or DEVICE_CUDA", device);
        return NULL;
    }
    if (c.be == NULL || (device == FA_DEVICE_CUDA && !fa_cuda_available())) {
        PyErr_SetString(PyExc_RuntimeError, "backend_op: no CUDA backend or no CUDA device");
        return NULL;
    }
    if (device == FA_DEVICE_CUDA && op_status(fa_cuda_set_context(-1, NULL)) < 0)
        return NULL;
    PyObject *result = NULL, *o[9] = {NULL};
    PyArrayObject *per = NULL;
    float *r[6] = {NULL};
    void *h[3] = {NULL};
    float f[4] = {0};
    unsigned long long seed = 0;
    int k = 0, flag = 0;
    if (strcmp(op, "direction") == 0) {
        fa_config cfg;
        if (!PyArg_ParseTuple(a, "OiOOOOOOO", &o[0], &k, &o[1], &o[2], &o[3], &o[4], &o[5],
                              &o[6], &o[7]) ||
            dict_to_config(o[0], &cfg) < 0 || op_rows(&c, o[1], "x", &r[0]) < 0 ||
            op_rows(&c, o[2], "x0", &r[1]) < 0 || op_rows(&c, o[3], "g", &r[2]) < 0 ||
            op_host(&c, o[4], NPY_FLOAT32, c.n, "gnorm", &h[0]) < 0 ||
            op_host(&c, o[5], NPY_FLOAT32, c.n, "pcoef", &h[1]) < 0 ||
            op_rows(&c, o[6], "m", &r[3]) < 0 || op_rows(&c, o[7], "v", &r[4]) < 0 ||
            op_status(c.be->alloc((void **)&r[5], (size_t)(c.n * c.dim) * sizeof(float) + 1)) < 0)
            goto done;
        c.dev[c.ndev++] = r[5];
        if (op_status(c.be->direction(&cfg, k, c.n, c.dim, r[0], r[1], r[2], h[0], h[1], r[3],
                                      r[4], r[5])) < 0)
            goto done;
        PyObject *d = op_fetch(&c, r[5], c.n);
        PyObject *m = r[3] ? op_fetch(&c, r[3], c.n) : (Py_INCREF(Py_None), Py_None);
        PyObject *v = r[4] ? op_fetch(&c, r[4], c.n) : (Py_INCREF(Py_None), Py_None);
        if (d && m && v)
            result = PyTuple_Pack(3, d, m, v);
        Py_XDECREF(d), Py_XDECREF(m), Py_XDECREF(v);
    } else if (strcmp(op, "step") == 0) {
        if (!PyArg_ParseTuple(a, "OOOOfffp", &o[0], &o[1], &o[2], &o[3], &f[0], &f[1], &f[2],
                              &flag) ||
            op_rows(&c, o[0], "x", &r[0]) < 0 || op_rows(&c, o[1], "x0", &r[1]) < 0 ||
            op_rows(&c, o[2], "d", &r[2]) < 0 ||
            op_host(&c, o[3], NPY_FLOAT32, c.n, "alpha", &h[0]) < 0)
            goto done;
        if (!flag) {
            if (op_status(c.be->alloc((void **)&r[3], (size_t)(c.n * c.dim) * sizeof(float) + 1)) < 0)
                goto done;
            c.dev[c.ndev++] = r[3];
        }
        float *out = flag ? r[0] : r[3]; /* in_place: out aliases x */
        if (op_status(c.be->step(c.n, c.dim, r[0], r[1], r[2], h[0], f[0], f[1], f[2], out)) == 0)
            result = op_fetch(&c, out, c.n);
    } else if (strcmp(op, "step_rmse") == 0) {
        if (!PyArg_ParseTuple(a, "OOOOOff", &o[0], &o[1], &o[2], &o[3], &o[4], &f[0], &f[1]) ||
            op_rows(&c, o[0], "x", &r[0]) < 0 || op_rows(&c, o[1], "x0", &r[1]) < 0 ||
            op_rows(&c, o[2], "ref", &r[2]) < 0 || op_rows(&c, o[3], "d", &r[3]) < 0 ||
            op_host(&c, o[4], NPY_FLOAT32, c.n, "alpha", &h[0]) < 0 || !op_per_image(c.n, &per))
            goto done;
        if (op_status(c.be->step_rmse(c.n, c.dim, r[0], r[1], r[2], r[3], h[0], f[0], f[1],
                                      PyArray_DATA(per))) == 0)
            result = (PyObject *)per, per = NULL;
    } else if (strcmp(op, "rmse") == 0 || strcmp(op, "abs_sum") == 0) {
        const int abs_sum = op[0] == 'a';
        if (!PyArg_ParseTuple(a, abs_sum ? "O" : "OO", &o[0], &o[1]) ||
            op_rows(&c, o[0], abs_sum ? "g" : "x", &r[0]) < 0 ||
            (!abs_sum && op_rows(&c, o[1], "x0", &r[1]) < 0) || !op_per_image(c.n, &per))
            goto done;
        const fa_status s = abs_sum ? c.be->abs_sum(c.n, c.dim, r[0], PyArray_DATA(per))
                                    : c.be->rmse(c.n, c.dim, r[0], r[1], PyArray_DATA(per));
        if (op_status(s) == 0)
            result = (PyObject *)per, per = NULL;
    } else if (strcmp(op, "random_start") == 0) {
        if (!PyArg_ParseTuple(a, "OfKO", &o[0], &f[0], &seed, &o[1]) ||
            op_rows(&c, o[0], "x0", &r[0]) < 0 ||
            op_host(&c, o[1], NPY_INT64, c.n, "index", &h[0]) < 0 ||
            op_status(c.be->alloc((void **)&r[1], (size_t)(c.n * c.dim) * sizeof(float) + 1)) < 0)
            goto done;
        c.dev[c.ndev++] = r[1];
        if (op_status(c.be->random_start(c.n, c.dim, r[0], f[0], (uint64_t)seed, h[0], r[1])) == 0)
            result = op_fetch(&c, r[1], c.n);
    } else if (strcmp(op, "compact") == 0) {
        if (!PyArg_ParseTuple(a, "OO", &o[0], &o[1]) || op_rows(&c, o[0], "buf", &r[0]) < 0 ||
            op_host(&c, o[1], NPY_INT64, -1, "src", &h[0]) < 0)
            goto done;
        const int64_t n_new = PyArray_DIM(c.host[c.nhost - 1], 0);
        if (n_new > c.n) {
            PyErr_SetString(PyExc_ValueError, "src has more entries than buf has rows");
            goto done;
        }
        if (op_status(c.be->compact(r[0], c.dim, n_new, h[0])) == 0)
            result = op_fetch(&c, r[0], n_new);
    } else if (strcmp(op, "copy_rows") == 0 || strcmp(op, "fetch_rows") == 0) {
        const int fetch = op[0] == 'f';
        if (!PyArg_ParseTuple(a, fetch ? "OO" : "OOO", &o[0], &o[1], &o[2]) ||
            op_rows(&c, o[0], fetch ? "buf" : "dst", &r[0]) < 0 ||
            (!fetch && op_rows(&c, o[1], "src", &r[1]) < 0) ||
            op_host(&c, fetch ? o[1] : o[2], NPY_INT64, -1, "rows", &h[0]) < 0)
            goto done;
        const int64_t count = PyArray_DIM(c.host[c.nhost - 1], 0);
        for (int64_t q = 0; q < count; q++)
            if (((int64_t *)h[0])[q] < 0 || ((int64_t *)h[0])[q] >= c.n) {
                PyErr_Format(PyExc_ValueError, "rows[%lld] out of range", (long long)q);
                goto done;
            }
        if (!fetch) {
            if (op_status(c.be->copy_rows(r[0], r[1], c.dim, count, h[0])) == 0)
                result = op_fetch(&c, r[0], c.n);
            goto done;
        }
        npy_intp shape[2] = {(npy_intp)count, (npy_intp)c.dim};
        PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
        float **dst = out ? malloc((size_t)(count + 1) * sizeof(float *)) : NULL;
        if (out && dst) {
            for (int64_t q = 0; q < count; q++) /* in reverse: the destinations need no order */
                dst[q] = (float *)PyArray_DATA(out) + (count - 1 - q) * c.dim;
            if (op_status(c.be->fetch_rows(r[0], c.dim, count, h[0], dst)) == 0)
                result = (PyObject *)out, out = NULL;
        } else if (out) {
            PyErr_NoMemory();
        }
        free(dst);
        Py_XDECREF(out);
    } else if (strcmp(op, "calibrate") == 0 || strcmp(op, "shorten") == 0) {
        const int shorten = op[0] == 's';
        if (!PyArg_ParseTuple(a, shorten ? "OOOfffO" : "OOOfff", &o[0], &o[1], &o[2], &f[0],
                              &f[1], &f[2], &o[3]) ||
            op_rows(&c, o[0], "x", &r[0]) < 0 || op_rows(&c, o[1], "x0", &r[1]) < 0 ||
            op_rows(&c, o[2], "d", &r[2]) < 0 || !op_per_image(c.n, &per) ||
            (shorten && op_host(&c, o[3], NPY_FLOAT32, c.n, "alpha", &h[0]) < 0))
            goto done;
        float *alpha = PyArray_DATA(per);
        if (shorten)
            memcpy(alpha, h[0], (size_t)c.n * sizeof(float));
        const fa_status s =
            shorten ? fa_shorten(c.be, c.n, c.dim, r[0], r[1], r[2], f[0], f[1], f[2], alpha)
                    : fa_calibrate(c.be, c.n, c.dim, r[0], r[1], r[2], f[0], f[1], f[2], alpha);
        if (op_status(s) == 0)
            result = (PyObject *)per, per = NULL;
    } else {
        PyErr_Format(PyExc_ValueError, "backend_op: unknown op '%s'", op);
    }
done:
    Py_XDECREF(per);
    op_free(&c);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef module_methods[] = {
    {"transform_draws", py_transform_draws, METH_VARARGS,
     "transform_draws(transform, kind, h, w, label, index, call, copy) -> list of floats"},
    {"attack", py_attack, METH_VARARGS,
     "attack(model, x0, labels, config, device, transform, objective=0, targets=None) -> "
     "dict of per-image arrays "
     "(adv, loss, clean_loss, clean_pred, iterations, alpha, status, grad_evals, forward_evals)"},
    {"metrics", py_metrics, METH_VARARGS, "metrics(adv, clean) -> dict of per-image arrays"},
    {"ensemble_run", py_ensemble_run, METH_VARARGS,
     "ensemble_run((members, weights, fuse), x, labels, want_grad, num_classes, objective=0) "
     "-> (loss, fused output, pred, grad)"},
    {"default_config", py_default_config, METH_O, "default_config(optimizer) -> dict"},
    {"check_config", py_check_config, METH_O, "check_config(dict) -> the full checked dict"},
    {"cuda_available", py_cuda_available, METH_NOARGS, "built with CUDA and a device present"},
    {"project_rmse", py_project_rmse, METH_VARARGS,
     "project_rmse(clean, y, eps, max_rmse) -> the joint l-inf + RMSE projection of y"},
    {"match_rmse", py_match_rmse, METH_VARARGS,
     "match_rmse(clean, adv, target[N], eps, mode, tol) -> (matched, reached, scale, rmse); "
     "mode MATCH_FLOAT, MATCH_UINT8 or MATCH_UINT8_AT_MOST"},
    {"backend_op", py_backend_op, METH_VARARGS,
     "backend_op(device, op, args): one entry of the backend table (tests only)"},
#ifdef FA_WITH_CUDA
    {"cuda_check_device", py_cuda_check_device, METH_O,
     "cuda_check_device(index): RuntimeError unless the CUDA kernels run on that GPU"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fairattack._core",
    "The C core of fairattack (see csrc/include/fairattack.h).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

/* One source of truth for enums: names in enum order, read by the Python package. */
static PyObject *names_tuple(const char *(*name)(int), int count) {
    PyObject *t = PyTuple_New(count);
    for (int i = 0; t && i < count; i++) {
        PyObject *s = PyUnicode_FromString(name(i));
        if (!s) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    if (PyType_Ready(&ModelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
#ifdef FA_WITH_CUDA
    /* the CUDA backend's buffers from torch's caching allocator */
    (void)fa_cuda_set_allocator(fa_torch_cuda_alloc, fa_torch_cuda_free);
#endif
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0 ||
        PyModule_AddObject(m, "OPTIMIZERS", names_tuple(fa_optimizer_name, FA_OPT_COUNT)) < 0 ||
        PyModule_AddObject(m, "IMAGE_STATUS",
                           names_tuple(fa_image_status_name, FA_IMAGE_STATUS_COUNT)) < 0 ||
        PyModule_AddObject(m, "LOSSES", names_tuple(fa_loss_name, FA_LOSS_COUNT)) < 0 ||
        PyModule_AddObject(m, "FUSES", names_tuple(fa_fuse_name, FA_FUSE_COUNT)) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CPU", FA_DEVICE_CPU) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CUDA", FA_DEVICE_CUDA) < 0 ||
        PyModule_AddIntConstant(m, "NESTEROV_AUTHORS", FA_NESTEROV_AUTHORS) < 0 ||
        PyModule_AddIntConstant(m, "NESTEROV_TEXTBOOK", FA_NESTEROV_TEXTBOOK) < 0 ||
        PyModule_AddIntConstant(m, "RETURNS_BEST", FA_RETURNS_BEST) < 0 ||
        PyModule_AddIntConstant(m, "MATCH_FLOAT", FA_MATCH_FLOAT) < 0 ||
        PyModule_AddIntConstant(m, "MATCH_UINT8", FA_MATCH_UINT8) < 0 ||
        PyModule_AddIntConstant(m, "MATCH_UINT8_AT_MOST", FA_MATCH_UINT8_AT_MOST) < 0 ||
        PyModule_AddIntConstant(m, "RETURNS_LAST", FA_RETURNS_LAST) < 0 ||
        PyModule_AddStringConstant(m, "VERSION", FA_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "WITH_CUDA", fa_backend_cuda() != NULL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
