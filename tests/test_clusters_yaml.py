"""Every cluster definition in clusters/ parses and carries the keys its tool requires."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

from prunetune.orchestrator.config import PrunetuneConfig

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
LAUNCHER = sorted(CLUSTERS.glob("*.yaml"))
KUBERAY = sorted((CLUSTERS / "kuberay").glob("*.yaml"))
RAY_PIN = re.compile(r"ray\[[^\]]*\]==([\w.]+)")


def _ray_pin() -> str:
    """The one Ray version of the project: pyproject's exact pin, which every cluster file
    must repeat (so a new Ray release changes nothing until the pin is moved)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := RAY_PIN.fullmatch(d.replace(" ", "")))]
    assert len(pins) == 1, f"pyproject.toml must pin ray exactly once (ray[...]==X), got {deps}"
    return pins[0]


RAY_VERSION = _ray_pin()


def test_installed_ray_is_the_pinned_one() -> None:
    assert ray.__version__ == RAY_VERSION


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_is_known() -> None:
    names = {p.relative_to(CLUSTERS).as_posix() for p in CLUSTERS.rglob("*.y*ml")}
    assert names == {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_matches_rays_schema(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # raises on any key Ray's launcher does not accept
    assert cfg["provider"]["type"] == path.stem
    for key in ("cluster_name", "max_workers", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                "file_mounts"):
        assert key in cfg, f"{path.name} lacks {key}"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, f"{path.name} has no GPU worker type"
    for name in gpu_types:
        assert name != cfg["head_node_type"] and types[name]["max_workers"] >= 1
        assert "node_config" in types[name]
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "~/prunetune" in setup
    assert "." in cfg["file_mounts"].values()  # the repository travels to every node
    pins = set(RAY_PIN.findall(setup))
    assert pins == {RAY_VERSION}, f"nodes must run this Ray ({RAY_VERSION}), got {pins}"
    head = "\n".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "prunetune server --host 127.0.0.1" in head
    assert "--address=$RAY_HEAD_IP" in "\n".join(cfg["worker_start_ray_commands"])


def _pod_spec_ok(spec: dict, *, gpu: bool) -> None:
    containers = spec["template"]["spec"]["containers"]
    assert containers and all(c.get("image") and c.get("name") for c in containers)
    limits = containers[0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == gpu
    assert isinstance(spec["rayStartParams"], dict)


def _ray_cluster_spec_ok(spec: dict, config_maps: dict[str, dict]) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    _pod_spec_ok(spec["headGroupSpec"], gpu=False)
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["groupName"] and g["maxReplicas"] >= g["minReplicas"] for g in groups)
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for g in groups)
    for g in groups:
        _pod_spec_ok(g, gpu="nvidia.com/gpu" in g["template"]["spec"]["containers"][0][
            "resources"]["limits"])
    volumes = spec["headGroupSpec"]["template"]["spec"].get("volumes", [])
    for v in volumes:
        if "configMap" in v:
            assert v["configMap"]["name"] in config_maps, "mounted ConfigMap missing"


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest(path: Path) -> None:
    docs = _docs(path)
    assert all({"apiVersion", "kind", "metadata", } <= set(d) for d in docs)
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for cm in config_maps.values():  # the embedded search config validates
        cfg = PrunetuneConfig.model_validate(yaml.safe_load(cm["data"]["search.yaml"]))
        assert cfg.search.gpus_per_trial >= 1
    ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    assert len(ray_docs) == 1
    doc = ray_docs[0]
    assert doc["kind"] == {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}[path.name]
    if doc["kind"] == "RayCluster":
        _ray_cluster_spec_ok(doc["spec"], config_maps)
        head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
        mlflow = [c for c in head if c["name"] == "mlflow"]
        assert mlflow and mlflow[0]["command"][:5] == ["prunetune", "server", "--host",
                                                       "127.0.0.1", "--port"]
    else:
        spec = doc["spec"]
        assert spec["entrypoint"].startswith("prunetune search /config/search.yaml")
        assert "--address auto" in spec["entrypoint"]
        assert spec["shutdownAfterJobFinishes"] is True
        _ray_cluster_spec_ok(spec["rayClusterSpec"], config_maps)
        mounts = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "volumeMounts"]
        assert any(m["mountPath"] == "/config" for m in mounts)


def test_dockerfile_pins_this_ray() -> None:
    text = (CLUSTERS / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY_VERSION}-" in text
    assert set(RAY_PIN.findall(text)) == {RAY_VERSION}


def test_local_cluster_script_usage() -> None:
    script = CLUSTERS / "local-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    bad = subprocess.run(["bash", str(script), "start", "two"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "N must be a whole number" in bad.stderr
    none = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert none.returncode == 2 and "usage:" in none.stderr
