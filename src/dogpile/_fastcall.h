/* Fast paths for the hottest methods (Dogpile.acquire and .get,
 * NameRegistry.get).
 *
 * Cython's wrapper for `def get(self, creator, value_fn=None, ...)` parses
 * arguments generically (and, for `*args, **kw`, builds a dict on every
 * call), which on CPython 3.14 and 3.15 costs as much as the lookup itself.
 * dp_install_fast_method() replaces such a method in its type's dict by a
 * METH_FASTCALL | METH_KEYWORDS method that calls a C function directly
 * when it gets exactly one positional argument and no keywords, and
 * otherwise calls the original method unchanged, so every other form of
 * call, every error message and the docstring stay Cython's.
 */
#ifndef DOGPILE_FASTCALL_H
#define DOGPILE_FASTCALL_H

#include <Python.h>

typedef PyObject *(*dp_one_arg)(PyObject *self, PyObject *arg);

#define DP_FAST_METHODS 5

/* Static: a PyMethodDef must outlive every descriptor made from it. */
static PyMethodDef dp_fast_defs[DP_FAST_METHODS];
static dp_one_arg dp_fast_fns[DP_FAST_METHODS];
static Py_ssize_t dp_fast_nargs[DP_FAST_METHODS]; /* the positional count taken fast */
static PyObject *dp_fast_general[DP_FAST_METHODS]; /* the original descriptors */

static PyObject *
dp_fast_dispatch(int i, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    PyObject *small[8];
    PyObject **all = small;
    PyObject *result;
    Py_ssize_t n, k;
    if (nargs == dp_fast_nargs[i] && kwnames == NULL)
        return dp_fast_fns[i](self, args[0]);
    /* Anything else: the original method, with self in front. */
    n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (n + 1 > 8) {
        all = PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
        if (all == NULL)
            return PyErr_NoMemory();
    }
    all[0] = self;
    for (k = 0; k < n; k++)
        all[k + 1] = args[k];
    result = PyObject_Vectorcall(dp_fast_general[i], all, nargs + 1, kwnames);
    if (all != small)
        PyMem_Free(all);
    return result;
}

#define DP_FAST_ENTRY(i)                                                            \
    static PyObject *dp_fast_entry_##i(PyObject *self, PyObject *const *args,       \
                                       Py_ssize_t nargs, PyObject *kwnames)         \
    {                                                                               \
        return dp_fast_dispatch(i, self, args, nargs, kwnames);                     \
    }
DP_FAST_ENTRY(0)
DP_FAST_ENTRY(1)
DP_FAST_ENTRY(2)
DP_FAST_ENTRY(3)
DP_FAST_ENTRY(4)

static PyObject *(*const dp_fast_entries[DP_FAST_METHODS])(
    PyObject *, PyObject *const *, Py_ssize_t, PyObject *) = {
    dp_fast_entry_0, dp_fast_entry_1, dp_fast_entry_2, dp_fast_entry_3, dp_fast_entry_4};

/* Replace type.name by the fast method, which calls fn(self, first
 * argument) when it gets exactly `nargs` (>= 1) positional arguments and no
 * keywords; 0, or -1 with an exception set. */
static int
dp_install_fast_method(PyObject *type, const char *name, dp_one_arg fn, Py_ssize_t nargs)
{
    static int used = 0;
    PyTypeObject *t = (PyTypeObject *)type;
    PyObject *general, *descr;
    int i;
    if (used >= DP_FAST_METHODS) {
        PyErr_SetString(PyExc_RuntimeError, "dogpile: too many fast methods");
        return -1;
    }
    general = PyDict_GetItemString(t->tp_dict, name); /* borrowed */
    if (general == NULL) {
        PyErr_Format(PyExc_AttributeError, "dogpile: no method %s to speed up", name);
        return -1;
    }
    if (!Py_IS_TYPE(general, &PyMethodDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "dogpile: %s is not a method descriptor", name);
        return -1;
    }
    i = used;
    Py_INCREF(general);
    dp_fast_general[i] = general; /* kept for good */
    dp_fast_defs[i].ml_name = name;
    dp_fast_defs[i].ml_meth = (PyCFunction)(void (*)(void))dp_fast_entries[i];
    dp_fast_defs[i].ml_flags = METH_FASTCALL | METH_KEYWORDS;
    /* The original's docstring: a static string of the Cython module. */
    dp_fast_defs[i].ml_doc = ((PyMethodDescrObject *)general)->d_method->ml_doc;
    dp_fast_fns[i] = fn;
    dp_fast_nargs[i] = nargs < 1 ? 1 : nargs;
    descr = PyDescr_NewMethod(t, &dp_fast_defs[i]);
    if (descr == NULL)
        return -1;
    if (PyDict_SetItemString(t->tp_dict, name, descr) < 0) {
        Py_DECREF(descr);
        return -1;
    }
    Py_DECREF(descr);
    used++;
    PyType_Modified(t);
    return 0;
}

/* The constructor call `Lock(mutex, creator, value_and_created_fn,
 * expiretime[, async_creator])`, once per lookup in the dogpile.cache
 * usage: a vectorcall on the type object itself (as list() and dict()
 * have), so that the usual positional call skips the argument tuple and
 * Cython's parsing of it; anything else (keywords, a wrong count) goes the
 * ordinary way, through type.__call__, and gets its errors from there. */
typedef PyObject *(*dp_make_lock)(PyObject *mutex, PyObject *creator, PyObject *value_and_created_fn,
                                  PyObject *expiretime, PyObject *async_creator);
static dp_make_lock dp_lock_maker;

static PyObject *
dp_lock_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *tuple, *dict = NULL, *result;
    Py_ssize_t k;
    if (nkw == 0 && (nargs == 4 || nargs == 5))
        return dp_lock_maker(args[0], args[1], args[2], args[3], nargs == 5 ? args[4] : Py_None);
    tuple = PyTuple_New(nargs);
    if (tuple == NULL)
        return NULL;
    for (k = 0; k < nargs; k++) {
        Py_INCREF(args[k]);
        PyTuple_SET_ITEM(tuple, k, args[k]);
    }
    if (nkw) {
        dict = PyDict_New();
        if (dict == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        for (k = 0; k < nkw; k++) {
            if (PyDict_SetItem(dict, PyTuple_GET_ITEM(kwnames, k), args[nargs + k]) < 0) {
                Py_DECREF(tuple);
                Py_DECREF(dict);
                return NULL;
            }
        }
    }
    result = PyType_Type.tp_call(type, tuple, dict);
    Py_DECREF(tuple);
    Py_XDECREF(dict);
    return result;
}

static int
dp_install_lock_vectorcall(PyObject *type, dp_make_lock maker)
{
    dp_lock_maker = maker;
    ((PyTypeObject *)type)->tp_vectorcall = dp_lock_vectorcall;
    return 0;
}

#endif /* DOGPILE_FASTCALL_H */
