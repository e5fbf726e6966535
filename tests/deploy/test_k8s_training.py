"""Training on Kubernetes, without a cluster: the specs dagster-k8s builds from our settings.

- the run pod of a ``train_models`` run: the ``dagster-k8s/config`` run tag our settings give
  the job, merged by dagster-k8s with the Helm values' ``runK8sConfig`` and rendered into the
  Kubernetes Job ``K8sRunLauncher`` would create (``construct_dagster_k8s_job``);
- the training pod of the ``k8s`` launch: the request our asset code gives ``PipesK8sClient``
  rendered by dagster-k8s's own ``build_pod_body`` with a real Pipes session's bootstrap
  environment, decoded back as the pod would read it;
- the pod's side: URIs in, local files out (``fetch_inputs``), against a real MLflow registry;
- the Helm values' training settings, read by ``settings_from_env`` as the run pod would.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._core.pipes.utils import PipesEnvContextInjector, open_pipes_session
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader, build_pod_body, get_pod_name
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    decode_param,
)

from assets.core.resources import GPU, resources_from_env
from assets.core.settings import REPO_ROOT
from assets.core.storage import file_sha256
from assets.core.training_run import fetch_inputs, registered_model_name
from assets.models.training import k8s_launch_request
from orchestration.retraining import train_models_job

VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_ENV = {
    "DD_STORAGE_ROOT": "s3://decision-data/prod",
    "AWS_ENDPOINT_URL": "https://s3.example.internal",
    "AWS_ACCESS_KEY_ID": "key-id",
    "AWS_SECRET_ACCESS_KEY": "not-in-any-spec",
    "MLFLOW_TRACKING_URI": "http://mlflow.decision-data.svc:5000",
    "MLFLOW_TRACKING_PASSWORD": "also-not-in-any-spec",
    "DD_TRAINING_LAUNCH": "k8s",
    "DD_TRAINING_K8S_IMAGE": "registry.example.internal/decision-data:0.1.0-cu128",
    "DD_TRAINING_K8S_NAMESPACE": "decision-data",
    "DD_TRAINING_K8S_SERVICE_ACCOUNT": "decision-data-training",
    "DD_TRAINING_K8S_ENV_SECRETS": "decision-data-s3,decision-data-mlflow",
    "DD_TRAINING_GPUS": "2",
    "DD_TRAINING_CPU": "8",
    "DD_TRAINING_MEMORY": "64Gi",
    "DD_TRAINING_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
    "DD_TRAINING_TOLERATIONS": json.dumps([TOLERATION]),
}


def _api(obj) -> dict:
    """A kubernetes model as the API server receives it (camelCase JSON)."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(obj)


def _helm_values() -> dict:
    return yaml.safe_load(VALUES.read_text())


# ------------------------------------------------------------------- the run pod (run tags)


def test_laptop_default_sets_no_kubernetes_tags():
    training = resources_from_env({})["training"]
    assert training.pod.gpus == 0 and training.run_tags() == {}
    assert train_models_job(training.run_tags()).tags == {}


