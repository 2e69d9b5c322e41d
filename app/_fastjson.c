/* app._fastjson: the contexts of prediction windows, JSON text straight into arrays.
 *
 * contexts(data, width, max_timestamp, max_feature) -> (timestamps, features, counts) | None
 *
 * `data` is the JSON text of one or more `contexts` arrays one after the other ("[{...},...][{...}]"),
 * as msgspec cut them out of a request body it had checked to be well-formed JSON
 * (app/fastparse.py). The answer: the timestamps as int64 bytes, the features as float64 bytes
 * (`width` a context) and the number of contexts in each array; or None the moment anything is outside
 * the one common shape that this reads. That shape is a non-empty array of objects with the keys
 * "timestamp" (an integer token, 0..max_timestamp), "features" (exactly `width` numbers, each within
 * +-max_feature), and optionally "metadata": {} and "pattern_id": null, in any order, each at most
 * once, keys without escapes. Anything else (other metadata, a pattern id, a float or bool where a
 * number is expected, a duplicate key...) is None, and the caller decodes the body the general way.
 *
 * Numbers come out as Python (and pydantic) would make them: an integer token as float(int(token)),
 * so "-0" is 0.0; any other token correctly rounded (an exact fast path when the digits fit in 2^53
 * and the power of ten is exact, else strtod, which glibc rounds correctly).
 *
 * Every read is bounds-checked against the buffer: the input is a client's, and that it is
 * well-formed JSON is never relied on for memory safety. The GIL is released while parsing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define MAX_EXACT (((uint64_t)1) << 53)

typedef struct {
    const unsigned char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static inline int take(Cursor *c, unsigned char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int is_digit(const Cursor *c) { return c->p < c->end && *c->p >= '0' && *c->p <= '9'; }

/* A JSON number token. *is_int: no fraction and no exponent. Returns 0, or -1 for no valid token. */
static int number(Cursor *c, double *out, int *is_int) {
    const unsigned char *start = c->p;
    int neg = 0, digits = 0, exp10 = 0;
    uint64_t mant = 0;
    *is_int = 1;
    if (c->p < c->end && *c->p == '-') {
        neg = 1;
        c->p++;
    }
    if (!is_digit(c)) return -1;
    if (*c->p == '0') {
        c->p++;
        if (is_digit(c)) return -1; /* a leading zero */
    } else {
        while (is_digit(c)) {
            if (digits < 19) mant = mant * 10 + (uint64_t)(*c->p - '0');
            else exp10++; /* digits past 19 only scale: strtod takes over below */
            digits++;
            c->p++;
        }
    }
    if (c->p < c->end && *c->p == '.') {
        *is_int = 0;
        c->p++;
        if (!is_digit(c)) return -1;
        while (is_digit(c)) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*c->p - '0');
                exp10--;
            }
            if (mant != 0) digits++; /* the zeros of 0.000x add no digits */
            c->p++;
        }
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        int eneg = 0, e = 0;
        *is_int = 0;
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) {
            eneg = *c->p == '-';
            c->p++;
        }
        if (!is_digit(c)) return -1;
        while (is_digit(c)) {
            if (e < 100000) e = e * 10 + (*c->p - '0');
            c->p++;
        }
        exp10 += eneg ? -e : e;
    }
    double v;
    if (digits <= 19 && mant <= MAX_EXACT && exp10 >= -22 && exp10 <= 22) {
        v = (double)mant; /* exact, and so is the power: one correctly rounded operation */
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
    } else {
        char buf[400];
        size_t len = (size_t)(c->p - start);
        if (len >= sizeof buf) return -1;
        memcpy(buf, start, len);
        buf[len] = '\0';
        v = strtod(buf, NULL);
        neg = 0; /* strtod kept the sign */
    }
    if (neg) v = -v;
    if (*is_int && v == 0.0) v = 0.0; /* the integer -0 is 0 */
    *out = v;
    return 0;
}

/* The key of a member: 1 timestamp, 2 features, 3 metadata, 4 pattern_id; 0 for any other or an escape. */
static int key(Cursor *c) {
    static const struct {
        const char *name;
        size_t len;
    } KEYS[] = {{"timestamp", 9}, {"features", 8}, {"metadata", 8}, {"pattern_id", 10}};
    if (!take(c, '"')) return 0;
    const unsigned char *start = c->p;
    while (c->p < c->end && *c->p != '"' && *c->p != '\\') c->p++;
    if (c->p >= c->end || *c->p != '"') return 0;
    size_t len = (size_t)(c->p - start);
    c->p++;
    for (int i = 0; i < 4; i++)
        if (len == KEYS[i].len && memcmp(start, KEYS[i].name, len) == 0) return i + 1;
    return 0;
}

typedef struct {
    Py_ssize_t width;
    long long max_timestamp;
    double max_feature;
    int64_t *timestamps; /* room for `capacity` contexts */
    double *features;    /* room for `capacity` * width */
    Py_ssize_t capacity, n;
    Py_ssize_t *counts; /* contexts per array */
    Py_ssize_t n_counts, counts_capacity;
} Out;

