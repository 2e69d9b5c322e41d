/* app.wire._json_reader: prediction request bodies of the common shape, JSON text straight into arrays.
 *
 * requests(data, batch, lows, highs, min_timestamp, max_timestamp, key_length)
 *     -> (flow_keys, models, horizons, timestamps, features, counts) | None
 *
 * `data` is the body of POST /v1/predict (batch false: one request object) or /v1/predict/batch
 * (batch true: {"requests": [...]}). The rules come from the caller (app/wire/decode.py passes those of
 * app/wire/rules.py): `lows` and `highs` are float64 bytes, the lowest and highest value of each feature
 * (their number is the width of a context); timestamps lie in min_timestamp..max_timestamp; a flow key is
 * `key_length` lowercase hex characters. The answer: each request's flow key (str), model (str or None)
 * and horizon (int), every context's timestamp as int64 bytes and features as float64 bytes, and the
 * number of contexts of each request; or None the moment anything is outside the one common shape that
 * this reads. Then the caller reads the body the general way (msgspec, then pydantic for its errors),
 * so None never decides validity.
 *
 * The common shape: a request has "flow_key" (hex), "contexts" (a non-empty array), optionally "model"
 * (null, or a name of letters, digits, "_", "-", ".") and "horizon" (an integer token); a context has
 * "timestamp" (an integer token in range), "features" (a list of exactly `width` number tokens, each in
 * its feature's range), optionally "metadata": {} and "pattern_id": null. Keys in any order, each at most
 * once, no escapes, no others; whitespace anywhere JSON allows it. The deployment's limits (models,
 * horizons, window and batch sizes) and the order of timestamps are the caller's to check.
 *
 * Numbers come out as Python (and pydantic) makes them: an integer token as float(int(token)), so
 * "-0" is 0.0; any other token correctly rounded (an exact fast path when the digits fit in 2^53 and
 * the power of ten is exact, else strtod, which glibc rounds correctly).
 *
 * The input is a client's: every read is checked against the end of the buffer, every write against
 * room sized from the buffer's length. The GIL is released while parsing. tests/app/wire/test_fuzz.py runs
 * it under a coverage-guided fuzzer.
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
/* Not a wire rule: it only keeps the horizon token's cast to long long defined; the served models'
 * horizons are the caller's to check. */
#define MAX_HORIZON_TOKEN 1e9

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
        /* correctly rounded by glibc; it reads "." as the decimal point in the C locale, which CPython
         * keeps for LC_NUMERIC (nothing in the service calls setlocale) */
        v = strtod(buf, NULL);
        neg = 0; /* strtod kept the sign */
    }
    if (neg) v = -v;
    if (*is_int && v == 0.0) v = 0.0; /* the integer -0 is 0 */
    *out = v;
    return 0;
}

typedef struct {
    const char *name;
    size_t len;
} Name;

static const Name CONTEXT_KEYS[] = {{"timestamp", 9}, {"features", 8}, {"metadata", 8}, {"pattern_id", 10}};
static const Name REQUEST_KEYS[] = {{"flow_key", 8}, {"contexts", 8}, {"model", 5}, {"horizon", 7}};
static const Name BATCH_KEYS[] = {{"requests", 8}};

/* A string token without escapes: its characters' span. 0, or -1 when there is none. */
static int string(Cursor *c, const unsigned char **start, Py_ssize_t *len) {
    if (!take(c, '"')) return -1;
    *start = c->p;
    while (c->p < c->end && *c->p != '"' && *c->p != '\\') c->p++;
    if (c->p >= c->end || *c->p != '"') return -1;
    *len = c->p - *start;
    c->p++;
    return 0;
}

/* A member's key and its colon: 1 + its index in `names`, or 0 for any other key or an escape. */
static int key(Cursor *c, const Name *names, int n) {
    const unsigned char *start;
    Py_ssize_t len;
    if (string(c, &start, &len) || !take(c, ':')) return 0;
    for (int i = 0; i < n; i++)
        if ((size_t)len == names[i].len && memcmp(start, names[i].name, (size_t)len) == 0) return i + 1;
    return 0;
}

static int literal(Cursor *c, const char *word, Py_ssize_t len) {
    skip_ws(c);
    if (c->end - c->p < len || memcmp(c->p, word, (size_t)len) != 0) return 0;
    c->p += len;
    return 1;
}

typedef struct {
    Py_ssize_t start, len; /* into the data; len -1: none (a null model) */
} Span;

