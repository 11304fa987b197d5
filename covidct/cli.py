"""The ``covidct`` command: thin subcommands over the library.

A covidct error prints one line and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from covidct.config import Config, load_config
from covidct.runs import Run, SweepFolder
from data_prep.errors import CovidCTError
from data_prep.prepared import PrepFolder

if TYPE_CHECKING:  # the CLI imports TensorFlow-side modules only when a command needs them
    from covidct.train import RunResult
    from covidct.train_config import TrainConfig


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (see configs/default.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set prepare.slices.image_size=128 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="Differentially private chest-CT COVID-19 classification.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the built-in synthetic chest-CT cohort (DICOM + NIfTI)")
    s.add_argument("--out", type=Path, required=True, help="folder to write the cohort into")
    s.add_argument("--patients", type=int, help="number of patients")
    s.add_argument("--slices", type=int, help="slices per volume")
    s.add_argument("--matrix", type=int, help="in-plane pixels (square)")
    s.add_argument("--seed", type=int, help="random seed (the cohort is deterministic)")
    s.add_argument("--formats", choices=["mixed", "dicom", "nifti"], help="file formats")
    s.add_argument("--workers", type=int, help="processes (0 = all cores)")
    s.add_argument(
        "--style",
        choices=["a", "b"],
        help="phantom generator: a (default) or b, another scanner, population and lesion look",
    )
    _add_config_args(s)

    p = sub.add_parser("prepare", help="DICOM / NIfTI / slice images -> de-identified slices")
    p.add_argument("inputs", nargs="+", type=Path, help="DICOM trees, NIfTI files, image folders")
    p.add_argument("--out", type=Path, required=True, help="the prepared-data folder (PREP)")
    p.add_argument(
        "--labels",
        type=Path,
        action="append",
        default=[],
        help="CSV with 'label' and one of patient_id / study_uid / path (repeatable)",
    )
    p.add_argument("--workers", type=int, help="processes (0 = all cores)")
    p.add_argument("--image-size", type=int, help="output slice size in pixels")
    p.add_argument("--image-patient-regex", help="regex: group 1 of an image file name = patient")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any input was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose", action="store_true", help="list every skipped series (localizers too)"
    )
    _add_config_args(p)

    t = sub.add_parser("train", help="NanoBatch DP-SGD training with an epsilon report")
    t.add_argument("--data", type=Path, help="the prepared-data folder (PREP)")
    t.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run folder from its last checkpoint (its own settings)",
    )
    t.add_argument(
        "--epsilon",
        type=_epsilon,
        help="target epsilon per privacy unit, e.g. 3; 'inf' trains without DP (baseline)",
    )
    t.add_argument("--no-dp", action="store_true", help="same as --epsilon inf")
    t.add_argument("--runs", type=Path, default=Path("runs"), help="folder for run folders")
    t.add_argument("--run-id", help="name of the run folder (default: time-epsilon-random)")
    t.add_argument("--privacy-unit", choices=["patient", "slice"], help="unit of privacy")
    t.add_argument(
        "--model",
        help="the model (train.model): attenuation (default), scattering, gn_cnn_small, "
        "gn_resnet18; a CNN trains best with --config configs/cnn.yaml",
    )
    t.add_argument(
        "--clipping",
        choices=["flat", "per-layer"],
        help="flat: one norm C per unit; per-layer: each layer to C_l, sum of C_l^2 = C^2",
    )
    t.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel replicas on this machine: N GPUs (0 = all) or N CPU devices",
    )
    t.add_argument(
        "--workers",
        metavar="HOST:PORT,...",
        help="train on several machines (MultiWorkerMirroredStrategy; default: TF_CONFIG)",
    )
    t.add_argument(
        "--worker-index", type=int, metavar="I", help="this machine's place in --workers"
    )
    t.add_argument(
        "--pipeline-stages",
        type=int,
        metavar="N",
        help="with --clipping per-layer: clip N consecutive stages of the model (pipeline groups)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(t)

    pt = sub.add_parser(
        "pretrain",
        help="train WITHOUT DP on public data; write starting weights and their provenance",
    )
    pt.add_argument(
        "--data", type=Path, required=True, help="a prepared dataset that needs no protection"
    )
    pt.add_argument(
        "--out",
        type=Path,
        required=True,
        help="writes OUT.weights.h5 and OUT.json; start a private run with "
        "--set train.initial_weights=OUT.weights.h5",
    )
    pt.add_argument("--runs", type=Path, default=Path("runs"), help="folder for the run folder")
    pt.add_argument("--run-id", help="name of the run folder (default: time-epsilon-random)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(pt)

    w = sub.add_parser("sweep", help="privacy/utility curves: a grid of trainings")
    w.add_argument("--data", type=Path, required=True, help="the prepared-data folder (PREP)")
    w.add_argument(
        "--epsilons", required=True, help="target epsilons, e.g. 1,3,8,inf (inf = baseline)"
    )
    w.add_argument(
        "--batch-sizes", help="expected logical batch sizes, e.g. 16,64,256 (default: config's)"
    )
    w.add_argument("--seeds", type=int, default=1, help="seeds per point (default 1)")
    w.add_argument(
        "--out", type=Path, help="sweep folder (default sweeps/<time>); an existing one resumes"
    )
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(w)

    r = sub.add_parser("report", help="show a run or sweep; write a model card")
    r.add_argument("path", type=Path, help="a run folder or a sweep folder")
    r.add_argument("--markdown", type=Path, help="write the model card (or sweep report) here")
    r.add_argument("--html", type=Path, help="write it as one self-contained HTML file here")

    g = sub.add_parser("budget", help="a prepared dataset's privacy ledger and budget")
    g.add_argument("data", type=Path, help="the prepared-data folder (PREP)")
    g.add_argument("--set", dest="budget", type=_epsilon, help="set the total epsilon budget")
    g.add_argument("--delta", type=float, help="delta of the budget (default: below 1/N)")

    d = sub.add_parser("dashboard", help="the Streamlit dashboard for clinicians")
    d.add_argument("--runs", type=Path, default=Path("runs"), help="folder of runs and sweeps")
    d.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    d.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to serve on (default: this machine only); any other address needs login",
    )
    d.add_argument(
        "--auth-secrets",
        type=Path,
        metavar="SECRETS_TOML",
        help="Streamlit secrets file whose [auth] section configures login with your identity "
        "provider (default: .streamlit/secrets.toml here or in your home folder, if present); "
        "with it every user must log in",
    )
    d.add_argument(
        "--insecure-no-login",
        action="store_true",
        help="serve a non-loopback address WITHOUT login: anyone who reaches it sees every "
        "model and can upload scans",
    )

    a = sub.add_parser(
        "audit", help="membership-inference audit of a trained run (also run by train)"
    )
    a.add_argument("run", type=Path, help="a run folder written by covidct train")
    return parser


def _epsilon(text: str) -> float:
    value = float(text)  # accepts "inf"
    if not value > 0:
        raise argparse.ArgumentTypeError(f"epsilon must be > 0 (or inf), got {text}")
    return value


def _cmd_synth(args: argparse.Namespace, cfg: Config) -> int:
    from data_prep.synthetic.cohort import CohortFormat, PhantomStyle, write_cohort

    c = cfg.synth
    c = replace(
        c,
        n_patients=args.patients if args.patients is not None else c.n_patients,
        n_slices=args.slices if args.slices is not None else c.n_slices,
        matrix=args.matrix if args.matrix is not None else c.matrix,
        seed=args.seed if args.seed is not None else c.seed,
        formats=CohortFormat(args.formats) if args.formats else c.formats,
        workers=args.workers if args.workers is not None else c.workers,
        style=PhantomStyle(args.style) if args.style else c.style,
    )
    summary = write_cohort(args.out, c, progress=sys.stderr.isatty())
    print(
        f"wrote {c.n_patients} synthetic patients ({c.n_slices} slices of {c.matrix}x{c.matrix}, "
        f"style {c.style.value}) to {summary.out_dir}; labels in {summary.out_dir / 'labels.csv'}"
    )
    return 0


def _cmd_prepare(args: argparse.Namespace, cfg: Config) -> int:
    from data_prep.pipeline import prepare

    c = cfg.prepare
    if args.workers is not None:
        c = replace(c, workers=args.workers)
    if args.image_size is not None:
        c = replace(c, slices=replace(c.slices, image_size=args.image_size))
    if args.image_patient_regex:
        c = replace(c, image_patient_regex=args.image_patient_regex)
    result = prepare(
        args.inputs,
        args.out,
        config=c,
        labels=args.labels,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    routine: dict[str, int] = {}
    for prob in result.skipped:
        if prob.what == "series" and not args.verbose:
            # localizers, other modalities, the unchosen reconstruction of a study: expected in
            # any real export, so counted rather than listed (--verbose lists them)
            key = prob.reason.rsplit(" (", 1)[0]
            routine[key] = routine.get(key, 0) + 1
            continue
        print(f"skipped  {prob.path}: {prob.reason}", file=sys.stderr)
    for reason, count in sorted(routine.items()):
        print(f"skipped  {count} series: {reason} (--verbose lists them)", file=sys.stderr)
    for prob in result.flagged:
        print(f"flagged  {prob.path}: {prob.reason}", file=sys.stderr)
    sp = result.split_patients
    print(
        f"prepared {result.n_slices} slices from {result.n_volumes} scans of {result.n_patients} "
        f"patients (train {sp['train']}, validation {sp['validation']}, test {sp['test']}); "
        f"{len(result.skipped)} inputs skipped, {len(result.flagged)} flagged; "
        f"{result.processed} scans processed, {result.reused} reused from an earlier run"
    )
    folder = PrepFolder(result.out_dir)
    print(f"manifest: {folder.manifest_file}")
    print(f"report:   {folder.report_file}")
    if not result.usable:
        print(
            "error: nothing usable was prepared: no input gave a labelled chest CT "
            "(see the skipped inputs above)",
            file=sys.stderr,
        )
        return 2
    if args.strict and result.skipped:
        print(f"error: --strict and {len(result.skipped)} inputs were skipped", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from covidct.config import to_dict
    from covidct.train import Placement, resume, train

    if (args.workers is None) != (args.worker_index is None):
        print("error: --workers and --worker-index go together", file=sys.stderr)
        return 2
    placement = Placement(
        local_devices=args.devices, workers=args.workers, worker_index=args.worker_index
    )
    progress = not args.no_progress and sys.stderr.isatty()
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.resume is not None:
        if _resume_refusal(args):
            return 2
        result = resume(args.resume, progress=progress, on_event=say, placement=placement)
    else:
        epsilon = _train_epsilon(args)
        if epsilon is None:
            return 2
        cfg = replace(cfg, train=_train_flags(args, cfg.train))
        result = train(
            args.data,
            config=cfg.train,
            target_epsilon=epsilon,
            runs_dir=args.runs,
            run_id=args.run_id,
            resolved_config=to_dict(cfg),
            progress=progress,
            on_event=say,
            placement=placement,
        )
    _print_train_result(result)
    return 0


def _resume_refusal(args: argparse.Namespace) -> bool:
    """--resume with settings of a new run: say which to drop (True)."""
    given = [
        flag
        for flag, value in (
            ("--data", args.data),
            ("--epsilon", args.epsilon),
            ("--no-dp", args.no_dp),
            ("--config", args.config),
            ("--set", args.overrides),
            ("--privacy-unit", args.privacy_unit),
            ("--model", args.model),
            ("--clipping", args.clipping),
            ("--pipeline-stages", args.pipeline_stages),
            ("--run-id", args.run_id),
        )
        if value
    ]
    if given:
        print(
            f"error: --resume continues a run with the settings it started with; drop "
            f"{', '.join(given)}",
            file=sys.stderr,
        )
    return bool(given)


def _train_epsilon(args: argparse.Namespace) -> float | None:
    """The target epsilon of a new run (inf for --no-dp); None after saying what is missing."""
    import math

    if args.data is None:
        print("error: give --data PREP (or --resume RUN)", file=sys.stderr)
        return None
    if args.no_dp:
        return math.inf
    if args.epsilon is None:
        print(
            "error: give --epsilon (e.g. --epsilon 3) or --no-dp for the baseline", file=sys.stderr
        )
        return None
    return float(args.epsilon)


def _train_flags(args: argparse.Namespace, c: TrainConfig) -> TrainConfig:
    """The train config with the command line's own flags applied."""
    from covidct.data.units import PrivacyUnit
    from covidct.privacy.modes import ClippingMode

    if args.privacy_unit:
        c = replace(c, privacy_unit=PrivacyUnit(args.privacy_unit))
    if args.model:
        c = replace(c, model=args.model)
    if args.clipping:
        c = replace(c, clipping=ClippingMode(args.clipping))
    if args.pipeline_stages is not None:
        c = replace(c, pipeline_stages=args.pipeline_stages)
    return c


