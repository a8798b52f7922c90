"""The real-data readers, on small files written here in the real formats: MNIST's IDX files
(big-endian header, magic 2051 for images and 2049 for labels, raw or gzipped) and CIFAR-10's
python batches (pickled dicts with bytes keys, as Python 2 wrote them); the restricted
unpickler refusing code; the digits split; the stdlib text corpus and character tools."""

import collections
import gzip
import math
import os
import pickle
import struct
import sysconfig

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ember.data import datasets as D

# ---- digits ---------------------------------------------------------------------------------------


def _rows(x):
    return sorted(r.tobytes() for r in x.reshape(len(x), -1))


def test_digits_split_shapes_dtypes_normalization():
    (xtr, ytr), (xte, yte) = D.digits()
    ref = load_digits()
    assert xtr.shape[1:] == xte.shape[1:] == (1, 8, 8)
    assert xtr.dtype == xte.dtype == np.float32 and ytr.dtype == yte.dtype == np.int64
    assert len(xtr) == len(ytr) and len(xte) == len(yte) and len(xtr) + len(xte) == 1797
    # stratified: each class gives round(20%) of its samples to the test part
    counts = np.bincount(ref.target)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), np.round(counts * 0.2).astype(int))
    # train and test are disjoint and together the whole set, scaled from 0..16 to [0, 1]
    x_all, y_all = D.digits(split="all")
    np.testing.assert_array_equal(x_all.reshape(-1, 64), (ref.data / 16).astype(np.float32))
    np.testing.assert_array_equal(y_all, ref.target)
    assert _rows(np.concatenate([xtr, xte])) == _rows(x_all)
    assert x_all.min() == 0.0 and x_all.max() == 1.0
    # labels travel with their images
    lookup = {r.tobytes(): y for r, y in zip(x_all, y_all)}
    assert all(lookup[r.tobytes()] == y for r, y in zip(xte, yte))


def test_digits_split_options():
    (xtr, ytr), (xte, yte) = D.digits(seed=1, test_size=0.5)
    assert abs(len(xte) - 1797 / 2) <= 10
    xt, yt = D.digits(split="train", seed=1, test_size=0.5)
    np.testing.assert_array_equal(xt, xtr)
    np.testing.assert_array_equal(yt, ytr)
    assert not np.array_equal(D.digits(split="test", seed=2)[1], D.digits(split="test", seed=3)[1])
    np.testing.assert_array_equal(D.digits(split="test", seed=2)[1], D.digits(split="test", seed=2)[1])
    flat, _ = D.digits(split="test", flatten=True)
    np.testing.assert_array_equal(flat, D.digits(split="test")[0].reshape(-1, 64))
    with pytest.raises(ValueError, match="digits: split.*'validation'"):
        D.digits(split="validation")
    with pytest.raises(ValueError, match=r"digits: test_size must be in \(0, 1\).*1\.5"):
        D.digits(test_size=1.5)


# ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def _idx(array):
    """An IDX file: 0, 0, type code, ndim; each dim a big-endian uint32; big-endian data."""
    head = bytes([0, 0, _IDX_CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path, data, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return str(path)


def _mnist_files(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    # the header as the MNIST page spells it: magic number, then the sizes, all big-endian int32
    image_file = struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
    label_file = struct.pack(">II", 2049, n) + labels.tobytes()
    assert image_file == _idx(images) and label_file == _idx(labels)
    return images, labels, image_file, label_file


@pytest.mark.parametrize("dtype", list(_IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(24).reshape(2, 3, 4) * (-1.5 if dtype in (np.float32, np.float64) else 1)).astype(dtype)
    if dtype in (np.int8, np.int16, np.int32):
        a[0, 0, 0] = -7  # the sign survives
    path = _write(tmp_path / ("a.idx" + (".gz" if gz else "")), _idx(a), gz)
    for p in (path, tmp_path / os.path.basename(path)):  # str or pathlib.Path
        b = D.read_idx(p)
        assert b.dtype == np.dtype(dtype) and b.dtype.isnative
        np.testing.assert_array_equal(b, a)


LAYOUTS = [  # reader, subdirectory, file name style, gzipped
    ("mnist", "", "-idx", False),
    ("mnist", "MNIST/raw", "-idx", True),
    ("mnist", "MNIST", ".idx", False),
    ("fashion_mnist", "FashionMNIST/raw", "-idx", True),
    ("fashion_mnist", "", ".idx", True),
]


def _put_mnist(root, sub, style, gz, n_train=5, n_test=3):
    data = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels, image_file, label_file = _mnist_files(n, seed)
        suffix = ".gz" if gz else ""
        _write(os.path.join(root, sub, f"{prefix}-images{style}3-ubyte{suffix}"), image_file, gz)
        _write(os.path.join(root, sub, f"{prefix}-labels{style}1-ubyte{suffix}"), label_file, gz)
        data[prefix] = images, labels
    return data


@pytest.mark.parametrize("reader, sub, style, gz", LAYOUTS)
def test_mnist_readers(tmp_path, reader, sub, style, gz):
    data = _put_mnist(str(tmp_path), sub, style, gz)
    read = getattr(D, reader)
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = data[prefix]
        x, y = read(tmp_path, train=train)  # a pathlib.Path root
        assert x.shape == (len(images), 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)
        xu, yu = read(str(tmp_path), train=train, as_float=False)
        assert xu.dtype == np.uint8 and xu.shape == images.shape
        np.testing.assert_array_equal(xu, images)
        np.testing.assert_array_equal(yu, labels)


def test_mnist_missing_files_name_the_file_and_places(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist: file train-images-idx3-ubyte .*MNIST.*never downloads"):
        D.mnist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"fashion_mnist: file t10k-images-idx3-ubyte.*FashionMNIST"):
        D.fashion_mnist(str(tmp_path), train=False)


def _corrupt(kind, image_file, label_file):
    """(bytes of the images file, bytes of the labels file, gzip the images?, message)."""
    if kind == "magic":
        return b"\x50\x4b\x03\x04" + image_file[4:], label_file, False, "not an IDX file.*504b0304"
    if kind == "type code":
        return b"\x00\x00\x07\x03" + image_file[4:], label_file, False, "not an IDX file.*type code 0x7"
    if kind == "truncated":
        return image_file[:-100], label_file, False, "truncated"
    if kind == "truncated gzip":
        return gzip.compress(image_file)[:-200], label_file, "raw", "cannot read.*truncated or not gzip"
    if kind == "not gzip":
        return image_file, label_file, "raw", "cannot read.*not gzip"
    if kind == "empty":
        return b"", label_file, False, "not an IDX file"
    if kind == "labels in the images file":
        return label_file, label_file, False, "2049.*expected.*2051"
    if kind == "images in the labels file":
        return image_file, image_file, False, "2051.*expected.*2049"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["magic", "type code", "truncated", "truncated gzip", "not gzip", "empty",
                                  "labels in the images file", "images in the labels file"])
def test_mnist_corrupt_files_give_errors_naming_the_file(tmp_path, kind):
    _, _, image_file, label_file = _mnist_files(4, 0)
    images, labels, gz, message = _corrupt(kind, image_file, label_file)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    bad = "labels" if kind == "images in the labels file" else "images"
    _write(str(tmp_path / name), images)  # "raw": bytes already (not) compressed
    _write(str(tmp_path / "train-labels-idx1-ubyte"), labels)
    bad_path = str(tmp_path / name) if bad == "images" else str(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(ValueError, match=message) as info:
        D.mnist(str(tmp_path))
    assert bad_path in str(info.value)


def test_mnist_images_and_labels_of_different_counts(tmp_path):
    _, _, image_file, _ = _mnist_files(4, 0)
    _write(str(tmp_path / "train-images-idx3-ubyte"), image_file)
    _write(str(tmp_path / "train-labels-idx1-ubyte"), _mnist_files(3, 0)[3])
    with pytest.raises(ValueError, match=r"\(4, 28, 28\).*\(3,\)") as info:
        D.mnist(str(tmp_path))
    assert str(tmp_path / "train-labels-idx1-ubyte") in str(info.value)


# ---- CIFAR-10 --------------------------------------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did when CIFAR-10 was made (protocol 2): strings and bytes
    as BINSTRING, NumPy functions under their old module name numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        obj = obj.encode("ascii") if isinstance(obj, str) else obj
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj if len(obj) < 256
                   else pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_string

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            self.write(pickle.GLOBAL + f"numpy.core{module[11:]}\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _py2_pickle(obj):
    import io

    f = io.BytesIO()
    Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def _cifar_batch(n, seed, label=b"training batch 1 of 5"):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return {b"batch_label": label, b"labels": labels, b"data": data,
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}


def _put_cifar(directory, dump, sizes=(3, 2, 4, 1, 4), n_test=3):
    os.makedirs(directory, exist_ok=True)
    batches = {f"data_batch_{i + 1}": _cifar_batch(n, i) for i, n in enumerate(sizes)}
    batches["test_batch"] = _cifar_batch(n_test, 9, b"testing batch 1 of 1")
    for name, batch in batches.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(dump(batch))
    return batches


DUMPS = {"python 2 (as shipped)": _py2_pickle,  # and as re-saved by Python 3
         **{f"protocol {p}": (lambda obj, p=p: pickle.dumps(obj, protocol=p))
            for p in range(2, pickle.HIGHEST_PROTOCOL + 1)}}


def test_py2_pickle_is_what_python_2_wrote():
    import pickletools

    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(_py2_pickle(_cifar_batch(1, 0)))]
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert ("SHORT_BINSTRING", "data") in ops and ("BINSTRING", "") not in ops
    assert not {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"} & {name for name, _ in ops}


@pytest.mark.parametrize("dump", list(DUMPS.values()), ids=list(DUMPS))
@pytest.mark.parametrize("sub", ["cifar-10-batches-py", ""])
def test_cifar10_reads_python_batches(tmp_path, dump, sub):
    batches = _put_cifar(str(tmp_path / sub), dump)
    x, y = D.cifar10(str(tmp_path))
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    data = np.concatenate([b[b"data"] for b in train])
    assert x.shape == (14, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, sum((b[b"labels"] for b in train), []))
    # each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major 32x32
    k, c, h, w = 5, 2, 7, 30
    assert x[k, c, h, w] == np.float32(data[k, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_allclose(x.reshape(14, -1), data / 255.0, rtol=1e-6)
    xt, yt = D.cifar10(tmp_path, train=False, as_float=False)
    assert xt.dtype == np.uint8 and xt.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(xt.reshape(3, -1), batches["test_batch"][b"data"])
    np.testing.assert_array_equal(yt, batches["test_batch"][b"labels"])


def test_cifar10_missing_batch_names_it(tmp_path):
    _put_cifar(str(tmp_path / "cifar-10-batches-py"), _py2_pickle)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="cifar10: data_batch_4 not found.*never downloads"):
        D.cifar10(str(tmp_path))
    D.cifar10(str(tmp_path), train=False)  # the test batch is still there


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("where", ["labels", "data", "object array"])
def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path, where, protocol):
    marker = str(tmp_path / "pwned")
    payload = Payload(marker)
    batch = _cifar_batch(2, 0)
    if where == "object array":  # hidden inside a NumPy array, whose globals are allowed
        batch[b"data"] = np.array([payload, 1], dtype=object)
    else:
        batch[b"labels" if where == "labels" else b"data"] = payload
    evil = pickle.dumps(batch, protocol=protocol)
    pickle.loads(evil)  # the payload works on an ordinary unpickler ...
    assert os.path.exists(marker)
    os.remove(marker)
    directory = tmp_path / "cifar-10-batches-py"
    _put_cifar(str(directory), _py2_pickle)
    (directory / "test_batch").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load '(__builtin__|builtins).exec'") as info:
        D.cifar10(str(tmp_path), train=False)  # ... but not here
    assert str(directory / "test_batch") in str(info.value)
    assert not os.path.exists(marker)


class Rot13:
    def __reduce__(self):
        import codecs

        return codecs.encode, ("data", "rot13")


def test_cifar10_allows_codecs_encode_only_for_latin1_bytes(tmp_path):
    _put_cifar(str(tmp_path), _py2_pickle)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Rot13(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode' with encoding 'rot13'"):
        D.cifar10(str(tmp_path), train=False)


@pytest.mark.parametrize("content, match", [
    (pickle.dumps([1, 2, 3]), "no b'data'/b'labels'"),
    (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}), "no b'data'/b'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"shape \(2, 100\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "and 1 labels"),
    (b"not a pickle at all", "not a CIFAR-10 python batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-30], "not a CIFAR-10 python batch"),
])
def test_cifar10_malformed_batches(tmp_path, content, match):
    _put_cifar(str(tmp_path), _py2_pickle)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        D.cifar10(str(tmp_path), train=False)
    assert str(tmp_path / "test_batch") in str(info.value)


# ---- text ----------------------------------------------------------------------------------------------

def test_python_stdlib_text():
    text = D.python_stdlib_text(max_chars=20_000)
    assert isinstance(text, str) and len(text) == 20_000
    assert text == D.python_stdlib_text(max_chars=60_000)[:20_000]  # deterministic, a prefix
    # the corpus starts with the first (sorted) module of the standard library's top directory
    root = sysconfig.get_paths()["stdlib"]
    first = sorted(f for f in os.listdir(root) if f.endswith(".py"))[0]
    with open(os.path.join(root, first), encoding="utf-8") as f:
        source = f.read()
    assert text.startswith(source[:5000])
    assert "def " in text and "import " in text
    assert D.python_stdlib_text(max_chars=0) == ""


def test_char_vocab_round_trip_and_unknowns():
    v = D.CharVocab()
    assert len(v) == 96
    s = "".join(chr(i) for i in range(32, 127)) + "\nprint('hi')\n"
    ids = v.encode(s)
    assert ids.dtype == np.int64 and ids.shape == (len(s),)
    assert ids.min() >= 0 and ids.max() < len(v)
    assert v.decode(ids) == s
    assert len(set(v.encode("".join(v.chars)).tolist())) == 96  # one id per symbol
    assert v.decode(v.encode("tab\tünï€😀\r")) == "tab??n????"
    assert v.decode(ids.reshape(2, -1)) == s


def test_char_vocab_decode_rejects_ids_outside_the_vocabulary():
    v = D.CharVocab()
    for bad in ([96], [-1]):
        with pytest.raises(ValueError, match=r"CharVocab.decode.*\[0, 96\)"):
            v.decode(bad)


def test_char_dataset_windows_are_shifted_by_one():
    ids = np.arange(10) * 3
    ds = D.CharDataset(ids, context=4)
    assert len(ds) == 6
    for i in range(-6, 6):
        x, y = ds[i]
        j = i % 6
        assert x.numpy().tolist() == ids[j:j + 4].tolist()
        assert y.numpy().tolist() == ids[j + 1:j + 5].tolist()
    assert len(list(ds)) == 6  # iteration stops at the end
    for bad in (6, -7):
        with pytest.raises(IndexError, match=f"CharDataset: index {bad} out of range for 6 windows"):
            ds[bad]
    xb, yb = ds.batch([0, 5, 2])
    assert xb.dtype == np.int64 and xb.shape == (3, 4)
    np.testing.assert_array_equal(xb, np.stack([ds[i][0].numpy() for i in (0, 5, 2)]))
    np.testing.assert_array_equal(yb, np.stack([ds[i][1].numpy() for i in (0, 5, 2)]))
    with pytest.raises(ValueError, match="CharDataset: text of 4 symbols is too short for context 4"):
        D.CharDataset(ids[:4], 4)


def test_char_dataset_in_a_data_loader():
    from ember.data import DataLoader

    text = D.python_stdlib_text(max_chars=2000)
    v = D.CharVocab()
    ds = D.CharDataset(v.encode(text), context=16)
    x, y = next(iter(DataLoader(ds, batch_size=8, shuffle=True, seed=0)))
    assert x.shape == y.shape == (8, 16)
    for a, b in zip(x.numpy(), y.numpy()):
        window = v.decode(a) + v.decode(b[-1:])
        assert window in v.decode(v.encode(text)) and v.decode(b) == window[1:]


@pytest.mark.parametrize("ids, vocab", [
    ([0, 0, 0], 3), ([0, 1, 2, 3], 4), ([5, 5, 1, 2, 5, 0, 0, 9], 12),
    (np.random.default_rng(0).integers(0, 50, 999).tolist(), 50),
])
def test_unigram_entropy_is_the_entropy_of_the_frequencies(ids, vocab):
    n = len(ids)
    direct = -sum(c / n * math.log(c / n) for c in collections.Counter(ids).values())
    assert math.isclose(D.unigram_entropy(np.asarray(ids), vocab), direct, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(D.unigram_entropy([0, 1, 2, 3] * 5, 4), math.log(4), rel_tol=1e-12)
