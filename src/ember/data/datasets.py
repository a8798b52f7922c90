"""Real data sets from local files: scikit-learn's handwritten digits, MNIST / Fashion-MNIST
(IDX files), CIFAR-10 (python batches, read with a restricted unpickler), and the Python
standard library's own source code as a text corpus. Nothing is downloaded."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sysconfig

import numpy as np

# ---- digits ---------------------------------------------------------------------------------

def _stratified_split(y, test_size, seed):
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.extend(idx[:int(round(len(idx) * test_size))])
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), rng.permutation(test)


def digits(split=None, test_size=0.2, seed=0, flatten=False):
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes), scaled to [0, 1].

    Returns float32 images (N, 1, 8, 8) (or (N, 64) with ``flatten``) and int64 labels. With
    ``split=None``: ``((x_train, y_train), (x_test, y_test))`` from a stratified, seeded split;
    ``split='train'``/``'test'`` returns one part; ``split='all'`` everything.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("ember.data.datasets.digits needs scikit-learn, which ships the digits: "
                          "pip install scikit-learn  (or pip install 'ember[datasets]')") from None
    if not 0 < test_size < 1:
        raise ValueError(f"digits: test_size must be in (0, 1), got {test_size}")
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x = x if flatten else x.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    if split == "all":
        return x, y
    train, test = _stratified_split(y, test_size, seed)
    parts = {"train": (x[train], y[train]), "test": (x[test], y[test])}
    if split is None:
        return parts["train"], parts["test"]
    if split not in parts:
        raise ValueError(f"digits: split must be None, 'train', 'test' or 'all', got {split!r}")
    return parts[split]


# ---- MNIST-style IDX files --------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).newbyteorder("="): code for code, t in _IDX_DTYPES.items()}


def read_idx(path):
    """Read one IDX file (optionally gzipped): magic, big-endian dims, then the data."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the file ({e}); it may be truncated or not gzip") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (type code {code:#x}, {ndim} dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says {dims} values ({expected} bytes) but the file holds "
                         f"{len(raw) - header} bytes: the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root, names, subdirs, what, url):
    for sub in subdirs:
        for name in names:
            for suffix in ("", ".gz"):
                p = os.path.join(root, sub, name + suffix)
                if os.path.exists(p):
                    return p
    places = " or ".join(os.path.join(root, s) if s else root for s in subdirs)
    raise FileNotFoundError(f"{what}: file {names[0]} (or {names[0]}.gz) not found in {places}. Put the "
                            f"standard files there (from {url}); ember never downloads data.")


def _read_mnist_part(path, magic, kind):
    """An IDX file that must hold MNIST's ``kind``: magic 2051 (uint8, 3 dims) or 2049 (uint8, 1 dim)."""
    a = read_idx(path)
    found = _IDX_CODES[a.dtype] << 8 | a.ndim
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found} ({a.dtype} data of shape {a.shape}), expected {magic} "
                         f"for a file of {kind}: is this the {kind} file?")
    return a


def _mnist_like(root, train, as_float, subdir, what, url):
    prefix = "train" if train else "t10k"
    subdirs = ["", subdir, os.path.join(subdir, "raw")]
    image_path = _find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], subdirs, what, url)
    label_path = _find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], subdirs, what, url)
    images = _read_mnist_part(image_path, 2051, "images")
    labels = _read_mnist_part(label_path, 2049, "labels")
    if len(images) != len(labels):
        raise ValueError(f"{what}: images {images.shape} in {image_path} and labels {labels.shape} in {label_path} "
                         "do not match: expected as many labels as images")
    labels = labels.astype(np.int64)
    if as_float:
        return (images.astype(np.float32) / 255.0)[:, None], labels
    return images, labels


def mnist(root, train=True, as_float=True):
    """MNIST from the standard IDX files in ``root`` (also root/MNIST/raw, torchvision's layout).

    Returns images float32 (N, 1, 28, 28) in [0, 1] (``as_float=False``: uint8 (N, 28, 28)) and
    int64 labels.
    """
    return _mnist_like(root, train, as_float, "MNIST", "mnist", "http://yann.lecun.com/exdb/mnist/")


def fashion_mnist(root, train=True, as_float=True):
    """Fashion-MNIST from its IDX files in ``root`` (also root/FashionMNIST/raw)."""
    return _mnist_like(root, train, as_float, "FashionMNIST", "fashion_mnist",
                       "https://github.com/zalandoresearch/fashion-mnist")


# ---- CIFAR-10 ----------------------------------------------------------------------------------