def _print_train_result(result: RunResult) -> None:
    import math

    from covidct.privacy.audit import epsilon_estimate

    if not result.chief:
        print(f"worker done ({result.seconds:.0f} s on {result.device}); worker 0 wrote the run")
        return
    p = result.metrics["patient"]
    eps = result.privacy.epsilon
    print(
        f"run {result.run_dir}: epsilon {eps:.3f} (delta {result.privacy.delta:.0e}, per "
        f"{result.privacy.privacy_unit})"
        if math.isfinite(eps)
        else f"run {result.run_dir}: NO differential privacy (baseline)"
    )
    print(
        f"test patients: AUC {_fmt(p['auc'])}, sensitivity {_fmt(p['sensitivity'])}, "
        f"specificity {_fmt(p['specificity'])} (threshold {p['threshold']:.3f} from validation); "
        f"{result.seconds:.0f} s on {result.device}"
    )
    audit = result.privacy.audit
    if audit:
        print(
            f"audit: attack AUC {audit['attack_auc']:.3f}, epsilon estimate from this one model "
            f"{epsilon_estimate(audit):.3g} (guarantee: {_fmt_eps(eps)})"
        )
    print(f"privacy report: {result.run_dir / Run.REPORT_MD}")
    print(f"metrics:        {result.run_dir / Run.METRICS}")


