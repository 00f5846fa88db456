"""Many fits at once: threads sharing one fitted estimator, thread limits, processes sharing
one disk cache, Dask workers and the GPU of each worker."""

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skcxr import FeatureExtractorTransformer, ImageReadError, PretrainedCNNClassifier
from skcxr.cache import cache_info, clear_cache

ENGINES = ["torch", pytest.param("openvino", marks=pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("openvino") is None, reason="no openvino"))]


def _concurrently(fn, args, threads=4):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, args))


@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_transform_equals_sequential(data, tiny_fe, engine):
    X, _ = data
    # cache=False: every call computes, so the threads really run the network at once
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": engine}, cache=False).fit(X[:2])
    chunks = [X[i::6] for i in range(6)] * 2  # 12 calls, each on other images
    expected = [fe.transform(c) for c in chunks]
    got = _concurrently(fe.transform, chunks)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_concurrent_transform_with_the_cache_computes_each_image_once(data, tiny_fe):
    X, _ = data
    fe = FeatureExtractorTransformer(**tiny_fe).fit(X[:2])
    got = _concurrently(fe.transform, [X] * 4)
    assert cache_info()["features"]["computed"] == len(X)  # not 4x: the threads took turns
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])


@pytest.fixture(scope="module")
def fitted(data, tiny_clf):
    X, y = data
    return PretrainedCNNClassifier(**{**tiny_clf, "n_trainable_layers": 2}).fit(X, y)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_concurrent_predict_equals_sequential(fitted, data, method):
    X, _ = data
    chunks = [X[i::5] for i in range(5)] * 2
    fn = getattr(fitted, method)
    expected = [fn(c) for c in chunks]
    for e, g in zip(expected, _concurrently(fn, chunks)):
        np.testing.assert_array_equal(g, e)


def test_concurrent_gradcam_equals_sequential(fitted, data):
    pytest.importorskip("pytorch_grad_cam")
    from skcxr.explain import gradcam

    X, _ = data
    chunks = [X[i:i + 2] for i in range(0, 8, 2)]
    expected = [gradcam(fitted, c) for c in chunks]
    for e, g in zip(expected, _concurrently(lambda c: gradcam(fitted, c), chunks)):
        np.testing.assert_allclose(g, e, atol=1e-6)


# --------------------------------------------------------------------------- thread limits


def test_threadpool_limits_sizes_torch_and_openvino_and_is_restored(data, tiny_fe):
    pytest.importorskip("openvino")
    from threadpoolctl import threadpool_limits

    from skcxr._threads import thread_budget

    X, _ = data
    before = torch.get_num_threads()
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": "openvino"}, cache=False).fit(X[:2])
    clear_cache()
    with threadpool_limits(1):  # what scikit-learn users write to limit native threads
        assert thread_budget() == 1
        fe.transform(X[:8])
        assert torch.get_num_threads() == 1  # the user's limit, left as it was
    assert torch.get_num_threads() == before
    (compiled,) = cache_info()["compiled"]["contents"]
    assert compiled["threads"] == 1 and compiled["inference_num_threads"] == 1
    # inside run_pipelined the calling thread drops to 1 thread; afterwards it is back
    fe.transform(X[:8])
    assert torch.get_num_threads() == before


def _count_in_a_new_thread() -> int:
    got = []
    t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
    t.start()
    t.join()
    return got[0]


def test_caller_threads_changes_only_the_calling_thread_under_any_interleaving():
    """A overlaps B, B leaves last, then A runs again alone: with a process-wide, refcounted
    torch.set_num_threads this left every new thread on 1 thread (a stale count read as the
    one to restore), so threads of a pool computed with another reduction order than the
    main thread (1-2 ulp differences in decision_function seen in CI)."""
    from skcxr._threads import caller_threads, thread_budget

    before = torch.get_num_threads()
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with caller_threads(1):
            seen["a inside"] = (torch.get_num_threads(), thread_budget())
            a_in.set()
            b_in.wait()
        a_out.set()
        b_out.wait()
        with caller_threads(1):
            seen["new thread while a holds"] = _count_in_a_new_thread()
        seen["a after"] = torch.get_num_threads()

    def b():
        a_in.wait()
        seen["b while a holds"] = torch.get_num_threads()
        with caller_threads(1):
            b_in.set()
            a_out.wait()
        b_out.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a inside": (1, 1), "b while a holds": before,
                    "new thread while a holds": before, "a after": before}
    assert torch.get_num_threads() == before
    assert _count_in_a_new_thread() == before


