"""Resumable fit: BackupAndRestore and fit(resume_from=). A subprocess training on real digits is
SIGKILLed mid-epoch, restarted with the same code, and must end with bitwise the same weights and
History as a run that was never interrupted."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember as em
from ember import layers
from ember.saving import ModelFileError

pytest.importorskip("sklearn")

SRC = Path(em.__file__).resolve().parents[1]
BACKUP_FILE = "training-backup.ember"

SCRIPT = '''
import json, os, signal, sys
import numpy as np
import ember as em
from ember import layers
from ember.data import DataLoader, TensorDataset
from ember.data.datasets import digits

out, backup_dir, save_freq, kill_at, data = sys.argv[1:6]
save_freq = save_freq if save_freq == "epoch" else int(save_freq)
kill_at = int(kill_at)


class KillAt(em.callbacks.Callback):
    """SIGKILL this process at the end of its kill_at-th batch, before fit backs that batch up."""

    def __init__(self):
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


(x, y), (xv, yv) = digits(flatten=True)
x, y, xv, yv = x[:400], y[:400], xv[:100], yv[:100]
em.manual_seed(0)
model = em.Sequential([layers.Input(shape=(64,)), layers.Dense(32, activation="relu"), layers.Dropout(0.3),
                       layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
# min_delta=10: no epoch after the first counts as an improvement, so the rate halves from then on
callbacks = [KillAt(), em.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=10.0),
             em.callbacks.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)]
if backup_dir != "-":
    callbacks.append(em.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq))
if data == "loader":  # shuffled by the loader's own generator
    train = DataLoader(TensorDataset(em.tensor(x), em.tensor(y)), batch_size=32, shuffle=True,
                       generator=em.Generator(5))
    history = model.fit(train, epochs=4, validation_data=(xv, yv), callbacks=callbacks, verbose=0)
else:  # arrays, shuffled by ember's global generator
    history = model.fit(x, y, epochs=4, batch_size=32, validation_data=(xv, yv), callbacks=callbacks, verbose=0)
np.savez(out + ".npz", **{k: v.numpy() for k, v in model.state_dict().items()})
with open(out + ".json", "w") as f:
    json.dump({"history": history.history, "epoch": history.epoch}, f)
'''


def train(tmp, name, backup_dir="-", save_freq="epoch", kill_at=-1, data="arrays"):
    """Run the script; returns (returncode, weights, history) (weights/history None if killed)."""
    script = tmp / "train.py"
    if not script.exists():
        script.write_text(SCRIPT)
    out = tmp / name
    r = subprocess.run([sys.executable, str(script), str(out), str(backup_dir), str(save_freq), str(kill_at), data],
                       capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""})
    if r.returncode != 0:
        return r.returncode, None, r.stderr
    with np.load(str(out) + ".npz", allow_pickle=False) as f:
        weights = dict(f)
    return 0, weights, json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs without any backup, per data kind."""
    tmp = tmp_path_factory.mktemp("reference")
    runs = {}

    def get(data):
        if data not in runs:
            rc, w, h = train(tmp, f"ref-{data}", data=data)
            assert rc == 0, h
            runs[data] = (w, h)
        return runs[data]
    return get


def _backup_position(path):
    from ember.saving import read_safetensors

    _, meta = read_safetensors(path)
    return json.loads(meta["epoch"]), json.loads(meta["extra"])["step"]


def _assert_same_run(got, expected):
    w, h = got
    w_ref, h_ref = expected
    assert sorted(w) == sorted(w_ref)
    for k in w_ref:
        assert np.array_equal(w[k], w_ref[k]), f"{k} differs from the uninterrupted run"  # bitwise
    assert h == h_ref


