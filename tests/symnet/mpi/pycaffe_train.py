"""A pycaffe training script, unchanged from what it would be for Caffe's own solver
(``caffe.get_solver``, ``solver.step``), run under ``mpiexec -n N``: it writes each
rank's view of the world and its final params to OUT/rank<R>.npz.

    python pycaffe_train.py SOLVER OUT ITERS"""
import os
import sys

import numpy as np

import symnet.caffe as caffe

solver_path, out, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
caffe.set_mode_cpu()
count, rank = caffe.solver_count(), caffe.solver_rank()
caffe.set_solver_count(count)
caffe.set_solver_rank(rank)
solver = caffe.get_solver(solver_path)
solver.step(iters)
arrays = {f"{name}/{i}": blob.data for name, blobs in solver.net.params.items()
          for i, blob in enumerate(blobs)}
np.savez(os.path.join(out, f"rank{rank}.npz"), count=count, rank=rank,
         iter=solver.iter, **arrays)