def test_concurrent_openvino_transforms_leave_every_thread_count_as_it_was(data, tiny_fe):
    pytest.importorskip("openvino")
    X, _ = data
    before = torch.get_num_threads()
    fe = FeatureExtractorTransformer(**{**tiny_fe, "engine": "openvino"}, cache=False).fit(X[:2])
    for _ in range(3):
        _concurrently(fe.transform, [X[i::6] for i in range(6)] * 2)
        assert torch.get_num_threads() == before
        assert _count_in_a_new_thread() == before


def test_import_makes_waiting_omp_threads_passive_and_restores_the_environment():
    """libgomp reads its wait policy once, when torch loads it: skcxr sets it for that moment
    only (OMP_DISPLAY_ENV makes libgomp print what it read)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import skcxr, os; print('left:', os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_DISPLAY_ENV": "VERBOSE"},
                         capture_output=True, text=True, check=True)
    # torch's OpenMP runtime loads first: no spinning (libgomp's default is 300000 spins)
    assert [line for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line][0] \
        == "  GOMP_SPINCOUNT = '0'"
    assert "left: None" in out.stdout  # child processes see the user's environment
    # a policy the user chose is theirs
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_DISPLAY_ENV": "VERBOSE", "OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stderr and "left: ACTIVE" in out.stdout


_TRAIN_STEPS = """
import resource, sys
if sys.argv[1] == "skcxr":
    import skcxr  # noqa: F401
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.randn(16, 64, 28, 28)
net(x).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    net(x).sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_import_keeps_tensors_off_fresh_mmaps_in_dask_style_workers():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB:
    every tensor is a fresh mmap whose pages fault in again (fits ran 1.5-1.7x slower).
    Counted as page faults of ten training steps."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _TRAIN_STEPS, mode], env=env,
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert faults("skcxr") < 0.7 * faults("plain")
    out = subprocess.run([sys.executable, "-c", "import skcxr._allocator as a; "
                          "print(a.adaptive_mmap_threshold_lost())"],
                         env={**env, "MALLOC_MMAP_THRESHOLD_": "131072"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a threshold the user chose is left alone


_BLOCKS = """
import os, resource, sys, torch
from skcxr._allocator import heap_for_tensors
def faults(k):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(k):
        torch.ones(16 << 20)  # 64 MiB, above any mmap threshold glibc accepts
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
outside = faults(4)
with heap_for_tensors():
    with heap_for_tensors():  # nested: the outer one restores
        held = [torch.ones(16 << 20) for _ in range(2)]  # the heap grows by 128 MiB
        del held
        inside = faults(4)
    nested = faults(4)
    kept = resident()  # the freed blocks' pages stay with the process
returned = kept - resident()
with heap_for_tensors():  # a second large run refills what the first gave back
    held = [torch.ones(16 << 20) for _ in range(2)]
    del held
    kept = resident()
returned_again = kept - resident()
def small_runs(k):  # batch runs of a few images: each frees far less than glibc's threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(k):
        with heap_for_tensors():
            torch.ones(1 << 20)  # 4 MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
small_runs(1)
print(outside, inside, nested, returned, returned_again, small_runs(8))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_heap_for_tensors_reuses_pages_inside_and_gives_memory_back_after():
    """Inside ``heap_for_tensors`` (every fit and batch run), a freed 64 MiB tensor's pages
    serve the next one (page faults of at most one of four), where outside each one is a
    fresh mmap whose 16384 pages fault in. Leaving the last context gives the kept memory
    back to the OS where the process's resident memory grew by more than glibc's trim
    threshold (also when a second large run refills the first one's trimmed pages); small
    batch runs keep their few pages for the next one. A user's own malloc settings switch it
    off."""
    pages = (64 << 20) // 4096

    def run(**env):
        out = subprocess.run([sys.executable, "-c", _BLOCKS], env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        return [int(v) for v in out.stdout.split()]

    outside, inside, nested, returned, returned_again, small = run()
    assert outside > 0.9 * 4 * pages
    assert inside < 1.1 * pages and nested < 1.1 * pages  # at most one of four faulted
    assert returned > 0.9 * (64 << 20) and returned_again > 0.9 * (64 << 20)
    # no trim after a run that freed little: the next run's 4 MiB pages do not fault in
    # again (a trim after each run: 1024 faults every run, 8192 in all)
    assert small < 0.3 * 8 * 1024
    outside, inside, nested, returned, returned_again, small = run(MALLOC_MMAP_MAX_="65536")
    assert inside > 0.9 * 4 * pages  # the user's choice is left alone


_FORK_INSIDE = """
import os, resource, threading, torch
from skcxr._allocator import heap_for_tensors
inside, release = threading.Event(), threading.Event()
def hold():
    with heap_for_tensors():
        inside.set()
        release.wait(60)
t = threading.Thread(target=hold)
t.start()
inside.wait(60)
pid = os.fork()
if pid == 0:  # no context is open in the child: glibc's bounds are back, the count is 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        torch.ones(16 << 20)  # 64 MiB: a fresh mmap each again
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    with heap_for_tensors():  # its lock is free
        pass
    os._exit(0 if faults > 0.9 * 2 * 16384 else 1)
_, status = os.waitpid(pid, 0)
release.set()
t.join()
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"),
                    reason="fork, glibc's allocator")
def test_a_child_forked_inside_heap_for_tensors_gets_glibcs_bounds_back():
    """A child forked while another thread computes inside ``heap_for_tensors`` has no
    context open: it must not keep the parent's settings (every block from the heap,
    nothing trimmed) for the rest of its life, nor wait on the parent's lock."""
    out = subprocess.run([sys.executable, "-c", _FORK_INSIDE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["0"], out.stderr[-2000:]


# --------------------------------------------------------------------------- shared disk cache


def test_claims_split_work_between_processes(tmp_path):
    from skcxr._disk import DiskStore
    from skcxr.cache import _Claims

    store = DiskStore(tmp_path, {"kind": "test"})
    a, b = _Claims.open(store), _Claims.open(store)
    keys = [f"{i:04x}" * 8 for i in range(6)]
    mine = a.claim(keys, limit=4)
    assert len(mine) == 4 and b.claim(keys) == set(keys) - mine  # b takes the rest only
    # b waits for a's entries: released after storing, they land on disk
    store.put_many(sorted(mine), [np.zeros(2)] * 4)
    a.release(mine)
    t0 = time.perf_counter()
    b.wait(sorted(mine))
    assert time.perf_counter() - t0 < 1
    assert not list(tmp_path.rglob("*.claim")) or b.claim(sorted(mine)) == set(mine)


_HOLDER = """
import os, sys, time
from skcxr._disk import DiskStore
from skcxr.cache import _Claims
store = DiskStore(sys.argv[1], {"kind": "test"})
claims = _Claims.open(store)
got = claims.claim([f"{i:04x}" * 8 for i in range(64)])
print(len(got), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("death", ["SIGKILL", "SIGTERM", "alive"])
def test_a_dead_holders_claims_never_make_another_process_wait(tmp_path, death):
    """A worker killed while it holds claims (SIGKILL at any moment, a scheduler's SIGTERM)
    leaves its claim files behind, but its locks die with it: another process that needs
    those entries computes them at once. A live holder is waited for."""
    import signal

    from skcxr.cache import cached_rows

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "64"
        assert len(list(tmp_path.rglob("*.claim"))) == 64
        if death != "alive":
            holder.send_signal(getattr(signal, death))
            holder.wait(10)
        keys = [f"{i:04x}" * 8 for i in range(64)]
        computed = []

        def compute(positions):
            computed.extend(positions)
            return torch.arange(len(positions), dtype=torch.float32)[:, None].repeat(1, 3)

        done = threading.Event()

        def ask():
            cached_rows({"kind": "test"}, keys, compute, location=tmp_path)
            done.set()

        t0 = time.perf_counter()
        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        if death == "alive":
            assert not done.wait(1.5)  # the holder is alive: its entries are waited for
            holder.kill()
            holder.wait(10)
        assert done.wait(10)
        if death != "alive":
            assert time.perf_counter() - t0 < 2
        assert sorted(computed) == list(range(64))
        assert not list(tmp_path.rglob("*.claim"))  # taken over and released
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _grid(tiny_clf, memory, n_jobs=None):
    clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 1}, memory=memory)
    return GridSearchCV(clf, {"n_trainable_layers": [0, 2]}, scoring="roc_auc", refit=False,
                        cv=StratifiedKFold(3, shuffle=True, random_state=0),
                        error_score="raise", n_jobs=n_jobs)


def test_grid_search_on_dask_workers(dask_client, data, tiny_clf, tmp_path):
    import cloudpickle
    import joblib
    from threadpoolctl import threadpool_limits

    X, y = data
    with threadpool_limits(1):  # the workers' 1 thread each: same float sums, same scores
        sequential = _grid(tiny_clf, tmp_path / "seq").fit(X, y).cv_results_
    dask_client.run(__import__("skcxr.cache").cache.clear_cache)
    search = _grid(tiny_clf, tmp_path / "shared")
    # what travels to the workers: the unfitted estimator and paths, not pixels
    assert len(cloudpickle.dumps((search.estimator, X, y))) < 20_000
    with joblib.parallel_config("dask"):
        search.fit(X, y)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"],
                                  sequential["mean_test_score"])
    np.testing.assert_array_equal(search.cv_results_["split0_test_score"],
                                  sequential["split0_test_score"])
    # each image computed from its pixels once across both workers (to the anchor), and
    # each cut point derived from that once: 60 images x 2 cut points
    per_worker = dask_client.run(lambda: __import__("skcxr.cache").cache.cache_info()["features"])
    assert len(per_worker) == 2
    assert sum(info["computed"] for info in per_worker.values()) == len(X)
    assert sum(info["derived"] for info in per_worker.values()) == 2 * len(X)
    # OpenVINO compiled blobs were shared too (when the auto engine picks OpenVINO)


def test_dask_worker_failure_surfaces_as_the_original_error(dask_client, undecodable,
                                                            tiny_clf, tmp_path):
    import joblib

    X, y = undecodable
    with joblib.parallel_config("dask"), pytest.raises(ImageReadError, match="img"):
        _grid(tiny_clf, tmp_path).fit(X, y)


def test_grid_search_with_n_jobs_shares_the_disk_cache(data, tiny_clf, tmp_path):
    X, y = data
    search = _grid(tiny_clf, tmp_path, n_jobs=2).fit(X, y)
    sequential = _grid(tiny_clf, tmp_path / "seq").fit(X, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               sequential.cv_results_["mean_test_score"], atol=0.02)
    entries = list((tmp_path / "skcxr-features").glob("*/*/*.entry"))
    assert len(entries) == 3 * len(X)  # one per image and cut point, and the anchor
    assert not list(tmp_path.glob("skcxr-features/*/*/*.claim"))  # all released


def _worker_probe(est, X, y):
    """A scorer reporting its worker, packed into one float: pid, the candidate's
    ``n_trainable_layers``, and so far in that process the backbones loaded, the OpenVINO
    models compiled (or read from ``memory=``) and the compiled models held."""
    import os

    from skcxr.cache import cache_info

    info = cache_info()
    loads = info["backbones"]["misses"]
    compiled = info["compiled"]
    compiles = compiled["compiled"] + compiled["blob_hits"]
    held = compiled["entries"]  # an eviction (none expected: 3 models, room for 8) fails
    return (os.getpid() * 10**7 + est.n_trainable_layers * 10**6 + loads * 10**4
            + compiles * 10**2 + held)


def _per_worker(search):
    """pid -> (backbones loaded, models compiled or read, models held, candidates' c)."""
    out = {}
    for key, values in search.cv_results_.items():
        if key.startswith("split") and key.endswith("test_probe"):
            for v in values:
                pid, rest = divmod(int(v), 10**7)
                c, rest = divmod(rest, 10**6)
                loads, rest = divmod(rest, 10**4)
                compiles, held = divmod(rest, 10**2)
                old = out.get(pid, (0, 0, 0, frozenset()))
                out[pid] = (max(old[0], loads), max(old[1], compiles), max(old[2], held),
                            old[3] | {c})
    return out


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("openvino") is None,
                    reason="no openvino")
def test_a_second_grid_in_warm_loky_workers_loads_and_compiles_nothing(sample, tiny_clf,
                                                                       tmp_path):
    """loky keeps its workers between grids, and skcxr keeps per process what a fit needs
    (loaded backbones, compiled models): a second grid, on other images, in the same workers
    loads no backbone again and compiles no model twice (counted in each worker)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # fresh workers: the first grid starts them
    first = np.r_[0:30, 100:130]
    second = np.r_[30:60, 130:160]

    def grid(idx):
        clf = PretrainedCNNClassifier(**{**tiny_clf, "max_epochs": 1, "engine": "openvino"},
                                      memory=tmp_path)
        return GridSearchCV(clf, {"n_trainable_layers": [0, 2]}, refit=False, n_jobs=2,
                            cv=StratifiedKFold(3, shuffle=True, random_state=0),
                            scoring={"auc": "roc_auc", "probe": _worker_probe},
                            error_score="raise").fit(sample.data[idx], sample.target[idx])

    cold = _per_worker(grid(first))
    warm = _per_worker(grid(second))
    assert 1 <= len(cold) <= 2 and set(warm) <= set(cold)  # the same worker processes
    assert sum(compiles for _, compiles, _, _ in cold.values()) >= 1
    for pid, (loads, compiles, held, _) in warm.items():
        # one backbone load per worker, in grid one; each model compiled (or read) once
        # per worker: every compile is a model it still holds, none twice
        assert loads == cold[pid][0] == 1, (pid, cold[pid], warm[pid])
        # (a worker compiles a model when it first needs one: which candidates and images
        # it gets is loky's choice, and images another worker cached under memory= need
        # none, so grid two may compile what grid one did not, but never again)
        assert compiles == held and cold[pid][1] == cold[pid][2], (pid, cold[pid], warm[pid])


def test_parallel_startup_warning_is_for_slow_starting_workers_that_share_the_machine():
    from skcxr._workers import startup_message

    message = startup_message(3.6, 2.4, cores=2, threads=1)
    assert "3.6 s starting" in message and "2.4 s" in message
    assert "1 of this machine's 2 cores" in message
    assert startup_message(1.0, 2.4, cores=2, threads=1) is None  # start-up paid back
    assert startup_message(3.6, 2.4, cores=4, threads=4) is None  # a worker with every core


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: workers share nothing")
def test_parallel_startup_warning_is_given_once_per_parent_by_the_first_fresh_worker(
        data, tiny_clf, tmp_path):
    """A grid with n_jobs=2 in a fresh process: exactly one of its two fresh loky workers
    says that the start-up cost more than the fit, on its stderr (the parent's)."""
    import warnings

    from skcxr import ParallelStartupWarning

    X, y = data
    with warnings.catch_warnings():  # never in the user's own process
        warnings.simplefilter("error", ParallelStartupWarning)
        PretrainedCNNClassifier(**tiny_clf).fit(X, y)
    script = tmp_path / "grid.py"
    script.write_text(f"""
import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from skcxr import PretrainedCNNClassifier
X, y = np.array({list(X)!r}), np.array({list(y)!r})
clf = PretrainedCNNClassifier(**{{**{tiny_clf!r}, "max_epochs": 1}})
GridSearchCV(clf, {{"n_trainable_layers": [0, 2]}}, cv=StratifiedKFold(3), n_jobs=2,
             refit=False).fit(X, y)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("ParallelStartupWarning:") == 1, done.stderr[-3000:]


# --------------------------------------------------------------------------- GPUs


def test_device_auto_gives_each_worker_process_its_own_gpu(tmp_path):
    """Four worker processes on a (faked) 3-GPU machine: three GPUs leased, one shared."""
    code = ("import sys, torch; torch.cuda.is_available = lambda: True; "
            "torch.cuda.device_count = lambda: 3; from skcxr import _runtime; "
            "print(_runtime.resolve_device('auto'), flush=True); sys.stdin.read()")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "5,6,7", "TMPDIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    try:
        got = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.communicate("")
    # each GPU leased once; the fourth worker shares one (more workers than GPUs)
    assert set(got) == {"cuda:0", "cuda:1", "cuda:2"} and len(got) == 4
    assert sorted(f.name for f in (tmp_path / f"skcxr-gpu-{os.getuid()}").iterdir()) == \
        ["5.lock", "6.lock", "7.lock"]  # leased by physical id


def test_device_auto_with_one_visible_gpu_and_explicit_devices(monkeypatch, tmp_path):
    import tempfile

    from skcxr import _runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where leases would go
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _runtime.resolve_device("auto") == torch.device("cuda", 0)  # CUDA_VISIBLE_DEVICES
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _runtime.resolve_device("cuda:3") == torch.device("cuda", 3)  # asked: no lease
    assert not list(tmp_path.iterdir())


def test_startup_markers_of_ended_parents_are_removed(tmp_path, monkeypatch):
    """The once-per-parent markers do not pile up in the temp directory: the worker that
    makes a new one removes those of parents that have ended or whose pid was reused."""
    import tempfile

    from skcxr import _workers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prefix = _workers._marker_prefix()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    ended_pid = int(ended.stdout)
    me = os.getpid()
    live = f"{prefix}{me}-{_workers._start_time(me)}"
    stale = [f"{prefix}{ended_pid}-123", f"{prefix}{me}-1"]  # ended; our pid, other start
    for path in [live, *stale, str(tmp_path / "unrelated")]:
        open(path, "w").close()
    assert _workers.remove_stale_markers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [os.path.basename(live), "unrelated"])
