#!/usr/bin/env python3
"""Regenerate the sample repository, or write a sample package.

    python scripts/make_sample_models.py repository [--out model_repository] [--state orchestrator_state]
    python scripts/make_sample_models.py package better --out /tmp/classifier-v2
    python scripts/make_sample_models.py package better --model detector --out /tmp/detector-v2

The repository holds two managed models: the classifier, and the detector behind its ensemble
``detection`` (steps detector_pre -> detector -> detector_nms).

Output is byte-for-byte reproducible (fixed seeds, rounded weights, fixed timestamps).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.sample import (
    CONFIG,
    MODEL,
    SEED_TIME,
    Variant,
    detector,
    golden_accuracy,
    save_golden,
    write_sample_package,
)
from orchestrator.store.metafile import META_FILE, Verification, VersionStatus, read_meta, write_meta

POLICY = """# Promotion policy for the sample classifier (see orchestrator/core/policy.py for every field).
promotion:
  warmup_requests: 3
  output_bound: 1.0e4
  max_score_drop: 0.0
  keep_resident: 1
  golden: golden
  batch_size: 8
"""

DETECTOR_POLICY = """# Promotion policy for the sample detector (see orchestrator/core/policy.py for every field).
# Clients call the ensemble "detection" (detector_pre -> detector -> detector_nms): a candidate
# is verified through a copy of it, and the watcher probes it. The golden set is camera frames
# (IMAGE.npy) with their boxes (truth.npy): the gate is mAP.
promotion:
  warmup_requests: 3
  output_bound: 1.0e4
  keep_resident: 1
  max_map_drop: 0.03     # "mAP_diff < 3%": the candidate's mAP@0.5:0.95 may trail the served one's by 3 points
  map_metric: map50_95
  golden: golden
  batch_size: 8
# Drift on what clients get through the ensemble (detections per frame and class shares against the
# last verified version's, alerting after 2 minutes outside mean +/- 3 sigma): off until tracing is
# budgeted (core/policy.py says why), e.g.
#   watch:
#     rules:
#       drift: {statistic: detections, samples_per_s: 2}
"""


def write_repository(root: Path, state_root: Path) -> None:
    write_classifier(root, state_root)
    write_detector(root, state_root)


def write_classifier(root: Path, state_root: Path) -> None:
    model = root / MODEL
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(CONFIG)
    state = state_root / MODEL
    state.mkdir(parents=True, exist_ok=True)
    (state / "policy.yaml").write_text(POLICY)
    save_golden(state / "golden")
    version = write_sample_package(model / "1", Variant.BASELINE)
    meta = read_meta(version / META_FILE)
    seeded = Verification(status=VersionStatus.VERIFIED, verified_by="seed", verified_at=SEED_TIME,
                          golden={"accuracy": golden_accuracy(Variant.BASELINE)})
    write_meta(version / META_FILE, replace(meta, version=1, verification=seeded))


def write_detector(root: Path, state_root: Path) -> None:
    """The detector (version 1: the baseline), its ensemble's steps, its policy and golden set."""
    model = root / detector.MODEL
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(detector.CONFIG)
    detector.write_steps(root)
    state = state_root / detector.MODEL
    state.mkdir(parents=True, exist_ok=True)
    (state / "policy.yaml").write_text(DETECTOR_POLICY)
    detector.save_golden(state / "golden")
    version = detector.write_detector_package(model / "1", detector.DetectorVariant.BASELINE)
    meta = read_meta(version / META_FILE)
    seeded = Verification(status=VersionStatus.VERIFIED, verified_by="seed", verified_at=SEED_TIME,
                          golden=detector.golden_metrics(detector.DetectorVariant.BASELINE))
    write_meta(version / META_FILE, replace(meta, version=1, verification=seeded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    repo = sub.add_parser("repository")
    repo.add_argument("--out", type=Path, default=Path("model_repository"))
    repo.add_argument("--state", type=Path, help="default: orchestrator_state/ beside --out")
    pkg = sub.add_parser("package")
    pkg.add_argument("variant", help=f"{MODEL}: {', '.join(v.value for v in Variant)}; "
                                     f"{detector.MODEL}: {', '.join(v.value for v in detector.DetectorVariant)}")
    pkg.add_argument("--model", choices=[MODEL, detector.MODEL], default=MODEL)
    pkg.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.what == "repository":
        state = args.state or args.out.parent / "orchestrator_state"
        write_repository(args.out, state)
        print(f"sample repository written to {args.out}, its policy and golden set to {state}")
    else:
        variants = detector.DetectorVariant if args.model == detector.MODEL else Variant
        if args.variant not in {v.value for v in variants}:
            parser.error(f"{args.model} has no variant {args.variant!r}: one of {', '.join(v.value for v in variants)}")
        if args.model == detector.MODEL:
            detector.write_detector_package(args.out, detector.DetectorVariant(args.variant))
        else:
            write_sample_package(args.out, Variant(args.variant))
        print(f"{args.model} {args.variant} package written to {args.out}")


if __name__ == "__main__":
    main()
