"""The pairing rule that guards every verdict (dev/records/ablation.py), fed two real seed-42
records of the AVX-512 headline set with one field changed at a time."""
import copy
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from dev.records.ablation import FULL_STRUCTURE, build_report, identity_equivalence, pairing  # noqa: E402


@pytest.fixture
def pair():
    with open(os.path.join(ROOT, "results", "ablation_headline_amd_avx512.json")) as f:
        runs = {r["name"]: r for r in json.load(f)["runs"] if r["seed"] == 42}
    return copy.deepcopy(runs["libra"]), copy.deepcopy(runs["baseline"])


def test_the_real_pair_pairs(pair):
    assert pairing(*pair) == (True, None)


@pytest.mark.parametrize("change, reason", [
    (lambda r: r["provenance"].update(threads=8), "different thread counts (8 vs 1)"),
    (lambda r: r["provenance"]["versions"].update(torch="2.13.0"), "different torch versions"),
    (lambda r: r["provenance"].update(resumed=True), "resumed, and where its first part ran is not recorded"),
    (lambda r: r["provenance"].update(mixed=True), "mixed"),
    (lambda r: r.update(opts=["MODEL.DEVICE", "cuda"]) or r["provenance"].pop("device", None), "GPU model not recorded"),
    (lambda r: r["provenance"].update(device={"type": "cuda", "gpu": "NVIDIA H100"}), "different devices (cuda vs cpu)"),
    (lambda r: r["provenance"].update(commit=r["provenance"]["commit"] + "+dirty") or r["provenance"].pop("clean"),
     "not recorded clean"),
    (lambda r: r["provenance"].pop("clean"), "not recorded clean"),
    (lambda r: r["provenance"].update(clean=None), "not recorded clean"),
    (lambda r: r["provenance"].pop("threads"), "threads not recorded"),
    (lambda r: r["provenance"]["processor"].update(flags=["avx2"]), "different processors"),
])
def test_each_difference_withdraws_the_pair(pair, change, reason):
    run, base = pair
    change(run)
    ok, why = pairing(run, base)
    assert not ok and reason in why, why


def _identity(commit, structure, clean=True, threads=1, torch_version="2.14.1+cu130", h="abc"):
    _, base = _pair_records()
    prov = copy.deepcopy(base["provenance"])
    prov.update(commit=commit, clean=clean, threads=threads)
    prov["versions"]["torch"] = torch_version
    covers = [[base["config_file"], base["opts"]]]
    return {"provenance": prov, "structure": list(structure), "hashes": {"baseline": h},
            "runs": {"baseline": {"covers": covers}}}


def _pair_records():
    with open(os.path.join(ROOT, "results", "ablation_headline_amd_avx512.json")) as f:
        runs = {r["name"]: r for r in json.load(f)["runs"] if r["seed"] == 42}
    return runs["libra"], runs["baseline"]


def test_equivalence_needs_the_whole_structure_a_clean_tree_and_the_same_machine(pair):
    run, base = pair
    run = copy.deepcopy(base)  # the same configuration from another commit
    run["provenance"]["commit"] = run["commit"] = "1" * 40
    a, b = base["provenance"]["commit"], "1" * 40
    full = FULL_STRUCTURE
    assert pairing(run, base, identity_equivalence([_identity(a, full), _identity(b, full)])) == (True, None)
    # forty iterations without LR steps, resume or evaluation prove nothing
    short = [_identity(a, ("warmup",)), _identity(b, ("warmup",))]
    assert not pairing(run, base, identity_equivalence(short))[0]
    assert not pairing(run, base, identity_equivalence([_identity(a, full), _identity(b, full, clean=None)]))[0]
    # proven on another thread count or torch version: not for these runs
    assert not pairing(run, base, identity_equivalence([_identity(a, full, threads=2), _identity(b, full, threads=2)]))[0]
    other = [_identity(a, full, torch_version="2.13.0"), _identity(b, full, torch_version="2.13.0")]
    assert not pairing(run, base, identity_equivalence(other))[0]
    assert not pairing(run, base, identity_equivalence([_identity(a, full), _identity(b, full, h="xyz")]))[0]


def test_a_duplicate_run_in_one_set_is_an_error(pair):
    run, base = pair
    runs = [run, base, copy.deepcopy(run)]
    with pytest.raises(ValueError, match="two records of 'libra' at seed 42"):
        build_report(runs, "baseline")


def test_an_untracked_file_under_the_code_makes_the_tree_unclean(tmp_path, monkeypatch):
    import subprocess

    from dev.records.provenance import git_commit

    monkeypatch.delenv("LIBRA_D2_COMMIT", raising=False)
    (tmp_path / "libra_d2").mkdir()
    (tmp_path / "libra_d2" / "a.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    assert git_commit(str(tmp_path))[1] is True
    (tmp_path / "notes.txt").write_text("outside the code: still clean\n")
    assert git_commit(str(tmp_path))[1] is True
    (tmp_path / "libra_d2" / "b.py").write_text("y = 2\n")  # untracked, under the package
    assert git_commit(str(tmp_path))[1] is False


def test_provenance_is_written_at_each_start_and_a_resume_elsewhere_marks_the_run_mixed(tmp_path, pair):
    from dev.records.run_record import end_segment, read_record, start_segment

    _, base = pair
    prov = copy.deepcopy(base["provenance"])
    out = str(tmp_path / "run")
    rec = start_segment(out, prov=dict(prov))
    assert read_record(out)["segments"][0]["commit"] == prov["commit"]  # on disk before training
    end_segment(out, 10.0)
    rec = start_segment(out, prov=dict(prov))  # resumed on the same machine and commit
    rec = end_segment(out, 5.0)
    assert rec["resumed"] and not rec["mixed"] and rec["seconds"] == 15.0
    resumed = dict(base, provenance=rec)
    assert pairing(resumed, base) == (True, None)
    start_segment(out, prov=dict(prov, threads=4))  # a third part with another thread count
    rec = read_record(out)
    assert rec["mixed"]
    ok, why = pairing(dict(base, provenance=rec), base)
    assert not ok and "mixed" in why
    # a record of the old form (written at the end) resumed: its start is unknown, mixed
    old = str(tmp_path / "old")
    os.makedirs(old)
    with open(os.path.join(old, "ablate_run.json"), "w") as f:
        json.dump(prov, f)
    assert start_segment(old, prov=dict(prov))["mixed"]