class _Refused(pickle.UnpicklingError):
    pass


def _latin1_encode(text, encoding):
    """``_codecs.encode(text, 'latin1')``: how Python 3 pickles bytes with protocols 0-2; nothing else."""
    if encoding != "latin1":
        raise _Refused(f"refusing to call '_codecs.encode' with encoding {encoding!r} from a data file")
    return text.encode("latin-1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batches (dicts of bytes, lists and NumPy arrays) and nothing else:
    any other global named by the file is refused, so loading runs no code from it."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {  # _frombuffer: arrays pickled with protocol 5
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3 with protocol 2
            return _latin1_encode
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"refusing to load '{module}.{name}' from a data file: CIFAR "
                           "batches only contain arrays, lists and bytes")
        return super().find_class(module, name)


def _load_cifar_batch(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        d = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise pickle.UnpicklingError(f"{path}: {e}") from None
    except Exception as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no b'data'/b'labels' entries)")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != 3072 or len(d[b"labels"]) != len(x):
        raise ValueError(f"{path}: CIFAR-10 batch with data of shape {x.shape} and {len(d[b'labels'])} labels")
    return x.reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], dtype=np.int64)


def cifar10(root, train=True, as_float=True):
    """CIFAR-10 from the python-version batches (root/cifar-10-batches-py/data_batch_1..5 and
    test_batch, or those files directly in root). Returns images (N, 3, 32, 32) float32 in
    [0, 1] (or uint8) and int64 labels."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    paths = []
    for name in names:
        for d in (os.path.join(root, "cifar-10-batches-py"), root):
            if os.path.exists(os.path.join(d, name)):
                paths.append(os.path.join(d, name))
                break
        else:
            raise FileNotFoundError(
                f"cifar10: {name} not found in {os.path.join(root, 'cifar-10-batches-py')} or {root}. "
                "Extract the python version of CIFAR-10 (from https://www.cs.toronto.edu/~kriz/cifar.html) "
                "there; ember never downloads data.")
    parts = [_load_cifar_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ((x.astype(np.float32) / 255.0) if as_float else x), y


# ---- text ------------------------------------------------------------------------------------------

def python_stdlib_text(max_chars=None):
    """The Python standard library's own .py sources (sorted, tests and site-packages skipped),
    concatenated: a real, always-available text corpus."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "test",
                                                               "tests", "idle_test", "__pycache__"))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    chunks, total = [], 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        chunks.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(chunks)
    return text if max_chars is None else text[:max_chars]


class CharVocab:
    """Printable ASCII (95 characters) plus newline: 96 symbols. Other characters map to '?'."""

    def __init__(self):
        self.chars = [chr(i) for i in range(32, 127)] + ["\n"]
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.unknown = self.index["?"]
        table = np.full(65536, self.unknown, dtype=np.int64)
        for c, i in self.index.items():
            table[ord(c)] = i
        self._table = table

    def __len__(self):
        return len(self.chars)

    def encode(self, text) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return self._table[np.minimum(codes, len(self._table) - 1)]

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.chars)):
            raise ValueError(f"CharVocab.decode: ids must be in [0, {len(self.chars)}), got values from {ids.min()} "
                             f"to {ids.max()}")
        return "".join(self.chars[int(i)] for i in ids)


class CharDataset:
    """Next-character windows over encoded text: item i is (ids[i:i+context], ids[i+1:i+context+1])."""

    def __init__(self, ids, context):
        self.ids, self.context = np.asarray(ids, dtype=np.int64), int(context)
        if len(self.ids) <= self.context:
            raise ValueError(f"CharDataset: text of {len(self.ids)} symbols is too short for context {context}")

    def __len__(self):
        return len(self.ids) - self.context

    def __getitem__(self, i):
        from ..tensor import Tensor

        n = len(self)
        if not -n <= i < n:  # also ends iteration: slicing past the end would give short windows forever
            raise IndexError(f"CharDataset: index {i} out of range for {n} windows")
        i = i + n if i < 0 else i
        return Tensor._make(self.ids[i:i + self.context]), Tensor._make(self.ids[i + 1:i + self.context + 1])

    def batch(self, starts):
        """(x, y) int64 arrays (len(starts), context) for window start positions ``starts``."""
        offsets = np.asarray(starts)[:, None] + np.arange(self.context)
        return self.ids[offsets], self.ids[offsets + 1]


def unigram_entropy(ids, vocab_size) -> float:
    """Entropy (nats) of the symbol frequencies: the loss of the best context-free model."""
    p = np.bincount(np.asarray(ids), minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