def _cmd_pretrain(args: argparse.Namespace, cfg: Config) -> int:
    from covidct.config import to_dict
    from covidct.pretrain import pretrain
    from covidct.public_start import provenance_path

    progress = not args.no_progress and sys.stderr.isatty()
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    result, start = pretrain(
        args.data,
        out=args.out,
        config=cfg.train,
        runs_dir=args.runs,
        run_id=args.run_id,
        resolved_config=to_dict(cfg),
        progress=progress,
        on_event=say,
    )
    auc = result.metrics["patient"]["auc"]
    public = start.public_data or {}
    print(f"run {result.run_dir}: NO differential privacy (public pretraining)")
    print(f"public test patients: AUC {_fmt(auc)}")
    print(f"weights:    {start.weights} (SHA-256 {start.sha256})")
    print(
        f"provenance: {provenance_path(start.weights)} (public manifest SHA-256 "
        f"{public.get('manifest_sha256')}, {public.get('patients')} patients)"
    )
    print(f"start a private run from them: --set train.initial_weights={start.weights}")
    return 0


def _fmt3(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "n/a"


def _cmd_sweep(args: argparse.Namespace, cfg: Config) -> int:
    import math
    import time

    from covidct.config import to_dict
    from covidct.sweep import SweepError, SweepPoint, grid, parse_epsilons, run_sweep

    epsilons = parse_epsilons(args.epsilons)
    if args.batch_sizes:
        try:
            sizes = [int(b) for b in args.batch_sizes.split(",")]
        except ValueError:
            raise SweepError(
                f"--batch-sizes: {args.batch_sizes!r} is not a list of integers"
            ) from None
    else:
        sizes = [cfg.train.batch_size]
    total = len(grid(epsilons, sizes, args.seeds))
    out = args.out or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S")
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="run", desc="sweep")
    done = [0]

    def on_point(point: SweepPoint, what: str) -> None:
        if what in ("start", "resume"):
            if bar is not None:
                bar.set_postfix_str(point.run_id)
            else:
                verb = "training" if what == "start" else "resuming"
                print(f"[{done[0] + 1}/{total}] {verb} {point.run_id}", file=sys.stderr)
            return
        done[0] += 1
        if bar is not None:
            bar.update(1)
        elif what == "skip":
            print(f"[{done[0]}/{total}] {point.run_id} already finished", file=sys.stderr)

    rows = run_sweep(
        args.data,
        out,
        epsilons=epsilons,
        batch_sizes=sizes,
        seeds=args.seeds,
        config=cfg.train,
        resolved_config=to_dict(cfg),
        on_point=on_point,
    )
    if bar is not None:
        bar.close()
    print(f"sweep {out}: {len(rows)} runs")
    for row in sorted(rows, key=lambda r: float(r["epsilon_target"])):
        eps = float(row["epsilon_target"])
        what = "no DP (baseline)" if math.isinf(eps) else f"epsilon {eps:g}"
        test, val = row.get("patient_auc"), row.get("validation_patient_auc")
        print(
            f"  {what:>18}: test patient AUC {_fmt3(test)}, validation {_fmt3(val)} "
            f"({row['run_id']})"
        )
    print(f"curves:  {out / SweepFolder.CURVES}")
    print(f"report:  {out / SweepFolder.REPORT}")
    return 0