typedef struct {
    const unsigned char *data;
    Py_ssize_t width, key_length;
    const double *lows, *highs; /* `width` each */
    long long min_timestamp, max_timestamp;
    int64_t *timestamps; /* room for `capacity` contexts */
    double *features;    /* room for `capacity` * width */
    Py_ssize_t capacity, n;
    /* per request, room for `capacity` too: each holds one context at least */
    Span *flow_keys, *models;
    long long *horizons;
    Py_ssize_t *counts;
    Py_ssize_t n_requests;
} Out;

/* One context object into out's next slot. 0, or -1 when it is not of the common shape. */
static int context(Cursor *c, Out *o) {
    int seen = 0; /* a bit per key */
    if (o->n >= o->capacity || !take(c, '{')) return -1;
    do {
        int k = key(c, CONTEXT_KEYS, 4);
        if (k == 0 || (seen & (1 << k))) return -1;
        seen |= 1 << k;
        skip_ws(c);
        if (k == 1) {
            double v;
            int is_int;
            if (number(c, &v, &is_int) || !is_int || !(v >= (double)o->min_timestamp) ||
                v > (double)o->max_timestamp)
                return -1;
            o->timestamps[o->n] = (int64_t)v; /* <= max_timestamp <= 2^53: exact */
        } else if (k == 2) {
            double *row = o->features + o->n * o->width;
            if (!take(c, '[')) return -1;
            for (Py_ssize_t i = 0; i < o->width; i++) {
                int is_int;
                if (i > 0 && !take(c, ',')) return -1;
                skip_ws(c);
                if (number(c, &row[i], &is_int) || !(row[i] >= o->lows[i] && row[i] <= o->highs[i])) return -1;
            }
            if (!take(c, ']')) return -1;
        } else if (k == 3) {
            if (!take(c, '{') || !take(c, '}')) return -1;
        } else if (!literal(c, "null", 4)) {
            return -1;
        }
    } while (take(c, ','));
    if (!take(c, '}') || (seen & 6) != 6) return -1; /* timestamp and features are required */
    o->n++;
    return 0;
}