@pytest.mark.parametrize("data, save_freq, kill_at, position", [
    ("arrays", 4, 23, (1, 7)),   # 13 batches an epoch: batch 20 backed up = epoch 1 after 7 batches
    ("loader", 5, 33, (2, 4)),   # batch 30 = epoch 2 after 4 batches
])
def test_killed_mid_epoch_resumes_to_the_same_weights_and_history(tmp_path, reference, data, save_freq, kill_at,
                                                                  position):
    backup_dir = tmp_path / "backup"
    rc, _, _ = train(tmp_path, "run", backup_dir, save_freq, kill_at, data)
    assert rc == -signal.SIGKILL
    assert _backup_position(backup_dir / BACKUP_FILE) == position
    rc, w, h = train(tmp_path, "run", backup_dir, save_freq, -1, data)
    assert rc == 0, h
    _assert_same_run((w, h), reference(data))
    assert h["epoch"] == [0, 1, 2, 3] and h["history"]["learning_rate"] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    assert not (backup_dir / BACKUP_FILE).exists()  # deleted after the successful run


def test_save_freq_epoch_resumes_from_the_last_finished_epoch(tmp_path, reference):
    backup_dir = tmp_path / "backup"
    rc, _, _ = train(tmp_path, "run", backup_dir, "epoch", 30)  # killed in epoch 2 (batches 27..39)
    assert rc == -signal.SIGKILL
    assert _backup_position(backup_dir / BACKUP_FILE) == (2, 0)
    rc, w, h = train(tmp_path, "run", backup_dir, "epoch", -1)
    assert rc == 0, h
    _assert_same_run((w, h), reference("arrays"))
    assert not backup_dir.joinpath(BACKUP_FILE).exists()


# ---- in-process ----------------------------------------------------------------------------------

def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _model():
    em.manual_seed(3)
    m = em.Sequential([layers.Input(shape=(8,)), layers.Dense(16, activation="relu"), layers.Dropout(0.2),
                       layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_resume_from_continues_a_finished_shorter_run_and_deletes_the_backup(tmp_path):
    x, y = _data()
    ref = _model()
    h_ref = ref.fit(x, y, epochs=4, batch_size=16, verbose=0)
    m = _model()
    m.fit(x, y, epochs=2, batch_size=16, verbose=0,
          callbacks=[em.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    assert (tmp_path / BACKUP_FILE).exists()  # kept: delete_checkpoint=False
    m = _model()  # a new process would start like this
    h = m.fit(x, y, epochs=4, batch_size=16, verbose=0, resume_from=tmp_path)
    assert h.epoch == [0, 1, 2, 3] and h.history == h_ref.history
    for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), k
    assert not (tmp_path / BACKUP_FILE).exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_a_corrupted_backup_is_a_clear_error(tmp_path, damage):
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=1, batch_size=16, verbose=0,
          callbacks=[em.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    path = tmp_path / BACKUP_FILE
    data = path.read_bytes()
    if damage == "garbage":
        data = b"not a checkpoint"
    elif damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data = data[:-8] + bytes(b ^ 0xFF for b in data[-8:])
    path.write_bytes(data)
    m = _model()
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    with pytest.raises(ModelFileError, match=r"cannot resume from the backup .*training-backup\.ember.*Delete it"):
        m.fit(x, y, epochs=2, batch_size=16, verbose=0, resume_from=tmp_path)
    assert all(np.array_equal(v.numpy(), before[k]) for k, v in m.state_dict().items())


def test_a_backup_from_other_callbacks_is_refused(tmp_path):
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=1, batch_size=16, verbose=0,
          callbacks=[em.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    with pytest.raises(ValueError, match="EarlyStopping"):
        _model().fit(x, y, epochs=2, batch_size=16, verbose=0, resume_from=tmp_path,
                     callbacks=[em.callbacks.EarlyStopping(monitor="loss")])


def test_argument_checks(tmp_path):
    for bad in (0, -3, "batch", 1.5, True):
        with pytest.raises(ValueError, match="save_freq"):
            em.callbacks.BackupAndRestore(tmp_path, save_freq=bad)
    x, y = _data()
    with pytest.raises(ValueError, match="resume_from= or a BackupAndRestore"):
        _model().fit(x, y, epochs=1, verbose=0, resume_from=tmp_path,
                     callbacks=[em.callbacks.BackupAndRestore(tmp_path)])