def _cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    from covidct import model_card
    from data_prep.atomic import atomic_write_text

    if (args.path / SweepFolder.SPEC).is_file():
        if not (args.path / SweepFolder.REPORT).is_file():
            raise model_card.ReportInputError(
                f"{args.path} has no finished runs yet: run covidct sweep again to resume it"
            )
        text = (args.path / SweepFolder.REPORT).read_text()
        print(text)
        if args.markdown:
            atomic_write_text(args.markdown, text)
        if args.html:
            atomic_write_text(args.html, model_card.sweep_html(args.path))
    else:
        run = model_card.load_run(args.path)
        print(model_card.terminal_summary(run))
        if args.markdown:
            atomic_write_text(args.markdown, model_card.model_card_markdown(run))
        if args.html:
            atomic_write_text(args.html, model_card.model_card_html(run))
    for out in (args.markdown, args.html):
        if out:
            print(f"written: {out}")
    return 0


def _cmd_budget(args: argparse.Namespace, cfg: Config) -> int:
    from covidct.data.units import PrivacyUnit, load_units
    from covidct.privacy import ledger, limits

    n = len(load_units(args.data, "train", PrivacyUnit.PATIENT))  # also checks it is a PREP
    default_delta = limits.default_delta(n)
    if args.budget is not None:
        delta = args.delta if args.delta is not None else default_delta
        if not 0 < delta < 1 / max(n, 1):
            print(f"error: --delta must be in (0, 1/N) with N = {n} patients", file=sys.stderr)
            return 2
        ledger.set_budget(args.data, epsilon=args.budget, delta=delta)
    print(ledger.summary(args.data, default_delta=default_delta))
    return 0


