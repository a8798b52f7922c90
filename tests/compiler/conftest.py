import pytest


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache_dir(tmp_path_factory):
    """Fused kernels of this test session go to one temporary directory (shared by all tests,
    so each kernel is compiled once per session), never into the user's ~/.cache."""
    path = tmp_path_factory.mktemp("ember-kernels")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBER_CACHE_DIR", str(path))
        yield path
