import os
import tempfile
import time

os.environ["LOWRANK_ARTIFACTS"] = tempfile.mkdtemp()
from lowrank_core import data, engine
from lowrank_core.methods.prune import PruneConfig

d = data.load_cifar10(None, download=False)
eng = engine.Engine("artifacts/baseline", d)
eng.warm_up().join()
import cProfile
import pstats

t = time.perf_counter()
r = eng.evaluate("prune", PruneConfig(0.5), with_latency=False)
print("prune", time.perf_counter() - t)
t = time.perf_counter()
r = eng.evaluate("quantize", with_latency=False)
print("int8", time.perf_counter() - t)
cProfile.run("eng.impact(r, None)", "/tmp/p4.out")
pstats.Stats("/tmp/p4.out").sort_stats("cumulative").print_stats(14)
