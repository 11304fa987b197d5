"""Fuzzed inputs through one `prepare` run: crashes, accounting and peak memory. Prints JSON.

A synthetic cohort (DICOM and NIfTI) plus pydicom's CT_small.dcm and nibabel's example4d.nii.gz
are the good inputs; ``tests/data_prep/mutate.py`` makes --cases copies with one file broken
(about one in eight left intact as a control). All go through ONE ``prepare`` run with two
workers, as a hospital's export would. Reported: cases, prepared (the patient is in the
prepared data), reported (skipped or flagged with a reason naming the input), unaccounted
(neither), crashes (prepare raised, or an intact control was not prepared), the slowest
mutations, and peak RSS (this process and, separately, the largest worker).

    .venv/bin/python benchmarks/fuzz_prepare.py --cases 1000 [--seed 0] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.data_prep.mutate

from data_prep.pipeline import PrepConfig, prepare  # noqa: E402
from data_prep.prepared import PrepFolder  # noqa: E402
from data_prep.synthetic.cohort import CohortFormat, SynthConfig, write_cohort  # noqa: E402
from data_prep.worker import SliceSettings  # noqa: E402
from tests.data_prep.mutate import labels_csv, make_cases  # noqa: E402


def _sources(cohort: Path) -> tuple[list[list[Path]], list[Path]]:
    import nibabel.testing
    from pydicom.data import get_testdata_file

    dirs = [d for d in sorted((cohort / "dicom").rglob("*_axial")) if d.is_dir()]
    series = [sorted(p for p in d.iterdir() if p.is_file()) for d in dirs]
    series = [files for files in series if files]
    series.append([Path(get_testdata_file("CT_small.dcm", download=False))])
    volumes = sorted((cohort / "nifti").glob("*.nii.gz"))
    volumes.append(Path(nibabel.testing.data_path) / "example4d.nii.gz")
    return series, volumes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="covidct-fuzz-") as tmp:
        work = args.work or Path(tmp)
        cohort = work / "cohort"
        if not (cohort / "labels.csv").is_file():
            write_cohort(
                cohort,
                SynthConfig(
                    n_patients=16, n_slices=12, matrix=64, seed=5, formats=CohortFormat.MIXED
                ),
            )
        series, volumes = _sources(cohort)
        t0 = time.perf_counter()
        cases = make_cases(series, volumes, work / "in", n_cases=args.cases, seed=args.seed)
        made = time.perf_counter() - t0
        labels = labels_csv(cases, work / "labels.csv")
        t0 = time.perf_counter()
        crashed = ""
        result = None
        try:
            result = prepare(
                [work / "in"],
                work / "prep",
                config=PrepConfig(slices=SliceSettings(image_size=64), workers=args.workers),
                labels=[labels],
            )
        except BaseException as exc:  # noqa: BLE001  (what the benchmark measures)
            crashed = "".join(traceback.format_exception_only(exc)).strip()
        seconds = time.perf_counter() - t0
        prepared: set[str] = set()
        reported: set[str] = set()
        if result is not None:
            with PrepFolder(work / "prep").pseudonym_map.open(newline="") as f:
                prepared = {r["source_patient_id"] for r in csv.DictReader(f)}
            paths = [str(p.path) for p in [*result.skipped, *result.flagged]]
            reported = {c.patient for c in cases if any(str(c.path) in p for p in paths)}
        controls = [c for c in cases if c.mutation == "control" and c.source.is_relative_to(cohort)]
        lost_controls = [c.patient for c in controls if c.patient not in prepared]
        unaccounted = [c for c in cases if c.patient not in prepared | reported]
        kinds = Counter(c.mutation.split("@")[0].split("=")[0] for c in cases)
        print(
            json.dumps(
                {
                    "cases": len(cases),
                    "mutations": dict(sorted(kinds.items())),
                    "prepared": sum(c.patient in prepared for c in cases),
                    "reported": sum(c.patient in reported for c in cases),
                    "prepared_and_flagged": sum(
                        c.patient in prepared and c.patient in reported for c in cases
                    ),
                    "unaccounted": len(unaccounted),
                    "unaccounted_examples": [c.mutation for c in unaccounted[:10]],
                    "controls": len(controls),
                    "controls_not_prepared": len(lost_controls),
                    "crashes": int(bool(crashed)) + len(lost_controls),
                    "prepare_error": crashed,
                    "seconds_making_cases": round(made, 1),
                    "seconds_prepare": round(seconds, 1),
                    "workers": args.workers,
                    "peak_rss_mb_main": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                    "peak_rss_mb_largest_worker": round(
                        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
                    ),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
