"""The one source of truth for the dataset's classes, statistics and image size.

Importable without torch: the app and the export read these values from here (or from the
JSON written beside the weights), never from copies.
"""

CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32
# Per-channel statistics of the CIFAR-10 training images, in [0, 1] units.
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
