"""The MLflow UI a finished search opens on, in a real headless Chromium (Debian's `chromium`,
which `.ci/run` installs as root) against a real `prunetune server`: the model-training view,
the trials by name with their accuracy, a trial's own page opened from its link (MLflow 3
opens a plain run address in its GenAI pages), and the Charts view's accuracy-against-speedup
scatter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.driver import run_search
from prunetune.orchestrator.results import find_search, search_trials
from prunetune.orchestrator.tracking import run_url, ui_url

from .test_registry import await_mlflow_server, launch_mlflow_server, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
# The flags a closed network and a root sandbox need (the machine notes': no background
# connections, no sandbox, a fresh profile).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,1000", "--virtual-time-budget=30000")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                 "(apt-get install chromium; .ci/run does it as root)")]


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture()
def server(tmp_path: Path):
    proc, url = launch_mlflow_server(tmp_path / "server")
    await_mlflow_server(proc, url)
    yield url
    stop_process_group(proc)


def _text(dom: subprocess.CompletedProcess) -> str:
    assert dom.returncode == 0, dom.stderr[-2000:]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))


def test_the_ui_opens_on_the_trials_and_their_accuracy(server: str, tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "examples" / "digits-smoke.yaml").read_text())
    base.update(name="ui-search", workdir=str(tmp_path / "work"))
    base["search"].update(trials=3, max_concurrent=1)
    base["finetune"].update(epochs=0)
    path = tmp_path / "ui.yaml"
    path.write_text(yaml.safe_dump(base))
    try:
        summary = run_search(load_config(path, {"tracking.uri": server}), progress=False)
    finally:
        ray.shutdown()
    client = MlflowClient(server)
    trials = search_trials(client, find_search(client, "prunetune", "ui-search"))
    assert summary.trials_finished == 3 and len(trials) == 3
    exp_id = client.get_experiment_by_name("prunetune").experiment_id
    url = ui_url(server, exp_id)

    dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    assert "Model training" in text and "Runs" in text
    assert "Detect issues" not in text  # not the GenAI view
    for t in trials:
        assert t.name in text  # the trials themselves, by name, not nested away
        # with their accuracy column (the UI prints the number as JavaScript does: repr's form)
        assert repr(t.metrics["accuracy"])[:5] in text
    assert "accuracy" in text  # the column header (the others are scrolled out of view)

    shot = Path(os.environ.get("PRUNETUNE_UI_SCREENSHOT", tmp_path / "ui.png"))
    done = _chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000

    # A trial's link, opened in a fresh browser: its page in the model-training view (the
    # address without `workflowType` opens the GenAI sidebar: "Evaluation runs").
    page = _text(_chromium(run_url(server, exp_id, trials[0].run_id), tmp_path / "p-run",
                           "--dump-dom"))
    assert f"Runs {trials[0].name}" in page and "Model metrics" in page
    assert "Evaluation runs" not in page and "Evaluations" not in page
    # The Charts view opens with the trade-off: accuracy against speedup, one point a trial.
    # The chart draws after the page: a loaded machine may need another look (a person waits).
    for attempt in range(3):
        charts = _text(_chromium(f"{url}&compareRunsMode=CHART", tmp_path / f"p-charts{attempt}",
                                 "--dump-dom"))
        if "speedup vs. accuracy" in charts:
            break
    assert "Trade-off (1)" in charts and "speedup vs. accuracy" in charts, charts[-3000:]
    assert "Evaluation runs" not in charts