def _cmd_dashboard(args: argparse.Namespace, cfg: Config) -> int:
    import os

    app = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"
    if not app.is_file():
        print(f"error: the dashboard is not installed ({app} missing)", file=sys.stderr)
        return 2
    secrets, problem = _auth_secrets(args.auth_secrets)
    if args.auth_secrets is not None and secrets is None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not _is_loopback(args.address) and secrets is None:
        if not args.insecure_no_login:
            print(
                f"error: --address {args.address} serves the dashboard to the network, and "
                f"without login anyone who reaches it sees every model and can upload scans. "
                f"Configure login ({problem}; see the README: Streamlit's OIDC login with your "
                "identity provider), or keep the default 127.0.0.1 behind an authenticating "
                "reverse proxy, or pass --insecure-no-login if this network is trusted.",
                file=sys.stderr,
            )
            return 2
        print(
            f"WARNING: serving {args.address} WITHOUT LOGIN (--insecure-no-login): anyone who "
            "reaches this port sees every model and can upload scans",
            file=sys.stderr,
            flush=True,
        )
    env = {**os.environ, "COVIDCT_RUNS": str(args.runs.resolve())}
    env.pop("COVIDCT_LOGIN", None)
    if secrets is not None:
        env["COVIDCT_LOGIN"] = "required"  # app/auth.py: only a logged-in user sees the pages
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(args.port),
        "--server.address",
        args.address,
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        "1024",  # MB; data_prep.uploads bounds what an upload may expand to
        "--browser.gatherUsageStats",
        "false",
    ]
    if args.auth_secrets is not None:
        cmd += ["--secrets.files", str(args.auth_secrets.resolve())]
    login = f", login required ({secrets})" if secrets is not None else ""
    print(
        f"dashboard on http://{args.address}:{args.port} (runs from {args.runs}{login})",
        flush=True,
    )
    # this process BECOMES the server: stopping its PID (kill, a service manager, Ctrl-C) stops
    # Streamlit itself, and no orphan keeps serving the port
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def _is_loopback(address: str) -> bool:
    import ipaddress

    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


