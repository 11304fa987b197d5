"""The privacy budget ledger: composed spend, refusals before training, concurrency."""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import replace
from pathlib import Path

import dp_accounting
import pytest

from covidct.cli import main
from covidct.privacy.ledger import (
    BudgetExceededError,
    LedgerEntry,
    LedgerError,
    begin_run,
    finish_run,
    read_ledger,
    resume_run,
    set_budget,
    total_spent,
)


def _entry(run_id: str, *, sigma: float = 1.1, q: float = 0.01, steps: int = 1000, **kw):
    base = LedgerEntry(
        run_id=run_id,
        run_dir=f"/runs/{run_id}",
        started="2026-11-28T00:00:00Z",
        status="started",
        dp=True,
        privacy_unit="patient",
        noise_multiplier=sigma,
        sampling_rate=q,
        steps=steps,
        delta=1e-5,
        epsilon=1.0,
    )
    return replace(base, **kw)


def test_total_is_the_accountants_composition_not_a_sum(tmp_path):
    a, b = _entry("a", sigma=1.1, steps=1000), _entry("b", sigma=0.9, q=0.02, steps=500)
    got = total_spent([a, b], delta=1e-5)
    acc = dp_accounting.rdp.RdpAccountant()
    for sigma, q, steps in ((1.1, 0.01, 1000), (0.9, 0.02, 500)):
        acc.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                steps,
            )
        )
    assert got == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    alone = [total_spent([e], delta=1e-5) for e in (a, b)]
    assert max(alone) < got < sum(alone)  # composition is tighter than summing epsilons


def test_non_private_and_slice_runs_are_unbounded(tmp_path):
    assert math.isinf(total_spent([_entry("a"), _entry("b", dp=False)], delta=1e-5))
    assert math.isinf(total_spent([_entry("a", privacy_unit="slice")], delta=1e-5))


def test_a_run_over_budget_is_refused_with_what_remains(tmp_path):
    set_budget(tmp_path, epsilon=2.0, delta=1e-5)
    spent = begin_run(tmp_path, _entry("first", steps=1000))
    assert 0 < spent < 2.0
    with pytest.raises(BudgetExceededError, match=r"leaving \d") as err:
        begin_run(tmp_path, _entry("second", steps=20_000))
    assert "budget" in str(err.value) and "epsilon 2" in str(err.value)
    with pytest.raises(BudgetExceededError, match="non-private"):
        begin_run(tmp_path, _entry("baseline", dp=False))
    assert [e.run_id for e in read_ledger(tmp_path).entries] == ["first"]  # refusals not recorded
    begin_run(tmp_path, _entry("first", steps=50))  # the same run started again after a crash
    finish_run(tmp_path, "first", steps=10, epsilon=0.1)
    crashed, finished = read_ledger(tmp_path).entries
    assert crashed.status == "started" and crashed.steps == 1000  # still counted in full
    assert finished.status == "finished" and finished.steps == 10


def _append_many(args: tuple[str, int]) -> None:
    folder, worker = args
    for i in range(6):
        begin_run(Path(folder), _entry(f"w{worker}-{i}", steps=1))


def test_a_resumed_run_raises_its_count_and_respects_the_budget(tmp_path):
    prep = tmp_path / "prep"
    begin_run(prep, _entry("a", steps=1000))
    after = resume_run(prep, "a", steps=1200, epsilon=1.2)
    (e,) = read_ledger(prep).entries
    assert e.steps == 1200 and e.status == "started" and e.epsilon == 1.2
    assert after == pytest.approx(total_spent([e], delta=1e-5))
    resume_run(prep, "a", steps=900, epsilon=0.9)  # never lowers what may have been spent
    assert read_ledger(prep).entries[0].steps == 1200
    set_budget(prep, epsilon=after * 1.01, delta=1e-5)
    with pytest.raises(BudgetExceededError, match="leaving"):
        resume_run(prep, "a", steps=5000, epsilon=3.0)
    assert read_ledger(prep).entries[0].steps == 1200  # the refused resume changed nothing
    finish_run(prep, "a", steps=1200, epsilon=1.2)
    with pytest.raises(LedgerError, match="no unfinished entry"):
        resume_run(prep, "a", steps=1300, epsilon=1.3)


def test_concurrent_trainings_lose_no_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        pool.map(_append_many, [(str(tmp_path), w) for w in range(3)])
    ids = [e.run_id for e in read_ledger(tmp_path).entries]
    assert len(ids) == 18 and len(set(ids)) == 18


