"""The fine-tuning loop under FineTunedClassifier and FineTunedRegressor.

- :mod:`.run`: one ``fit`` / ``partial_fit`` call, the estimator's parameters
  turned into the loop's parts;
- :mod:`.net`: the skorch ``NeuralNet`` subclass that trains;
- :mod:`.callbacks`: every skorch callback of the loop;
- :mod:`.freezing`, :mod:`.optimization`: which parameters train, at which rates;
- :mod:`.heads`, :mod:`.l2sp`, :mod:`.probe`, :mod:`.contrastive`,
  :mod:`.augment`: the head, the penalty, head-first fitting, the pair
  objective, augmentation;
- :mod:`.targets`: labels and regression targets as the loss takes them;
- :mod:`.distributed`: data-parallel training across the ranks of a launch.

Nothing here imports the estimators; the estimators import from here.
"""