/* One context object into out's next slot. 0, or -1 when it is not of the common shape. */
static int context(Cursor *c, Out *o) {
    int seen = 0; /* a bit per key */
    if (o->n >= o->capacity || !take(c, '{')) return -1;
    do {
        int k = key(c);
        if (k == 0 || (seen & (1 << k)) || !take(c, ':')) return -1;
        seen |= 1 << k;
        skip_ws(c);
        if (k == 1) {
            double v;
            int is_int;
            if (number(c, &v, &is_int) || !is_int || v < 0 || v > (double)o->max_timestamp) return -1;
            o->timestamps[o->n] = (int64_t)v; /* <= max_timestamp < 2^53: exact */
        } else if (k == 2) {
            double *row = o->features + o->n * o->width;
            if (!take(c, '[')) return -1;
            for (Py_ssize_t i = 0; i < o->width; i++) {
                int is_int;
                if (i > 0 && !take(c, ',')) return -1;
                skip_ws(c);
                if (number(c, &row[i], &is_int) || !(fabs(row[i]) <= o->max_feature)) return -1;
            }
            if (!take(c, ']')) return -1;
        } else if (k == 3) {
            if (!take(c, '{') || !take(c, '}')) return -1;
        } else {
            if (c->end - c->p < 4 || memcmp(c->p, "null", 4) != 0) return -1;
            c->p += 4;
        }
    } while (take(c, ','));
    if (!take(c, '}') || (seen & 6) != 6) return -1; /* timestamp and features are required */
    o->n++;
    return 0;
}

static int parse(Cursor *c, Out *o) {
    skip_ws(c);
    while (c->p < c->end) {
        Py_ssize_t before = o->n;
        if (!take(c, '[')) return -1;
        do {
            if (context(c, o)) return -1;
        } while (take(c, ','));
        if (!take(c, ']')) return -1;
        if (o->n_counts >= o->counts_capacity) return -1;
        o->counts[o->n_counts++] = o->n - before;
        skip_ws(c);
    }
    return 0;
}

static PyObject *contexts(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t width;
    long long max_timestamp;
    double max_feature;
    if (!PyArg_ParseTuple(args, "y*nLd", &data, &width, &max_timestamp, &max_feature)) return NULL;
    PyObject *timestamps = NULL, *features = NULL, *counts = NULL, *result = NULL;
    Out o = {width, max_timestamp, max_feature, NULL, NULL, 0, 0, NULL, 0, 0};
    if (width < 1 || width > 1024 || max_timestamp < 0 || max_timestamp > (1LL << 53)) {
        PyErr_SetString(PyExc_ValueError, "width must be 1..1024 and max_timestamp 0..2**53");
        goto done;
    }
    /* a context takes at least {"timestamp":0,"features":[0,...]}: 27 + 2 * width bytes, and an array
     * holds one at least: room for that many of each, which the parse checks before every write */
    o.capacity = data.len / (27 + 2 * width) + 1;
    o.counts_capacity = o.capacity;
    timestamps = PyBytes_FromStringAndSize(NULL, o.capacity * (Py_ssize_t)sizeof(int64_t));
    features = PyBytes_FromStringAndSize(NULL, o.capacity * width * (Py_ssize_t)sizeof(double));
    o.counts = PyMem_RawMalloc((size_t)o.counts_capacity * sizeof(Py_ssize_t));
    if (timestamps == NULL || features == NULL || o.counts == NULL) {
        if (o.counts == NULL) PyErr_NoMemory();
        goto done;
    }
    o.timestamps = (int64_t *)PyBytes_AS_STRING(timestamps);
    o.features = (double *)PyBytes_AS_STRING(features);
    Cursor c = {(const unsigned char *)data.buf, (const unsigned char *)data.buf + data.len};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = parse(&c, &o);
    Py_END_ALLOW_THREADS
    if (failed) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (_PyBytes_Resize(&timestamps, o.n * (Py_ssize_t)sizeof(int64_t)) ||
        _PyBytes_Resize(&features, o.n * width * (Py_ssize_t)sizeof(double)))
        goto done;
    counts = PyList_New(o.n_counts);
    if (counts == NULL) goto done;
    for (Py_ssize_t i = 0; i < o.n_counts; i++) {
        PyObject *n = PyLong_FromSsize_t(o.counts[i]);
        if (n == NULL) goto done;
        PyList_SET_ITEM(counts, i, n);
    }
    result = PyTuple_Pack(3, timestamps, features, counts);
done:
    PyMem_RawFree(o.counts);
    Py_XDECREF(timestamps);
    Py_XDECREF(features);
    Py_XDECREF(counts);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef METHODS[] = {
    {"contexts", contexts, METH_VARARGS,
     "contexts(data, width, max_timestamp, max_feature) -> (timestamps, features, counts) | None\n\n"
     "The contexts arrays in data as int64 and float64 bytes and a count per array; None when any part "
     "is not of the common shape (see app/_fastjson.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fastjson", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__fastjson(void) { return PyModule_Create(&MODULE); }