def test_training_records_itself_and_is_refused_before_it_starts(
    prep, tmp_path, capsys, monkeypatch
):
    import shutil

    from covidct.train import train  # here, not at the top: spawned workers must stay light
    from covidct.train_config import TrainConfig

    monkeypatch.setenv("COVIDCT_HOME", str(tmp_path / "site"))  # another site: a fresh ledger
    tiny = TrainConfig(epochs=1, batch_size=8, max_slices_per_unit=2, chunk_units=8, seed=1)
    data = tmp_path / "prep"
    shutil.copytree(prep, data)
    res = train(data, config=tiny, target_epsilon=2.0, runs_dir=tmp_path / "runs", run_id="r1")
    entries = read_ledger(data).entries
    assert [(e.run_id, e.status) for e in entries] == [("r1", "finished")]
    assert entries[0].steps == res.privacy.steps
    assert entries[0].epsilon == pytest.approx(res.privacy.epsilon)

    assert main(["budget", str(data), "--set", "2.2"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "remaining" in out
    argv = ["train", "--data", str(data), "--epsilon", "2", "--runs", str(tmp_path / "runs")]
    code = main([*argv, "--run-id", "r2", "--no-progress", "--set", "train.batch_size=8"])
    assert code == 2
    err = capsys.readouterr().err
    assert "refused" in err and "leaving" in err
    assert not (tmp_path / "runs" / "r2").exists()  # refused before anything was written
    raw = json.loads(read_ledger(data).path.read_text())  # type: ignore[union-attr]
    assert raw["budget"]["epsilon"] == 2.2 and len(raw["entries"]) == 1


def test_an_existing_run_folder_is_refused_before_the_ledger_counts_it(
    prep, tmp_path, capsys, monkeypatch
):
    import shutil

    monkeypatch.setenv("COVIDCT_HOME", str(tmp_path / "site"))  # another site: a fresh ledger
    data = tmp_path / "prep"
    shutil.copytree(prep, data)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "run.json").write_text("{}")
    argv = ["train", "--data", str(data), "--epsilon", "2", "--runs", str(tmp_path / "runs")]
    code = main([*argv, "--run-id", "taken", "--no-progress", "--set", "train.batch_size=8"])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert read_ledger(data).entries == []


# ---- one ledger per source cohort, however it is prepared ----------------------------------


def test_re_preparing_the_same_scans_opens_no_fresh_budget(cohort, tmp_path, capsys):
    """Two preparations of the same scans (each with its own pseudonym key, so other
    pseudonyms and splits) map to one ledger: `covidct budget` shows the same total."""
    from data_prep.pipeline import PrepConfig, prepare
    from data_prep.worker import SliceSettings

    folders = [tmp_path / "first", tmp_path / "again"]
    for out in folders:
        prepare(
            [cohort],
            out,
            config=PrepConfig(slices=SliceSettings(image_size=32), workers=1),
            labels=[cohort / "labels.csv"],
        )
    a, b = (read_ledger(f) for f in folders)
    assert a.cohort == b.cohort and a.path == b.path
    begin_run(folders[0], _entry("on-first", steps=1000))
    set_budget(folders[1], epsilon=5.0, delta=1e-5)
    totals = []
    for f in folders:
        assert main(["budget", str(f)]) == 0
        out = capsys.readouterr().out
        assert "on-first" in out and "epsilon 5" in out
        totals.append([line for line in out.splitlines() if line.startswith("total spent")])
    assert totals[0] == totals[1] and "epsilon" in totals[0][0]
    raw = read_ledger(folders[1]).path.read_text()  # type: ignore[union-attr]
    identities = json.loads((cohort / "identities.json").read_text())
    assert not any(ident["patient_id"] in raw for ident in identities)  # keyed hashes only


def test_a_cohort_sharing_patients_counts_the_others_runs(prep, tmp_path, monkeypatch):
    import csv
    import shutil

    monkeypatch.setenv("COVIDCT_HOME", str(tmp_path / "site"))

    def copy_keeping(name: str, keep) -> Path:
        data = tmp_path / name
        shutil.copytree(prep, data)
        path = data / "private" / "pseudonym_map.csv"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows([r for i, r in enumerate(rows) if keep(i, r)])
        return data

    whole = copy_keeping("whole", lambda i, r: True)
    half = copy_keeping("half", lambda i, r: i % 2 == 0)  # a subset: shares patients
    other = copy_keeping("other", lambda i, r: False)  # no patient map: a cohort of its own
    assert len({read_ledger(d).cohort for d in (whole, half, other)}) == 3
    begin_run(whole, _entry("big", steps=2000))
    assert [e.run_id for e in read_ledger(half).counted] == ["big"]
    assert read_ledger(half).entries == []  # counted, not copied
    assert read_ledger(other).counted == []
    set_budget(half, epsilon=total_spent([_entry("big", steps=2000)], delta=1e-5), delta=1e-5)
    with pytest.raises(BudgetExceededError):
        begin_run(half, _entry("more", steps=10))


def test_a_folder_ledger_from_an_older_covidct_still_counts(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    old = _entry("before", steps=700)
    (folder / "privacy_ledger.json").write_text(
        json.dumps({"format": "covidct-ledger-1", "budget": {}, "entries": [old.__dict__]})
    )
    assert [e.run_id for e in read_ledger(folder).entries] == ["before"]
    begin_run(folder, _entry("after", steps=10))
    assert [e.run_id for e in read_ledger(folder).entries] == ["before", "after"]
