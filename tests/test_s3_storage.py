"""Production storage: the storage root as an object-store URL (s3://bucket/prefix, through
fsspec/s3fs), tested against a real S3-compatible server on loopback (moto's server mode, as
s3fs's own tests do) with bucket versioning on, as on the lab's versioned bucket."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from helpers import asset_key, in_experiment, write_config

from interp_assets.config import load_config
from interp_assets.definitions import build_definitions
from interp_assets.artifacts import tiny_model_relpath
from resources.storage import ArtifactStore, open_store

BUCKET = "lab-versioned"
SECRET = f"moto-secret-{uuid.uuid4().hex}"
"""The secret key workers get from the environment: it must never reach a log, metadata or artifact."""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Credentials come from the environment only (as on the cluster); workers inherit them.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _versions(key: str) -> list[dict]:
    import boto3

    listing = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v for v in listing.get("Versions", []) if v["Key"] == key]


def test_writes_are_whole_objects_and_republishing_keeps_the_previous_version(s3_endpoint: str, tmp_path: Path) -> None:
    store = ArtifactStore(f"s3://{BUCKET}/unit")
    assert store.write_bytes("a/table.bin", b"first") == store.write_bytes("b/same.bin", b"first")
    store.write_bytes("a/table.bin", b"second")
    assert store.read_bytes("a/table.bin") == b"second"
    versions = _versions("unit/a/table.bin")
    assert len(versions) == 2 and sum(v["IsLatest"] for v in versions) == 1
    assert store.list("a") == ["table.bin"]  # no temporary objects left behind

    # A published folder is read through a local cache that follows re-publication.
    for content in (b"v1", b"v2"):
        folder = tmp_path / content.decode()
        folder.mkdir()
        (folder / "weights.bin").write_bytes(content)
        store.put_dir("sae", folder)
        local = store.local_dir("sae", cache_dir=tmp_path / "cache")
        assert (local / "weights.bin").read_bytes() == content
    assert len(_versions("unit/sae/weights.bin")) == 2
    assert store.local_file("a/table.bin", cache_dir=tmp_path / "cache").read_bytes() == b"second"
    with pytest.raises(FileNotFoundError):
        store.local_dir("never-published")


def test_the_pipeline_on_s3_gives_the_local_backends_data_versions(s3_endpoint: str, tmp_path: Path,
                                                                   tiny_model_storage: Path) -> None:
    """prompts → baselines → activations → saes with workers writing to S3, and again with the lab's
    tiers (activations and checkpoints on a hot local filesystem, the rest on the bucket): the
    content-hash data versions equal those of the same materializations on a local root, and the
    S3 secret key never appears in a run's logs or metadata."""
    from dagster._serdes import serialize_value

    updates = {"sae": {"steps": 40, "checkpoint_every": 20, "log_every": 20, "lr_warmup_steps": 5,
                       "lr_decay_steps": 10, "l1_warmup_steps": 5, "min_explained_variance": 0.0},
               "corpus": {"eval_tokens": 1024}}
    hot = tmp_path / "scratch"
    storages = {
        "local": {"root": str(tmp_path / "local" / "storage")},
        "s3": {"root": f"s3://{BUCKET}/study"},
        "tiered": {"root": f"s3://{BUCKET}/tiered", "tiers": {"activations": str(hot), "checkpoints": str(hot)}},
    }
    versions: dict[str, dict[str, str]] = {}
    for backend, storage in storages.items():
        directory = tmp_path / backend
        directory.mkdir()
        config_path = write_config(directory, {**updates, "storage": storage})
        config = load_config(config_path)
        store = open_store(config.storage)
        model = tiny_model_relpath(config)
        store.put_dir(model, tiny_model_storage / model)  # the same built model in both roots
        defs = build_definitions(config_path)
        tags = {"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "2"}
        with dg.instance_for_test() as instance:
            def run(selection: list[str], **kwargs: object) -> None:
                result = dg.materialize(list(defs.assets), selection=in_experiment(selection), instance=instance,
                                        resources=dict(defs.resources), raise_on_error=False, **kwargs)
                assert result.success, [str(e.event_specific_data.error) for e in result.all_events
                                        if e.event_type_value == "STEP_FAILURE"]

            run(["language_model"])
            run(["prompts", "baselines"], partition_key="ioi")
            run(["prompts"], partition_key="capitals")  # activations capture every behaviour's prompts
            run(["activations"], tags=tags)
            if backend != "local":  # what lands on the bucket and the tiers; the versions compared stop above
                run(["saes"], tags=tags)
            versions[backend] = {
                f"{asset}/{key}": record.asset_materialization.tags["dagster/data_version"]
                for asset, key in (("prompts", "ioi"), ("baselines", "ioi"), ("activations", "1"), ("activations", "2"))
                for record in instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=asset_key(asset), asset_partitions=[key]), limit=1).records
            }
            # Every event of every run (worker logs, metadata, materializations) as stored.
            everything_recorded = "".join(serialize_value(entry) for run in instance.get_runs()
                                          for entry in instance.all_logs(run.run_id))
            assert "moto-secret" not in everything_recorded
            assert backend == "local" or "saes/mlp_post/layer_001" in everything_recorded  # the records were read
        if backend == "s3":
            assert store.is_complete_dir("saes/mlp_post/layer_001") and store.is_complete_dir("saes/mlp_post/layer_002")
            manifest = store.read_json("activations/mlp_post/layer_001/manifest.json")
            for shard in manifest["sources"]["corpus"]["shards"]:
                assert store.exists(f"activations/mlp_post/layer_001/{shard['file']}")
            assert not [name for name in store.list("prompts") if ".tmp-" in name]
        if backend == "tiered":  # the shards live on the hot tier only; the SAEs on the bucket
            # Both under the experiment's prefix (tests: "storage"), on the tier as on the bucket.
            hot_folder, bucket = hot / "storage", ArtifactStore(f"{storage['root']}/storage")
            assert (hot_folder / "activations" / "mlp_post" / "layer_001" / "manifest.json").is_file()
            assert not bucket.exists("activations")
            assert bucket.is_complete_dir("saes/mlp_post/layer_002")
            assert not list(hot_folder.glob("checkpoints/saes/*/*/checkpoint.pt"))  # deleted once published
    assert versions["s3"] == versions["local"] == versions["tiered"]
    assert len(versions["s3"]) == 4
