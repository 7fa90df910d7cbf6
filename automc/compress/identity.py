"""The one identity of a compression task in the knowledge base, shared by ``compress --store`` and ``search``.

The Task id hashes every ``TaskFeatures`` field, so both must fill each the same way: the model name normalised
(``ResNet-8`` is ``resnet8``), the data named by ``dataset_name``, the images the model may learn and select from
(the whole training part, before a ``fraction`` sample, plus the validation part), and the base model's
validation accuracy (never test accuracy: a search's strategies must not see test data).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automc.compress.data import Data
    from automc.kb.records import TaskFeatures


def task_features(model: str, data_path: str | Path, data: Data, *, val_accuracy: float, params: float,
                  flops: float) -> TaskFeatures:
    """The Task of ``model`` (the base measured as ``val_accuracy``, ``params``, ``flops``) on ``data`` read from
    ``data_path``; the same model, weights and data give the same Task id whatever fraction ``data`` holds."""
    from automc.compress.data import dataset_name
    from automc.importers._common import model_name
    from automc.kb.records import TaskFeatures

    train = data.train_pool if data.train_pool is not None else data.size("train")
    c, size = data.input_shape[0], data.input_shape[-1]
    return TaskFeatures(model=model_name(str(model)), dataset=dataset_name(data_path),
                        num_classes=int(data.num_classes), image_size=int(size), image_channels=int(c),
                        num_images=int(train + data.size("val")), base_accuracy=float(val_accuracy),
                        params=float(params), flops=float(flops))
