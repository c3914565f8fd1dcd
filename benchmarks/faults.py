"""The fault drills: a user's bad day, injected into real searches, and what held.

    python benchmarks/faults.py [--drills PART ...] [--table]

Each drill is a test of the suite (real Ray, real MLflow; most in tests/test_faults.py) run on
its own with pytest, so the drill and its check are one piece of code. Writes
benchmarks/results/faults.json: per drill, what must hold, the test, passed or not, seconds,
and the machine; `--table` prints the markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "faults.json"

# name -> (what must hold, the test that injects the fault and checks it[, its environment])
DRILLS: dict[str, tuple[str, ...]] = {
    "trial worker killed (kill -9)": (
        "Tune retries the trial; 6 of 6 trials finished, one child run each, one result each",
        "tests/test_faults.py::test_a_killed_trial_worker_is_retried_and_counted_once"),
    "worker node of a 2-node cluster killed (kill -9, every process)": (
        "its trial retried on the head; 8 of 8 trials finished, one child run and one "
        "result each",
        "tests/test_cluster_integration.py::test_a_search_survives_losing_its_worker_node"),
    "driver killed twice (kill -9), resumed": (
        "8 child runs for 8 trials, all finished, none run twice (Tune: one final report "
        "each), parent FINISHED",
        "tests/test_faults.py::test_a_driver_killed_twice_resumes_to_exactly_one_run_per_trial"),
    "Ctrl-C, resumed": (
        "8 of 8 trials, each run once; the parent ends FINISHED",
        "tests/test_search_integration.py::test_interrupted_search_resumes_without_rerunning"),
    "Ctrl-C among the finalists, resumed": (
        "exit 130, parent KILLED; the resume skips the proxy stage (each proxy trial reported "
        "once) and ends with 10 child runs",
        "tests/test_stages.py::"
        "test_interrupted_in_the_finalist_stage_resumes_without_redoing_the_proxy_stage"),
    "tracking server stopped 40 s mid-search, and down past the search's end": (
        "the search goes on and every result lands; past the end: exit 2 with the --resume "
        "command, which writes the kept results and finishes; nothing run twice",
        "tests/test_faults.py::test_a_search_outlives_tracking_outages"),
    "tracking server stopped 10 minutes mid-search": (
        "the trials go on, the search waits for the server (tracking.wait_s) and every result "
        "lands; nothing run twice",
        "tests/test_faults.py::test_a_search_outlives_tracking_outages",
        "PRUNETUNE_DRILL_OUTAGE_S=600"),
    "tracker writes while the server is down": (
        "each returns in seconds, kept on disk, written in order once the server is back",
        "tests/test_faults.py::test_tracker_writes_wait_on_disk_while_the_server_is_down"),
    "tracking server absent at start": (
        "exit 2 in seconds naming the server and `prunetune server`; nothing trained, no "
        "Tune state left",
        "tests/test_user_surprises.py::"
        "test_a_search_refuses_a_silent_tracking_server_before_any_work"),
    "state files truncated / emptied before --resume": (
        "each of tuner.pkl, experiment state, search-generator state and searcher state "
        "refused in seconds, naming the file; nothing rewritten; MLflow intact",
        "tests/test_faults.py::test_damaged_state_files_are_refused_on_resume"),
    "Ray gives up mid-search (out of memory)": (
        "one line with the cause, a memory hint and the --resume command; traceback in a "
        "file; no child run left RUNNING; parent KILLED",
        "tests/test_faults.py::"
        "test_a_ray_failure_ends_the_search_with_one_line_and_the_resume_command"),
    "mixed-scheme space (channel + N:M per group)": (
        "every trial finishes within the budget",
        "tests/test_faults.py::test_a_mixed_scheme_search_runs_every_trial"),
    "two drivers of one search started together": (
        "one runs the search, the other exits 2 in one line naming the first's pid and host "
        "(no sqlite traceback); 4 child runs for 4 trials, each run once",
        "tests/test_driver_faults.py::test_two_drivers_started_together_run_the_search_once"),
    "a second driver while a search runs": (
        "exit 2 in seconds, one line naming the holder (pid, host, since when); no MLflow "
        "store or Tune state written",
        "tests/test_driver_faults.py::"
        "test_a_second_driver_of_a_running_search_is_refused_naming_the_first"),
    "driver alone killed (kill -9), its Ray agents left running, resumed": (
        "the resume takes the lock over and says so, stops exactly the recorded leftovers "
        "(ray::DashboardAgent, ...) in one line; 6 child runs for 6 trials, each run once",
        "tests/test_driver_faults.py::"
        "test_a_killed_drivers_lock_and_leftover_ray_processes_are_taken_over"),
    "SIGTERM to the driver, and to its process group, resumed": (
        "each: exit 143 with the --resume command, no abort dump, parent KILLED; the resume "
        "ends with 6 child runs for 6 trials, each run once",
        "tests/test_driver_faults.py::test_sigterm_ends_a_search_as_ctrl_c_does"),
    "cluster address nothing listens at": (
        "exit 2 in seconds naming the address and `ray start --head`; nothing trained, "
        "no workdir",
        "tests/test_driver_faults.py::test_a_cluster_address_nothing_answers_at_fails_in_seconds"),
    "--address auto": (
        "names the cluster joined (address, 1 node(s), 1 CPUs, 0 GPUs) before the first "
        "trial",
        "tests/test_driver_faults.py::test_address_auto_says_which_cluster_it_joined"),
    "the local Ray's listening sockets": (
        "every socket of the driver's local Ray (metrics exporters included) on 127.0.0.1",
        "tests/test_driver_faults.py::test_the_local_ray_listens_on_loopback_only"),
    "the local Ray's trial workers' priority": (
        "trial workers at the driver's niceness (Ray's default: +15)",
        "tests/test_driver_faults.py::test_trial_workers_run_at_the_drivers_priority"),
}


def run_drill(test: str, *env: str) -> dict[str, object]:
    """Run one drill's test; `env`: `NAME=value` settings it runs under."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           test], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, **dict(e.split("=", 1) for e in env)})
    lines = proc.stdout.strip().splitlines() or ["no output"]
    # what failed: pytest's "E " lines (the assertion and its values), the first few
    failure = [line[:300] for line in lines if line.startswith("E ")][:12]
    return {"passed": proc.returncode == 0, "seconds": round(time.monotonic() - t0, 1),
            "pytest": lines[-1], **({"failure": failure} if proc.returncode else {})}


