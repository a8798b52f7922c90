"""ember._malloc: glibc's thresholds are raised at import, and EMBER_MALLOC_TUNING=0 leaves them."""

import os
import platform
import subprocess
import sys


def _tuned(env_value):
    env = dict(os.environ)
    env.pop("EMBER_MALLOC_TUNING", None)
    if env_value is not None:
        env["EMBER_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", "import ember._malloc as m; print(m.TUNED)"], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_thresholds_are_set_on_glibc_and_can_be_turned_off():
    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _tuned(None) == expected
    assert _tuned("0") == "False"
