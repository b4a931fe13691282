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
