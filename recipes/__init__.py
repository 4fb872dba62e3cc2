"""Final training of one architecture (``--mode=retrain``), one recipe per network type.

* :mod:`recipes.loop`: the shared epoch loop (train, validate, keep the best weights, checkpoint) on
  the engine's guarded step, metric direction and checkpoint schema;
* :mod:`recipes.rnn`: ENAS/AWD-LSTM's PTB training (variable BPTT, NT-ASGD weight averaging);
* :mod:`recipes.cnn`: DARTS's CIFAR-10 training (cosine lr, cutout, auxiliary head);
* :mod:`recipes.arch`: which architecture to train and which search run's configuration it inherits.

A new recipe is one file with a :class:`~recipes.loop.Retrainer` subclass and one entry in ``RECIPES``;
a search space names its recipe in its plug-in (``spaces.base.Retraining``).
"""

from recipes.cnn import CNNRetrainer
from recipes.loop import RetrainConfig, Retrainer
from recipes.rnn import RNNRetrainer

RECIPES: dict[str, type[Retrainer]] = {"rnn": RNNRetrainer, "cnn": CNNRetrainer}

__all__ = ["RECIPES", "CNNRetrainer", "RNNRetrainer", "RetrainConfig", "Retrainer"]
