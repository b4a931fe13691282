"""Move a study written before experiments had namespaces into its experiment's folder.

    python -m interp_assets.migrate --from dagster_home/storage configs/experiments/tiny.yaml

Before, every config wrote to ``dagster_home/storage/<folder>/...`` (beside Dagster's own run
folders and logs); now each experiment writes under ``<storage.root>/<storage.prefix>/``
(studies/tiny/ for the tiny study). This moves each artifact folder of the layout (models,
prompts, ..., checkpoints) from the old root into the experiment's folder, by rename, so bytes and
content hashes are unchanged and nothing is copied. A folder that already exists at the
destination is left where it is and reported (nothing is overwritten); run it again after
deciding which one to keep. Dagster's history of the old, unprefixed asset keys stays in the
instance under those keys; the experiment's assets (``tiny/...``) start without materializations,
and their first materialization finds the moved files (the tiny model is not retrained).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from interp_assets.artifacts import ARTIFACT_FOLDERS
from interp_assets.config import ConfigError, load_config


def migrate(old_root: Path, config_path: str | Path | None) -> tuple[Path, list[str], list[str]]:
    """(the experiment's folder, moved folders, folders left because the destination already has them)."""
    config = load_config(config_path)
    destination = config.storage.location
    if "://" in destination or config.storage.tiers:
        raise ConfigError(f"storage: {config.storage.location} is remote or tiered; move the folders with the "
                          "storage's own tools (aws s3 mv ...) into the experiment's prefix")
    target = Path(destination)
    if not old_root.is_dir():
        raise ConfigError(f"--from: {old_root} is not a folder")
    if old_root.resolve() == target.resolve():
        return target, [], []
    moved, kept = [], []
    for folder in ARTIFACT_FOLDERS:
        source = old_root / folder
        if not source.is_dir():
            continue
        if (target / folder).exists():
            kept.append(folder)
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target / folder))  # a rename on one file system
        moved.append(folder)
    return target, moved, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp_assets.migrate", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="the experiment (default: configs/experiments/tiny.yaml)")
    parser.add_argument("--from", dest="old_root", type=Path, default=Path("dagster_home/storage"),
                        help="the old storage root (default: dagster_home/storage)")
    args = parser.parse_args(argv)
    try:
        target, moved, kept = migrate(args.old_root, args.config)
    except ConfigError as error:
        print(f"migrate: {error}", file=sys.stderr)
        return 2
    print(f"migrate: moved {moved or 'nothing'} from {args.old_root} to {target}")
    if kept:
        print(f"migrate: left {kept} in {args.old_root}: {target} already has them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
