from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _reproducible() -> None:
    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root holding the default tiny model, built once per session (about a minute)
    by the worker's own task, exactly as the language_model asset builds it. Tests copy its
    ``models/`` folder into their storage roots, where language_model then reuses it."""
    from helpers import write_config

    from interp_assets.config import load_config
    from interp_assets.tasks import TaskContext
    from interp_assets.tasks.language_model import task_language_model
    from resources.storage import ArtifactStore

    root = tmp_path_factory.mktemp("tiny-model-cache")
    config = load_config(write_config(root))
    task_language_model(TaskContext(config, ArtifactStore(config.storage.location), [], log=lambda message: None))
    return Path(config.storage.location)
