"""Fail each memory allocation of one kernel call in turn (run as a script).

``python allocation_faults.py CASE N_JOBS`` wraps the kernel entry point of
CASE so that, on call k of the sweep, the k-th Python allocation (objects,
NumPy arrays' headers, the kernel's own work table: every allocation
through Python's allocators) made inside that kernel fails, with
``_testcapi.set_nomemory``. The sweep runs k = 0, 1, ... until 20 calls in a
row succeed (past the kernel's last allocation), then prints, as JSON:

- ``faults``: the calls that raised, by exception type;
- ``tables``: the kernels' work tables still registered with tracemalloc in
  their domain (``_solvers.TABLE_DOMAIN``) after the sweep: each call frees
  its own, also when it raised, so 0;
- ``same``: whether a call after the sweep returns, bit for bit, what the
  same call returned before it (no cache left half-built).

A crash (a freed object freed again, say) ends the process by a signal.
"""
import gc
import json
import sys
import tracemalloc
import warnings

import _testcapi
import numpy as np

import fastlista
from fastlista._kernels import _cd, _certify, _dict, _lipschitz, _solvers, _unrolled
from fastlista.dictionary import learn_dictionary


def _cases(n_jobs):
    rng = np.random.default_rng(0)
    D = rng.standard_normal((12, 6))
    X = rng.standard_normal((40, 6))
    S = rng.random((40, 12)) < 0.5
    Z = fastlista.solve_lasso(X, D, 0.3, method="ista", max_iter=3, tol=0).codes

    def solve(method):
        return lambda: fastlista.solve_lasso(X, D, 0.3, method=method, max_iter=5, tol=0,
                                             n_jobs=n_jobs).codes

    def network(parametrization, what):
        net = fastlista.Lista(D, 0.3, 4, parametrization=parametrization, n_jobs=n_jobs)
        if what == "forward":
            return lambda: net.transform(X)
        return lambda: np.concatenate([g.ravel() for layer in net.loss_and_grad(X)[1]
                                        for g in layer.values()])

    return {
        "cd": (_cd, "coordinate_descent", solve("cd")),
        "ista": (_solvers, "prox_grad", solve("ista")),
        "fista": (_solvers, "prox_grad", solve("fista")),
        "oista": (_solvers, "prox_grad", solve("oista")),
        "backtracking": (_solvers, "prox_grad", solve("backtracking")),
        "duality_gap": (_certify, "certify",
                        lambda: fastlista.duality_gap(X, D, 0.3, Z)),
        "lipschitz": (_lipschitz, "lipschitz_supports",
                      lambda: fastlista.lipschitz(D, S, n_jobs=n_jobs)),
        "step_forward": (_unrolled, "forward", network("step", "forward")),
        "coupled_gradient": (_unrolled, "loss_and_grad", network("coupled", "gradient")),
        "lista_gradient": (_unrolled, "loss_and_grad", network("lista", "gradient")),
        "dictionary_step": (_dict, "bcd", lambda: learn_dictionary(
            X, 12, 0.3, method="batch", max_iter=2, D0=D, n_jobs=n_jobs).D),
    }


def main(case, n_jobs):
    module, name, call = _cases(n_jobs)[case]
    kernel = getattr(module, name)
    fault = [None]

    def faulty(*args, **kwargs):
        if fault[0] is None:
            return kernel(*args, **kwargs)
        _testcapi.set_nomemory(fault[0], fault[0] + 1)
        try:
            return kernel(*args, **kwargs)
        finally:
            _testcapi.remove_mem_hooks()

    setattr(module, name, faulty)
    warnings.simplefilter("ignore")
    expected = np.array(call())
    tracemalloc.start()
    faults, k, in_a_row = {}, 0, 0
    while in_a_row < 20:
        fault[0] = k
        try:
            call()
            in_a_row += 1
        except Exception as exc:  # noqa: BLE001 - counted by type
            faults[type(exc).__name__] = faults.get(type(exc).__name__, 0) + 1
            in_a_row = 0
        finally:
            fault[0] = None
        k += 1
    gc.collect()
    tables = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, _solvers.TABLE_DOMAIN)]).traces
    tracemalloc.stop()
    same = np.array_equal(np.array(call()), expected)
    print(json.dumps({"calls": k, "faults": faults, "tables": len(tables), "same": same}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
