import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    import ember as em

    em.manual_seed(0)
    np.random.seed(0)
    yield
