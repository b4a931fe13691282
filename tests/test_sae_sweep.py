"""SAE sweeps without a cluster: the config's variants and their errors, the selection rule and
its Pareto front, the asset graph a sweep makes (layer × variant partitions, sae_selection between
the SAEs and what reads them) and which code versions a rule or a variant change touches.
The sweep on a real SLURM cluster, through `dagster dev`, is in test_slurm."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import pytest
from helpers import EXPERIMENT, write_config

from interp_assets.artifacts import sae_checkpoint_relpath, saes_relpath
from interp_assets.config import EXPERIMENTS_DIR, ConfigError, load_config, split_sae_key
from interp_assets.core.sae_selection import Candidate, SelectionError, pareto_front, select_variant
from interp_assets.definitions import build_definitions
from interp_assets.plan import plan_for

SWEEP = {"activations": {"layers": [2, 3]}, "attribution": {"key_layers": [2, 3]},
         "sae_variants": {"relu": {}, "topk_k8": {"architecture": "topk", "k": 8}},
         "sae_selection": {"metric": "ce_loss_recovered", "max_l0": None}}


def key(name: str) -> dg.AssetKey:
    return dg.AssetKey([EXPERIMENT, name])


# ---- the config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("variants", "message"), [
    ({"topk_k8": {"architecture": "topk", "kk": 8}}, r"sae_variants\.topk_k8\.kk: unknown key: a variant overrides "
                                                     r"fields of sae \(did you mean 'k'\?\)"),
    ({"Top-K": {}}, r"sae_variants\.Top-K: 'Top-K' is not a variant name"),
    ({"relu": {"l1_coefficient": -1}}, r"sae_variants\.relu\.l1_coefficient: Input should be greater than or equal to 0"),
    ({"relu": {"steps": 100}}, r"sae_variants\.relu: lr_warmup_steps \+ lr_decay_steps \(100 \+ 200\) exceed steps"),
    ({"relu": {"data_source": "stream"}}, r"sae_variants\.relu\.data_source: one setting for every variant"),
    ({"relu": {"min_explained_variance": 0.1}}, r"sae_variants\.relu\.min_explained_variance: one setting for every "
                                                r"variant \(the quality bar"),
    ({"relu": None}, r"sae_variants: variant\(s\) \['relu'\] are not mappings"),
])
def test_a_bad_variant_is_an_error_naming_its_field(tmp_path: Path, variants: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, {"sae_variants": variants}))


def test_a_bad_rule_names_its_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sae_selection\.metric: Input should be 'ce_loss_recovered'"):
        load_config(write_config(tmp_path, {**SWEEP, "sae_selection": {"metric": "ce_recovered"}}))
    with pytest.raises(ConfigError, match=r"sae_selection\.max_l0: Input should be greater than 0"):
        load_config(write_config(tmp_path, {**SWEEP, "sae_selection": {"max_l0": 0}}))


def test_a_variant_is_the_sae_section_with_its_overrides_in_a_folder_of_its_own(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, SWEEP))
    topk = config.for_variant("topk_k8")
    assert (topk.sae.architecture, topk.sae.k, topk.sae.lr) == ("topk", 8, config.sae.lr)
    assert config.for_variant("relu").sae == config.sae
    assert config.for_variant(None) is config
    assert saes_relpath(topk, 2) == "saes/mlp_post/topk_k8/layer_002"
    assert sae_checkpoint_relpath(topk, 2) == "checkpoints/saes/mlp_post/topk_k8/layer_002/checkpoint.pt"
    assert saes_relpath(config, 2) == "saes/mlp_post/layer_002"  # the study's own: where it always was
    with pytest.raises(ConfigError, match="'topk' is not in sae_variants"):
        config.for_variant("topk")
    # A variant's layers side by side: the whole sweep, or one variant's layers, is one range.
    assert config.sae_partition_keys == ["2:relu", "3:relu", "2:topk_k8", "3:topk_k8"]
    assert [split_sae_key(k) for k in config.sae_partition_keys[:2]] == [(2, "relu"), (3, "relu")]
    assert config.sae_task_groups(config.sae_partition_keys) == [[k] for k in config.sae_partition_keys]
    streamed = load_config(write_config(tmp_path, {**SWEEP, "sae": {"data_source": "stream"}}))
    # Streamed: a group shares one forward pass, so it never mixes variants.
    assert streamed.sae_task_groups(streamed.sae_partition_keys) == [["2:relu", "3:relu"], ["2:topk_k8", "3:topk_k8"]]


def test_the_shipped_sweep_loads() -> None:
    config = load_config(EXPERIMENTS_DIR / "tiny_sweep.yaml")
    assert len(config.sae_partition_keys) == len(config.layer_keys) * len(config.sae_variants) >= 6
    assert {config.for_variant(v).sae.architecture for v in config.sae_variants} == {"relu", "topk"}


# ---- the rule -----------------------------------------------------------------------------------

CANDIDATES = [Candidate("dense", 60.0, 0.97), Candidate("mid", 20.0, 0.95), Candidate("sparse", 8.0, 0.80),
              Candidate("worse", 25.0, 0.90), Candidate("broken", 5.0, None)]


def test_the_rule_picks_the_best_score_within_the_l0_bound() -> None:
    assert select_variant(CANDIDATES, higher_is_better=True, max_l0=None).variant == "dense"
    assert select_variant(CANDIDATES, higher_is_better=True, max_l0=30).variant == "mid"
    assert select_variant(CANDIDATES, higher_is_better=True, max_l0=8).variant == "sparse"  # the bound is inclusive
    assert select_variant(CANDIDATES, higher_is_better=False, max_l0=None).variant == "sparse"  # e.g. KL: lowest wins
    tie = [Candidate("first", 10.0, 0.9), Candidate("second", 10.0, 0.9)]
    assert select_variant(tie, True, None).variant == "first"
    with pytest.raises(SelectionError, match=r"no variant has held-out L0 ≤ 4: dense \(L0 60"):
        select_variant(CANDIDATES, higher_is_better=True, max_l0=4)
    assert select_variant([Candidate("nan", 3.0, math.nan), Candidate("ok", 9.0, 0.1)], True, None).variant == "ok"


def test_the_pareto_front_is_what_no_other_variant_beats_on_both_axes() -> None:
    # "worse" has more latents than "mid" and a lower score; "broken" has no score.
    assert pareto_front(CANDIDATES, higher_is_better=True) == ["dense", "mid", "sparse"]
    assert pareto_front(CANDIDATES, higher_is_better=False) == ["sparse"]


# ---- the asset graph ----------------------------------------------------------------------------

def _graph(path: Path):  # noqa: ANN202
    return build_definitions(path).resolve_asset_graph()


def test_a_sweep_puts_sae_selection_between_the_saes_and_what_reads_them(tmp_path: Path) -> None:
    graph = _graph(write_config(tmp_path, SWEEP))
    saes, selection = graph.get(key("saes")), graph.get(key("sae_selection"))
    assert saes.partitions_def.get_partition_keys() == ["2:relu", "3:relu", "2:topk_k8", "3:topk_k8"]
    assert selection.partitions_def.get_partition_keys() == ["2", "3"]
    for reader in ("feature_dashboards", "attribution_graphs", "interventions"):
        parents = graph.get(key(reader)).parent_keys
        assert key("sae_selection") in parents and key("saes") not in parents, reader
    # A layer's choice reads every variant of that layer, and each SAE reads its layer's activations.
    mapping = graph.get_partition_mapping(key("sae_selection"), key("saes"))
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        selection.partitions_def.subset_with_partition_keys(["3"]), selection.partitions_def, saes.partitions_def)
    assert sorted(upstream.partitions_subset.get_partition_keys()) == ["3:relu", "3:topk_k8"]
    mapping = graph.get_partition_mapping(key("saes"), key("activations"))
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        saes.partitions_def.subset_with_partition_keys(["3:topk_k8"]), saes.partitions_def,
        graph.get(key("activations")).partitions_def)
    assert list(upstream.partitions_subset.get_partition_keys()) == ["3"]


def test_a_new_rule_changes_only_the_selections_code_version_and_a_new_variant_only_the_saes(tmp_path: Path) -> None:
    def versions(updates: dict, name: str) -> dict[str, str]:
        graph = _graph(write_config(tmp_path, updates, name=name))
        return {k.path[-1]: graph.get(k).code_version for k in graph.get_all_asset_keys()}

    before = versions(SWEEP, "a.yaml")
    rule = versions({**SWEEP, "sae_selection": {"max_l0": 12}}, "b.yaml")
    assert {name for name in before if before[name] != rule[name]} == {"sae_selection"}
    variant = versions({**SWEEP, "sae_variants": {**SWEEP["sae_variants"], "topk_k8": {"architecture": "topk", "k": 6}}},
                       "c.yaml")
    assert {name for name in before if before[name] != variant[name]} == {"saes"}
    # Without a sweep, the study's code versions are the ones it had: no sae_selection, no new hash.
    plain = _graph(write_config(tmp_path, {}, name="d.yaml"))
    assert key("sae_selection") not in plain.get_all_asset_keys()
    assert key("saes") in plain.get(key("feature_dashboards")).parent_keys


def test_the_plan_counts_every_variants_jobs_and_sizes_each_for_the_costliest(tmp_path: Path) -> None:
    wide = {**SWEEP, "sae_variants": {"relu": {}, "wide": {"expansion_factor": 16}}}
    sweep, plain = (plan_for(load_config(write_config(tmp_path, updates, name=name)), "cpu")
                    for updates, name in ((wide, "a.yaml"), (SWEEP | {"sae_variants": {}}, "b.yaml")))
    assert sweep.phase("saes").jobs == 2 * plain.phase("saes").jobs
    assert sweep.phase("saes").host_peak_bytes > plain.phase("saes").host_peak_bytes
    assert any("sweep of 2 variants" in note and "wide" in note for note in sweep.phase("saes").notes)


def test_the_phases_after_training_read_the_chosen_variants_sae(tmp_path: Path) -> None:
    """What load_saes (graphs, interventions, dashboards) and open_study resolve a layer to."""
    from interp_assets.artifacts import sae_selection_relpath
    from interp_assets.tasks.common import sae_in_use_relpath
    from resources.storage import open_store

    config = load_config(write_config(tmp_path, SWEEP))
    store = open_store(config.storage)
    with pytest.raises(RuntimeError, match=r"layer 3: no SAE chosen at .*layer_003\.json: materialize sae_selection first"):
        sae_in_use_relpath(config, store, 3)
    store.write_json(sae_selection_relpath(config, 3), {"variant": "topk_k8"})
    assert sae_in_use_relpath(config, store, 3) == "saes/mlp_post/topk_k8/layer_003"
    plain = load_config(write_config(tmp_path, {}, name="plain.yaml"))
    assert sae_in_use_relpath(plain, store, 3) == "saes/mlp_post/layer_003"
