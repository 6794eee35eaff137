"""objective="contrastive" (pairs from labels, cosine-similarity loss) and head-first training
that starts fine-tuning from the linear probe's optimum."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer
from sktransfer.training.contrastive import make_pairs
from sktransfer.training.probe import fit_head

# Short reviews, praise or complaint, of 48 different everyday things each (a hotel,
# a phone, a film...; no subject in both classes): neither a topic nor a keyword
# gives the class away, and frozen MiniLM embeddings group sentences by subject
# before tone, which few-shot fine-tuning has to change.
PRAISE = [
    'The hotel staff upgraded our room without us asking.',
    'The soup was rich and the bread was still warm.',
    'Our flight landed twenty minutes early.',
    'These boots kept my feet dry on a week of hiking.',
    'Setup took five minutes and it just worked.',
    "I would happily read this author's next book tomorrow.",
    'Customer service refunded me within the hour.',
    'Our guide knew every corner of the old town.',
    'The mattress fixed my back pain in a week.',
    'My package arrived a day before the estimate.',
    'The nurses treated my mother with real kindness.',
    'The course explained statistics better than my university did.',
    'I have recommended this dentist to all my friends.',
    'The kids did not want to leave the museum.',
    'The gym has never been crowded when I go.',
    "The show's final season tied everything together beautifully.",
    'Our rental car was clean and nearly brand new.',
    'The vacuum picks up dog hair in one pass.',
    'The cake was moist and not too sweet.',
    'The bike shifts smoothly even on steep climbs.',
    'The campsite was quiet, shaded and close to the lake.',
    'The vet calmed our nervous cat right away.',
    'The spa left me more relaxed than a week off.',
    "The game's puzzles are clever without being frustrating.",
    'The barber listened and gave me exactly the cut I wanted.',
    'Our new neighbours brought over a tray of cookies.',
    'The tax software walked me through every form.',
    'The ferry crossing was calm and the crew was friendly.',
    "The umbrella survived a storm that wrecked everyone else's.",
    'The electrician explained the problem and charged a fair price.',
    'The pharmacy had my prescription ready in ten minutes.',
    "This board game has become our family's favourite.",
    'The running shoes feel light even after ten miles.',
    'The art class gave me the confidence to paint again.',
    'Our stay at the farmhouse was peaceful and cosy.',
    'The garden center staff helped me pick the right soil.',
    'The printer has never jammed in two years.',
    'The swimming coach made my daughter love the water.',
    'The podcast host asks exactly the questions I want answered.',
    'The bank fixed the error without any fuss.',
    'The shoes fit perfectly straight out of the box.',
    'The hostel was clean, central and full of nice people.',
    'My new glasses are light and the lenses are crystal clear.',
    'The pizza crust was crisp and the toppings fresh.',
    'The insurance claim was approved in two days.',
    'The yoga teacher adapted every pose to my bad knee.',
    'The smartwatch tracks my sleep surprisingly well.',
    'The festival was well organised and never felt crowded.',
]
COMPLAINT = [
    'This phone dies before lunch even in power saving mode.',
    'I checked my watch every ten minutes during the film.',
    'The plumber never showed up and stopped answering calls.',
    'The teacher ignored every email we sent.',
    'The waiter brought the wrong dish and never apologized.',
    'The concert sound was muddy and painfully loud.',
    'The blender started smoking the second time I used it.',
    'The new update drains the battery and crashes constantly.',
    'The view from the balcony was a parking lot.',
    'The pasta was mushy and drowning in oil.',
    'This jacket fell apart at the seams in a month.',
    'The train was filthy and forty minutes late.',
    'The headphones hurt my ears after twenty minutes.',
    'Checkout took forever and the card machine was broken.',
    'The repair shop charged me twice for the same part.',
    'This coffee maker leaks water all over the counter.',
    'The landlord has ignored the broken heater for weeks.',
    'The speaker at the conference mumbled through outdated slides.',
    'The library staff could not be bothered to help.',
    'Our wedding photographer missed the first kiss entirely.',
    'The software license cost a fortune and barely works.',
    'I could not get past the first chapter of the novel.',
    'The moving crew broke half of our dishes.',
    "The bakery's croissants were burnt and hard.",
    'The taxi driver took a long detour and overcharged us.',
    'The stroller wheel snapped off on the first walk.',
    'The cooking class ran out of ingredients halfway through.',
    'The zoo enclosures were dirty and half of them were empty.',
    'The ski rental gave us boots two sizes too small.',
    'The internet provider cut us off for a whole week.',
    'The toaster burns one side and leaves the other raw.',
    'The dance studio cancelled class without telling anyone.',
    'The passport office lost my application twice.',
    'The car wash left streaks and scratched the door.',
    'The kettle started rusting inside after a month.',
    'The cruise cabin was tiny and smelled of damp.',
    'The sushi tasted old and the rice was hard.',
    'The fitness tracker falls off my wrist every day.',
    "The escape room's locks kept failing and nobody came to help.",
    'The gutter cleaners left leaves all over the lawn.',
    'The airline charged us for a bag we never checked.',
    'The mechanic kept our car for a month and it still rattles.',
    'The tent collapsed in the first light wind.',
    'The pottery workshop was overpriced and disorganised.',
    'The tour bus broke down and we waited four hours.',
    'The hair dryer overheats and shuts itself off.',
    'The language app keeps repeating the same five words.',
    'The furniture arrived with screws missing and a cracked panel.',
]

# -- pairs and the head fit ---------------------------------------------------

def test_pairs_match_their_labels_are_balanced_and_never_pair_a_sample_with_itself():
    y = np.array(["a"] * 7 + ["b"] * 3 + ["c"] * 1)
    first, second, target = make_pairs(y, n_pairs=5, random_state=0)
    assert len(target) == len(y) * 5
    np.testing.assert_array_equal(y[first] == y[second], target == 1)
    assert not np.any(first == second)
    # "c" has no same-class partner: its positives become negatives.
    assert abs(target.mean() - 0.5) < 0.1
    assert np.all(target[y[first] == "c"] == 0)
    again = make_pairs(y, n_pairs=5, random_state=0)
    for a, b in zip((first, second, target), again):
        np.testing.assert_array_equal(a, b)


def test_head_fit_reaches_logistic_regressions_solution(digits):
    images, labels = digits
    keep = labels < 3
    Z = images[keep][:90].reshape(90, -1) / 255.0
    y = labels[keep][:90]
    torch.manual_seed(0)
    head = fit_head(nn.Linear(64, 3), Z, y)
    ours = head(torch.as_tensor(Z, dtype=torch.float32)).softmax(1).detach().numpy()
    # The same objective (multinomial, C=1, unpenalized intercept): the same probabilities.
    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(Z, y)
    np.testing.assert_allclose(ours, lr.predict_proba(Z), atol=1e-4)


# -- the contrastive objective on any backbone ---------------------------------

def small_cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


CNN = dict(objective="contrastive", lr=3e-3, max_epochs=3, n_pairs=4, batch_size=32)


@pytest.fixture(scope="module")
def flat_digits(digits):
    images, labels = digits
    return (images[:200].reshape(200, -1) / 255.0).astype(np.float32), labels[:200]


@pytest.fixture(scope="module")
def cnn_fit(flat_digits):
    X, y = flat_digits
    return FineTunedClassifier(small_cnn(), weights=None, random_state=0, **CNN).fit(X, y)


def test_contrastive_cnn_on_digits_learns_and_is_reproducible(flat_digits, cnn_fit):
    X, y = flat_digits
    X_test, y_test = X[150:], y[150:]
    X, y = X[:150], y[:150]
    clf = FineTunedClassifier(small_cnn(), weights=None, random_state=0, **CNN).fit(X, y)
    again = FineTunedClassifier(small_cnn(), weights=None, random_state=0, **CNN).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X_test), again.predict_proba(X_test))
    # The pair loss went down, and the tuned embeddings separate the digits
    # at least as well as the same random CNN's (a linear probe on each: 0.70
    # against 0.68; with 150 samples more pair training does not add more).
    losses = clf.history_[:, "train_loss"]
    assert losses[-1] < losses[0]
    probe = FineTunedClassifier(small_cnn(), weights=None, random_state=0, freeze="backbone",
                                freeze_epochs=1, max_epochs=1).fit(X, y)
    assert clf.score(X_test, y_test) >= probe.score(X_test, y_test)


def test_contrastive_keeps_frozen_groups_and_the_pickle(flat_digits, cnn_fit):
    X, y = flat_digits
    start = small_cnn()
    clf = FineTunedClassifier(start, freeze=1, l2sp=0.01, random_state=0, **CNN).fit(X, y)
    before, after = start.state_dict(), clf.backbone_.module.state_dict()
    torch.testing.assert_close(after["1.weight"], before["1.weight"], rtol=0, atol=0)
    assert not torch.equal(after["4.weight"], before["4.weight"])
    restored = pickle.loads(pickle.dumps(cnn_fit))
    np.testing.assert_array_equal(restored.predict_proba(X), cnn_fit.predict_proba(X))
    np.testing.assert_array_equal(restored.transform(X), cnn_fit.transform(X))


def test_grid_search_over_the_objective(flat_digits):
    X, y = flat_digits
    base = FineTunedClassifier(small_cnn(), weights=None, random_state=0, **CNN)
    assert clone(base).get_params()["objective"] == "contrastive"
    search = GridSearchCV(base, {"objective": ["cross_entropy", "contrastive"]}, cv=2,
                          error_score="raise").fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.history_ is not None


def test_contrastive_with_image_augmentation_runs(digits):
    images, labels = digits
    # Each pair's two samples get independent flips and crops (two views).
    params = dict(weights=None, image_size=32, augment=True, freeze=3, max_epochs=1,
                  n_pairs=1, batch_size=16, objective="contrastive", random_state=0)
    clf = FineTunedClassifier("torchvision:resnet18", **params).fit(images[:24], labels[:24])
    again = FineTunedClassifier("torchvision:resnet18", **params).fit(images[:24], labels[:24])
    np.testing.assert_array_equal(clf.predict_proba(images[40:50]),
                                  again.predict_proba(images[40:50]))


def test_contrastive_refuses_a_fully_frozen_backbone(flat_digits):
    X, y = flat_digits
    with pytest.raises(ValueError, match="freezes all of it"):
        FineTunedClassifier(small_cnn(), freeze="backbone", objective="contrastive").fit(X, y)
    with pytest.raises(ValueError, match="objective must be one of"):
        FineTunedClassifier(small_cnn(), objective="triplet").fit(X, y)


# -- few labels on real text: MiniLM ------------------------------------------

def draw(y, k, seed):
    """``k`` training indices per class; every other sample is for testing."""
    rng = np.random.RandomState(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                            for c in np.unique(y)])
    return train, np.setdiff1d(np.arange(len(y)), train)


@pytest.fixture(scope="module")
def reviews(minilm_path):
    """The reviews, 3 draws of 8 labels per class, and the linear probe's mean accuracy."""
    spec = "hf:" + minilm_path
    X = np.array(PRAISE + COMPLAINT, dtype=object)
    y = np.array(["praise"] * len(PRAISE) + ["complaint"] * len(COMPLAINT))
    Z = PretrainedFeatureTransformer(spec).fit(list(X)).transform(list(X))
    draws = [draw(y, 8, seed) for seed in range(3)]
    probe = np.mean([LogisticRegression().fit(Z[train], y[train]).score(Z[test], y[test])
                     for train, test in draws])
    return spec, X, y, draws, probe


