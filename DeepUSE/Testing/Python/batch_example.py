"""Offline DeepUSE strain of an RF recording, run by Slicer without its window.

    Slicer --no-main-window --python-script DeepUSE/Testing/Python/batch_example.py RF.mha STRAIN.nrrd --baseline
    Slicer --no-main-window --python-script DeepUSE/Testing/Python/batch_example.py RF.mha STRAIN.nrrd --model BUNDLE

RF.mha holds one RF frame per slice (axial samples along J, beam lines along I), e.g. what
``deepultrasound demo`` or ``deepultrasound.simulation.save_sequence`` write. STRAIN.nrrd gets
the axial strain in % of every frame pair, on the RF grid; the B-mode is saved beside it. The
script goes through the module logic (``DeepUSELogic.process``), as the Apply button does, and
exits with status 0, or 2 with a one-line message.
"""

import argparse
import sys
from pathlib import Path

import slicer
from DeepUSELib import DEFAULT_WINDOW_MM, StrainMethod

from DeepUSE import DeepUSELogic


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="batch_example.py", description=__doc__.splitlines()[0])
    parser.add_argument("rf", type=Path, help="RF recording, one frame per slice (.mha .nrrd .nii.gz)")
    parser.add_argument("strain", type=Path, help="axial strain volume to write (%%)")
    parser.add_argument("--model", default="", help="model bundle folder or bundled model name (default: bundled)")
    parser.add_argument("--baseline", action="store_true", help="NCC block matching instead of a network")
    parser.add_argument(
        "--window-mm", type=float, default=DEFAULT_WINDOW_MM, help="strain window in mm (default: 5.74)"
    )
    parser.add_argument(
        "--previous", action="store_true", help="pair each frame with the previous one (default: first)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    args = parser.parse_args(argv)

    rfVolume = slicer.util.loadVolume(str(args.rf))
    strainVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{rfVolume.GetName()} strain")
    method = StrainMethod(model=args.model, baseline=args.baseline, device=args.device, windowMm=args.window_mm)
    logic = DeepUSELogic()
    summary = logic.process(rfVolume, strainVolume, method, pairWithPrevious=args.previous)
    bmodePath = args.strain.with_name(args.strain.name.split(".")[0] + "_bmode" + "".join(args.strain.suffixes))
    for node, path in ((strainVolume, args.strain), (logic.bmodeVolume, bmodePath)):
        if not slicer.util.saveNode(node, str(path)):
            raise OSError(f"Could not write {path}")
    print(f"{args.strain}: {summary}; B-mode in {bmodePath}")
    return 0


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except (ValueError, OSError, RuntimeError) as error:  # RuntimeError: loadVolume could not read the file
        print(f"error: {error}", file=sys.stderr)
        status = 2
    slicer.util.exit(status)