_AUTH_SHARED = ("redirect_uri", "cookie_secret")
_AUTH_PROVIDER = ("client_id", "client_secret", "server_metadata_url")


def _auth_secrets(explicit: Path | None) -> tuple[Path | None, str]:
    """The secrets file whose [auth] section configures Streamlit's login, or (None, why not)."""
    import tomllib

    candidates = (
        [explicit]
        if explicit is not None
        else [
            Path.cwd() / ".streamlit" / "secrets.toml",
            Path.home() / ".streamlit" / "secrets.toml",
        ]
    )
    why = "no .streamlit/secrets.toml with an [auth] section here or in your home folder"
    for path in candidates:
        if not path.is_file():
            if explicit is not None:
                why = f"{path} not found"
            continue
        try:
            auth = tomllib.loads(path.read_text()).get("auth")
        except (OSError, ValueError) as exc:
            return None, f"{path} is not readable TOML ({exc})"
        if not isinstance(auth, dict):
            why = f"{path} has no [auth] section"
            continue
        missing = [k for k in _AUTH_SHARED if not auth.get(k)]
        providers = [auth] + [v for v in auth.values() if isinstance(v, dict)]
        if not any(all(p.get(k) for k in _AUTH_PROVIDER) for p in providers):
            missing.append(" / ".join(_AUTH_PROVIDER) + " (in [auth] or an [auth.<provider>])")
        if missing:
            return None, f"{path}: its [auth] section lacks {', '.join(missing)}"
        return path, ""
    return None, why


def _cmd_audit(args: argparse.Namespace, cfg: Config) -> int:
    from covidct.privacy.audit import epsilon_estimate
    from covidct.training.finish import audit_run

    audit = audit_run(args.run)
    for a in audit["attacks"]:
        print(
            f"{a['attack']:<20} AUC {a['auc']:.3f}  advantage {a['advantage']:.3f}  "
            f"epsilon estimate {epsilon_estimate(a):.3g}"
        )
    print(audit["reading"])
    print(f"written: {args.run / Run.AUDIT} and {args.run / Run.REPORT_MD}")
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _fmt_eps(x: float) -> str:
    return "none (not private)" if x == float("inf") else f"epsilon {x:.3g}"


COMMANDS = {
    "synth": _cmd_synth,
    "prepare": _cmd_prepare,
    "train": _cmd_train,
    "pretrain": _cmd_pretrain,
    "sweep": _cmd_sweep,
    "report": _cmd_report,
    "audit": _cmd_audit,
    "dashboard": _cmd_dashboard,
    "budget": _cmd_budget,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        from data_prep.pipeline import quiet_decoders

        quiet_decoders()
    try:
        cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", []))
        return COMMANDS[args.command](args, cfg)
    except CovidCTError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the run keeps its last checkpoint; continue it with "
            "`covidct train --resume RUN` (RUN = the run folder named above)"
            if args.command == "train"
            else "interrupted: finished work is kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
