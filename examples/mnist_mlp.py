"""Keras-style MLP on MNIST (if its files are in --data) or the bundled handwritten digits.

    python examples/mnist_mlp.py [--data ~/data/mnist] [--epochs 10]
"""

import sys

from _common import image_data, parser

import ember as em
from ember import layers


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--data", default="data/mnist", help="directory with MNIST IDX files (optional)")
    p.add_argument("--epochs", type=int, default=15)
    args = p.parse_args(argv)
    (x_train, y_train), (x_test, y_test), name = image_data(args.data, flatten=True)
    epochs = 3 if args.quick else args.epochs
    em.manual_seed(args.seed)
    model = em.Sequential([
        layers.Input(shape=(x_train.shape[1],)),
        layers.Dense(256, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, validation_split=0.1,
              verbose=0 if args.quick else 1)
    result = model.evaluate(x_test, y_test)
    print(f"{name}: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
