#!/usr/bin/env python3
"""The model- and data-loading workloads of bench/run, as the programs people run do them.

Each subcommand prints one JSON object (`seconds` always there):

  make-model PATH SIZE_MIB TENSOR_MIB     a safetensors file of float32 tensors (seeded)
  load-model PATH ORDER PROCS             safetensors' own safe_open (mmap) in PROCS
                                          processes at once, each reading every tensor
                                          in file order or shuffled (ORDER: file|shuffled)
  read-whole PATH                         one sequential read of the file, as torch.load
  make-dataset DIR FILES DIRS SIZE_KIB    FILES files spread over DIRS directories
  epoch DIR WORKERS SEED                  every file of DIR read whole by WORKERS worker
                                          processes in a random order (a DataLoader epoch)
  checkpoint DIR SIZE_MIB                 SIZE_MIB written to DIR/ckpt.tmp, fsync, renamed
                                          to DIR/ckpt (torch.distributed.checkpoint's way)

Needs numpy and safetensors (pip install numpy safetensors).
"""

import json
import multiprocessing
import os
import random
import sys
import time

MIB = 1 << 20


def emit(**fields):
    print(json.dumps(fields))


def make_model(path, size_mib, tensor_mib):
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1234)
    count = max(1, size_mib // tensor_mib)
    elements = tensor_mib * MIB // 4
    tensors = {f"layer.{i:04d}.weight": rng.standard_normal(elements, dtype=np.float32) for i in range(count)}
    started = time.monotonic()
    save_file(tensors, path)
    emit(seconds=time.monotonic() - started, tensors=count, bytes=os.path.getsize(path))


def load_all(path, order, seed):
    from safetensors import safe_open

    total = 0
    with safe_open(path, framework="np") as f:
        names = list(f.keys())
        if order == "file":
            # keys() is sorted by name; the file holds them in that order (save_file sorts).
            names.sort()
        else:
            random.Random(seed).shuffle(names)
        for name in names:
            tensor = f.get_tensor(name)
            total += tensor.nbytes
    return total


def _load_worker(args):
    return load_all(*args)


def load_model(path, order, procs):
    started = time.monotonic()
    if procs == 1:
        total = load_all(path, order, 7)
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            total = sum(pool.map(_load_worker, [(path, order, 7 + i) for i in range(procs)]))
    seconds = time.monotonic() - started
    emit(seconds=seconds, bytes=total, mib_per_s=total / MIB / seconds)


def read_whole(path):
    started = time.monotonic()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(8 * MIB)
            if not chunk:
                break
            total += len(chunk)
    seconds = time.monotonic() - started
    emit(seconds=seconds, bytes=total, mib_per_s=total / MIB / seconds)


def make_dataset(root, files, dirs, size_kib):
    rng = random.Random(99)
    started = time.monotonic()
    for i in range(files):
        d = os.path.join(root, f"d{i % dirs:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"sample{i:06d}.bin"), "wb") as f:
            f.write(rng.randbytes(size_kib * 1024))
    emit(seconds=time.monotonic() - started, files=files)


def _read_file(path):
    with open(path, "rb") as f:
        return len(f.read())


def epoch(root, workers, seed):
    started = time.monotonic()
    paths = [os.path.join(d, name) for d, _, names in os.walk(root) for name in names]
    random.Random(seed).shuffle(paths)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        total = sum(pool.imap_unordered(_read_file, paths, chunksize=4))
    seconds = time.monotonic() - started
    emit(seconds=seconds, files=len(paths), bytes=total, mib_per_s=total / MIB / seconds)


def checkpoint(root, size_mib):
    chunk = random.Random(5).randbytes(8 * MIB)
    tmp, final = os.path.join(root, "ckpt.tmp"), os.path.join(root, "ckpt")
    started = time.monotonic()
    with open(tmp, "wb") as f:
        for _ in range(size_mib // 8):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    emit(seconds=time.monotonic() - started, bytes=size_mib * MIB)


def main():
    args = sys.argv[1:]
    commands = {
        ("make-model", 3): lambda: make_model(args[1], int(args[2]), int(args[3])),
        ("load-model", 3): lambda: load_model(args[1], args[2], int(args[3])),
        ("read-whole", 1): lambda: read_whole(args[1]),
        ("make-dataset", 4): lambda: make_dataset(args[1], int(args[2]), int(args[3]), int(args[4])),
        ("epoch", 3): lambda: epoch(args[1], int(args[2]), int(args[3])),
        ("checkpoint", 2): lambda: checkpoint(args[1], int(args[2])),
    }
    command = commands.get((args[0] if args else "", len(args) - 1))
    if command is None or (args[0] == "load-model" and args[2] not in ("file", "shuffled")):
        sys.exit(__doc__)
    command()


if __name__ == "__main__":
    main()