def mean_accuracy(task, **params):
    """Mean test accuracy over the task's draws, each fit seeded by its draw."""
    backbone, X, y, draws, _ = task
    as_input = list if X.dtype == object else np.asarray  # sentences go in as a list
    return np.mean([FineTunedClassifier(backbone, random_state=seed, **params)
                    .fit(as_input(X[train]), y[train]).score(as_input(X[test]), y[test])
                    for seed, (train, test) in enumerate(draws)])


def test_contrastive_with_its_defaults_beats_frozen_embeddings_at_eight_labels_per_class(
        reviews):
    # Measured (benchmarks/RESULTS.md, "Few-shot transfer"): with its defaults
    # (lr=2e-4, 3 epochs, 8 pairs per sample) the contrastive objective won 7
    # of 8 draws and tied the eighth, +0.048 on average; on these 3 draws
    # +0.079, the smallest gain +0.012. With the earlier defaults (lr=1e-3,
    # 10 epochs, 2 pairs) it lost (0.642 against 0.650 over the 8 draws).
    accuracy = mean_accuracy(reviews, objective="contrastive")
    assert accuracy >= reviews[-1] + 0.02, (accuracy, reviews[-1])


def test_head_first_fine_tuning_with_its_defaults_does_not_lose_to_the_linear_probe(reviews):
    # LP-FT: the head starts at the probe's optimum, and lr defaults to 1e-4
    # then (+0.046 over the probe on these draws; at 1e-3 the transformer's
    # features are wrecked: 0.584 against 0.650 over 8 draws).
    accuracy = mean_accuracy(reviews, freeze_epochs=2)
    assert accuracy >= reviews[-1] - 0.01, (accuracy, reviews[-1])