static int is_hex(unsigned char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'); }

static int is_name(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           ch == '-' || ch == '.';
}

/* One request object: its flow key, model, horizon and contexts into out. 0, or -1. */
static int request(Cursor *c, Out *o) {
    int seen = 0;
    Py_ssize_t r = o->n_requests, before = o->n;
    if (r >= o->capacity || !take(c, '{')) return -1;
    o->models[r].len = -1;
    o->horizons[r] = 1;
    do {
        const unsigned char *start;
        Py_ssize_t len;
        int k = key(c, REQUEST_KEYS, 4);
        if (k == 0 || (seen & (1 << k))) return -1;
        seen |= 1 << k;
        if (k == 1) {
            if (string(c, &start, &len) || len != o->key_length) return -1;
            for (Py_ssize_t i = 0; i < len; i++)
                if (!is_hex(start[i])) return -1;
            o->flow_keys[r] = (Span){start - o->data, len};
        } else if (k == 2) {
            if (!take(c, '[')) return -1;
            do {
                if (context(c, o)) return -1;
            } while (take(c, ','));
            if (!take(c, ']')) return -1;
        } else if (k == 3) {
            if (literal(c, "null", 4)) continue;
            if (string(c, &start, &len) || len < 1) return -1;
            for (Py_ssize_t i = 0; i < len; i++)
                if (!is_name(start[i])) return -1;
            o->models[r] = (Span){start - o->data, len};
        } else {
            double v;
            int is_int;
            skip_ws(c);
            if (number(c, &v, &is_int) || !is_int || fabs(v) > MAX_HORIZON_TOKEN) return -1;
            o->horizons[r] = (long long)v;
        }
    } while (take(c, ','));
    if (!take(c, '}') || (seen & 6) != 6) return -1; /* flow_key and contexts are required */
    o->counts[r] = o->n - before;
    o->n_requests++;
    return 0;
}

static int parse(Cursor *c, Out *o, int batch) {
    if (batch) {
        if (!take(c, '{') || key(c, BATCH_KEYS, 1) != 1 || !take(c, '[')) return -1;
        do {
            if (request(c, o)) return -1;
        } while (take(c, ','));
        if (!take(c, ']') || !take(c, '}')) return -1;
    } else if (request(c, o)) {
        return -1;
    }
    skip_ws(c);
    return c->p == c->end ? 0 : -1;
}

static PyObject *span_str(const Out *o, Span s) {
    if (s.len < 0) return Py_NewRef(Py_None);
    return PyUnicode_DecodeASCII((const char *)o->data + s.start, s.len, NULL);
}

static PyObject *requests(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, lows, highs;
    int batch;
    long long min_timestamp, max_timestamp;
    Py_ssize_t key_length;
    if (!PyArg_ParseTuple(args, "y*py*y*LLn", &data, &batch, &lows, &highs, &min_timestamp, &max_timestamp,
                          &key_length))
        return NULL;
    PyObject *timestamps = NULL, *features = NULL, *result = NULL;
    PyObject *lists[4] = {NULL, NULL, NULL, NULL}; /* flow keys, models, horizons, counts */
    Out o;
    memset(&o, 0, sizeof o);
    Py_ssize_t width = lows.len / (Py_ssize_t)sizeof(double);
    if (width < 1 || width > 1024 || lows.len != width * (Py_ssize_t)sizeof(double) || highs.len != lows.len) {
        PyErr_SetString(PyExc_ValueError, "lows and highs must be float64 bytes of 1..1024 features each");
        goto done;
    }
    if (min_timestamp < 0 || max_timestamp < min_timestamp || max_timestamp > (1LL << 53) || key_length < 1) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= min_timestamp <= max_timestamp <= 2**53 and key_length >= 1");
        goto done;
    }
    o.data = (const unsigned char *)data.buf;
    o.width = width;
    o.key_length = key_length;
    o.lows = (const double *)lows.buf;
    o.highs = (const double *)highs.buf;
    o.min_timestamp = min_timestamp;
    o.max_timestamp = max_timestamp;
    /* a context takes at least {"timestamp":0,"features":[0,...]}: 27 + 2 * width bytes, and every
     * request holds one: room for that many of each, which the parse checks before every write */
    o.capacity = data.len / (27 + 2 * width) + 1;
    timestamps = PyBytes_FromStringAndSize(NULL, o.capacity * (Py_ssize_t)sizeof(int64_t));
    features = PyBytes_FromStringAndSize(NULL, o.capacity * width * (Py_ssize_t)sizeof(double));
    o.flow_keys = PyMem_RawMalloc((size_t)o.capacity * sizeof(Span));
    o.models = PyMem_RawMalloc((size_t)o.capacity * sizeof(Span));
    o.horizons = PyMem_RawMalloc((size_t)o.capacity * sizeof(long long));
    o.counts = PyMem_RawMalloc((size_t)o.capacity * sizeof(Py_ssize_t));
    if (timestamps == NULL || features == NULL) goto done;
    if (o.flow_keys == NULL || o.models == NULL || o.horizons == NULL || o.counts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    o.timestamps = (int64_t *)PyBytes_AS_STRING(timestamps);
    o.features = (double *)PyBytes_AS_STRING(features);
    Cursor c = {o.data, o.data + data.len};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = parse(&c, &o, batch);
    Py_END_ALLOW_THREADS
    if (failed) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (_PyBytes_Resize(&timestamps, o.n * (Py_ssize_t)sizeof(int64_t)) ||
        _PyBytes_Resize(&features, o.n * width * (Py_ssize_t)sizeof(double)))
        goto done;
    for (int i = 0; i < 4; i++)
        if ((lists[i] = PyList_New(o.n_requests)) == NULL) goto done;
    for (Py_ssize_t r = 0; r < o.n_requests; r++) {
        PyObject *items[4] = {span_str(&o, o.flow_keys[r]), span_str(&o, o.models[r]),
                              PyLong_FromLongLong(o.horizons[r]), PyLong_FromSsize_t(o.counts[r])};
        for (int i = 0; i < 4; i++) {
            if (items[i] == NULL) {
                for (int j = 0; j < 4; j++) Py_XDECREF(items[j]);
                goto done;
            }
        }
        for (int i = 0; i < 4; i++) PyList_SET_ITEM(lists[i], r, items[i]);
    }
    result = PyTuple_Pack(6, lists[0], lists[1], lists[2], timestamps, features, lists[3]);
done:
    PyMem_RawFree(o.flow_keys);
    PyMem_RawFree(o.models);
    PyMem_RawFree(o.horizons);
    PyMem_RawFree(o.counts);
    Py_XDECREF(timestamps);
    Py_XDECREF(features);
    for (int i = 0; i < 4; i++) Py_XDECREF(lists[i]);
    PyBuffer_Release(&data);
    PyBuffer_Release(&lows);
    PyBuffer_Release(&highs);
    return result;
}

static PyMethodDef METHODS[] = {
    {"requests", requests, METH_VARARGS,
     "requests(data, batch, lows, highs, min_timestamp, max_timestamp, key_length)\n"
     "    -> (flow_keys, models, horizons, timestamps, features, counts) | None\n\n"
     "A prediction body of the common shape, read into lists and int64 / float64 bytes; None when any "
     "part is not of that shape (see app/wire/_json_reader.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_json_reader", NULL, -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__json_reader(void) { return PyModule_Create(&MODULE); }