def table(results: dict[str, dict]) -> str:
    lines = ["| drill | what must hold | observed |", "|---|---|---|"]
    for name, r in results["drills"].items():
        seen = (f"held ({r['seconds']:.0f} s)" if r["passed"] else
                f"**FAILED**: {r['pytest']}")
        lines.append(f"| {name} | {r['expected']} | {seen} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", nargs="+", metavar="PART",
                        help="the drills whose names contain one of these (default: all)")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    names = [n for n in DRILLS if not args.drills or any(p in n for p in args.drills)]
    if not names:
        parser.error(f"no drill name contains any of {args.drills}; known: {list(DRILLS)}")
    drills = {}
    if args.drills and args.out.is_file():  # a subset run updates the file's other drills
        drills = {n: d for n, d in json.loads(args.out.read_text())["drills"].items()
                  if n in DRILLS}
    for name in names:
        expected, test, *env = DRILLS[name]
        print(f"{name} ...", flush=True)
        drills[name] = {"expected": expected, "test": test, "env": env, **run_drill(test, *env)}
        print(f"  {'held' if drills[name]['passed'] else 'FAILED'} "
              f"({drills[name]['seconds']} s)", flush=True)
    result = {"drills": {n: drills[n] for n in DRILLS if n in drills},
              "machine": machine_info()}
    write_result(args.out, result, show={n: d["passed"] for n, d in drills.items()})
    print(table(result))


if __name__ == "__main__":
    main()