def test_run_tag_gives_the_run_pod_gpus_node_selector_and_tolerations():
    """Stages training in the run pod (pipes launch): K8sRunLauncher's Job gets the GPUs."""
    training = resources_from_env({**GPU_ENV, "DD_TRAINING_LAUNCH": "pipes"})["training"]
    tags = train_models_job(training.run_tags()).tags
    assert tags["decision_data/resource"] == "gpu"  # the run queue's one-GPU-run limit
    # What K8sRunLauncher does with a run's tags and the chart's runK8sConfig (deep merge).
    helm = _helm_values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    chart_default = UserDefinedDagsterK8sConfig.from_dict(
        {"container_config": helm["containerConfig"], "job_spec_config": helm["jobSpecConfig"]}
    )
    context = K8sContainerContext(run_k8s_config=chart_default).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))
    )
    job = _api(
        construct_dagster_k8s_job(
            DagsterK8sJobConfig(
                job_image="registry.example.internal/decision-data:0.1.0",
                dagster_home="/opt/dagster/dagster_home",
                instance_config_map="decision-data-instance",
            ),
            args=["dagster", "api", "execute_run", "{}"],
            job_name="dagster-run-0123",
            user_defined_k8s_config=context.run_k8s_config,
            component="run_worker",
        )
    )
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", GPU: "2"},
        "limits": {"memory": "64Gi", GPU: "2"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [TOLERATION]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400  # the chart's default survives
    # A CPU run keeps the chart's default resources.
    cpu = K8sContainerContext(run_k8s_config=chart_default).run_k8s_config
    assert GPU not in json.dumps(cpu.container_config)


def test_k8s_launch_gives_the_gpu_to_the_training_pod_not_the_run_pod():
    training = resources_from_env(GPU_ENV)["training"]
    assert training.run_tags() == {}
    assert training.pod.run_tags()["dagster-k8s/config"]


# ----------------------------------------------------------------- the training pod (Pipes)


def _inputs(root: str) -> list[dict]:
    return [
        {
            "name": f"ds_dpo/{split}",
            "context": split,
            "uri": f"{root}/datasets/dpo/{split}.parquet",
            "sha256": "ab" * 32,
            "rows": 10,
        }
        for split in ("train", "validation")
    ]


def test_training_pod_spec_rendered_by_dagster_k8s(tmp_path: Path):
    resources = resources_from_env(GPU_ENV)
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization("sft_model", metadata={"model_uri": "models:/decision-data-sft/3"})
    )
    lineage = {"raw_files": [], "episode_partitions": ["2012-01-01"], "dataset": {}}

    rendered: dict = {}

    @dg.asset(name="dpo_model")
    def render(context) -> dg.MaterializeResult:
        """Our request, and the pod dagster-k8s builds from it in PipesK8sClient.run."""
        request = k8s_launch_request(
            context,
            "dpo",
            resources["training"],
            resources["storage"],
            _inputs("s3://decision-data/prod"),
            lineage,
            resources["mlflow"],
        )
        with open_pipes_session(
            context=context,
            extras=request["extras"],
            context_injector=PipesEnvContextInjector(),
            message_reader=PipesK8sPodLogsMessageReader(),
        ) as session:
            bootstrap = session.get_bootstrap_env_vars()
        pod = build_pod_body(
            pod_name=get_pod_name(context.run_id, context.op.name),
            image=request["image"],
            command=request["command"],
            env_vars={**bootstrap, **request["env"]},
            base_pod_meta=request["base_pod_meta"],
            base_pod_spec=request["base_pod_spec"],
        )
        rendered.update(request=request, pod=_api(pod), run_id=context.run_id)
        # No pod ran, so no child reported; the step reports for it (Pipes checks one did).
        return dg.MaterializeResult()

    assert dg.materialize([render], instance=instance).success
    request, pod, run_id = rendered["request"], rendered["pod"], rendered["run_id"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == GPU_ENV["DD_TRAINING_K8S_IMAGE"]
    assert container["command"] == ["python", "-m", "assets.core.training_run", "dpo"]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", GPU: "2"},
        "limits": {"memory": "64Gi", GPU: "2"},
    }
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [TOLERATION]
    assert spec["serviceAccountName"] == "decision-data-training"
    assert spec["restartPolicy"] == "Never"
    assert container["envFrom"] == [
        {"secretRef": {"name": "decision-data-s3"}},
        {"secretRef": {"name": "decision-data-mlflow"}},
    ]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/scratch": "scratch", "/dev/shm": "dshm"}
    assert {v["name"]: v["emptyDir"] for v in spec["volumes"]} == {
        "scratch": {},
        "dshm": {"medium": "Memory"},
    }
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training-dpo"
    assert request["namespace"] == "decision-data"

    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DD_STORAGE_ROOT"] == "s3://decision-data/prod"
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == GPU_ENV["AWS_ENDPOINT_URL"]
    assert env["DD_MODEL_CACHE"] == "/scratch/model-cache"
    # Secrets travel only as secret references, never as values in the spec.
    text = json.dumps(pod)
    assert "not-in-any-spec" not in text and "MLFLOW_TRACKING_PASSWORD" not in env

    # The Pipes bootstrap: context in the environment, messages on the container's log.
    assert decode_param(env[DAGSTER_PIPES_MESSAGES_ENV_VAR]) == {"stdio": "stderr"}
    pipes = decode_param(env[DAGSTER_PIPES_CONTEXT_ENV_VAR])["data"]  # inline, not a file
    assert pipes["run_id"] == run_id and pipes["asset_keys"] == ["dpo_model"]
    extras = pipes["extras"]
    assert extras["fetch"] is True
    config = extras["config"]
    # Inputs and outputs as URIs the pod can reach, no path of this machine.
    assert config["data"]["files"] == [i["uri"] for i in _inputs("s3://decision-data/prod")]
    assert config["sft_checkpoint"] == "models:/decision-data-sft/3"
    assert config["train"]["output_dir"] == f"/scratch/dpo/{run_id}"
    assert config["head"]["feature_cache"].startswith("/scratch/")
    assert extras["tracking"]["tracking_uri"] == GPU_ENV["MLFLOW_TRACKING_URI"]
    assert str(REPO_ROOT) not in json.dumps(extras)


