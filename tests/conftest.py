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
    # global state a test must not leak into the next ones
    if not em.is_grad_enabled():
        em.set_grad_enabled(True)
        pytest.fail("the test left gradient recording disabled (an em.no_grad() not exited?)")


@pytest.fixture
def fast_thread_switching():
    """The interpreter switches threads every microsecond, so code run by several threads
    really interleaves (races show up in a few thousand iterations)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)
