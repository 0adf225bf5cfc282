"""Throughput of pair preparation at the released resolution (S = 512), single process.

    python benchmarks/bench_pairs.py [--pairs 50] [--size 512] [--detail-map hf]

Synthetic 512x512 textured scenes with an elliptical object; prints pairs/s for
`prepare_training_pair` and `prepare_inference_inputs`, and ms per
`perturb_mask` call (the shape-mask step of training pairs).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from anydoor.data.pairs import PairConfig, PairRejected, prepare_inference_inputs, prepare_training_pair
from anydoor.data.perturb import perturb_mask


def synthetic_frame(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random scene with one textured elliptical object."""
    image = cv2.resize(rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8), (side, side))
    mask = np.zeros((side, side), np.uint8)
    centre = tuple(int(v) for v in rng.integers(side // 3, 2 * side // 3, 2))
    axes = tuple(int(v) for v in rng.integers(side // 10, side // 4, 2))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    texture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    image[mask > 0] = texture[mask > 0]
    return image, mask.astype(bool)


def rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(*item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic frames")
    parser.add_argument("--image-size", type=int, default=512, help="S, the target/hint side")
    parser.add_argument("--detail-map", default="hf")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    frames = [synthetic_frame(rng, args.size) for _ in range(2 * args.pairs)]
    config = PairConfig(image_size=args.image_size, detail_map=args.detail_map)

    def training(i):
        (ref, ref_mask), (tar, tar_mask) = frames[2 * i], frames[2 * i + 1]
        try:
            prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(i), config, kind="video")
        except PairRejected:
            pass  # counted like an accepted pair: a loader pays for the check either way

    def inference(i):
        (obj, obj_mask), (scene, scene_mask) = frames[2 * i], frames[2 * i + 1]
        rng = np.random.default_rng(i)
        prepare_inference_inputs(obj, obj_mask, scene, scene_mask=scene_mask, config=config, rng=rng)

    def perturb(i):
        perturb_mask(frames[i][1], np.random.default_rng(i))

    training(0)  # warm up OpenCV
    items = [(i,) for i in range(args.pairs)]
    print(f"frames {args.size}x{args.size}, S = {args.image_size}, detail map {args.detail_map!r}, {args.pairs} pairs")
    print(f"prepare_training_pair:    {rate(training, items):7.1f} pairs/s")
    print(f"prepare_inference_inputs: {rate(inference, items):7.1f} pairs/s")
    print(f"perturb_mask:             {1000 / rate(perturb, items):7.2f} ms/call ({args.size} px mask)")


if __name__ == "__main__":
    main()
