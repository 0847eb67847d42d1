"""Write the sum-of-sines sequences the LSTM example trains on (HDF5, for HDF5Data).

    python examples/lstm/make_sines.py [OUTPUT_DIR]   (default: this folder)

Each of N streams is s_n(t) = sum_k a_k sin(w_k t + phase_nk), three frequencies with
random phases per stream. A record is one time step of every stream: x (N, 1) = s(t),
y (N, 1) = s(t + 1) (the value to predict) and cont (N,) = 0 at the first step, 1
after (the test file: other random phases). HDF5Data's batch of T records is then a T x N chunk of the streams in order, as
Caffe's recurrent layers take it (time first); consecutive batches continue the
streams, and the LSTM carries its hidden state from one batch to the next.

Also prints the loss of predicting s(t + 1) = s(t) (Caffe's EuclideanLoss over a T x N
batch: the sum of squared errors / 2T), the level a model has to beat.
"""
import os
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STREAMS, STEPS, T = 8, 4000, 25
FREQS = np.array([0.07, 0.19, 0.41])
AMPS = np.array([0.6, 0.3, 0.2])


def write(folder, name, steps, seed):
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=(STREAMS, len(FREQS)))
    t = np.arange(steps + 1)[:, None, None]
    s = (AMPS * np.sin(FREQS * t + phase)).sum(axis=2)          # (STEPS + 1, STREAMS)
    x = s[:-1, :, None].astype(np.float32)
    y = s[1:, :, None].astype(np.float32)
    cont = np.ones((steps, STREAMS), np.float32)
    cont[0] = 0
    path = os.path.join(folder, f"{name}.h5")
    with h5py.File(path, "w") as f:
        f["x"], f["cont"], f["y"] = x, cont, y
    with open(os.path.join(folder, f"{name}_list.txt"), "w") as f:
        f.write(f"{name}.h5\n")
    persist = float(((y - x) ** 2).sum() / (2 * T) / (steps // T))
    print(f"wrote {path}: {steps} steps x {STREAMS} streams; loss of predicting "
          f"s(t + 1) = s(t): {persist:.4f} per batch of {T} steps")
    return persist


def main(folder=HERE):
    persist = write(folder, "sines_train", STEPS, 0)
    write(folder, "sines_test", 500, 1)     # other phases: streams the net has not seen
    return persist


if __name__ == "__main__":
    main(*sys.argv[1:2])
