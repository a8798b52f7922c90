"""Keras-style CNN on MNIST (if its files are in --data) or the bundled handwritten digits,
with early stopping and a checkpoint of the best model.

    python examples/mnist_cnn.py [--data ~/data/mnist] [--epochs 20]
"""

import os
import sys
import tempfile

from _common import image_data, parser

import ember as em
from ember import layers


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--data", default="data/mnist", help="directory with MNIST IDX files (optional)")
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args(argv)
    (x_train, y_train), (x_test, y_test), name = image_data(args.data, flatten=False)
    epochs = 3 if args.quick else args.epochs
    em.manual_seed(args.seed)
    model = em.Sequential([
        layers.Input(shape=x_train.shape[1:]),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    best = os.path.join(tempfile.mkdtemp(prefix="ember-cnn-"), "best.ember")
    callbacks = [em.callbacks.EarlyStopping(monitor="val_accuracy", patience=4, restore_best_weights=True),
                 em.callbacks.ModelCheckpoint(best, monitor="val_accuracy", save_best_only=True)]
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=0.1, callbacks=callbacks,
              verbose=0 if args.quick else 1)
    result = model.evaluate(x_test, y_test)
    print(f"{name}: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}")
    reloaded = em.load(best).compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"best checkpoint {best}: test accuracy {reloaded.evaluate(x_test, y_test)['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
