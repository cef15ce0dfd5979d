"""Stand-in for ``python -m deepultrasound synth`` that honours its command-line contract, for module tests.

Run as ``python fake_synth_engine.py -m deepultrasound synth LABELS -o OUT [options]`` (an interpreter
wrapper puts it where the module starts the engine). It writes known answers: sample n of label frame k is
``0.1 label + 0.01 n + 0.001 k`` (float32 in [0, 1] for labels up to 8), one 2-D image for one frame and one
sample, else a stack of K N slices, slice-major, on the label file's grid. Progress: tqdm bars on stderr over
samples and steps (each step sleeps ``STEP_S``, so that a long run can be cancelled); last stdout line: a
summary. A model other than :data:`MODEL` is an input error: one line on stderr, exit status 2.
With ``$FAKE_SYNTH_PIXEL_SCALE`` set, the pixels written are that many times larger than the labels' (a
resampled result, which the module must refuse).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

#: the only model this engine knows
MODEL = "fake-synthesis"
#: seconds per denoising step
STEP_S = 0.01


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepultrasound synth")
    parser.add_argument("labels")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--probe", choices=["linear", "sector"], default="linear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    return parser


def main(argv: list[str]) -> int:
    if argv[:3] != ["-m", "deepultrasound", "synth"]:
        print(f"InputError: this engine only runs 'synth', not {argv[:3]}", file=sys.stderr)
        return 2
    args = parser().parse_args(argv[3:])
    if args.model != MODEL:
        print(f"InputError: no synthesis model named '{args.model}' is installed", file=sys.stderr)
        return 2
    labelImage = sitk.ReadImage(args.labels)
    labels = sitk.GetArrayFromImage(labelImage).astype(np.float32)  # (K, H, W)
    frames, samples = labels.shape[0], args.n
    stack = np.empty((frames * samples, *labels.shape[1:]), np.float32)
    for index in tqdm(range(frames * samples), desc="samples", file=sys.stderr):
        frame, sample = divmod(index, samples)
        for _ in tqdm(range(args.steps), desc="denoising", leave=False, file=sys.stderr):
            time.sleep(STEP_S)
        stack[index] = 0.1 * labels[frame] + 0.01 * sample + 0.001 * frame
    scale = float(os.environ.get("FAKE_SYNTH_PIXEL_SCALE", "1"))
    spacing = [value * scale for value in labelImage.GetSpacing()]
    if len(stack) == 1:
        image = sitk.GetImageFromArray(stack[0])
        image.SetSpacing(spacing[:2])
        image.SetOrigin(labelImage.GetOrigin()[:2])
        direction = np.array(labelImage.GetDirection()).reshape(3, 3)
        image.SetDirection(direction[:2, :2].ravel().tolist())
    else:
        image = sitk.GetImageFromArray(stack)
        image.SetSpacing(spacing)
        image.SetOrigin(labelImage.GetOrigin())
        image.SetDirection(labelImage.GetDirection())
    sitk.WriteImage(image, args.output)
    height, width = labels.shape[1:]
    print(f"wrote {samples} sample(s) of {frames} frame(s) of {height} x {width}: {args.steps} {args.sampler} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