@pytest.mark.parametrize(
    ("override", "needs"),
    [
        ({"DD_STORAGE_ROOT": "/data/dd"}, "storage root"),
        ({"MLFLOW_TRACKING_URI": "sqlite:///var/mlflow.db"}, "tracking server"),
        ({"DD_TRAINING_K8S_IMAGE": ""}, "image"),
    ],
)
def test_k8s_launch_refuses_what_a_pod_cannot_reach(override: dict, needs: str):
    resources = resources_from_env({**GPU_ENV, **override})
    context = dg.build_asset_context()
    with pytest.raises(dg.Failure, match=needs):
        k8s_launch_request(
            context,
            "prm",
            resources["training"],
            resources["storage"],
            _inputs("s3://decision-data/prod"),
            {},
            resources["mlflow"],
        )


# -------------------------------------------------------------------------- the pod's side


def test_the_pod_fetches_its_uri_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fetch_inputs turns the request's URIs into local files: dataset files from the storage
    root (checked against their SHA-256), the SFT checkpoint from the registry."""
    from mlflow import MlflowClient

    root = tmp_path / "root"
    inputs = _inputs(str(root))
    for item in inputs:
        path = Path(item["uri"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item["context"].encode())
        item["sha256"] = file_sha256(path)
    checkpoint = tmp_path / "sft-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    tracking = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = MlflowClient(tracking_uri=tracking["tracking_uri"])
    client.create_registered_model(registered_model_name("sft"))
    client.create_model_version(registered_model_name("sft"), source=str(checkpoint))
    monkeypatch.setenv("DD_STORAGE_ROOT", str(root))
    monkeypatch.setenv("DD_MODEL_CACHE", str(tmp_path / "cache"))

    config = {
        "data": {"files": [i["uri"] for i in inputs]},
        "sft_checkpoint": "models:/decision-data-sft/1",
    }
    with contextlib.ExitStack() as stack:
        local, start_from = fetch_inputs("dpo", config, inputs, tracking, stack)
    assert local["data"]["files"] == [str(Path(i["uri"])) for i in inputs]
    assert local["sft_checkpoint"] == str(checkpoint)
    assert start_from["model_uri"] == "models:/decision-data-sft/1"
    assert config["sft_checkpoint"] == "models:/decision-data-sft/1"  # the request is intact

    inputs[0]["sha256"] = "0" * 64
    with contextlib.ExitStack() as stack, pytest.raises(ValueError, match="changed since"):
        fetch_inputs("dpo", config, inputs, tracking, stack)
    outside = [{**inputs[1], "uri": "s3://elsewhere/train.parquet"}]
    with contextlib.ExitStack() as stack, pytest.raises(ValueError, match="not under"):
        fetch_inputs("dpo", config, outside, tracking, stack)


# ------------------------------------------------------------------------- the Helm values


def test_helm_values_training_settings_render_a_gpu_training_pod():
    """The code server's env in the values (inherited by run pods) as settings_from_env reads
    it: the k8s launch with a CUDA image, GPUs, node selector and tolerations."""
    (deployment,) = _helm_values()["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"] if "value" in e}
    resources = resources_from_env(env)
    training = resources["training"]
    assert training.launch == "k8s" and training.profile == "gpu"
    pod = training.pod
    assert pod.image and "cu" in pod.image.rsplit(":", 1)[-1]
    assert pod.image.rsplit(":", 1)[0] == deployment["image"]["repository"]
    assert set(pod.env_secrets) <= {s["name"] for s in deployment["envSecrets"]}
    spec = pod.base_pod_spec()
    assert spec["containers"][0]["resources"]["limits"][GPU] == str(pod.gpus) and pod.gpus >= 1
    assert spec["node_selector"] and spec["tolerations"]
    assert training.run_tags() == {}  # the run pod itself asks for no GPU