# -- few labels after a domain shift: clean -> noisy digits, a CNN -----------------

def digits_cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten())


@pytest.fixture(scope="module")
def noisy_digits():
    """A CNN fitted on clean digits; the other half, noisy, with 3 draws of 8 labels per class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    X_source, X, y_source, y = train_test_split(X, data.target, test_size=0.5,
                                                stratify=data.target, random_state=0)
    torch.manual_seed(0)
    source = FineTunedClassifier(digits_cnn(), weights=None, lr=3e-3, max_epochs=20,
                                 batch_size=64, random_state=0).fit(X_source, y_source)
    X = np.clip(X + np.random.RandomState(0).normal(0, 0.4, X.shape), 0, 1).astype(np.float32)
    Z = source.transform(X)
    draws = [draw(y, 8, seed) for seed in range(3)]
    probe = np.mean([LogisticRegression(max_iter=1000).fit(Z[train], y[train])
                     .score(Z[test], y[test]) for train, test in draws])
    return source, X, y, draws, probe


def test_few_label_defaults_do_not_lose_to_the_probe_after_a_shift(noisy_digits):
    # Measured over 8 draws (benchmarks/RESULTS.md): on noisy digits neither
    # objective gains on the probe of the source CNN's features (within
    # +-0.01 on every draw), but neither loses, where cross-entropy with its
    # defaults falls to 0.23 against 0.655.
    probe = noisy_digits[-1]
    for params in (dict(objective="contrastive"), dict(freeze_epochs=2)):
        accuracy = mean_accuracy(noisy_digits, **params)
        assert accuracy >= probe - 0.01, (params, accuracy, probe)
