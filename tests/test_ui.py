"""The platform as researchers use it, against a real webserver + daemon started by the project's
launcher as on a shared login node (the UI on a Unix socket in a private directory, reached
through a forwarded TCP port as from a workstation): a Materialize click in a real browser,
layer backfills through GraphQL, and a config edit that makes exactly the SAEs stale until the
automation sensor relaunches them.

Screenshots land in artifacts/ui/ (git-ignored) for CI to keep.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from dagster_dev import (
    LOCATION,
    RELOAD,
    SENSOR_TICKS,
    START_SENSOR,
    DagsterDev,
    launch_backfill,
    runs,
    sensor_selector,
    staleness,
    start_private_ui,
    wait_for_run,
    wait_for_runs,
    workspace_locations,
)
from browser import browser, screenshot  # noqa: F401 (a fixture)
from helpers import PROJECT_ROOT, SMALL_CORPUS, asset_key, in_experiment, seed_tiny_model, write_config

pytestmark = pytest.mark.slow

LAYERS = ["1", "2", "3", "4"]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, tiny_model_storage: Path):  # noqa: ANN201
    root = tmp_path_factory.mktemp("ui")
    config_path = write_config(root, {
        "sae": {"steps": 150, "lr_warmup_steps": 20, "lr_decay_steps": 30, "l1_warmup_steps": 20,
                "checkpoint_every": 100, "log_every": 50},
        "corpus": SMALL_CORPUS,
        # Started by the test once the first materializations are done, so that what it
        # relaunches is only what the config edit made stale.
        # 30 s between ticks leaves time to see the stale state before the sensor repairs it: its
        # run is submitted by the backfill daemon (up to 30 s later still) and trains for ~15 s more.
        "automation": {"enabled": False, "interval_seconds": 30},
    })
    seed_tiny_model(root / "storage", tiny_model_storage)
    home = root / "dagster_home"
    home.mkdir(mode=0o700)
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    # As on a shared login node: the webserver on a Unix socket in a private directory, the
    # daemon beside it, the browser through a forwarded port as from a workstation.
    server = start_private_ui(home, config_path, root / "ui.log", root / "ui" / "ui.sock")
    yield server
    assert server.stop() is not None


def test_materialize_from_the_ui_then_backfill_layers_then_restale_by_config(dev: DagsterDev, browser) -> None:  # noqa: ANN001, F811
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # live data says "Loading..." for a while on a cold server
    dev.graphql("mutation { setNuxSeen }")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(30_000)

    # 1. The asset graph (Lineage) draws the nine assets as nodes (HTML in SVG foreignObject),
    # once the code location has loaded (a cold start on a busy machine takes a while).
    workspace_locations(dev, 1)
    page.goto(f"{dev.url}/asset-groups")
    nodes = page.locator("svg foreignObject")
    expect(nodes).to_have_count(9, timeout=90_000)
    drawn = {text.strip() for text in nodes.all_text_contents()}
    assert drawn == {"language_model", "prompts", "baselines", "activations", "saes", "feature_dashboards",
                     "attribution_graphs", "interventions", "resource_plan"}, drawn
    screenshot(page, "01-asset-graph")

    # 2. Open language_model and click Materialize, as a person does.
    page.goto(f"{dev.url}/assets/tiny/language_model")
    button = page.locator("button", has_text=re.compile(r"^Materialize…?$")).first
    expect(button).to_be_enabled(timeout=60_000)
    with page.expect_response(lambda r: "op=LaunchPipelineExecution" in r.url or "LaunchPipelineExecution" in (r.request.post_data or "")) as response:
        button.click()
    launched = response.value.json()["data"]["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"].get("runId") or launched["run"]["id"]
    run = wait_for_run(dev, run_id)
    assert run["status"] == "SUCCESS", dev.log_tail()
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["paper-id"] == "interp-assets-demo" and tags["model"] == "interp-assets/tiny-qwen2"
    assert tags["commit-sha"] and tags["researcher"]
    screenshot(page, "02-language-model-materialized")

    # 3. Backfills through GraphQL: prompts (2 behaviours), then 4 layers of activations and saes.
    for asset, partitions in (("prompts", ["ioi", "capitals"]), ("activations", LAYERS), ("saes", LAYERS)):
        backfill = launch_backfill(dev, [asset], partitions)
        finished = wait_for_runs(dev, {"dagster/backfill": backfill})
        assert all(r["status"] == "SUCCESS" for r in finished), (asset, finished, dev.log_tail())
        if asset != "prompts":
            assert len(finished) == 1, f"a {asset} backfill of {len(partitions)} layers must be ONE run: {finished}"
    for asset in ("activations", "saes"):
        assert set(staleness(dev, asset, LAYERS)["staleStatusByPartition"]) == {"FRESH"}

    # 4. Automation on; wait for its first tick so it has seen the current code versions (the
    #    next one comes 30 s later: steps 5 and 6 happen in between).
    selector = sensor_selector("rematerialize_stale")
    started = dev.graphql(START_SENSOR, {"selector": selector})["startSensor"]
    assert started["__typename"] == "Sensor", started
    _wait_for_ticks(dev, selector, 1)

    # 5. A researcher edits sae.* and the code location reloads.
    config = yaml.safe_load(dev.config_path.read_text())
    config["sae"]["l1_coefficient"] = 0.5
    dev.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    before_edit = {r["runId"] for r in runs(dev)}
    reload = dev.graphql(RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
    assert reload["locationOrLoadError"]["__typename"] == "RepositoryLocation", reload

    saes = staleness(dev, "saes", LAYERS)
    assert saes["staleStatusByPartition"] == ["STALE"] * 4, saes
    causes = [cause for per_partition in saes["staleCausesByPartition"] for cause in per_partition]
    assert {c["partitionKey"] for c in causes} == set(LAYERS), causes
    assert {c["category"] for c in causes} == {"CODE"}, causes
    for asset, partitions in (("activations", LAYERS), ("prompts", ["ioi", "capitals"])):
        assert set(staleness(dev, asset, partitions)["staleStatusByPartition"]) == {"FRESH"}, asset
    assert staleness(dev, "language_model")["staleStatus"] == "FRESH"

    # What a researcher sees: a layer's partition page shows the Unsynced tag (Dagster 1.13 draws
    # it per partition there, from staleStatus(partition:), not on the asset graph's nodes).
    page.goto(f"{dev.url}/assets/tiny/saes?view=partitions&partition={LAYERS[0]}")
    unsynced = page.get_by_text(re.compile(r"^Unsynced \(\d+\)$"))
    expect(unsynced.first).to_be_visible(timeout=60_000)
    screenshot(page, "03-saes-partition-unsynced-after-config-edit")

    # 6. The sensor relaunches exactly the stale partitions (all four layers, one run) and nothing else.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        new = [r for r in runs(dev) if r["runId"] not in before_edit]
        if new and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in new) and \
                set(staleness(dev, "saes", LAYERS)["staleStatusByPartition"]) == {"FRESH"}:
            break
        time.sleep(2)
    new = [r for r in runs(dev) if r["runId"] not in before_edit]
    assert new, f"the sensor launched nothing\n{dev.log_tail()}"
    assert all(r["status"] == "SUCCESS" for r in new), new
    # Besides the SAEs only their dashboards (downstream of them, automated too) may follow.
    relaunched = [r for r in new if [LOCATION, "saes"] in [a["path"] for a in r["assetSelection"] or []]]
    assert {tuple(a["path"]) for r in relaunched for a in r["assetSelection"] or []} == {(LOCATION, "saes")}, new
    assert {tuple(a["path"]) for r in new for a in r["assetSelection"] or []} <= {(LOCATION, "saes"), (LOCATION, "feature_dashboards")}, new
    assert len(relaunched) == 1, f"stale layers relaunch as one single-run backfill: {new}"
    assert set(staleness(dev, "saes", LAYERS)["staleStatusByPartition"]) == {"FRESH"}
    page.goto(f"{dev.url}/assets/tiny/saes?view=partitions&partition={LAYERS[0]}")
    expect(page.get_by_text("Latest materialization").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"^Unsynced"))).to_have_count(0, timeout=30_000)
    screenshot(page, "04-saes-fresh-after-automation")
    page.close()


def _wait_for_ticks(dev: DagsterDev, selector: dict, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = dev.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]["sensorState"]
        if len([t for t in state["ticks"] if t["status"] in {"SUCCESS", "SKIPPED"}]) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"the automation sensor did not tick in {timeout}s\n{dev.log_tail()}")
