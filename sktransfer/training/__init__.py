"""The fine-tuning loop under FineTunedClassifier and FineTunedRegressor.

- :mod:`.plan`: :class:`~.plan.TrainingPlan`, the frozen plan of one call that
  the estimator builds (settings, parts and hooks, as plain values);
- :mod:`.run`: one ``fit`` / ``partial_fit`` call, the plan turned into the
  loop's parts; it returns the trained net and its history;
- :mod:`.net`: the skorch ``NeuralNet`` subclass that trains (the adapted
  training step included);
- :mod:`.adaptation`: the domain-adaptation losses and the target stream;
- :mod:`.callbacks`: every skorch callback of the loop;
- :mod:`.freezing`, :mod:`.optimization`: which parameters train, at which rates;
- :mod:`.heads`, :mod:`.l2sp`, :mod:`.probe`, :mod:`.contrastive`,
  :mod:`.augment`: the head, the penalty, head-first fitting, the pair
  objective, augmentation;
- :mod:`.targets`: labels and regression targets as the loss takes them;
- :mod:`.distributed`: data-parallel training across the ranks of a launch.

Nothing here imports the estimators or reads their attributes; the estimators
import from here.
"""
